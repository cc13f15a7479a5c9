// One execution: its DAG coloured by job state and updated live, the job details, a timeline, the checkpoint,
// cancel and retry. Above CONDENSE_ABOVE jobs the graph shows groups (layer range × type) with counts and a
// search by job id; the job found is drawn with its parents and children.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";

import { cancelExecution, holdExecution, retryExecution } from "./actions.js";
import { api, follow } from "./api.js";
import { Badge, ErrorLine, Link, LiveState, html, useNow } from "./components.js";
import { JobDetails } from "./details.js";
import { FINAL_EXECUTION, FINAL_JOB, between, clock, count } from "./format.js";
import { Graph } from "./graph.js";
import { applyChange, condense, indexJobs, progressOf, tally } from "./jobs.js";
import { Progress } from "./overview.js";
import { Timeline } from "./timeline.js";

const CONDENSE_ABOVE = 300;
const NEIGHBOURS = 40;
const GROUP_LIST = 200;
const EXECUTION_KINDS = ["created", "running", "completed", "failed", "cancelled", "retried", "paused", "resumed"];

const JOBS_PAGE = 1000;

/** Every job of the execution; a gateway that pages the listing (`total` beside `jobs`) is read page by page. */
async function allJobs(id) {
  const first = await api(`/execute/${id}/jobs?offset=0&limit=${JOBS_PAGE}`);
  const jobs = [...first.jobs];
  const total = first.total ?? jobs.length;
  while (jobs.length < total) {
    const page = await api(`/execute/${id}/jobs?offset=${jobs.length}&limit=${JOBS_PAGE}`);
    if (page.jobs.length === 0) break;
    jobs.push(...page.jobs);
  }
  return jobs;
}

function jobNode(job) {
  return { id: job.id, kind: "job", label: job.name || job.id, sub: job.type, state: job.status };
}

function Search({ jobs, onPick }) {
  const [text, setText] = useState("");
  const [open, setOpen] = useState(false);
  const [active, setActive] = useState(0);
  const matches = useMemo(() => {
    const q = text.trim();
    if (!q) return [];
    const out = [];
    for (const id of jobs.keys()) {
      if (id.includes(q)) out.push(id);
      if (out.length === 20) break;
    }
    out.sort((a, b) => (a === q ? -1 : b === q ? 1 : a.length - b.length));
    return out;
  }, [text, jobs]);
  const pick = (id) => {
    setText(id);
    setOpen(false);
    onPick(id);
  };
  const onKey = (e) => {
    if (e.key === "ArrowDown") setActive(Math.min(active + 1, matches.length - 1));
    else if (e.key === "ArrowUp") setActive(Math.max(active - 1, 0));
    else if (e.key === "Enter") {
      e.preventDefault();
      if (matches[active]) pick(matches[active]);
    } else if (e.key === "Escape") setOpen(false);
    else return;
    e.preventDefault();
  };
  return html`<div class="search">
    <label class="field inline" for="job-search"><span>Find a job</span></label>
    <input id="job-search" type="search" role="combobox" aria-expanded=${open && matches.length > 0}
      aria-controls="job-search-list" aria-autocomplete="list" placeholder="job id" value=${text}
      aria-activedescendant=${open && matches[active] ? `match-${active}` : undefined}
      onInput=${(e) => { setText(e.currentTarget.value); setOpen(true); setActive(0); }} onKeyDown=${onKey} />
    ${open && matches.length > 0 &&
    html`<ul id="job-search-list" role="listbox" class="listbox">
      ${matches.map(
        (id, i) => html`<li id=${`match-${i}`} role="option" aria-selected=${i === active} class=${i === active ? "active" : ""}
          data-match=${id} onMouseDown=${(e) => { e.preventDefault(); pick(id); }}>${id}</li>`,
      )}
    </ul>`}
  </div>`;
}

function Checkpoint({ execution, checkpoint, onRetry }) {
  const retryable = execution.status === "failed" || execution.status === "cancelled";
  return html`<section class="panel" aria-labelledby="checkpoint-title">
    <h2 id="checkpoint-title">Checkpoint</h2>
    ${execution.checkpointId
      ? html`<dl class="facts">
          <div><dt>Latest</dt><dd class="mono" data-checkpoint=${execution.checkpointId}>${execution.checkpointId}</dd></div>
          ${checkpoint && html`<div><dt>Written</dt><dd>${clock(checkpoint.at)}</dd></div>
            <div><dt>Completed then</dt><dd>${count(checkpoint.counts?.completed)} jobs</dd></div>`}
        </dl>`
      : html`<p class="muted">No checkpoint yet.</p>`}
    ${retryable &&
    html`<button type="button" class="button primary" data-action="retry-execution" onClick=${onRetry}>
      Retry from checkpoint
    </button>`}
  </section>`;
}

export function ExecutionPage({ id }) {
  const [execution, setExecution] = useState(null);
  const [jobs, setJobs] = useState(null);
  const [version, setVersion] = useState(0);
  const [error, setError] = useState(null);
  const [stream, setStream] = useState("connecting");
  const [selected, setSelected] = useState(null);
  const [group, setGroup] = useState(null);
  const [focus, setFocus] = useState(null);
  const [tab, setTab] = useState("graph");
  const [checkpoint, setCheckpoint] = useState(null);
  const [renderMs, setRenderMs] = useState(null);
  const now = useNow();
  const jobsRef = useRef(null);
  const pending = useRef(false);

  // Job changes arrive in bursts: apply each at once, draw at most once per frame.
  const changed = () => {
    if (pending.current) return;
    pending.current = true;
    requestAnimationFrame(() => {
      pending.current = false;
      setVersion((v) => v + 1);
    });
  };

  const load = async () => {
    try {
      const [one, list] = await Promise.all([api(`/execute/${id}`), allJobs(id)]);
      jobsRef.current = indexJobs(list);
      setExecution(one.execution);
      setJobs(jobsRef.current);
      setError(null);
      return one.execution;
    } catch (e) {
      setError(e.status === 404 ? `There is no execution ${id}.` : e.message);
      return null;
    }
  };

  // After the final event the stream ends, but the scheduler records the last jobs (a cancel's) just after:
  // read the jobs again until every one is final too (a few tries, half a second apart).
  const settle = async (tries = 10) => {
    const done = await load();
    const open = [...(jobsRef.current?.values() ?? [])].some((j) => !FINAL_JOB.has(j.status));
    if (done && FINAL_EXECUTION.has(done.status) && open && tries > 1) setTimeout(() => settle(tries - 1), 500);
  };

  useEffect(() => {
    document.title = `${id} · jetdag`;
    let closed = false;
    let close = () => {};
    load().then(() => {
      if (closed || !jobsRef.current) return;
      // In the stream's order: the replay from the execution's first event ends at its current status.
      const onExecution = (event) => {
        setExecution((current) =>
          current && {
            ...current,
            status: event.status,
            paused: event.paused ?? current.paused,
            pausedAt: event.paused ? (current.paused ? current.pausedAt : event.at) : null,
            error: event.error ?? current.error,
            checkpointId: event.checkpointId ?? current.checkpointId,
          },
        );
        if (FINAL_EXECUTION.has(event.status)) settle();
      };
      const handlers = Object.fromEntries(EXECUTION_KINDS.map((k) => [k, onExecution]));
      handlers.retried = () => load();
      handlers.job = (change) => {
        if (jobsRef.current && applyChange(jobsRef.current, change)) changed();
      };
      handlers.jobs = (batch) => {
        let any = false;
        for (const change of batch.jobs) any = applyChange(jobsRef.current, change) || any;
        if (any) changed();
      };
      handlers.checkpoint = (cp) => {
        setCheckpoint(cp);
        setExecution((current) => (current ? { ...current, checkpointId: cp.checkpointId } : current));
      };
      handlers.end = () => close();
      close = follow(`/execute/${id}/events`, handlers, setStream);
    });
    return () => {
      closed = true;
      close();
    };
  }, [id]);

  const list = useMemo(() => (jobs ? [...jobs.values()] : []), [jobs, version]);
  const condensed = list.length > CONDENSE_ABOVE;
  const structure = useMemo(() => (jobs && condensed ? condense(jobs) : null), [jobs, condensed]);

  const graph = useMemo(() => {
    if (!jobs) return null;
    if (!condensed) {
      const edges = [];
      for (const job of list) for (const dep of job.dependsOn) edges.push({ from: dep, to: job.id });
      return { nodes: list.map(jobNode), edges, key: `full:${list.length}` };
    }
    const nodes = structure.groups.map((g) => {
      const counts = tally(g.ids.map((jid) => jobs.get(jid)));
      const layers = g.first === g.last ? `layer ${g.first + 1}` : `layers ${g.first + 1}–${g.last + 1}`;
      return { id: g.key, kind: "group", label: `${layers} · ${g.type}`, counts, total: g.ids.length };
    });
    return { nodes, edges: structure.edges, key: `groups:${structure.groups.length}:${list.length}` };
  }, [jobs, version, structure]);

  const neighbourhood = useMemo(() => {
    if (!focus || !jobs?.has(focus) || !structure) return null;
    const job = jobs.get(focus);
    const parents = job.dependsOn.slice(0, NEIGHBOURS);
    const children = (structure.dependents.get(focus) ?? []).slice(0, NEIGHBOURS);
    const ids = [...new Set([...parents, focus, ...children])];
    const nodes = ids.map((jid) => jobNode(jobs.get(jid)));
    const edges = [...parents.map((p) => ({ from: p, to: focus })), ...children.map((c) => ({ from: focus, to: c }))];
    return { nodes, edges, key: `focus:${focus}`, more: job.dependsOn.length + (structure.dependents.get(focus)?.length ?? 0) - parents.length - children.length };
  }, [focus, jobs, version, structure]);

  // Time to first render: from navigation start to the first drawn graph (docs/dashboard.md).
  useEffect(() => {
    if (graph && renderMs === null) {
      requestAnimationFrame(() => {
        const t = Math.round(performance.now());
        performance.mark("jetdag:graph-rendered");
        window.jetdagGraphRenderedMs = t;
        setRenderMs(t);
      });
    }
  }, [graph]);

  const pickJob = (jid) => {
    setSelected(jid);
    if (condensed) setFocus(jid);
  };
  const pickNode = (nodeId) => {
    if (condensed && !jobs.has(nodeId)) {
      setGroup(nodeId === group ? null : nodeId);
      return;
    }
    pickJob(nodeId);
  };

  const hold = async (what) => {
    const after = await holdExecution(execution, what);
    if (after) setExecution((current) => current && { ...current, paused: after.paused, pausedAt: after.pausedAt });
  };

  if (error) return html`<div class="page-head"><h1 class="mono">${id}</h1></div><${ErrorLine} error=${error} />`;
  if (!execution || !jobs) return html`<p class="muted">Loading ${id}…</p>`;
  const e = execution;
  const openGroup = group && structure?.groups.find((g) => g.key === group);
  const selectedJob = selected ? jobs.get(selected) : null;
  return html`
    <div class="page-head">
      <div>
        <p class="crumbs"><${Link} href="/ui/executions">Executions</${Link}> / ${e.workflowId}</p>
        <h1 class="mono">${e.executionId}</h1>
      </div>
      <${Badge} state=${e.status} />
      ${e.paused && html`<${Badge} state="paused" />`}
      <${LiveState} state=${stream} />
      <div class="actions">
        ${!FINAL_EXECUTION.has(e.status) &&
        html`<button type="button" class="button" data-action=${e.paused ? "resume-execution" : "pause-execution"}
          title=${e.paused ? "Dispatch what the pause held" : "Hold the jobs that have not started; running ones finish"}
          onClick=${() => hold(e.paused ? "resume" : "pause")}>${e.paused ? "Resume" : "Pause"}</button>`}
        ${!FINAL_EXECUTION.has(e.status) &&
        html`<button type="button" class="button danger" data-action="cancel-execution"
          onClick=${() => cancelExecution(e)}>Cancel</button>`}
        ${(e.status === "failed" || e.status === "cancelled") &&
        html`<button type="button" class="button" data-action="retry-execution" onClick=${() => retryExecution(e)}>Retry</button>`}
      </div>
    </div>
    <div class="grid">
      <section class="panel" aria-labelledby="summary-title">
        <h2 id="summary-title">Summary</h2>
        <dl class="facts">
          <div><dt>Workflow</dt><dd>${e.workflowId}</dd></div>
          <div><dt>Started</dt><dd>${clock(e.startedAt)}</dd></div>
          <div><dt>Duration</dt><dd>${between(e.startedAt, e.completedAt, now)}</dd></div>
          <div><dt>Round</dt><dd>${e.round ?? 1}</dd></div>
          <div><dt>Parallelism</dt><dd>${e.parallelism ?? "unlimited"}</dd></div>
          ${e.paused && html`<div><dt>Paused</dt><dd data-paused-at=${e.pausedAt}>since ${clock(e.pausedAt)}</dd></div>`}
          <div><dt>Jobs</dt><dd><${Progress} progress=${progressOf(list)} /></dd></div>
        </dl>
        ${e.error && html`<p class="error-line">${e.error}</p>`}
      </section>
      <${Checkpoint} execution=${e} checkpoint=${checkpoint} onRetry=${() => retryExecution(e)} />
    </div>
    <section class="panel wide" aria-label="Jobs">
      <div class="panel-head">
        <div role="tablist" aria-label="Views of the jobs" class="tabs">
          ${[["graph", "Graph"], ["timeline", "Timeline"]].map(
            ([key, label]) => html`<button type="button" role="tab" id=${`tab-${key}`} aria-selected=${tab === key}
              aria-controls=${`view-${key}`} class=${tab === key ? "tab active" : "tab"} onClick=${() => setTab(key)}>${label}</button>`,
          )}
        </div>
        ${condensed && html`<${Search} jobs=${jobs} onPick=${pickJob} />`}
        <span class="muted" data-render-ms=${renderMs ?? ""}>
          ${count(list.length)} jobs${condensed ? `, condensed into ${structure.groups.length} groups` : ""}${renderMs !== null ? ` · drawn in ${count(renderMs)} ms` : ""}
        </span>
      </div>
      <div class="split">
        <div class="split-main">
          ${tab === "graph" &&
          html`<div id="view-graph" role="tabpanel" aria-labelledby="tab-graph">
            ${neighbourhood &&
            html`<div class="focus">
              <h3>Around <span class="mono">${focus}</span>${neighbourhood.more > 0 ? html` <span class="muted">(${neighbourhood.more} more not drawn)</span>` : ""}</h3>
              <${Graph} nodes=${neighbourhood.nodes} edges=${neighbourhood.edges} layoutKey=${neighbourhood.key}
                selected=${selected} onSelect=${pickJob} label=${`jobs around ${focus}`} />
            </div>`}
            <${Graph} nodes=${graph.nodes} edges=${graph.edges} layoutKey=${graph.key} selected=${condensed ? group : selected}
              onSelect=${pickNode} label=${condensed ? "groups of jobs" : "jobs and their dependencies"}
              direction=${condensed ? "TB" : "LR"} />
            ${openGroup &&
            html`<div class="group-list" aria-label="Jobs of the group">
              <h3>${openGroup.type}, ${openGroup.first === openGroup.last ? `layer ${openGroup.first + 1}` : `layers ${openGroup.first + 1}–${openGroup.last + 1}`}</h3>
              <ul class="chips">${openGroup.ids.slice(0, GROUP_LIST).map((jid) => {
                const j = jobs.get(jid);
                return html`<li><button type="button" class=${`chip state-${j.status}`} data-job-id=${jid} data-state=${j.status}
                  onClick=${() => pickJob(jid)}>${jid}</button></li>`;
              })}</ul>
              ${openGroup.ids.length > GROUP_LIST && html`<p class="muted">${count(openGroup.ids.length - GROUP_LIST)} more: find them by id.</p>`}
            </div>`}
          </div>`}
          ${tab === "timeline" &&
          html`<div id="view-timeline" role="tabpanel" aria-labelledby="tab-timeline">
            <${Timeline} jobs=${list} now=${now} onSelect=${pickJob} selected=${selected} />
          </div>`}
        </div>
        ${selectedJob && html`<${JobDetails} job=${selectedJob} now=${now} onClose=${() => setSelected(null)} />`}
      </div>
    </section>
  `;
}

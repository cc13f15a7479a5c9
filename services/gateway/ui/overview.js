// The overview: health of every component, the workers, the queue with pause and resume, recent executions.
// Live from GET /overview/events (the gateway recomputes it once for every watcher and sends each change).
import { useEffect, useState } from "preact/hooks";

import { api, follow } from "./api.js";
import { Badge, ErrorLine, Link, LiveState, html, notify, useNow } from "./components.js";
import { ago, between, clock, count, percent } from "./format.js";

const COMPONENTS = [
  ["queue", "Job queue"],
  ["workerManager", "Worker registry"],
  ["stateStore", "State store"],
  ["scheduler", "Scheduler"],
];
const QUEUE_STATS = ["waiting", "active", "delayed", "paused", "completed", "failed", "total"];

function Health({ health, error }) {
  return html`
    <section class="panel" aria-labelledby="health-title">
      <h2 id="health-title">Health</h2>
      <${ErrorLine} error=${error} />
      <ul class="components">
        ${COMPONENTS.map(([key, label]) => {
          const c = health?.components?.[key];
          const state = c ? (c.healthy ? "healthy" : "unhealthy") : "unknown";
          return html`<li class="component component-${state}" data-component=${key}>
            <span class="component-name">${label}</span>
            <span class="component-state">${state}</span>
            <span class="component-detail">${c ? (c.healthy ? `${c.latencyMs} ms` : c.error) : "no answer"}</span>
          </li>`;
        })}
      </ul>
    </section>
  `;
}

/** What a pause covers: everything, a capability, a job type, or a pair. */
function pauseScope(p) {
  if (p.capability && p.type) return `${p.capability}/${p.type}`;
  if (p.capability) return `capability ${p.capability}`;
  if (p.type) return `type ${p.type}`;
  return "everything";
}

/** The body of a finer pause from the form's fields: empty fields are left out, minutes become `durationS`. */
export function pauseBody({ capability, type, minutes, reason }) {
  const body = {};
  if (capability.trim()) body.capability = capability.trim();
  if (type.trim()) body.type = type.trim();
  if (String(minutes).trim()) body.durationS = Number(minutes) * 60;
  if (reason.trim()) body.reason = reason.trim();
  return body;
}

/** A pause of one capability or job type, for a while, with a reason: the API checks it and says what is wrong. */
function PauseForm({ busy, act }) {
  const empty = { capability: "", type: "", minutes: "", reason: "" };
  const [fields, setFields] = useState(empty);
  const field = (name, label, attrs = {}) => html`<label class="field inline"><span>${label}</span>
    <input name=${name} value=${fields[name]} ...${attrs}
      onInput=${(e) => setFields({ ...fields, [name]: e.currentTarget.value })} /></label>`;
  const submit = async (e) => {
    e.preventDefault();
    if (await act("pause", pauseBody(fields))) setFields(empty);
  };
  return html`<details class="pause-form">
    <summary>Pause part of the queue, or for a while</summary>
    <form class="filters" onSubmit=${submit}>
      ${field("capability", "Capability", { placeholder: "any" })}
      ${field("type", "Job type", { placeholder: "any" })}
      ${field("minutes", "Minutes", { type: "number", min: "0", step: "any", placeholder: "until resumed" })}
      ${field("reason", "Reason", { maxlength: "500" })}
      <button type="submit" class="button" data-action="pause-scope" disabled=${busy}>Pause</button>
    </form>
  </details>`;
}

function Queue({ queue, error }) {
  const [busy, setBusy] = useState(false);
  const act = async (what, body) => {
    setBusy(true);
    try {
      const reply = await api(`/queue/${what}`, { method: "POST", body });
      notify(reply.message);
      return true;
    } catch (e) {
      notify(e.message, "error");
      return false;
    } finally {
      setBusy(false);
    }
  };
  const paused = queue?.isPaused;
  return html`
    <section class="panel" aria-labelledby="queue-title">
      <div class="panel-head">
        <h2 id="queue-title">Queue</h2>
        <span class="queue-state" data-queue-paused=${paused ? "true" : "false"}>
          ${queue ? (paused ? "paused" : "delivering") : ""}
        </span>
        <div class="actions">
          <button type="button" class="button" data-action="pause-queue" disabled=${busy || !queue || paused}
            onClick=${() => act("pause")}>Pause</button>
          <button type="button" class="button" data-action="resume-queue" disabled=${busy || !queue || !paused}
            onClick=${() => act("resume")}>Resume</button>
        </div>
      </div>
      <${ErrorLine} error=${error} />
      <dl class="stats">
        ${QUEUE_STATS.map(
          (k) => html`<div class="stat" data-stat=${k}><dt>${k}</dt><dd>${count(queue?.stats?.[k])}</dd></div>`,
        )}
      </dl>
      ${queue?.pauses?.length > 0 &&
      html`<ul class="pauses" aria-label="Pauses in effect">
        ${queue.pauses.map(
          (p) => html`<li data-pause=${pauseScope(p)}>
            <strong>${pauseScope(p)}</strong> paused ${p.until ? `until ${clock(p.until)}` : "until resumed"}
            ${p.reason && html`<span class="muted"> · ${p.reason}</span>`}
            ${(p.capability || p.type) &&
            html` <button type="button" class="button small" data-action="resume-pause" disabled=${busy}
              onClick=${() => act("resume", { capability: p.capability ?? undefined, type: p.type ?? undefined })}
              aria-label=${`Resume ${pauseScope(p)}`}>Resume</button>`}
          </li>`,
        )}
      </ul>`}
      <${PauseForm} busy=${busy || !queue} act=${act} />
    </section>
  `;
}

function Workers({ workers, error, now }) {
  return html`
    <section class="panel wide" aria-labelledby="workers-title">
      <h2 id="workers-title">Workers <span class="muted">${workers ? count(workers.length) : ""}</span></h2>
      <${ErrorLine} error=${error} />
      ${workers && workers.length === 0 && html`<p class="muted">No worker is registered.</p>`}
      ${workers?.length > 0 &&
      html`<div class="table-wrap"><table class="table">
        <caption class="visually-hidden">Registered workers</caption>
        <thead><tr>
          <th scope="col">Worker</th><th scope="col">Host</th><th scope="col">Status</th>
          <th scope="col">Load</th><th scope="col">Utilization</th><th scope="col">Last heartbeat</th>
          <th scope="col">Capabilities</th><th scope="col">Up</th>
        </tr></thead>
        <tbody>
          ${workers.map(
            (w) => html`<tr data-worker-id=${w.workerId} data-status=${w.status}>
              <th scope="row" class="mono">${w.workerId}</th>
              <td>${w.hostname}${w.pid ? html`<span class="muted"> · pid ${w.pid}</span>` : ""}</td>
              <td><${Badge} state=${w.status} />
                ${w.problem && html`<div class="error-text problem" data-problem>${w.problem}</div>`}</td>
              <td class="num">${w.currentLoad} / ${w.maxConcurrency}</td>
              <td><span class="meter" role="meter" aria-valuemin="0" aria-valuemax="100"
                aria-valuenow=${Math.round(w.utilization * 100)} aria-label=${`utilization of ${w.workerId}`}>
                <span style=${`width:${Math.round(w.utilization * 100)}%`}></span></span>
                <span class="num">${percent(w.utilization)}</span></td>
              <td>${ago(w.lastHeartbeat, now)}</td>
              <td>${w.capabilities.join(", ")}</td>
              <td>${between(w.registeredAt, null, now)}</td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
    </section>
  `;
}

function RecentExecutions({ executions, error, now }) {
  return html`
    <section class="panel wide" aria-labelledby="recent-title">
      <div class="panel-head">
        <h2 id="recent-title">Recent executions</h2>
        <${Link} href="/ui/executions" class="button small">All executions</${Link}>
      </div>
      <${ErrorLine} error=${error} />
      ${executions && executions.length === 0 && html`<p class="muted">No execution yet.</p>`}
      ${executions?.length > 0 &&
      html`<div class="table-wrap"><table class="table">
        <caption class="visually-hidden">The most recent executions</caption>
        <thead><tr>
          <th scope="col">Execution</th><th scope="col">Workflow</th><th scope="col">Status</th>
          <th scope="col">Progress</th><th scope="col">Started</th><th scope="col">Duration</th>
        </tr></thead>
        <tbody>
          ${executions.map((e) => html`<${ExecutionRow} execution=${e} now=${now} />`)}
        </tbody>
      </table></div>`}
    </section>
  `;
}

export function Progress({ progress }) {
  const total = progress?.total || 0;
  const part = (n) => (total ? `${(n / total) * 100}%` : "0%");
  const done = (progress?.completed || 0) + (progress?.failed || 0) + (progress?.skipped || 0) + (progress?.cancelled || 0);
  return html`<span class="progress" role="img" aria-label=${`${done} of ${total} jobs finished`}>
    <span class="progress-bar">
      <span class="seg state-completed" style=${`width:${part(progress?.completed || 0)}`}></span>
      <span class="seg state-failed" style=${`width:${part(progress?.failed || 0)}`}></span>
      <span class="seg state-running" style=${`width:${part(progress?.running || 0)}`}></span>
    </span>
    <span class="num">${count(done)} / ${count(total)}</span>
  </span>`;
}

export function ExecutionRow({ execution: e, now, actions }) {
  return html`<tr data-execution-id=${e.executionId} data-status=${e.status}>
    <th scope="row"><${Link} href=${`/ui/executions/${e.executionId}`} class="mono">${e.executionId}</${Link}></th>
    <td>${e.workflowId}</td>
    <td><${Badge} state=${e.status} /></td>
    <td><${Progress} progress=${e.progress} /></td>
    <td title=${e.startedAt}>${ago(e.startedAt, now)}</td>
    <td>${between(e.startedAt, e.completedAt, now)}</td>
    ${actions && html`<td class="row-actions">${actions}</td>`}
  </tr>`;
}

export function OverviewPage() {
  const [overview, setOverview] = useState(null);
  const [stream, setStream] = useState("connecting");
  const now = useNow();
  useEffect(() => follow("/overview/events", { overview: setOverview }, setStream), []);
  useEffect(() => {
    document.title = "Overview · jetdag";
  }, []);
  const errors = overview?.errors ?? {};
  return html`
    <div class="page-head">
      <h1>Overview</h1>
      <${LiveState} state=${stream} />
    </div>
    ${!overview && html`<p class="muted">Waiting for the gateway…</p>`}
    ${overview &&
    html`<div class="grid">
      <${Health} health=${overview.health} error=${errors.health} />
      <${Queue} queue=${overview.queue} error=${errors.queue} />
      <${Workers} workers=${overview.workers} error=${errors.workers} now=${now} />
      <${RecentExecutions} executions=${overview.executions} error=${errors.executions} now=${now} />
    </div>`}
  `;
}

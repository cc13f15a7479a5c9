// Every execution: filters by status and workflow, paging, counts per status, cancel and retry.
// Live: the page follows the execution events (GET /events) and reloads what it shows when one arrives.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { api, follow } from "./api.js";
import { ErrorLine, LiveState, html, useNow } from "./components.js";
import { count } from "./format.js";
import { cancelExecution, retryExecution } from "./actions.js";
import { ExecutionRow } from "./overview.js";

const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
const PAGE = 25;
const COUNT_CAP = 200;
const EXECUTION_KINDS = "created,running,completed,failed,cancelled,retried";

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

export function ExecutionsPage() {
  const [status, setStatus] = useState("");
  const [workflow, setWorkflow] = useState("");
  const [cursors, setCursors] = useState([null]);
  const [page, setPage] = useState(null);
  const [counts, setCounts] = useState({});
  const [error, setError] = useState(null);
  const [stream, setStream] = useState("connecting");
  const now = useNow();
  const cursor = cursors[cursors.length - 1];
  const reloadTimer = useRef(null);

  const load = useCallback(async () => {
    try {
      const body = await api(`/executions?${query({ status, workflowId: workflow.trim(), limit: PAGE, cursor })}`);
      setPage(body);
      setError(null);
    } catch (e) {
      setError(e.message);
    }
  }, [status, workflow, cursor]);

  // Counts per status: one capped listing per status (the API has no count endpoint), shown as "200+".
  const loadCounts = useCallback(async () => {
    const entries = await Promise.all(
      STATUSES.map(async (s) => {
        try {
          const body = await api(`/executions?${query({ status: s, workflowId: workflow.trim(), limit: COUNT_CAP })}`);
          return [s, { n: body.count, more: Boolean(body.nextCursor) }];
        } catch {
          return [s, null];
        }
      }),
    );
    setCounts(Object.fromEntries(entries));
  }, [workflow]);

  useEffect(() => {
    load();
  }, [load]);
  useEffect(() => {
    loadCounts();
  }, [loadCounts]);
  useEffect(() => {
    document.title = "Executions · jetdag";
  }, []);

  // Coalesce bursts of events into one reload per half second.
  const refresh = useRef(() => {});
  refresh.current = () => {
    if (reloadTimer.current) return;
    reloadTimer.current = setTimeout(() => {
      reloadTimer.current = null;
      load();
      loadCounts();
    }, 500);
  };
  useEffect(() => {
    const handlers = Object.fromEntries(EXECUTION_KINDS.split(",").map((k) => [k, () => refresh.current()]));
    const close = follow(`/events?kinds=${EXECUTION_KINDS}`, handlers, setStream);
    return () => {
      close();
      clearTimeout(reloadTimer.current);
    };
  }, []);

  const filter = (next) => {
    setCursors([null]);
    next();
  };
  const act = async (fn, e) => {
    if (await fn(e)) refresh.current();
  };
  const actions = (e) => html`
    ${(e.status === "pending" || e.status === "running") &&
    html`<button type="button" class="button small danger" data-action="cancel-execution"
      onClick=${() => act(cancelExecution, e)}>Cancel</button>`}
    ${(e.status === "failed" || e.status === "cancelled") &&
    html`<button type="button" class="button small" data-action="retry-execution"
      onClick=${() => act(retryExecution, e)}>Retry</button>`}
  `;
  return html`
    <div class="page-head">
      <h1>Executions</h1>
      <${LiveState} state=${stream} />
    </div>
    <section class="panel" aria-label="Counts per status">
      <ul class="counts">
        ${STATUSES.map((s) => {
          const c = counts[s];
          return html`<li>
            <button type="button" class=${`count-chip state-${s}${status === s ? " active" : ""}`}
              aria-pressed=${status === s} data-count=${s} onClick=${() => filter(() => setStatus(status === s ? "" : s))}>
              <span>${s}</span><strong>${c ? `${count(c.n)}${c.more ? "+" : ""}` : "–"}</strong>
            </button></li>`;
        })}
      </ul>
    </section>
    <section class="panel wide">
      <form class="filters" onSubmit=${(e) => e.preventDefault()}>
        <label class="field inline"><span>Status</span>
          <select value=${status} onChange=${(e) => filter(() => setStatus(e.currentTarget.value))}>
            <option value="">any</option>
            ${STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}
          </select>
        </label>
        <label class="field inline"><span>Workflow</span>
          <input type="search" placeholder="workflow id" value=${workflow}
            onChange=${(e) => filter(() => setWorkflow(e.currentTarget.value))} />
        </label>
      </form>
      <${ErrorLine} error=${error} />
      ${page && page.executions.length === 0 && html`<p class="muted">No execution matches.</p>`}
      ${page?.executions.length > 0 &&
      html`<div class="table-wrap"><table class="table">
        <caption class="visually-hidden">Executions, newest first</caption>
        <thead><tr>
          <th scope="col">Execution</th><th scope="col">Workflow</th><th scope="col">Status</th>
          <th scope="col">Progress</th><th scope="col">Started</th><th scope="col">Duration</th>
          <th scope="col"><span class="visually-hidden">Actions</span></th>
        </tr></thead>
        <tbody>${page.executions.map((e) => html`<${ExecutionRow} execution=${e} now=${now} actions=${actions(e)} />`)}</tbody>
      </table></div>`}
      <nav class="pager" aria-label="Pages">
        <button type="button" class="button small" disabled=${cursors.length === 1}
          onClick=${() => setCursors(cursors.slice(0, -1))}>Newer</button>
        <span class="muted">page ${cursors.length}</span>
        <button type="button" class="button small" disabled=${!page?.nextCursor}
          onClick=${() => setCursors([...cursors, page.nextCursor])}>Older</button>
      </nav>
    </section>
  `;
}

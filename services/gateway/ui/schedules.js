// Every schedule: its cadence, state, next and last run; pause, resume and run now.
// Live: a tick creates an execution, so the page reloads the list when an execution is created (GET /events).
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { api, follow } from "./api.js";
import { Badge, ErrorLine, Link, LiveState, confirmAction, html, notify, useNow } from "./components.js";
import { ago, clock, count } from "./format.js";

function cadence(s) {
  if (s.cron) return `${s.cron} (${s.timezone || "UTC"})`;
  return `every ${count(s.everyS)} s`;
}

function LastRun({ run, now }) {
  if (!run) return html`<span class="muted">–</span>`;
  if (!run.executionId) return html`<span class="muted" title=${run.skipped}>skipped ${ago(run.at, now)}</span>`;
  return html`<${Link} href=${`/ui/executions/${run.executionId}`}>${run.executionId}</${Link}>
    <span class="muted"> ${ago(run.at, now)}</span>`;
}

export function SchedulesPage() {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  const [stream, setStream] = useState("connecting");
  const now = useNow();
  const reloadTimer = useRef(null);

  const load = useCallback(async () => {
    try {
      setList((await api("/schedules")).schedules);
      setError(null);
    } catch (e) {
      setError(e.message);
    }
  }, []);

  useEffect(() => {
    document.title = "Schedules · jetdag";
    load();
    const reload = () => {
      if (reloadTimer.current) return;
      reloadTimer.current = setTimeout(() => {
        reloadTimer.current = null;
        load();
      }, 500);
    };
    const close = follow("/events?kinds=created", { created: reload }, setStream);
    // Next runs move on by themselves: look again now and then even when nothing happened.
    const every = setInterval(load, 15000);
    return () => {
      close();
      clearInterval(every);
      clearTimeout(reloadTimer.current);
    };
  }, [load]);

  const act = async (s, what) => {
    if (what === "trigger") {
      const ok = await confirmAction(
        "Run this schedule now?",
        `${s.scheduleId}: its workflow ${s.workflowId} starts now, whatever its cadence.`,
        "Run now",
      );
      if (!ok) return;
    }
    try {
      const body = await api(`/schedules/${s.scheduleId}/${what}`, { method: "POST" });
      notify(what === "trigger" ? `${s.scheduleId}: started ${body.executionId}` : `${s.scheduleId}: ${what}d`);
      load();
    } catch (e) {
      notify(e.message, "error");
    }
  };

  return html`
    <div class="page-head">
      <h1>Schedules</h1>
      <${LiveState} state=${stream} />
    </div>
    <section class="panel wide">
      <${ErrorLine} error=${error} />
      ${list && list.length === 0 &&
      html`<p class="muted">No schedule yet. <code>POST /api/distributed/schedules</code> or
        <code>jetdag schedules create</code> makes one.</p>`}
      ${list?.length > 0 &&
      html`<div class="table-wrap"><table class="table">
        <caption class="visually-hidden">Schedules, by id</caption>
        <thead><tr>
          <th scope="col">Schedule</th><th scope="col">Workflow</th><th scope="col">Cadence</th>
          <th scope="col">State</th><th scope="col">Next run</th><th scope="col">Last run</th>
          <th scope="col">Runs</th><th scope="col"><span class="visually-hidden">Actions</span></th>
        </tr></thead>
        <tbody>${list.map(
          (s) => html`<tr data-schedule-id=${s.scheduleId} data-paused=${String(s.paused)}>
            <th scope="row">${s.scheduleId}</th>
            <td>${s.workflowId} <span class="muted">(${count(s.jobCount)} ${s.jobCount === 1 ? "job" : "jobs"})</span></td>
            <td><code>${cadence(s)}</code> <span class="muted">overlap ${s.overlap}</span></td>
            <td><${Badge} state=${s.paused ? "paused" : "active"} /></td>
            <td data-next-run>${s.nextRuns.length ? clock(s.nextRuns[0]) : "–"}</td>
            <td><${LastRun} run=${s.lastRun} now=${now} /></td>
            <td data-fired>${count(s.fired)}${s.skipped ? html` <span class="muted">(${count(s.skipped)} skipped)</span>` : ""}</td>
            <td class="actions">
              ${s.paused
                ? html`<button type="button" class="button small" data-action="resume-schedule"
                    onClick=${() => act(s, "resume")}>Resume</button>`
                : html`<button type="button" class="button small" data-action="pause-schedule"
                    onClick=${() => act(s, "pause")}>Pause</button>`}
              <button type="button" class="button small" data-action="trigger-schedule"
                onClick=${() => act(s, "trigger")}>Run now</button>
            </td>
          </tr>`,
        )}</tbody>
      </table></div>`}
    </section>
  `;
}

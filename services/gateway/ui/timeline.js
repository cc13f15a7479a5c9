// The jobs on a time axis (Gantt): the wait in the queue, then the run, coloured by state.
import { html } from "./components.js";
import { duration, ms } from "./format.js";

const MAX_ROWS = 400;

export function Timeline({ jobs, now, onSelect, selected }) {
  const started = jobs.filter((j) => j.queuedAt || j.startedAt);
  if (started.length === 0) return html`<p class="muted">No job has been queued yet.</p>`;
  started.sort((a, b) => (a.startedAt ?? a.queuedAt).localeCompare(b.startedAt ?? b.queuedAt));
  const rows = started.slice(0, MAX_ROWS);
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const j of started) {
    t0 = Math.min(t0, ms(j.queuedAt ?? j.startedAt));
    t1 = Math.max(t1, j.completedAt ? ms(j.completedAt) : now);
  }
  const span = Math.max(1, t1 - t0);
  const at = (t) => `${(((t - t0) / span) * 100).toFixed(3)}%`;
  const width = (a, b) => `${Math.max(0.15, ((b - a) / span) * 100).toFixed(3)}%`;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => ({ f, label: duration(f * span) }));
  return html`<div class="timeline" role="table" aria-label="Timeline of the jobs">
    <div class="tl-row tl-axis" role="row" aria-hidden="true">
      <span class="tl-label"></span>
      <span class="tl-track">${ticks.map((t) => html`<span class="tick" style=${`left:${t.f * 100}%`}>${t.label}</span>`)}</span>
    </div>
    ${rows.map((j) => {
      const queued = ms(j.queuedAt ?? j.startedAt);
      const start = j.startedAt ? ms(j.startedAt) : null;
      const end = j.completedAt ? ms(j.completedAt) : now;
      const runLabel = start ? `ran ${duration(end - start)}` : "waiting";
      return html`<div class=${`tl-row${selected === j.id ? " selected" : ""}`} role="row">
        <button type="button" class="tl-label mono" role="rowheader" onClick=${() => onSelect(j.id)}
          title=${j.id}>${j.id}</button>
        <span class="tl-track" role="cell" aria-label=${`${j.id}: ${j.status}, ${runLabel}`}>
          <span class="tl-wait" style=${`left:${at(queued)};width:${width(queued, start ?? end)}`}></span>
          ${start && html`<span class=${`tl-run state-${j.status}`} style=${`left:${at(start)};width:${width(start, end)}`}></span>`}
        </span>
      </div>`;
    })}
    ${started.length > MAX_ROWS &&
    html`<p class="muted">The first ${MAX_ROWS} of ${started.length} jobs by start time; search a job by id above.</p>`}
  </div>`;
}

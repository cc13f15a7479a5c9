// One job in full: config, result, error, attempts, worker, timings and progress messages.
import { useState } from "preact/hooks";

import { Badge, html } from "./components.js";
import { between, clock } from "./format.js";

const PREVIEW_CHARS = 2000;

function Json({ value, label }) {
  const [whole, setWhole] = useState(false);
  if (value === null || value === undefined) return html`<p class="muted">none</p>`;
  const text = JSON.stringify(value, null, 2);
  const long = text.length > PREVIEW_CHARS;
  return html`<div class="json">
    <pre tabindex="0" aria-label=${label}>${long && !whole ? `${text.slice(0, PREVIEW_CHARS)}\n…` : text}</pre>
    ${long &&
    html`<button type="button" class="button small" aria-expanded=${whole} onClick=${() => setWhole(!whole)}>
      ${whole ? "Show less" : `Show all (${text.length.toLocaleString("en-US")} characters)`}
    </button>`}
  </div>`;
}

export function JobDetails({ job, now, onClose }) {
  if (!job) return null;
  const rows = [
    ["Type", job.type],
    ["Attempts", String(job.attempts)],
    ["Worker", job.workerId ?? "–"],
    ["Capability", job.capability ?? "any"],
    ["Queued", clock(job.queuedAt)],
    ["Started", clock(job.startedAt)],
    ["Finished", clock(job.completedAt)],
    ["Wait in queue", job.queuedAt && job.startedAt ? between(job.queuedAt, job.startedAt) : "–"],
    ["Run time", job.startedAt ? between(job.startedAt, job.completedAt, now) : "–"],
  ];
  if (job.retryAt) rows.push(["Retry at", clock(job.retryAt)]);
  if (job.dependsOn?.length) rows.push(["Depends on", job.dependsOn.join(", ")]);
  return html`<aside class="panel details" aria-labelledby="details-title" data-details=${job.id}>
    <div class="panel-head">
      <h2 id="details-title" class="mono">${job.id}</h2>
      <${Badge} state=${job.status} />
      <button type="button" class="button small" aria-label="Close job details" onClick=${onClose}>Close</button>
    </div>
    ${job.name !== job.id && html`<p>${job.name}</p>`}
    ${job.waitingReason && html`<p class="notice notice-info">${job.waitingReason}</p>`}
    <dl class="facts">${rows.map(([k, v]) => html`<div><dt>${k}</dt><dd>${v}</dd></div>`)}</dl>
    ${job.deliveries?.length > 1 &&
    html`<h3>Runs</h3><ol class="progress-log">
      ${job.deliveries.map(
        (d) => html`<li>${d.workerId} <span class="muted">${clock(d.at)} · attempt ${d.attempt}${d.delivery > 1 ? `, delivery ${d.delivery}` : ""}</span></li>`,
      )}
    </ol>`}
    ${job.error && html`<h3>Error</h3><pre class="error-text">${job.error}</pre>`}
    ${job.errorInfo?.traceback && html`<details><summary>Traceback</summary><pre>${job.errorInfo.traceback}</pre></details>`}
    ${job.errorInfo?.log?.length > 0 && html`<details data-section="log"><summary>Last log lines</summary><pre>${job.errorInfo.log.join("\n")}</pre></details>`}
    ${job._progress?.length > 0 &&
    html`<h3>Progress</h3><ol class="progress-log">
      ${job._progress.map(
        (p) => html`<li><span class="muted">${clock(p.at)}</span>
          ${p.fraction !== null && p.fraction !== undefined ? ` ${Math.round(p.fraction * 100)} %` : ""}
          ${p.message ? ` ${p.message}` : ""}</li>`,
      )}
    </ol>`}
    <h3>Config</h3>
    <${Json} value=${job.config} label="config" />
    <h3>Result</h3>
    <${Json} value=${job.result} label="result" />
  </aside>`;
}

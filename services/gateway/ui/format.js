// Display helpers: times, durations, numbers. Pure functions of their arguments.

export function ms(iso) {
  return iso ? Date.parse(iso) : NaN;
}

export function duration(milliseconds) {
  if (!Number.isFinite(milliseconds) || milliseconds < 0) return "–";
  if (milliseconds < 1000) return `${Math.round(milliseconds)} ms`;
  const s = milliseconds / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${m % 60} min`;
}

export function between(from, to, now = Date.now()) {
  const start = ms(from);
  const end = to ? ms(to) : now;
  return Number.isFinite(start) ? duration(end - start) : "–";
}

export function ago(iso, now = Date.now()) {
  const t = ms(iso);
  if (!Number.isFinite(t)) return "–";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function clock(iso) {
  const t = ms(iso);
  if (!Number.isFinite(t)) return "–";
  const d = new Date(t);
  return d.toLocaleString(undefined, { hour12: false, dateStyle: "short", timeStyle: "medium" });
}

export function count(n) {
  return Number.isFinite(n) ? n.toLocaleString("en-US") : "–";
}

export function percent(fraction) {
  return Number.isFinite(fraction) ? `${Math.round(fraction * 100)} %` : "–";
}

export const FINAL_EXECUTION = new Set(["completed", "failed", "cancelled"]);
export const FINAL_JOB = new Set(["completed", "failed", "skipped", "cancelled"]);
export const JOB_STATES = ["pending", "ready", "queued", "running", "delayed", "completed", "failed", "skipped", "cancelled"];

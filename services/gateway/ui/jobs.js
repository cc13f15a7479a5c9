// One execution's jobs in the browser: the listing from GET /execute/{id}/jobs, moved forward by the live
// events, and the condensed structure of a large DAG. Pure functions over plain objects.

/** Jobs by id, in submission order, each with `_progress` (the handler's progress messages seen). */
export function indexJobs(list) {
  const jobs = new Map();
  for (const job of list) jobs.set(job.id, { ...job, _progress: job.progress ? [job.progress] : [] });
  return jobs;
}

/**
 * Apply one job change: a JobEvent (kind `job`, with `status`), a worker's JobStarted (kind `job`, with
 * `workerId` and no `status`), or one entry of a JobsEvent (kind `jobs`). Changes are applied in the stream's
 * order, never by comparing their times (the scheduler's and the workers' clocks differ): the stream replays the
 * execution from its first event, so the job passes again through states it already left and ends where it is.
 * Changes of an attempt older than the one shown are skipped. Returns true when the job changed.
 */
export function applyChange(jobs, change) {
  const job = jobs.get(change.jobId);
  if (!job) return false;
  if ("ok" in change) return false; // a worker's raw result: the scheduler's verdict follows as its own event
  const status = change.status ?? "running";
  const attempt = change.attempt ?? job.attempts;
  const at = change.at ?? null;
  if (attempt < job.attempts) return false;
  job.status = status;
  job.attempts = attempt;
  if (change.workerId) job.workerId = change.workerId;
  if (status === "queued") job.queuedAt = at;
  // A progress report keeps the start time; a new start (a retry, a redelivery) replaces it.
  if (status === "running" && (!job.startedAt || !change.progress)) job.startedAt = at;
  if (["completed", "failed", "skipped", "cancelled"].includes(status)) job.completedAt = at;
  if (status === "delayed") job.retryAt = change.retryAt ?? null;
  if (change.error !== undefined) job.error = change.error;
  if (change.waitingReason !== undefined) job.waitingReason = change.waitingReason;
  if (change.progress) job._progress = [...job._progress, { ...change.progress, at: change.progress.at ?? at }];
  return true;
}

/** Counts of jobs per state. */
export function tally(jobs) {
  const counts = {};
  for (const job of jobs) counts[job.status] = (counts[job.status] ?? 0) + 1;
  return counts;
}

/** The execution's progress as its jobs on the page say (the same shape as the API's `progress`). */
export function progressOf(jobs) {
  const counts = tally(jobs);
  return { total: jobs.length, completed: 0, failed: 0, running: 0, skipped: 0, cancelled: 0, ...counts };
}

/** Longest path from a root to each job (its layer); jobs on no path (a cycle cannot be submitted) get 0. */
export function layers(jobs) {
  const depth = new Map();
  const remaining = new Map();
  const dependents = new Map();
  for (const job of jobs.values()) {
    remaining.set(job.id, job.dependsOn.length);
    for (const dep of job.dependsOn) {
      if (!dependents.has(dep)) dependents.set(dep, []);
      dependents.get(dep).push(job.id);
    }
  }
  const ready = [];
  for (const [id, n] of remaining) if (n === 0) ready.push(id);
  for (const id of ready) depth.set(id, 0);
  for (let i = 0; i < ready.length; i++) {
    const id = ready[i];
    for (const next of dependents.get(id) ?? []) {
      depth.set(next, Math.max(depth.get(next) ?? 0, depth.get(id) + 1));
      const left = remaining.get(next) - 1;
      remaining.set(next, left);
      if (left === 0) ready.push(next);
    }
  }
  for (const id of jobs.keys()) if (!depth.has(id)) depth.set(id, 0);
  return { depth, dependents };
}

/**
 * The condensed view of a large DAG: jobs grouped by (layer range, type), with the edges between groups.
 * At most `maxBands` layer ranges, so a long chain condenses too.
 */
export function condense(jobs, maxBands = 40) {
  const { depth, dependents } = layers(jobs);
  let deepest = 0;
  for (const d of depth.values()) deepest = Math.max(deepest, d);
  const width = Math.max(1, Math.ceil((deepest + 1) / maxBands));
  const groups = new Map();
  const groupOf = new Map();
  for (const job of jobs.values()) {
    const band = Math.floor(depth.get(job.id) / width);
    const key = `${band}:${job.type}`;
    let group = groups.get(key);
    if (!group) {
      const first = band * width;
      const last = Math.min(deepest, first + width - 1);
      group = { key, band, type: job.type, first, last, ids: [] };
      groups.set(key, group);
    }
    group.ids.push(job.id);
    groupOf.set(job.id, key);
  }
  const edges = new Map();
  for (const [from, tos] of dependents) {
    const a = groupOf.get(from);
    for (const to of tos) {
      const b = groupOf.get(to);
      if (a === undefined || b === undefined || a === b) continue;
      const key = `${a}>${b}`;
      edges.set(key, { from: a, to: b, count: (edges.get(key)?.count ?? 0) + 1 });
    }
  }
  return { groups: [...groups.values()], edges: [...edges.values()], groupOf, dependents };
}

// The dashboard's pure job logic (services/gateway/ui/jobs.js), run by node's test runner from
// tests/test_dashboard_assets.py.
import assert from "node:assert/strict";
import { test } from "node:test";

import { applyChange, condense, indexJobs, layers, progressOf } from "../../services/gateway/ui/jobs.js";

const view = (id, dependsOn = [], extra = {}) => ({
  id, name: id, type: "noop", status: "pending", attempts: 0, workerId: null, queuedAt: null, startedAt: null,
  completedAt: null, error: null, result: null, dependsOn, ...extra,
});

test("a replay in stream order ends at the job's current state", () => {
  const jobs = indexJobs([view("a", [], { status: "completed", attempts: 1, result: { x: 1 } })]);
  const events = [
    { jobId: "a", status: "queued", attempt: 1, at: "2026-12-02T10:00:00.000Z" },
    // the worker's start: no status, and a clock a little behind the scheduler's
    { jobId: "a", attempt: 1, round: 1, workerId: "w1", at: "2026-12-02T09:59:59.990Z" },
    { jobId: "a", attempt: 1, round: 1, workerId: "w1", ok: true, at: "2026-12-02T10:00:00.500Z" },
    { jobId: "a", status: "completed", attempt: 1, at: "2026-12-02T10:00:00.510Z", workerId: "w1" },
  ];
  const seen = events.map((e) => (applyChange(jobs, e), jobs.get("a").status));
  assert.deepEqual(seen, ["queued", "running", "running", "completed"]);
  const a = jobs.get("a");
  assert.equal(a.workerId, "w1");
  assert.equal(a.startedAt, "2026-12-02T09:59:59.990Z");
  assert.deepEqual(a.result, { x: 1 }, "what the listing said and no event carries is kept");
});

test("changes of an older attempt are skipped; progress reports keep the start", () => {
  const jobs = indexJobs([view("a", [], { status: "running", attempts: 2, startedAt: "2026-12-02T10:00:05.000Z" })]);
  assert.equal(applyChange(jobs, { jobId: "a", status: "delayed", attempt: 1, at: "2026-12-02T10:00:01.000Z" }), false);
  assert.equal(jobs.get("a").status, "running");
  const progress = { fraction: 0.5, message: "half" };
  assert.equal(applyChange(jobs, { jobId: "a", status: "running", attempt: 2, at: "2026-12-02T10:00:09.000Z", progress }), true);
  assert.equal(jobs.get("a").startedAt, "2026-12-02T10:00:05.000Z");
  assert.equal(jobs.get("a")._progress.at(-1).message, "half");
  assert.equal(applyChange(jobs, { jobId: "nope", status: "queued", attempt: 1, at: "x" }), false);
});

test("progress counts the jobs on the page", () => {
  const p = progressOf([view("a", [], { status: "completed" }), view("b", [], { status: "running" }), view("c")]);
  assert.deepEqual([p.total, p.completed, p.running, p.failed, p.pending], [3, 1, 1, 0, 1]);
});

test("layers are longest paths; the condensed view groups layer ranges by type and counts edges", () => {
  const list = [view("r"), view("x", ["r"]), view("y", ["x"]), view("z", ["r", "y"])];
  const jobs = indexJobs(list);
  assert.deepEqual(Object.fromEntries(layers(jobs).depth), { r: 0, x: 1, y: 2, z: 3 });
  const wide = [];
  for (let layer = 0; layer < 100; layer++) {
    for (let i = 0; i < 3; i++) wide.push(view(`j${layer}-${i}`, layer ? [`j${layer - 1}-${i}`] : []));
  }
  const { groups, edges } = condense(indexJobs(wide), 40);
  assert.equal(groups.length, 34, "100 layers in ranges of 3");
  assert.equal(groups.reduce((n, g) => n + g.ids.length, 0), 300);
  assert.deepEqual([groups[0].first, groups[0].last, groups.at(-1).first, groups.at(-1).last], [0, 2, 99, 99]);
  assert.equal(edges.length, 33);
  assert.equal(edges[0].count, 3);
});

"""The execution state machine without NATS: its rules one by one, then any interleaving of duplicated,
redelivered, late, out-of-order and forged reports, retries and cancels (hypothesis)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler import machine as m
from shared.messages import (
    Counts,
    ErrorInfo,
    JobConfig,
    JobFinishedReport,
    JobPatch,
    JobProgress,
    JobProgressReport,
    JobReturnedReport,
    JobStartedReport,
)

AT = "2026-12-02T10:00:00.000Z"


def cfg(job_id: str, deps: list[str] | None = None, **extra: Any) -> JobConfig:
    return JobConfig(id=job_id, name=job_id, type=extra.pop("type", "noop"), depends_on=deps or [], **extra)


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000
        self._tokens = itertools.count(1)

    def env(self, bundle: int = 1) -> m.Env:
        return m.Env(now_ms=self.ms, token=lambda: f"t{next(self._tokens)}", bundle_size=lambda c, t: bundle)


def state_of(*jobs: JobConfig, parallelism: int | None = None) -> m.ExecutionState:
    return m.new_state(
        execution_id="exec-1",
        workflow_id="wf",
        shard=0,
        parallelism=parallelism,
        created_at=AT,
        configs=list(jobs),
    )


def finished(job: m.Job, ok: bool = True, **extra: Any) -> JobFinishedReport:
    assert job.token is not None
    fields: dict[str, Any] = {"result": {"ok": job.id}} if ok else {"error": ErrorInfo(type="E", message="boom")}
    fields["started_at"] = AT
    fields.update(extra)
    return JobFinishedReport(
        execution_id="exec-1",
        job_id=job.id,
        token=job.token,
        at=AT,
        attempt=job.attempt,
        ok=ok,
        duration_ms=1.0,
        **fields,
    )


def recount(state: m.ExecutionState) -> Counts:
    counts = Counts()
    for job in state.jobs:
        setattr(counts, job.status, getattr(counts, job.status) + 1)
    return counts


def statuses(state: m.ExecutionState) -> dict[str, str]:
    return {j.id: j.status for j in state.jobs}


# --- the rules, one by one ------------------------------------------------------------------------------------


def test_a_diamond_runs_in_dependency_order_and_completes_with_exact_counts() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b", ["a"]), cfg("c", ["a"]), cfg("d", ["b", "c"]))
    step = m.on_start(s, clock.env())
    assert [s.jobs[i].id for i in step.dispatched] == ["a"]
    assert statuses(s) == {"a": "queued", "b": "pending", "c": "pending", "d": "pending"}
    step = m.on_report(s, clock.env(), finished(s.jobs[0]), "w1")
    assert sorted(s.jobs[i].id for i in step.dispatched) == ["b", "c"]
    assert str(s.status) == "running" and s.jobs[0].result == {"ok": "a"} and s.jobs[0].attempts == 1
    m.on_report(s, clock.env(), finished(s.jobs[1]), "w1")
    assert s.jobs[3].status == "pending" and s.jobs[3].remaining == 1
    step = m.on_report(s, clock.env(), finished(s.jobs[2]), "w2")
    assert [s.jobs[i].id for i in step.dispatched] == ["d"]
    step = m.on_report(s, clock.env(), finished(s.jobs[3]), "w2")
    assert str(s.status) == "completed" and step.execution is not None and step.execution.status == "completed"
    assert s.counts == recount(s) == Counts(completed=4)


def test_reports_of_one_batch_ready_their_children_together_in_shared_bundles() -> None:
    """Reports applied without filling (one batch, as the scheduler commits it): the children they make ready
    are dispatched at the batch's end, together, so they share bundles instead of one bundle per parent."""
    clock = Clock()
    parents = [cfg(f"p{i}") for i in range(3)]
    children = [cfg(f"c{i}", [f"p{i % 3}"]) for i in range(9)]
    s = state_of(*parents, *children)
    m.on_start(s, clock.env(bundle=32))
    for job in s.jobs[:3]:
        step = m.on_report(s, clock.env(bundle=32), finished(job), "w", fill=False)
        assert not step.dispatched
    assert s.counts.ready == 9 and s.counts.queued == 0
    step = m.on_batch_end(s, clock.env(bundle=32))
    assert sorted(s.jobs[i].id for i in step.dispatched) == sorted(f"c{i}" for i in range(9))
    assert len({s.jobs[i].bundle for i in step.dispatched}) == 1
    assert s.counts == recount(s) == Counts(completed=3, queued=9)


def test_parallelism_caps_dispatched_jobs_and_ready_ones_wait_first_come() -> None:
    clock = Clock()
    s = state_of(*(cfg(f"j{i}") for i in range(5)), parallelism=2)
    step = m.on_start(s, clock.env())
    assert [s.jobs[i].id for i in step.dispatched] == ["j0", "j1"]
    assert s.counts.ready == 3 and s.counts.queued == 2
    step = m.on_report(s, clock.env(), finished(s.jobs[1]), "w")
    assert [s.jobs[i].id for i in step.dispatched] == ["j2"]
    assert s.counts.in_flight == 2


def test_a_failed_attempt_waits_out_its_backoff_then_runs_again_and_keeps_its_slot() -> None:
    clock = Clock()
    s = state_of(cfg("f", retries=2, backoff_ms=100), cfg("other"), parallelism=1)
    m.on_start(s, clock.env())
    f = s.jobs[0]
    m.on_report(s, clock.env(), finished(f, ok=False), "w")
    assert str(f.status) == "delayed" and f.error == "boom" and f.retry_at is not None and f.attempts == 1
    assert s.jobs[1].status == "ready"  # the backoff keeps the only slot
    first = f.token
    step = m.on_backoff_over(s, clock.env(), "f")
    assert str(f.status) == "queued" and f.attempt == 2 and f.token != first and step.dispatched == [0]
    assert f.error == "boom"  # visible until the new attempt ends
    # the old attempt's late result changes nothing
    late = JobFinishedReport(
        execution_id="exec-1", job_id="f", token=first or "", at=AT, attempt=1, ok=True, started_at=AT, duration_ms=1
    )
    assert not m.on_report(s, clock.env(), late, "w") and str(f.status) == "queued"
    m.on_report(s, clock.env(), finished(f), "w")
    assert str(f.status) == "completed" and f.attempts == 2 and f.error is None


def test_a_final_failure_skips_dependents_transitively_and_names_the_job() -> None:
    clock = Clock()
    s = state_of(cfg("root"), cfg("bad", ["root"]), cfg("x", ["bad"]), cfg("y", ["x"]), cfg("good", ["root"]))
    m.on_start(s, clock.env())
    m.on_report(s, clock.env(), finished(s.jobs[0]), "w")
    m.on_report(s, clock.env(), finished(s.jobs[1], ok=False), "w")
    assert statuses(s)["x"] == "skipped" and statuses(s)["y"] == "skipped"
    assert s.jobs[3].error == "skipped: dependency bad failed"
    assert str(s.status) == "running"  # good still runs
    m.on_report(s, clock.env(), finished(s.jobs[4]), "w")
    assert str(s.status) == "failed" and s.error == "job bad failed: boom"
    assert s.counts == recount(s) == Counts(completed=2, failed=1, skipped=2)


def test_non_retryable_failure_does_not_use_up_retries() -> None:
    clock = Clock()
    s = state_of(cfg("f", retries=5))
    m.on_start(s, clock.env())
    m.on_report(s, clock.env(), finished(s.jobs[0], ok=False, retryable=False), "w")
    assert s.jobs[0].status == "failed" and str(s.status) == "failed"


def test_stale_duplicate_and_forged_reports_change_nothing() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b", ["a"]))
    m.on_start(s, clock.env())
    a = s.jobs[0]
    forged = msgspec.structs.replace(finished(a), token="guessed")
    step = m.on_report(s, clock.env(), forged, "evil")
    assert not step and step.ignored and a.status == "queued"
    report = finished(a)
    assert m.on_report(s, clock.env(), report, "w")
    again = m.on_report(s, clock.env(), report, "w")
    assert not again and "completed" in (again.ignored or "")
    assert s.jobs[1].status == "queued"  # dispatched once
    unknown = msgspec.structs.replace(report, job_id="nope")
    assert not m.on_report(s, clock.env(), unknown, "w")


def test_a_redelivery_is_recorded_without_counting_a_new_attempt() -> None:
    clock = Clock()
    s = state_of(cfg("a"))
    m.on_start(s, clock.env())
    a = s.jobs[0]
    token = a.token or ""
    start = JobStartedReport(execution_id="exec-1", job_id="a", token=token, at=AT, attempt=1, delivery=1)
    m.on_report(s, clock.env(), start, "w1")
    assert not m.on_report(s, clock.env(), start, "w1")  # the same start again
    again = msgspec.structs.replace(start, delivery=2)
    m.on_report(s, clock.env(), again, "w2")
    assert a.worker_id == "w2" and a.attempts == 1 and [d.worker_id for d in a.deliveries] == ["w1", "w2"]
    m.on_report(s, clock.env(), msgspec.structs.replace(finished(a), delivery=2), "w2")
    assert a.status == "completed" and len(a.deliveries) == 2 and a.attempts == 1


def test_progress_is_recorded_and_implies_the_start() -> None:
    clock = Clock()
    s = state_of(cfg("a"))
    m.on_start(s, clock.env())
    a = s.jobs[0]
    report = JobProgressReport(
        execution_id="exec-1", job_id="a", token=a.token or "", at=AT, progress=JobProgress(fraction=0.5, message="x")
    )
    m.on_report(s, clock.env(), report, "w")
    assert a.status == "running" and a.progress is not None and a.progress.fraction == 0.5


def test_cancel_ends_every_open_job_and_later_reports_change_nothing() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b", ["a"]), cfg("c"))
    m.on_start(s, clock.env())
    m.on_report(s, clock.env(), finished(s.jobs[2]), "w")
    token_a = s.jobs[0]
    report = finished(token_a)
    step = m.on_cancel(s, clock.env())
    assert str(s.status) == "cancelled" and statuses(s) == {"a": "cancelled", "b": "cancelled", "c": "completed"}
    assert step.execution is not None and step.execution.status == "cancelled"
    assert not m.on_report(s, clock.env(), report, "w")
    assert s.counts == recount(s) == Counts(cancelled=2, completed=1)


def test_retry_runs_again_only_what_did_not_complete() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b", ["a"]), cfg("c", ["b"]))
    m.on_start(s, clock.env())
    m.on_report(s, clock.env(), finished(s.jobs[0]), "w")
    m.on_report(s, clock.env(), finished(s.jobs[1], ok=False), "w")
    assert str(s.status) == "failed" and statuses(s) == {"a": "completed", "b": "failed", "c": "skipped"}
    old = s.jobs[1].token
    step = m.on_retry(s, clock.env())
    assert str(s.status) == "pending" and s.round == 2 and [s.jobs[i].id for i in step.dispatched] == ["b"]
    b = s.jobs[1]
    assert b.token != old and b.attempt == 1 and b.error is None and s.jobs[2].status == "pending"
    assert s.jobs[0].result == {"ok": "a"}
    m.on_report(s, clock.env(), finished(b), "w")
    m.on_report(s, clock.env(), finished(s.jobs[2]), "w")
    assert str(s.status) == "completed" and s.counts == Counts(completed=3)


def test_a_handed_back_job_is_dispatched_again_alone() -> None:
    clock = Clock()
    s = state_of(*(cfg(f"j{i}") for i in range(4)))
    m.on_start(s, clock.env(bundle=4))
    assert len({j.bundle for j in s.jobs}) == 1
    j1 = s.jobs[1]
    returned = JobReturnedReport(execution_id="exec-1", job_id="j1", token=j1.token or "", at=AT, reason="split")
    step = m.on_report(s, clock.env(bundle=4), returned, "w")
    assert step.dispatched == [1] and j1.solo and j1.bundle != s.jobs[0].bundle and j1.status == "queued"


def test_a_running_job_whose_report_was_lost_runs_again_and_the_old_run_changes_nothing() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b", ["a"]))
    m.on_start(s, clock.env())
    a = s.jobs[0]
    old = a.token or ""
    m.on_report(s, clock.env(), JobStartedReport(execution_id="exec-1", job_id="a", token=old, at=AT, attempt=1), "w1")
    assert statuses(s)["a"] == "running" and s.counts.running == 1
    step = m.on_requeue(s, clock.env(), ["a"])
    assert step.dispatched == [0] and statuses(s)["a"] == "queued" and a.token != old
    assert s.counts.running == 0 and s.counts.queued == 1
    # The lost run's report, if it turns up after all, is a stale one.
    late = msgspec.structs.replace(finished(a), token=old)
    assert not m.on_report(s, clock.env(), late, "w1") and statuses(s)["a"] == "queued"
    new = a.token or ""
    m.on_report(s, clock.env(), JobStartedReport(execution_id="exec-1", job_id="a", token=new, at=AT, attempt=1), "w1")
    assert [d.worker_id for d in a.deliveries] == ["w1", "w1"] and a.attempts == 1  # both runs on the books
    m.on_report(s, clock.env(), finished(a), "w1")
    assert statuses(s) == {"a": "completed", "b": "queued"}
    # Ended jobs are not dispatched again.
    assert not m.on_requeue(s, clock.env(), ["a"]) and statuses(s)["a"] == "completed"


def test_bundles_group_ready_jobs_of_one_type_up_to_the_bundle_size() -> None:
    clock = Clock()
    jobs = [cfg(f"n{i}") for i in range(10)] + [cfg(f"s{i}", type="sleep") for i in range(3)]
    s = state_of(*jobs)
    m.on_start(s, clock.env(bundle=4))
    noop_bundles = [j.bundle for j in s.jobs if j.type == "noop"]
    assert [noop_bundles.count(b) for b in dict.fromkeys(noop_bundles)] == [4, 4, 2]
    assert len({j.bundle for j in s.jobs if j.type == "sleep"}) == 1


def test_free_slots_go_to_the_highest_priority_first_and_the_jobs_own_priority_wins() -> None:
    clock = Clock()
    jobs = [cfg("low"), cfg("urgent", priority=1), cfg("normal", priority=3), cfg("later", priority=5)]
    s = m.new_state(
        execution_id="exec-1", workflow_id="wf", shard=0, parallelism=2, created_at=AT, configs=jobs, priority=4
    )
    assert [j.priority for j in s.jobs] == [4, 1, 3, 5] and s.priority == 4
    step = m.on_start(s, clock.env())
    assert [s.jobs[i].id for i in step.dispatched] == ["urgent", "normal"]
    step = m.on_report(s, clock.env(), finished(s.jobs[1]), "w")
    assert [s.jobs[i].id for i in step.dispatched] == ["low"]
    # Kept in the snapshot record, so a retried round keeps it.
    assert m.record_of(s, s.jobs[3]).priority == 5


def test_a_bundle_holds_jobs_of_one_priority() -> None:
    clock = Clock()
    s = state_of(*(cfg(f"j{i}", priority=1 + i % 2) for i in range(6)))
    m.on_start(s, clock.env(bundle=10))
    bundles = {j.bundle: {k.priority for k in s.jobs if k.bundle == j.bundle} for j in s.jobs}
    assert sorted(len(p) for p in bundles.values()) == [1, 1]


def test_a_job_never_picked_up_fails_after_its_schedule_timeout() -> None:
    clock = Clock()
    s = state_of(cfg("gpu", capability="tpu"), cfg("after", ["gpu"]))
    m.on_start(s, clock.env())
    m.on_waiting(s, clock.env(), {"gpu": "no live worker has capability 'tpu'"})
    assert s.jobs[0].waiting_reason == "no live worker has capability 'tpu'"
    m.on_schedule_timeout(s, clock.env(), "gpu", "not started within 5 s: no live worker has capability 'tpu'")
    assert s.jobs[0].status == "failed" and s.jobs[1].status == "skipped" and str(s.status) == "failed"
    assert s.jobs[0].attempts == 0  # it never started


def test_a_pause_withdraws_queued_jobs_holds_new_ones_and_running_ones_finish() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b"), cfg("c"), cfg("a2", ["a"]))
    m.on_start(s, clock.env())
    a, b, _, a2 = s.jobs
    m.on_report(
        s, clock.env(), JobStartedReport(execution_id="exec-1", job_id="a", token=a.token or "", at=AT, attempt=1), "w"
    )
    b_token = b.token
    step = m.on_pause(s, clock.env())
    assert s.paused and s.paused_at is not None and step.execution is not None and step.execution.paused is True
    assert statuses(s) == {"a": "running", "b": "ready", "c": "ready", "a2": "pending"}
    assert step.withdrawn == ["b", "c"] and not step.dispatched
    assert b.token is None and b.attempt == 0 and b.queued_at is None  # the withdrawn attempt is not counted
    late = JobStartedReport(execution_id="exec-1", job_id="b", token=b_token or "", at=AT, attempt=1)
    assert not m.on_report(s, clock.env(), late, "w")  # a worker that got b's message anyway is stale
    step = m.on_report(s, clock.env(), finished(a), "w")
    assert a.status == "completed" and a2.status == "ready" and not step.dispatched  # a child is held
    assert not m.on_pause(s, clock.env())  # pausing twice changes nothing
    step = m.on_unpause(s, clock.env())
    assert not s.paused and s.paused_at is None and sorted(s.jobs[i].id for i in step.dispatched) == ["a2", "b", "c"]
    assert b.attempt == 1 and b.token not in (None, b_token)
    assert not m.on_unpause(s, clock.env())
    assert s.counts == recount(s)


def test_a_paused_execution_replayed_after_a_takeover_dispatches_each_held_job_once() -> None:
    clock = Clock()
    jobs = [cfg("a"), cfg("b"), cfg("c", ["a"])]
    s = state_of(*jobs)
    log: list[m.Step] = [m.on_start(s, clock.env()), m.on_pause(s, clock.env())]
    replay = state_of(*jobs)
    for step in log:
        for patch in step.jobs:
            m.evolve(replay, patch)
        assert step.execution is not None or step is log[0]
        if step.execution is not None:
            m.evolve_execution(replay, step.execution)
    assert replay.paused and statuses(replay) == statuses(s) == {"a": "ready", "b": "ready", "c": "pending"}
    step = m.on_unpause(replay, clock.env())  # a and b were listed ready twice: dispatched once each
    assert sorted(replay.jobs[i].id for i in step.dispatched) == ["a", "b"] and replay.counts == recount(replay)


def test_a_bundle_a_worker_is_working_through_is_not_withdrawn() -> None:
    clock = Clock()
    s = state_of(cfg("x"), cfg("y"), cfg("z", type="other"))
    m.on_start(s, clock.env(bundle=2))
    x, y, z = s.jobs
    assert x.bundle == y.bundle != z.bundle
    m.on_report(s, clock.env(), finished(x), "w")
    step = m.on_pause(s, clock.env())
    assert y.status == "queued" and z.status == "ready" and step.withdrawn == ["z"]


def test_a_backoff_that_ends_while_paused_waits_for_the_resume() -> None:
    clock = Clock()
    s = state_of(cfg("f", retries=1, backoff_ms=100))
    m.on_start(s, clock.env())
    f = s.jobs[0]
    m.on_report(s, clock.env(), finished(f, ok=False), "w")
    m.on_pause(s, clock.env())
    clock.ms += 1000
    step = m.on_backoff_over(s, clock.env(), "f")
    assert not step and step.ignored and "paused" in step.ignored and str(f.status) == "delayed"
    step = m.on_unpause(s, clock.env())
    assert step.dispatched == [0] and str(f.status) == "queued" and f.attempt == 2


def test_a_job_handed_back_while_paused_is_held_and_an_ended_execution_is_not_paused() -> None:
    clock = Clock()
    s = state_of(cfg("a"), cfg("b"))
    m.on_start(s, clock.env())
    a, b = s.jobs
    m.on_report(
        s, clock.env(), JobStartedReport(execution_id="exec-1", job_id="a", token=a.token or "", at=AT, attempt=1), "w"
    )
    m.on_report(
        s, clock.env(), JobStartedReport(execution_id="exec-1", job_id="b", token=b.token or "", at=AT, attempt=1), "w"
    )
    m.on_pause(s, clock.env())
    returned = JobReturnedReport(execution_id="exec-1", job_id="a", token=a.token or "", at=AT, reason="stopping")
    step = m.on_report(s, clock.env(), returned, "w")
    assert a.status == "ready" and a.attempt == 1 and not step.dispatched  # its started attempt still counts
    step = m.on_cancel(s, clock.env())
    assert str(s.status) == "cancelled" and not s.paused and step.execution is not None
    assert step.execution.paused is False
    assert not m.on_pause(s, clock.env()) and not s.paused  # an ended execution cannot be paused


def test_transitions_outside_the_table_are_refused() -> None:
    s = state_of(cfg("a"))
    try:
        m.evolve(s, JobPatch(job="a", status="completed"))
    except m.InvalidTransition as exc:
        assert "pending -> completed" in str(exc)
    else:
        raise AssertionError("pending -> completed was applied")


# --- any interleaving ---------------------------------------------------------------------------------------


@dataclass
class World:
    """Workers as the machine sees them: every message dispatched, every report ever sent (to send again)."""

    state: m.ExecutionState
    clock: Clock
    log: list[JobPatch | Any] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)
    outcomes: dict[str, list[bool]] = field(default_factory=dict)

    def record(self, step: m.Step) -> None:
        self.log.extend(step.jobs)
        if step.execution is not None:
            self.log.append(step.execution)

    def outstanding(self) -> list[m.Job]:
        return [j for j in self.state.jobs if j.status in ("queued", "running")]


def random_dag(rng: random.Random, n: int) -> list[JobConfig]:
    jobs = []
    for i in range(n):
        deps = sorted({f"j{p}" for p in rng.sample(range(i), k=min(i, rng.randint(0, 2)))}) if i else []
        jobs.append(cfg(f"j{i}", deps, retries=rng.randint(0, 2), backoff_ms=10))
    return jobs


def replayed(world: World, jobs: list[JobConfig], parallelism: int | None) -> m.ExecutionState:
    fresh = state_of(*jobs, parallelism=parallelism)
    for patch in world.log:
        if isinstance(patch, JobPatch):
            m.evolve(fresh, patch)
        else:
            m.evolve_execution(fresh, patch)
    return fresh


def check(world: World, jobs: list[JobConfig], parallelism: int | None) -> None:
    s = world.state
    assert s.counts == recount(s), (s.counts, recount(s))
    if parallelism is not None and not s.final:
        assert s.counts.queued + s.counts.running + s.counts.delayed <= parallelism
    assert (s.counts.open == 0) == s.final or str(s.status) == "cancelled"
    for job in s.jobs:
        if job.status == "ready":
            assert all(s.jobs[p].status == "completed" for p in job.parents)
        if job.status == "completed":
            assert job.result == {"ok": job.id} and job.attempts >= 1
        if job.status == "failed":
            assert job.attempt == job.retries + 1, (job.id, job.attempt, job.retries)  # every retry was used
    again = replayed(world, jobs, parallelism)
    assert statuses(again) == statuses(s) and again.counts == s.counts and again.status == s.status
    assert (again.paused, again.paused_at) == (s.paused, s.paused_at)
    assert [(j.token, j.attempt, j.result, j.round) for j in again.jobs] == [
        (j.token, j.attempt, j.result, j.round) for j in s.jobs
    ]


ACTIONS = [
    *("finish", "finish", "finish", "fail", "start", "duplicate", "forge", "return", "backoff", "cancel", "retry"),
    *("pause", "unpause", "batch end"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 10),
    parallelism=st.one_of(st.none(), st.integers(1, 3)),
    bundle=st.integers(1, 3),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=60),
)
def test_any_interleaving_ends_with_each_job_in_one_final_state_and_exact_counts(
    seed: int, n: int, parallelism: int | None, bundle: int, actions: list[str]
) -> None:
    rng = random.Random(seed)
    jobs = random_dag(rng, n)
    clock = Clock()
    world = World(state_of(*jobs, parallelism=parallelism), clock)
    world.record(m.on_start(world.state, clock.env(bundle)))
    s = world.state

    def act(action: str) -> None:
        was_paused = s.paused
        step = _act(action)
        if step is not None:
            world.record(step)
            if was_paused and s.paused:
                assert not step.dispatched, (action, step.dispatched)  # nothing goes out while paused

    def _act(action: str) -> m.Step | None:
        env = clock.env(bundle)
        clock.ms += 7
        live = world.outstanding()
        if action in ("finish", "fail", "start", "return") and live:
            job = rng.choice(live)
            token = job.token or ""
            if action == "start":
                report: Any = JobStartedReport(
                    execution_id="exec-1", job_id=job.id, token=token, at=env.now, attempt=job.attempt
                )
            elif action == "return":
                report = JobReturnedReport(execution_id="exec-1", job_id=job.id, token=token, at=env.now, reason="r")
            else:
                report = finished(job, ok=action == "finish", started_at=env.now)
            world.sent.append(report)
            # As the scheduler applies a batch of reports: without filling slots, until its end.
            return m.on_report(s, env, report, rng.choice(["w1", "w2"]), fill=rng.random() < 0.5)
        if action == "duplicate" and world.sent:
            return m.on_report(s, env, rng.choice(world.sent), "w1", fill=rng.random() < 0.5)
        if action == "batch end":
            return m.on_batch_end(s, env)
        if action == "forge" and live:
            forged = msgspec.structs.replace(finished(rng.choice(live)), token="forged")
            step = m.on_report(s, env, forged, "evil")
            assert not step
        elif action == "backoff":
            delayed = [j for j in s.jobs if j.status == "delayed"]
            if delayed:
                return m.on_backoff_over(s, env, rng.choice(delayed).id)
        elif action == "cancel" and not s.final:
            return m.on_cancel(s, env)
        elif action == "retry" and s.status in ("failed", "cancelled"):
            return m.on_retry(s, env)
        elif action == "pause":
            return m.on_pause(s, env)
        elif action == "unpause":
            return m.on_unpause(s, env)
        return None

    for action in actions:
        act(action)
        check(world, jobs, parallelism)
    # Then let everything run to its end: every job reaches exactly one final state.
    for _ in range(20 * n + 20):
        if s.final:
            break
        if s.paused:
            act("unpause")
        act("batch end")
        live = world.outstanding()
        delayed = [j for j in s.jobs if j.status == "delayed"]
        if live:
            act("finish")
        elif delayed:
            world.record(m.on_backoff_over(s, clock.env(bundle), delayed[0].id))
        check(world, jobs, parallelism)
    assert s.final, statuses(s)
    assert all(j.status in ("completed", "failed", "skipped", "cancelled") for j in s.jobs)
    assert s.counts.open == 0 and sum(msgspec.structs.astuple(s.counts)) == n
    if str(s.status) == "completed":
        assert s.counts.completed == n

"""The execution state machine: pure, no I/O.

An execution's state (`ExecutionState`, its jobs) changes only through `evolve`, which applies one `JobPatch`
(or `ExecutionPatch`). The rules — what a report, a timer or a command changes — are the `on_*` functions: each
takes the state, an `Env` (the clock, token and jitter sources, the bundle policy) and its input, and returns the
`Step` it took: the patches it applied, in order. The owner journals exactly that step; a takeover replays the
journal through `evolve` alone, so the live state and the replayed one are the same by construction.

Every status change is checked against one table, `TRANSITIONS`, and moves the counts in one place
(`_set_status`), so counts are exact whatever order reports arrive in: a duplicated, late, stale or forged
report names a token that is not its job's current one (or a job already past it) and changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.keys import bundle_msg_id
from shared.messages import (
    ANY_CAPABILITY,
    DEFAULT_PRIORITY,
    FINAL_EXECUTION_STATES,
    PRIORITIES,
    AnyJobReport,
    Counts,
    Delivery,
    ErrorInfo,
    ExecutionPatch,
    ExecutionStatus,
    JobConfig,
    JobFinishedReport,
    JobPatch,
    JobProgress,
    JobProgressReport,
    JobRecord,
    JobReturnedReport,
    JobStartedReport,
    JobStatus,
    RateLimit,
)
from shared.timeutil import iso_from_ms, ms_from_iso

from .gating import resolve_key

__all__ = [
    "EXECUTION_TRANSITIONS",
    "TRANSITIONS",
    "Env",
    "ExecutionState",
    "InvalidTransition",
    "Job",
    "Step",
    "evolve",
    "evolve_execution",
    "needs_gate",
    "new_state",
    "on_backoff_over",
    "on_batch_end",
    "on_cancel",
    "on_cleared",
    "on_limited",
    "on_pause",
    "on_placed",
    "on_report",
    "on_requeue",
    "on_resume",
    "on_retry",
    "on_schedule_timeout",
    "on_start",
    "on_unpause",
    "on_waiting",
    "record_of",
    "state_from_records",
]

UNSET = msgspec.UNSET

# (status, trigger) → new status. The only way a job's status changes; docs/architecture.md draws it.
TRANSITIONS: dict[tuple[JobStatus, str], JobStatus] = {
    ("pending", "parents done"): "ready",
    ("pending", "parent failed"): "skipped",
    ("ready", "dispatch"): "queued",
    ("queued", "started"): "running",
    ("running", "started"): "running",  # delivered again to another worker (its first one died or froze)
    ("queued", "succeeded"): "completed",  # a quick job's start travels with its result
    ("running", "succeeded"): "completed",
    ("queued", "failed, retries left"): "delayed",
    ("running", "failed, retries left"): "delayed",
    ("queued", "failed"): "failed",
    ("running", "failed"): "failed",
    ("queued", "not picked up"): "failed",
    ("queued", "handed back"): "queued",
    ("running", "handed back"): "queued",
    ("delayed", "backoff over"): "queued",
    ("queued", "execution paused"): "ready",  # its message withdrawn before any worker started it
    ("running", "execution paused"): "ready",  # handed back by its worker while the execution is paused
    ("ready", "rate limited"): "delayed",  # held by a rate limit until its window has room
    ("delayed", "to the gates"): "ready",  # a backoff or a rate limit's wait ended: ask the gates again
    ("pending", "cancel"): "cancelled",
    ("ready", "cancel"): "cancelled",
    ("queued", "cancel"): "cancelled",
    ("running", "cancel"): "cancelled",
    ("delayed", "cancel"): "cancelled",
    ("failed", "retry"): "pending",
    ("skipped", "retry"): "pending",
    ("cancelled", "retry"): "pending",
}

EXECUTION_TRANSITIONS: dict[tuple[ExecutionStatus, str], ExecutionStatus] = {
    ("pending", "a job started"): "running",
    ("pending", "every job completed"): "completed",
    ("running", "every job completed"): "completed",
    ("pending", "nothing left to run, a job failed"): "failed",
    ("running", "nothing left to run, a job failed"): "failed",
    ("pending", "cancel"): "cancelled",
    ("running", "cancel"): "cancelled",
    ("failed", "retry"): "pending",
    ("cancelled", "retry"): "pending",
}

_ALLOWED: frozenset[tuple[str, str]] = frozenset((frm, to) for (frm, _), to in TRANSITIONS.items())
_ALLOWED_EXECUTION: frozenset[tuple[str, str]] = frozenset((frm, to) for (frm, _), to in EXECUTION_TRANSITIONS.items())
_OPEN: frozenset[str] = frozenset({"pending", "ready", "queued", "running", "delayed"})
_DISPATCHED: frozenset[str] = frozenset({"queued", "running"})


class InvalidTransition(ValueError):
    """A patch that no rule can produce (a corrupt journal, or a bug): refused instead of applied."""


class Job(msgspec.Struct, gc=False):
    """One job of an execution in the owner's memory. `gc=False`: a 100,000-job execution must not make every
    garbage collection walk its jobs (they hold no reference cycles)."""

    index: int
    id: str
    name: str
    type: str
    capability: str
    requested_capability: str | None
    parents: list[int]
    children: list[int]
    config: dict[str, Any]
    retries: int
    backoff_ms: int
    timeout_s: float | None
    schedule_timeout_s: float | None
    priority: int = DEFAULT_PRIORITY
    """In effect: the job's own, else its execution's."""
    concurrency_key: str | None = None
    """Resolved from the job's template (gating.resolve_key)."""
    max_concurrent: int | None = None
    rate_limit: RateLimit | None = None
    status: JobStatus = "pending"
    remaining: int = 0
    """Parents not completed yet; the job is ready at 0."""
    round: int = 1
    attempt: int = 0
    token: str | None = None
    bundle: str | None = None
    placed: bool = False
    solo: bool = False
    worker_id: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    retry_at: str | None = None
    error: str | None = None
    error_info: ErrorInfo | None = None
    result: Any = None
    result_ref: str | None = None
    progress: JobProgress | None = None
    waiting_reason: str | None = None
    deliveries: list[Delivery] = msgspec.field(default_factory=list)
    awaiting: bool = False
    """Sent to the gates (concurrency key, rate limit), no answer yet. Like `cleared`, not journaled: a
    takeover finds the job `ready` and asks the gates again."""
    cleared: bool = False
    """The gates let it through: the next dispatch may go ahead without asking them."""

    @property
    def attempts(self) -> int:
        """Attempts that really started (what GET /execute/{id}/jobs shows)."""
        if self.attempt == 0:
            return 0
        return self.attempt if self.started_at is not None else self.attempt - 1


@dataclass
class ExecutionState:
    execution_id: str
    workflow_id: str
    shard: int
    parallelism: int | None
    created_at: str
    jobs: list[Job]
    by_id: dict[str, int]
    status: ExecutionStatus = "pending"
    round: int = 1
    completed_at: str | None = None
    error: str | None = None
    counts: Counts = field(default_factory=Counts)
    submitted_by: str | None = None
    """The API token that submitted it (its open executions are counted against a limit)."""
    traceparent: str | None = None
    """The submit's trace context: job dispatches are spans of that trace."""
    run_at: str | None = None
    """A delayed execution's start (`runAt`, `delayS`): its owner starts it then (lifecycle's start timer)."""
    priority: int = DEFAULT_PRIORITY
    ready: dict[int, deque[int]] = field(default_factory=lambda: {p: deque() for p in PRIORITIES})
    """Ready jobs by priority band, each in the order they became ready: free parallelism slots go to the
    highest band first, first-come within it."""
    paused: bool = False
    """POST /execute/{id}/pause: nothing of it is dispatched until it is resumed (running jobs finish)."""
    paused_at: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_EXECUTION_STATES

    def job(self, job_id: str) -> Job | None:
        index = self.by_id.get(job_id)
        return None if index is None else self.jobs[index]


@dataclass(frozen=True)
class Env:
    """Everything a rule needs besides the state: injected, so the rules stay pure and tests deterministic."""

    now_ms: int
    token: Callable[[], str]
    """A fresh unguessable dispatch token."""
    jitter: Callable[[], float] = lambda: 1.0
    """A factor around 1 (0.8-1.2) applied to retry backoffs."""
    bundle_size: Callable[[str, str], int] = lambda capability, job_type: 1
    """How many ready jobs of (capability, type) may share one job message (see dispatch.bundle_size)."""
    limited_types: frozenset[str] = frozenset()
    """Job types with a configured rate limit (PUT /rate-limits/type:<jobType>): their jobs pass the gates."""

    @property
    def now(self) -> str:
        return iso_from_ms(self.now_ms)


@dataclass
class Step:
    """What one rule did: the patches it applied, in order. Empty when the input changed nothing."""

    jobs: list[JobPatch] = field(default_factory=list)
    execution: ExecutionPatch | None = None
    dispatched: list[int] = field(default_factory=list)
    """Jobs this step queued (their job messages are to be published)."""
    withdrawn: list[str] = field(default_factory=list)
    """Jobs a pause took back to `ready`: their job messages, stale now, are to be deleted."""
    gated: list[int] = field(default_factory=list)
    """Jobs to send to the gates (concurrency key, rate limit) before their dispatch (gates.py answers)."""
    ignored: str | None = None
    """Why the input changed nothing (a stale token, a job already past it), for the log."""

    def __bool__(self) -> bool:
        return bool(self.jobs) or self.execution is not None or bool(self.gated)


# --- applying patches ---------------------------------------------------------------------------------------

_PATCH_FIELDS = tuple(name for name in JobPatch.__struct_fields__ if name not in ("job", "status", "delivery"))


def _set_status(state: ExecutionState, job: Job, status: JobStatus) -> None:
    frm = job.status
    if frm == status:
        return
    if (frm, status) not in _ALLOWED:
        raise InvalidTransition(f"job {job.id}: {frm} -> {status} is not a transition")
    counts = state.counts
    setattr(counts, frm, getattr(counts, frm) - 1)
    setattr(counts, status, getattr(counts, status) + 1)
    job.status = status
    if status != "ready":
        job.awaiting = job.cleared = False
    if status == "ready":
        state.ready[job.priority].append(job.index)
    elif status == "completed":
        for child in job.children:
            state.jobs[child].remaining -= 1
    elif status == "pending":
        # A retried job waits for the parents that did not complete (completed ones keep their results).
        job.remaining = sum(1 for p in job.parents if state.jobs[p].status != "completed")


def evolve(state: ExecutionState, patch: JobPatch) -> Job:
    """Apply one patch: the only way job state changes (live and on replay)."""
    index = state.by_id.get(patch.job)
    if index is None:
        raise InvalidTransition(f"no job {patch.job!r} in execution {state.execution_id}")
    job = state.jobs[index]
    for name in _PATCH_FIELDS:
        value = getattr(patch, name)
        if value is not UNSET:
            setattr(job, name, value)
    if patch.delivery is not UNSET:
        job.deliveries.append(patch.delivery)
    if patch.status is not UNSET:
        _set_status(state, job, patch.status)
    return job


def evolve_execution(state: ExecutionState, patch: ExecutionPatch) -> None:
    if patch.status is not UNSET and patch.status != state.status:
        if (state.status, patch.status) not in _ALLOWED_EXECUTION:
            raise InvalidTransition(f"execution {state.execution_id}: {state.status} -> {patch.status}")
        state.status = patch.status
    if patch.round is not UNSET:
        state.round = patch.round
    if patch.completed_at is not UNSET:
        state.completed_at = patch.completed_at
    if patch.error is not UNSET:
        state.error = patch.error
    if patch.paused is not UNSET:
        state.paused = patch.paused
    if patch.paused_at is not UNSET:
        state.paused_at = patch.paused_at


class _Builder:
    """Collects a step: every change goes through `job()` / `execution()`, which apply it and record it."""

    def __init__(self, state: ExecutionState, env: Env) -> None:
        self.state = state
        self.env = env
        self.step = Step()
        self._execution: dict[str, Any] = {}

    def job(self, job: Job, trigger: str | None = None, **fields: Any) -> None:
        if trigger is not None:
            to = TRANSITIONS.get((job.status, trigger))
            if to is None:
                raise InvalidTransition(f"job {job.id}: no transition from {job.status} on {trigger!r}")
            fields["status"] = to
        patch = JobPatch(job=job.id, **fields)
        evolve(self.state, patch)
        self.step.jobs.append(patch)

    def execution(self, trigger: str, **fields: Any) -> None:
        to = EXECUTION_TRANSITIONS.get((self.state.status, trigger))
        if to is None:
            raise InvalidTransition(f"execution {self.state.execution_id}: no transition on {trigger!r}")
        patch = ExecutionPatch(status=to, **fields)
        evolve_execution(self.state, patch)
        self._execution.update(msgspec.structs.asdict(patch))

    def set(self, **fields: Any) -> None:
        """Execution fields that are not a status change."""
        evolve_execution(self.state, ExecutionPatch(**fields))
        self._execution.update(fields)

    def set_error(self, error: str) -> None:
        if self.state.error is None:
            self.set(error=error)

    def done(self) -> Step:
        if self._execution:
            self.step.execution = ExecutionPatch(**{k: v for k, v in self._execution.items() if v is not UNSET})
        return self.step


# --- building the state -------------------------------------------------------------------------------------


def new_state(
    *,
    execution_id: str,
    workflow_id: str,
    shard: int,
    parallelism: int | None,
    created_at: str,
    configs: Iterable[JobConfig],
    priority: int | None = None,
) -> ExecutionState:
    """The state of a just-submitted (already validated) DAG: every job pending."""
    default = priority or DEFAULT_PRIORITY
    configs = list(configs)
    jobs: list[Job] = []
    by_id: dict[str, int] = {}
    for index, cfg in enumerate(configs):
        by_id[cfg.id] = index
        key = None if cfg.concurrency_key is None else resolve_key(cfg.concurrency_key, cfg.config)
        jobs.append(_job(index, cfg, cfg.priority or default, key))
    state = ExecutionState(execution_id, workflow_id, shard, parallelism, created_at, jobs, by_id, priority=default)
    _link(state, ((j, cfg.depends_on) for j, cfg in zip(jobs, configs, strict=True)))
    state.counts.pending = len(jobs)
    return state


def _job(index: int, spec: JobConfig | JobRecord, priority: int, concurrency_key: str | None, **progress: Any) -> Job:
    """A job from its definition, a submitted config or a snapshot's record (the fields they share); `progress`
    is what a record adds (status, attempts, results)."""
    return Job(
        index=index,
        id=spec.id,
        name=spec.name,
        type=spec.type,
        capability=spec.capability or ANY_CAPABILITY,
        requested_capability=spec.capability,
        parents=[],
        children=[],
        config=spec.config,
        retries=spec.retries,
        backoff_ms=spec.backoff_ms,
        timeout_s=spec.timeout_s,
        schedule_timeout_s=spec.schedule_timeout_s,
        priority=priority,
        concurrency_key=concurrency_key,
        max_concurrent=spec.max_concurrent,
        rate_limit=spec.rate_limit,
        **progress,
    )


def _link(state: ExecutionState, edges: Iterable[tuple[Job, list[str]]]) -> None:
    for job, depends_on in edges:
        job.parents = [state.by_id[d] for d in depends_on]
        job.remaining = len(job.parents)
        for parent in job.parents:
            state.jobs[parent].children.append(job.index)


def state_from_records(
    *,
    execution_id: str,
    workflow_id: str,
    shard: int,
    parallelism: int | None,
    created_at: str,
    status: ExecutionStatus,
    round: int,
    completed_at: str | None,
    error: str | None,
    records: list[JobRecord],
    priority: int = DEFAULT_PRIORITY,
) -> ExecutionState:
    """The state of an ended execution from its snapshot (to show it, or to retry it)."""
    jobs: list[Job] = []
    by_id: dict[str, int] = {}
    counts = Counts()
    for index, r in enumerate(records):
        by_id[r.id] = index
        jobs.append(
            _job(
                index,
                r,
                r.priority,
                r.concurrency_key,
                status=r.status,
                round=r.round,
                attempt=r.attempt,
                worker_id=r.worker_id,
                queued_at=r.queued_at,
                started_at=r.started_at,
                completed_at=r.completed_at,
                retry_at=r.retry_at,
                error=r.error,
                error_info=r.error_info,
                result=r.result,
                result_ref=r.result_ref,
                deliveries=list(r.deliveries),
                progress=r.progress,
            )
        )
        setattr(counts, r.status, getattr(counts, r.status) + 1)
    state = ExecutionState(execution_id, workflow_id, shard, parallelism, created_at, jobs, by_id, priority=priority)
    _link(state, ((job, r.depends_on) for job, r in zip(jobs, records, strict=True)))
    for job in jobs:
        job.remaining = sum(1 for p in job.parents if jobs[p].status != "completed")
    state.counts = counts
    state.status = status
    state.round = round
    state.completed_at = completed_at
    state.error = error
    return state


def record_of(state: ExecutionState, job: Job) -> JobRecord:
    """A job as its snapshot keeps it."""
    jobs = state.jobs
    return JobRecord(
        id=job.id,
        name=job.name,
        type=job.type,
        capability=job.requested_capability,
        depends_on=[jobs[p].id for p in job.parents],
        config=job.config,
        retries=job.retries,
        backoff_ms=job.backoff_ms,
        timeout_s=job.timeout_s,
        schedule_timeout_s=job.schedule_timeout_s,
        priority=job.priority,
        concurrency_key=job.concurrency_key,
        max_concurrent=job.max_concurrent,
        rate_limit=job.rate_limit,
        status=job.status,
        round=job.round,
        attempt=job.attempt,
        worker_id=job.worker_id,
        queued_at=job.queued_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        retry_at=job.retry_at,
        error=job.error,
        error_info=job.error_info,
        result=None if job.result_ref else job.result,
        result_ref=job.result_ref,
        deliveries=job.deliveries,
        progress=job.progress,
    )


# --- the rules ----------------------------------------------------------------------------------------------


def _fill(b: _Builder) -> None:
    """Give free parallelism slots to ready jobs, highest priority first, then first-come; group what is
    dispatched into bundles (one band, type and capability per bundle)."""
    state = b.state
    if state.final or state.paused:
        return
    free = state.parallelism - state.counts.in_flight if state.parallelism is not None else None
    taken: dict[int, Job] = {}
    for band in PRIORITIES:
        ready = state.ready[band]
        while ready and (free is None or free > 0):
            job = state.jobs[ready.popleft()]
            if job.status != "ready" or job.index in taken or job.awaiting:
                # Left the queue another way (a cancel, a retry), or listed twice: a replayed journal lists a job
                # each time it became ready (a pause takes a queued job back to ready). Dropped lazily.
                continue
            if not job.cleared and needs_gate(job, b.env):
                # It waits for the gates' answer out of the queue, holding no parallelism slot.
                job.awaiting = True
                b.step.gated.append(job.index)
                continue
            taken[job.index] = job
            if free is not None:
                free -= 1
    if not taken:
        return
    groups: dict[tuple[str, str, int], list[Job]] = {}
    for job in taken.values():
        groups.setdefault((job.capability, job.type, job.priority), []).append(job)
    for (capability, job_type, _), jobs in groups.items():
        size = max(1, b.env.bundle_size(capability, job_type))
        bundle: str | None = None
        in_bundle = 0
        for job in jobs:
            token = b.env.token()
            if job.solo or bundle is None or in_bundle >= size:
                bundle = bundle_msg_id(state.execution_id, state.round, token)
                in_bundle = 0
            _dispatch(b, job, "dispatch", token=token, bundle=bundle, attempt=job.attempt + 1, new_attempt=True)
            in_bundle += 1
            if job.solo:
                bundle = None


def needs_gate(job: Job, env: Env) -> bool:
    """Whether a job must pass the gates (gates.py) before its dispatch."""
    return job.concurrency_key is not None or job.rate_limit is not None or job.type in env.limited_types


def _dispatch(b: _Builder, job: Job, trigger: str, *, token: str, bundle: str, attempt: int, new_attempt: bool) -> None:
    fields: dict[str, Any] = {
        "token": token,
        "bundle": bundle,
        "placed": False,
        "queued_at": b.env.now,
        "worker_id": None,
        "waiting_reason": None,
    }
    if new_attempt:
        fields.update(attempt=attempt, started_at=None, retry_at=None, progress=None)
        if trigger == "dispatch":
            fields.update(error=None, error_info=None)  # a backoff's error stays visible until the next verdict
    b.job(job, trigger, **fields)
    b.step.dispatched.append(job.index)


def _settle(b: _Builder) -> None:
    """The execution's own status follows its jobs."""
    state = b.state
    if state.final:
        return
    c = state.counts
    if state.status == "pending" and any(p.started_at not in (UNSET, None) for p in b.step.jobs):
        b.execution("a job started")
    if c.open == 0:
        total = len(state.jobs)
        if c.completed == total:
            b.execution("every job completed", completed_at=b.env.now, **_unpaused(state))
        else:
            b.execution("nothing left to run, a job failed", completed_at=b.env.now, **_unpaused(state))


def _unpaused(state: ExecutionState) -> dict[str, Any]:
    """An execution that ends is no longer paused (a retry starts its new round unpaused)."""
    return {"paused": False, "paused_at": None} if state.paused else {}


def _skip_dependents(b: _Builder, failed: Job) -> None:
    """Every job that depends on `failed`, transitively, can never run."""
    state = b.state
    frontier = list(failed.children)
    while frontier:
        child = state.jobs[frontier.pop()]
        if child.status != "pending":
            continue
        b.job(child, "parent failed", error=f"skipped: dependency {failed.id} failed", completed_at=b.env.now)
        frontier.extend(child.children)


def _make_ready(b: _Builder, jobs: Iterable[Job]) -> None:
    for job in jobs:
        if job.status == "pending" and job.remaining == 0:
            b.job(job, "parents done")


def on_start(state: ExecutionState, env: Env) -> Step:
    """A new execution (or a new round) starts: roots become ready and get slots."""
    b = _Builder(state, env)
    _make_ready(b, state.jobs)
    _fill(b)
    _settle(b)
    return b.done()


def on_resume(state: ExecutionState, env: Env) -> Step:
    """After a takeover: whatever the previous owner left undone (ready jobs with free slots)."""
    b = _Builder(state, env)
    if not state.final:
        _make_ready(b, (j for j in state.jobs if j.status == "pending" and j.remaining == 0))
        _fill(b)
        _settle(b)
    return b.done()


def _current(state: ExecutionState, report: AnyJobReport) -> Job | str:
    """The job a report is about, if it names the job's current dispatch; else why it is ignored."""
    job = state.job(report.job_id)
    if job is None:
        return f"no job {report.job_id!r}"
    if job.token is None or report.token != job.token:
        return "not the job's current dispatch (stale, duplicated or forged)"
    if job.status not in _DISPATCHED:
        return f"the job is already {job.status}"
    return job


def _record_start(b: _Builder, job: Job, worker_id: str, started_at: str, delivery: int) -> dict[str, Any]:
    """The fields that record a run starting (a delivery, once per worker and delivery)."""
    fields: dict[str, Any] = {"worker_id": worker_id}
    if job.waiting_reason is not None:
        fields["waiting_reason"] = None
    last = job.deliveries[-1] if job.deliveries else None
    # A start of a queued job is a new run (a dispatch under a new token, the same attempt when it was handed
    # back or found lost): recorded even on the worker, delivery and attempt of the last one.
    if (
        last is None
        or job.status == "queued"
        or (last.worker_id, last.delivery, last.attempt) != (worker_id, delivery, job.attempt)
    ):
        fields["delivery"] = Delivery(worker_id=worker_id, at=started_at, attempt=job.attempt, delivery=delivery)
    if job.started_at is None or job.status == "queued":
        fields["started_at"] = started_at
    return fields


def on_report(state: ExecutionState, env: Env, report: AnyJobReport, worker_id: str, *, fill: bool = True) -> Step:
    """A worker's report. With `fill` False the jobs it makes ready wait for `on_batch_end`, so that the reports
    of one batch ready their children together and these travel in shared bundles."""
    b = _Builder(state, env)
    if state.final:
        b.step.ignored = f"the execution is {state.status}"
        return b.done()
    found = _current(state, report)
    if isinstance(found, str):
        b.step.ignored = found
        return b.done()
    job = found
    match report:
        case JobStartedReport():
            fields = _record_start(b, job, worker_id, report.at, report.delivery)
            if job.status == "running" and "delivery" not in fields:
                b.step.ignored = "a start already recorded"
                return b.done()
            b.job(job, "started", **fields)
        case JobProgressReport():
            if job.status == "queued":
                b.job(job, "started", **_record_start(b, job, worker_id, report.at, 1))
            b.job(job, progress=report.progress)
        case JobFinishedReport():
            _finished(b, job, report, worker_id)
        case JobReturnedReport() if state.paused:
            _withdraw(b, job)
        case JobReturnedReport():
            token = env.token()
            b.job(
                job,
                "handed back",
                token=token,
                bundle=bundle_msg_id(state.execution_id, state.round, token),
                placed=False,
                solo=True,
                queued_at=env.now,
                worker_id=None,
            )
            b.step.dispatched.append(job.index)
    if fill:
        _fill(b)
    _settle(b)
    return b.done()


def on_batch_end(state: ExecutionState, env: Env) -> Step:
    """After reports applied with `fill` False: free slots go to the jobs they made ready, in one go."""
    b = _Builder(state, env)
    _fill(b)
    _settle(b)
    return b.done()


def _finished(b: _Builder, job: Job, report: JobFinishedReport, worker_id: str) -> None:
    env = b.env
    fields = _record_start(b, job, worker_id, report.started_at, report.delivery)
    if report.ok:
        b.job(
            job,
            "succeeded",
            result=report.result,
            error=None,
            error_info=None,
            completed_at=report.at,
            **fields,
        )
        _make_ready(b, (b.state.jobs[child] for child in job.children))
        return
    info = report.error or ErrorInfo(type="Error", message="failed")
    error = info.message
    if report.retryable and job.attempt <= job.retries:
        delay_ms = int(job.backoff_ms * 2 ** (job.attempt - 1) * env.jitter())
        b.job(
            job,
            "failed, retries left",
            error=error,
            error_info=info,
            retry_at=iso_from_ms(env.now_ms + delay_ms),
            **fields,
        )
        return
    b.job(job, "failed", error=error, error_info=info, completed_at=report.at, **fields)
    b.set_error(f"job {job.id} failed: {error}")
    _skip_dependents(b, job)


def on_backoff_over(state: ExecutionState, env: Env, job_id: str) -> Step:
    """A retry backoff ended: the next attempt is queued (its parallelism slot was kept meanwhile)."""
    b = _Builder(state, env)
    job = state.job(job_id)
    if job is None or job.status != "delayed" or state.final:
        b.step.ignored = "not waiting out a backoff"
        return b.done()
    if state.paused:
        b.step.ignored = "the execution is paused (resuming it dispatches the job)"
        return b.done()
    _backoff_over(b, job)
    _fill(b)
    return b.done()


def _backoff_over(b: _Builder, job: Job) -> None:
    """The next attempt goes out, or back through the gates first (the caller fills the slots then)."""
    if needs_gate(job, b.env):
        b.job(job, "to the gates", retry_at=None)
        return
    token = b.env.token()
    _dispatch(
        b,
        job,
        "backoff over",
        token=token,
        bundle=bundle_msg_id(b.state.execution_id, b.state.round, token),
        attempt=job.attempt + 1,
        new_attempt=True,
    )


def on_schedule_timeout(state: ExecutionState, env: Env, job_id: str, why: str) -> Step:
    """A queued job no worker started within its schedule timeout fails (with the reason it waited)."""
    b = _Builder(state, env)
    job = state.job(job_id)
    if job is None or job.status != "queued" or state.final:
        b.step.ignored = "not waiting to be picked up"
        return b.done()
    info = ErrorInfo(type="ScheduleTimeout", message=why)
    b.job(job, "not picked up", error=why, error_info=info, completed_at=env.now, waiting_reason=None)
    b.set_error(f"job {job.id} failed: {why}")
    _skip_dependents(b, job)
    _fill(b)
    _settle(b)
    return b.done()


def on_requeue(state: ExecutionState, env: Env, job_ids: Iterable[str]) -> Step:
    """Queued jobs whose message is gone from the job stream (never stored, or lost), and running jobs whose
    report is gone (their message acked, no report left to deliver): dispatched again under a new token, so a
    copy of the old message, or a report of the old run, that turns up after all is ignored."""
    b = _Builder(state, env)
    for job_id in job_ids:
        job = state.job(job_id)
        if job is None or job.status not in ("queued", "running") or state.final:
            continue
        token = env.token()
        b.job(
            job,
            "handed back",
            token=token,
            bundle=bundle_msg_id(state.execution_id, state.round, token),
            placed=False,
            queued_at=env.now,
        )
        b.step.dispatched.append(job.index)
    return b.done()


def on_waiting(state: ExecutionState, env: Env, reasons: dict[str, str | None]) -> Step:
    """Why queued jobs are not picked up, or why ready ones wait for a concurrency slot (None: the reason
    went away)."""
    b = _Builder(state, env)
    for job_id, reason in reasons.items():
        job = state.job(job_id)
        if job is not None and job.status in ("queued", "ready") and job.waiting_reason != reason:
            b.job(job, waiting_reason=reason)
    return b.done()


def on_cleared(state: ExecutionState, env: Env, job_ids: Iterable[str]) -> Step:
    """The gates let these jobs through: they go first in their band's queue and are dispatched as
    parallelism allows."""
    b = _Builder(state, env)
    if state.final:
        return b.done()
    for job_id in job_ids:
        job = state.job(job_id)
        if job is None or job.status != "ready" or not job.awaiting:
            continue
        job.awaiting, job.cleared = False, True
        state.ready[job.priority].appendleft(job.index)
    _fill(b)
    return b.done()


def on_limited(state: ExecutionState, env: Env, job_id: str, until_ms: int, reason: str) -> Step:
    """A rate limit holds the job: `delayed` until its window has room (the owner's timer sends it back)."""
    b = _Builder(state, env)
    job = state.job(job_id)
    if job is None or job.status != "ready" or not job.awaiting or state.final:
        b.step.ignored = "not waiting for the gates"
        return b.done()
    b.job(job, "rate limited", retry_at=iso_from_ms(until_ms), waiting_reason=reason)
    return b.done()


def on_placed(state: ExecutionState, env: Env, job_ids: Iterable[str], bundle: str) -> Step:
    """The job stream stored the message of `bundle`: a takeover need not publish it again."""
    b = _Builder(state, env)
    for job_id in job_ids:
        job = state.job(job_id)
        if job is not None and job.bundle == bundle and not job.placed and job.status in _DISPATCHED:
            b.job(job, placed=True)
    return b.done()


def on_cancel(state: ExecutionState, env: Env) -> Step:
    b = _Builder(state, env)
    for job in state.jobs:
        if job.status in _OPEN:
            b.job(job, "cancel", completed_at=env.now, retry_at=None, waiting_reason=None)
    b.execution("cancel", completed_at=env.now, **_unpaused(state))
    return b.done()


def on_pause(state: ExecutionState, env: Env) -> Step:
    """Hold the execution: nothing more is dispatched, and queued jobs no worker has started go back to
    `ready` (their messages are withdrawn). Running jobs finish; their children become ready and wait.

    A message is withdrawn only if no job in it has gone further than `queued`: a bundle a worker is already
    working through stays (deleting it would lose its redelivery should that worker die)."""
    b = _Builder(state, env)
    if state.final or state.paused:
        b.step.ignored = f"the execution is {state.status}" if state.final else "already paused"
        return b.done()
    b.set(paused=True, paused_at=env.now)
    bundles: dict[str, list[Job]] = {}
    for job in state.jobs:
        if job.bundle is not None:
            bundles.setdefault(job.bundle, []).append(job)
    for members in bundles.values():
        if all(j.status == "queued" for j in members):
            for job in members:
                _withdraw(b, job)
    return b.done()


def _withdraw(b: _Builder, job: Job) -> None:
    """Back to `ready` under no token: a report on its old dispatch is stale from now on."""
    b.step.withdrawn.append(job.id)
    # An attempt that never started is not counted (the next dispatch numbers it again).
    attempt = job.attempt - 1 if job.started_at is None and job.attempt > 0 else job.attempt
    b.job(
        job,
        "execution paused",
        token=None,
        bundle=None,
        placed=False,
        queued_at=None,
        worker_id=None,
        waiting_reason=None,
        attempt=attempt,
    )


def on_unpause(state: ExecutionState, env: Env) -> Step:
    """Release a paused execution: ready jobs get their slots, backoffs that ended meanwhile go out now."""
    b = _Builder(state, env)
    if state.final or not state.paused:
        b.step.ignored = f"the execution is {state.status}" if state.final else "not paused"
        return b.done()
    b.set(paused=False, paused_at=None)
    for job in state.jobs:
        if job.status == "delayed" and job.retry_at is not None and ms_from_iso(job.retry_at) <= env.now_ms:
            _backoff_over(b, job)
    _fill(b)
    _settle(b)
    return b.done()


def on_retry(state: ExecutionState, env: Env) -> Step:
    """A new round: every job that did not complete runs again; completed ones keep their results."""
    b = _Builder(state, env)
    new_round = state.round + 1
    b.execution("retry", round=new_round, completed_at=None, error=None)
    for job in state.jobs:
        if job.status != "completed":
            b.job(
                job,
                "retry",
                round=new_round,
                attempt=0,
                token=None,
                bundle=None,
                placed=False,
                solo=False,
                worker_id=None,
                queued_at=None,
                started_at=None,
                completed_at=None,
                retry_at=None,
                error=None,
                error_info=None,
                result=None,
                result_ref=None,
                progress=None,
                waiting_reason=None,
            )
    _make_ready(b, state.jobs)
    _fill(b)
    _settle(b)
    return b.done()

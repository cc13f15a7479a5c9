"""The execution state machine.

Job records are the truth; the execution record's counts follow each recorded job transition (and are
recomputed from the job records by `reconcile` whenever a crash may have left them behind). Every
transition is a compare-and-set on the job record, so a duplicated, late or stale report changes nothing:
a report counts only if it names the job's current round and attempt and the job is still open.

Job life: pending → ready → queued → running → completed | failed, with `delayed` (waiting out a retry
backoff) between attempts, `skipped` when a dependency failed and `cancelled` when the execution was.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.commands import Conflict, NotFound
from shared.events import publish_event
from shared.logging import get_logger
from shared.messages import (
    ANY_CAPABILITY,
    FINAL_EXECUTION_STATES,
    FINAL_JOB_STATES,
    Checkpoint,
    Counts,
    ExecuteRequest,
    ExecutionEvent,
    ExecutionRecord,
    ExecutionStatus,
    ExecutionView,
    JobEvent,
    JobMessage,
    JobRecord,
    JobResult,
    JobStarted,
    JobStatus,
    JobView,
    Progress,
)
from shared.subjects import Names
from shared.timeutil import iso_from_ms, ms_from_iso, now_iso, now_ms

from .dag import validate
from .ids import new_execution_id
from .queue import JobQueue
from .store import Store

__all__ = ["Engine", "EngineSettings", "view"]

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode
INLINE_DEPENDENCIES_BYTES = 512 * 1024
PUBLISH_ATTEMPTS = 6
# Queued jobs younger than this are re-published by recovery: the job stream drops the duplicate (its
# duplicate window is longer), so no job runs twice because of it.
REPUBLISH_WINDOW_MS = 9 * 60 * 1000


def progress(counts: Counts, total: int) -> Progress:
    return Progress(
        total=total,
        completed=counts.completed,
        failed=counts.failed,
        running=counts.running,
        queued=counts.queued + counts.ready,
        pending=counts.pending,
        delayed=counts.delayed,
        skipped=counts.skipped,
        cancelled=counts.cancelled,
    )


def view(record: ExecutionRecord) -> ExecutionView:
    return ExecutionView(
        execution_id=record.execution_id,
        workflow_id=record.workflow_id,
        status=record.status,
        started_at=record.started_at,
        completed_at=record.completed_at,
        progress=progress(record.counts, record.job_count),
        checkpoint_id=record.checkpoint_id,
        job_count=record.job_count,
        parallelism=record.parallelism,
        round=record.round,
        error=record.error,
    )


def job_view(job: JobRecord) -> JobView:
    return JobView(
        id=job.id,
        name=job.name,
        type=job.type,
        status=job.status,
        attempts=job.attempt,
        worker_id=job.worker_id,
        queued_at=job.queued_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        error=job.error,
        result=job.result,
        depends_on=job.depends_on,
        capability=job.requested_capability,
    )


def _bump(counts: Counts, status: str, delta: int) -> None:
    setattr(counts, status, getattr(counts, status) + delta)


def count_jobs(jobs: Iterable[JobRecord]) -> Counts:
    counts = Counts()
    for job in jobs:
        _bump(counts, job.status, 1)
    return counts


def _next_attempt(job: JobRecord, expected: str) -> bool:
    """Queue the job's next attempt if it is still `expected` (ready, or delayed after a failed attempt whose
    error stays visible until the new attempt ends)."""
    if job.status != expected:
        return False
    job.status = "queued"
    job.attempt += 1
    job.queued_at = now_iso()
    job.retry_at = None
    job.worker_id = None
    job.started_at = None
    if expected == "ready":
        job.error = None
    return True


def _impossible(counts: Counts) -> bool:
    return any(value < 0 for value in msgspec.structs.astuple(counts))


def final_status(counts: Counts, total: int) -> ExecutionStatus | None:
    if counts.open:
        return None
    return "completed" if counts.completed == total else "failed"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    max_jobs: int
    checkpoint_every: int = 50
    quiet_s: float = 15.0
    """Counts are rebuilt from the job records only after the execution has not changed for this long."""


@dataclass
class _Pending:
    """Checkpoint bookkeeping of one execution in this replica."""

    completed: list[str] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        store: Store,
        queue: JobQueue,
        names: Names,
        settings: EngineSettings,
        checkpoints: Any,
    ) -> None:
        self.js = js
        self.store = store
        self.queue = queue
        self.names = names
        self.settings = settings
        self.checkpoints = checkpoints
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pending_cp: dict[str, _Pending] = {}
        self._rng = random.Random(os.getpid() ^ time.time_ns())
        self._fanout = asyncio.Semaphore(64)
        self._suspects: set[str] = set()
        self.suspect_event = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._finished: set[str] = set()
        self._doubtful: set[str] = set()
        """Executions whose processing was interrupted or saw a duplicate report: verified when they end."""

    def _lock(self, execution_id: str) -> asyncio.Lock:
        """Serializes this replica's work on one execution (reports, timers, recovery, cancel, retry);
        replicas among themselves rely on compare-and-set."""
        lock = self._locks.get(execution_id)
        if lock is None:
            lock = self._locks[execution_id] = asyncio.Lock()
        return lock

    def _unlock_finished(self, execution_id: str) -> None:
        """Forget the lock of an execution that ended (after its holder released it)."""
        if execution_id in self._finished:
            lock = self._locks.get(execution_id)
            if lock is None or not lock.locked():
                self._locks.pop(execution_id, None)
                self._finished.discard(execution_id)

    # --- helpers -------------------------------------------------------------------------------------

    def spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background step failed", step=what, error=repr(t.exception()), exc_info=t.exception())

        task.add_done_callback(done)

    def suspect(self, execution_id: str) -> None:
        """Ask the sweeper to reconcile this execution soon (something may be half done), and check its
        counts against the job records when it ends."""
        self._suspects.add(execution_id)
        self._doubtful.add(execution_id)
        self.suspect_event.set()

    def take_suspects(self) -> set[str]:
        taken, self._suspects = self._suspects, set()
        self.suspect_event.clear()
        return taken

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    async def _job_event(self, execution_id: str, job: JobRecord, status: JobStatus, **extra: Any) -> None:
        event = JobEvent(
            execution_id=execution_id,
            job_id=job.id,
            status=status,
            attempt=job.attempt,
            at=now_iso(),
            **extra,
        )
        await publish_event(
            self.js,
            self.names.job_event(execution_id, job.id, status),
            event,
            msg_id=f"{execution_id}.{job.id}.{status}.r{job.round}.a{job.attempt}",
        )

    async def _execution_event(self, record: ExecutionRecord, what: str) -> None:
        event = ExecutionEvent(
            execution_id=record.execution_id,
            workflow_id=record.workflow_id,
            status=record.status,
            at=now_iso(),
            progress=progress(record.counts, record.job_count),
            checkpoint_id=record.checkpoint_id,
            error=record.error,
        )
        await publish_event(
            self.js,
            self.names.execution_event(record.execution_id, what),
            event,
            msg_id=f"{record.execution_id}.{what}.r{record.round}",
        )

    # --- submit --------------------------------------------------------------------------------------

    async def execute(self, request: ExecuteRequest) -> ExecutionView:
        dag = validate(request, self.settings.max_jobs)
        execution_id = new_execution_id()
        now = now_iso()
        records: list[tuple[str, msgspec.Struct]] = []
        for index, (job_id, job) in enumerate(dag.jobs.items()):
            dependents = dag.dependents[job_id]
            depends_on, dep_chunks = await self.store.save_links(execution_id, job_id, "depends_on", job.depends_on)
            dependents, dependent_chunks = await self.store.save_links(execution_id, job_id, "dependents", dependents)
            records.append(
                (
                    Store.job_key(execution_id, job_id),
                    JobRecord(
                        id=job_id,
                        name=job.name,
                        type=job.type,
                        capability=job.capability or ANY_CAPABILITY,
                        requested_capability=job.capability,
                        depends_on=depends_on,
                        dependents=dependents,
                        depends_on_chunks=dep_chunks,
                        dependents_chunks=dependent_chunks,
                        config=job.config,
                        retries=job.retries,
                        backoff_ms=job.backoff_ms,
                        timeout_s=job.timeout_s,
                        status="ready" if not job.depends_on else "pending",
                        remaining=len(job.depends_on),
                        index=index,
                    ),
                )
            )
        await self.store.create_many(records)
        record = ExecutionRecord(
            execution_id=execution_id,
            workflow_id=request.workflow_id,
            status="pending",
            created_at=now,
            started_at=now,
            completed_at=None,
            job_count=len(dag.jobs),
            parallelism=request.parallelism,
            counts=Counts(ready=len(dag.roots), pending=len(dag.jobs) - len(dag.roots)),
            updated_at=now,
        )
        # The execution record is the commit point: once it exists, the execution survives anything.
        await self.store.create(execution_id, record)
        log.info(
            "execution accepted",
            executionId=execution_id,
            workflowId=request.workflow_id,
            jobs=len(dag.jobs),
            parallelism=request.parallelism,
        )
        self.spawn(self._start(record, dag.roots), "start")
        return view(record)

    async def _start(self, record: ExecutionRecord, roots: list[str]) -> None:
        await self._execution_event(record, "created")
        async with self._lock(record.execution_id):
            await self.admit(record.execution_id, roots)

    # --- dispatch ------------------------------------------------------------------------------------

    async def admit(self, execution_id: str, ready: list[str]) -> None:
        """Jobs just became ready: dispatch as many as the execution's parallelism allows, queue the rest."""
        if not ready:
            await self.pump(execution_id)
            return
        take: list[str] = []

        def reserve(rec: ExecutionRecord) -> bool:
            take.clear()
            if rec.status in FINAL_EXECUTION_STATES:
                return False
            free = len(ready) if rec.parallelism is None else max(0, rec.parallelism - rec.counts.in_flight)
            take.extend(ready[:free])
            if not take:
                return False
            rec.counts.ready -= len(take)
            rec.counts.queued += len(take)
            rec.updated_at = now_iso()
            return True

        updated = await self.store.update_execution(execution_id, reserve)
        if updated is None or updated.value.status in FINAL_EXECUTION_STATES:
            return
        await asyncio.gather(*(self._dispatch(execution_id, job_id) for job_id in take))
        rest = ready[len(take) :]
        if rest:
            # Parallelism is full: put the rest on this execution's ready queue (its `ready` events).
            for job_id in rest:
                job = await self.store.get_job(execution_id, job_id)
                if job is not None and job.value.status == "ready":
                    await self._job_event(execution_id, job.value, "ready")
            await self.pump(execution_id)

    async def _dispatch(self, execution_id: str, job_id: str) -> None:
        """Move one job whose slot is reserved from ready to queued and publish its message."""

        updated = await self.store.update_job(execution_id, job_id, lambda job: _next_attempt(job, "ready"))
        if updated is None or not updated.applied:
            await self._release(execution_id)
            return
        # The event first, in one pipelined write: a worker may report `started` the moment the job is out.
        await self._publish_job(execution_id, updated.value, with_event=True)

    async def _release(self, execution_id: str) -> None:
        """A reserved slot was not used: the job had moved on (another replica dispatched it). Give it back."""

        def give_back(rec: ExecutionRecord) -> bool:
            rec.counts.queued -= 1
            rec.counts.ready += 1
            return True

        await self.store.update_execution(execution_id, give_back)
        self.suspect(execution_id)

    def _job_event_message(
        self, execution_id: str, job: JobRecord, status: JobStatus, **extra: Any
    ) -> tuple[str, bytes, str]:
        event = JobEvent(
            execution_id=execution_id, job_id=job.id, status=status, attempt=job.attempt, at=now_iso(), **extra
        )
        return (
            self.names.job_event(execution_id, job.id, status),
            _encode(event),
            f"{execution_id}.{job.id}.{status}.r{job.round}.a{job.attempt}",
        )

    async def _publish_job(self, execution_id: str, job: JobRecord, *, with_event: bool = False) -> None:
        dependencies: dict[str, Any] = {}
        fetch: list[str] = []
        if job.depends_on:
            parents = await self.store.load_links(execution_id, job, "depends_on")
            size = 0
            for parent_id in parents:
                parent = await self.store.get_job(execution_id, parent_id)
                if parent is None:
                    continue
                encoded = len(_encode(parent.value.result))
                if size + encoded <= INLINE_DEPENDENCIES_BYTES:
                    dependencies[parent_id] = parent.value.result
                    size += encoded
                else:
                    fetch.append(parent_id)
        message = JobMessage(
            execution_id=execution_id,
            job_id=job.id,
            name=job.name,
            type=job.type,
            attempt=job.attempt,
            round=job.round,
            config=job.config,
            dependencies=dependencies,
            fetch_dependencies=fetch,
            timeout_s=job.timeout_s,
        )
        await self.queue.ensure_consumer(job.capability, job.type)
        # Idempotent by its message id: a re-publish (retry, or recovery) within the stream's duplicate window
        # is dropped by JetStream.
        messages = [self._job_event_message(execution_id, job, "queued")] if with_event else []
        messages.append(
            (
                self.names.jobs(job.capability, job.type),
                _encode(message),
                f"{execution_id}.{job.id}.r{job.round}.a{job.attempt}",
            )
        )
        await self.store.pipeline.publish_all(messages)

    async def pump(self, execution_id: str) -> None:
        """Fill free parallelism slots from the execution's ready queue (its `ready` events, in order)."""
        subject = self.names.job_event(execution_id, "*", "ready")
        for _ in range(1000):
            current = await self.store.get_execution(execution_id, fresh=True)
            if current is None:
                return
            rec = current.value
            if rec.status in FINAL_EXECUTION_STATES or rec.parallelism is None or rec.counts.ready <= 0:
                return
            free = rec.parallelism - rec.counts.in_flight
            if free <= 0:
                return
            cursor = rec.ready_cursor
            picked: list[str] = []
            last_seq = cursor
            while len(picked) < free:
                try:
                    msg = await self.js.get_msg(self.names.events_stream, seq=last_seq + 1, subject=subject, next=True)
                except NotFoundError:
                    break
                assert msg.seq is not None
                last_seq = msg.seq
                event = msgspec.json.decode(msg.data or b"{}", type=JobEvent)
                job = await self.store.get_job(execution_id, event.job_id, fresh=True)
                if job is not None and job.value.status == "ready" and event.job_id not in picked:
                    picked.append(event.job_id)
            if last_seq == cursor:
                return  # the queue is empty (an enqueuer will pump after publishing)

            def take(
                r: ExecutionRecord, cursor: int = cursor, last_seq: int = last_seq, picked: list[str] = picked
            ) -> bool:
                if r.ready_cursor != cursor:
                    raise _Moved
                r.ready_cursor = last_seq
                r.counts.ready -= len(picked)
                r.counts.queued += len(picked)
                r.updated_at = now_iso()
                return True

            try:
                updated = await self.store.update_execution(execution_id, take)
            except _Moved:
                continue  # another replica took from the queue first; look again
            if updated is None:
                return
            await asyncio.gather(*(self._dispatch(execution_id, job_id) for job_id in picked))

    # --- worker reports ------------------------------------------------------------------------------

    async def process_reports(self, execution_id: str, reports: list[JobStarted | JobResult]) -> None:
        """Apply a batch of worker reports of one execution: job records first (concurrently), then the
        execution record once, then every dispatch and event in pipelined writes. Per finished job the work
        is a constant number of writes plus one per dependent, whatever the size of the DAG."""
        async with self._lock(execution_id):
            await self._process_reports(execution_id, reports)
        self._unlock_finished(execution_id)

    async def _process_reports(self, execution_id: str, reports: list[JobStarted | JobResult]) -> None:
        by_job: dict[str, list[JobStarted | JobResult]] = {}
        for report in reports:
            by_job.setdefault(report.job_id, []).append(report)
        outcomes = await asyncio.gather(*(self._job_reports(execution_id, rs) for rs in by_job.values()))
        delta: dict[str, int] = {}
        completed: list[JobRecord] = []
        failed: list[JobRecord] = []
        delayed: list[JobRecord] = []
        events: list[tuple[str, bytes, str]] = []
        for outcome in outcomes:
            for status, d in outcome.delta.items():
                delta[status] = delta.get(status, 0) + d
            if outcome.suspicious:
                self.suspect(execution_id)
            job = outcome.job
            if job is None:
                continue
            if job.status == "completed":
                completed.append(job)
                events.append(self._job_event_message(execution_id, job, "completed", worker_id=job.worker_id))
            elif job.status == "failed":
                failed.append(job)
                events.append(
                    self._job_event_message(execution_id, job, "failed", error=job.error, worker_id=job.worker_id)
                )
            elif job.status == "delayed":
                delayed.append(job)
                events.append(
                    self._job_event_message(execution_id, job, "delayed", error=job.error, retry_at=job.retry_at)
                )
        if not delta:
            return
        # Without a parallelism cap a dependent that becomes ready is queued in the same write (one write per
        # job saved); with one, it waits in `ready` for a slot taken on the execution record.
        current = await self.store.get_execution(execution_id)
        uncapped = current is not None and current.value.parallelism is None
        newly_ready, newly_queued = await self._arrivals(execution_id, completed, queue=uncapped)
        skipped: list[str] = []
        for job in failed:
            skipped.extend(await self._skip_dependents(execution_id, job))
        take: list[str] = []
        became_running: list[bool] = []

        def apply(rec: ExecutionRecord) -> bool:
            take.clear()
            became_running.clear()
            if rec.status in FINAL_EXECUTION_STATES:
                return False  # cancelled meanwhile: its final counts were taken from the job records
            for status, d in delta.items():
                _bump(rec.counts, status, d)
            rec.counts.pending -= len(newly_ready) + len(newly_queued) + len(skipped)
            rec.counts.ready += len(newly_ready)
            rec.counts.queued += len(newly_queued)
            rec.counts.skipped += len(skipped)
            if failed and rec.error is None:
                rec.error = f"job {failed[0].id} failed: {failed[0].error}"
            free = len(newly_ready) if rec.parallelism is None else max(0, rec.parallelism - rec.counts.in_flight)
            take.extend(newly_ready[:free])
            rec.counts.ready -= len(take)
            rec.counts.queued += len(take)
            if rec.status == "pending" and (rec.counts.running or rec.counts.completed or rec.counts.failed):
                became_running.append(True)
            self._finish_if_done(rec)
            return True

        updated = await self.store.update_execution(execution_id, apply)
        for job in completed:
            self._pending_cp.setdefault(execution_id, _Pending()).completed.append(job.id)
        applied = updated is not None and updated.applied
        await asyncio.gather(
            self.store.pipeline.publish_all(events),
            *(self._dispatch(execution_id, job_id) for job_id in take),
            # Not if the execution ended meanwhile (cancelled): the cancel withdrew these queued jobs.
            *(self._publish_job(execution_id, job, with_event=True) for job in newly_queued if applied),
        )
        for job in delayed:
            assert job.retry_at is not None
            self._arm_retry(execution_id, job.id, job.retry_at)
        if updated is None or not updated.applied:
            return
        if became_running:
            await self._execution_event(updated.value, "running")
        await self._after_change(updated.value)
        rest = [job_id for job_id in newly_ready if job_id not in take]
        if rest:
            # Parallelism is full: put the rest on this execution's ready queue (its `ready` events).
            ready_events = []
            for job_id in rest:
                waiting = await self.store.get_job(execution_id, job_id)
                if waiting is not None and waiting.value.status == "ready":
                    ready_events.append(self._job_event_message(execution_id, waiting.value, "ready"))
            await self.store.pipeline.publish_all(ready_events)
        if (rest or completed or failed) and updated.value.parallelism is not None:
            await self.pump(execution_id)  # slots freed: fill them from the ready queue

    async def _job_reports(self, execution_id: str, reports: list[JobStarted | JobResult]) -> _Outcome:
        """Apply one job's reports of a batch, in order, each with compare-and-set."""
        outcome = _Outcome()
        i = 0
        while i < len(reports):
            report = reports[i]
            following = reports[i + 1] if i + 1 < len(reports) else None
            if (
                isinstance(report, JobStarted)
                and isinstance(following, JobResult)
                and (following.attempt, following.round, following.worker_id)
                == (report.attempt, report.round, report.worker_id)
            ):
                # The start and the end of one attempt in one batch: one write instead of two (subscribers
                # still see the start: the worker's report is itself on the event stream).
                await self._apply_result(execution_id, following, outcome, started=report)
                i += 2
                continue
            if isinstance(report, JobStarted):
                await self._apply_started(execution_id, report, outcome)
            else:
                await self._apply_result(execution_id, report, outcome)
            i += 1
        return outcome

    async def _apply_started(self, execution_id: str, report: JobStarted, outcome: _Outcome) -> None:
        moved: list[bool] = []

        duplicate: list[bool] = []

        def start(job: JobRecord) -> bool:
            moved.clear()
            duplicate.clear()
            if job.attempt != report.attempt or job.round != report.round:
                return False
            if job.worker_id == report.worker_id and job.started_at == report.at:
                duplicate.append(True)  # applied before: a redelivery, maybe of a batch cut short
                return False
            if job.status == "running" and job.worker_id != report.worker_id:
                # Delivered again (its first worker died or froze past its lease): the record follows the
                # worker that runs it now.
                moved.append(True)
            elif job.status != "queued":
                return False
            job.status = "running"
            job.worker_id = report.worker_id
            job.started_at = report.at
            return True

        updated = await self.store.update_job(execution_id, report.job_id, start)
        if duplicate:
            outcome.suspicious = True
        if updated is not None and updated.applied and not moved:
            outcome.move("queued", "running")

    async def _apply_result(
        self, execution_id: str, report: JobResult, outcome: _Outcome, *, started: JobStarted | None = None
    ) -> None:
        before: list[str] = []

        def decide(job: JobRecord) -> bool:
            before.clear()
            if job.status not in ("queued", "running") or job.attempt != report.attempt or job.round != report.round:
                return False
            if not report.ok and report.cancelled:
                return False
            before.append(job.status)
            if started is not None and job.worker_id == started.worker_id and job.started_at == started.at:
                before.append("duplicate start")  # the start was applied before: a redelivered batch
            now = now_iso()
            job.worker_id = report.worker_id
            if started is not None:
                job.started_at = started.at
            elif job.started_at is None:
                job.started_at = report.at
            if report.ok:
                job.status = "completed"
                job.result = report.result
                job.error = None
                job.completed_at = now
            elif job.attempt <= job.retries:
                delay_ms = job.backoff_ms * 2 ** (job.attempt - 1)
                delay_ms = int(delay_ms * (0.8 + 0.4 * self._rng.random()))
                job.status = "delayed"
                job.error = report.error
                job.retry_at = iso_from_ms(now_ms() + delay_ms)
            else:
                job.status = "failed"
                job.error = report.error
                job.completed_at = now
            return True

        updated = await self.store.update_job(execution_id, report.job_id, decide)
        if updated is None:
            return
        if not updated.applied:
            current = updated.value
            same = current.round == report.round and current.attempt == report.attempt
            if same and current.status not in ("cancelled", "queued", "running"):
                # The same report again: normal after a redelivery, but also what is left when processing was
                # interrupted halfway (NATS blip, crash). Recovery re-derives whatever was not done.
                outcome.suspicious = True
            return
        outcome.move(before[0], updated.value.status)
        outcome.job = updated.value
        if "duplicate start" in before:
            outcome.suspicious = True

    async def _arrivals(
        self, execution_id: str, completed: list[JobRecord], *, queue: bool
    ) -> tuple[list[str], list[JobRecord]]:
        """Count the completed parents in at each dependent (one write per dependent). Returns the ids of
        those that became ready and, with `queue` (no parallelism cap to respect), those that were queued
        straight away in that same write instead: (ready ids, queued records)."""
        arriving: dict[str, int] = {}
        for job in completed:
            for child_id in await self.store.load_links(execution_id, job, "dependents"):
                arriving[child_id] = arriving.get(child_id, 0) + 1
        newly_ready: list[str] = []
        newly_queued: list[JobRecord] = []

        async def one(child_id: str, k: int) -> None:
            def arrive(child: JobRecord) -> bool:
                if child.status != "pending":
                    return False
                child.remaining -= k
                if child.remaining <= 0:
                    child.remaining = 0
                    child.status = "ready"
                    if queue:
                        _next_attempt(child, "ready")
                return True

            async with self._fanout:
                child = await self.store.update_job(execution_id, child_id, arrive)
            if child is not None and child.applied:
                if child.value.status == "ready":
                    newly_ready.append(child_id)
                elif child.value.status == "queued":
                    newly_queued.append(child.value)

        await asyncio.gather(*(one(c, k) for c, k in arriving.items()))
        return newly_ready, newly_queued

    def _arm_retry(self, execution_id: str, job_id: str, retry_at: str) -> None:
        key = (execution_id, job_id)
        if key in self._timers:
            self._timers[key].cancel()
        delay = max(0.0, (ms_from_iso(retry_at) - now_ms()) / 1000)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.spawn(self.retry_now(execution_id, job_id), "retry")

        self._timers[key] = loop.call_later(delay, fire)

    async def retry_now(self, execution_id: str, job_id: str) -> None:
        """A backoff is over: queue the next attempt (the slot was kept while delayed)."""
        async with self._lock(execution_id):
            await self._retry_now(execution_id, job_id)
        self._unlock_finished(execution_id)

    async def _retry_now(self, execution_id: str, job_id: str) -> None:
        updated = await self.store.update_job(execution_id, job_id, lambda job: _next_attempt(job, "delayed"))
        if updated is None or not updated.applied:
            return
        job = updated.value

        def count(rec: ExecutionRecord) -> bool:
            if rec.status in FINAL_EXECUTION_STATES:
                return False
            rec.counts.delayed -= 1
            rec.counts.queued += 1
            rec.updated_at = now_iso()
            return True

        exec_rec = await self.store.update_execution(execution_id, count)
        if exec_rec is None or exec_rec.value.status in FINAL_EXECUTION_STATES:
            return
        await self._publish_job(execution_id, job, with_event=True)

    async def _skip_dependents(self, execution_id: str, failed: JobRecord) -> list[str]:
        """Every job that depends on `failed`, transitively, can never run: mark it skipped."""
        skipped: list[str] = []
        frontier = [(failed, failed.id)]
        while frontier:
            parent, root = frontier.pop()
            for child_id in await self.store.load_links(execution_id, parent, "dependents"):

                def skip(child: JobRecord, root: str = root) -> bool:
                    if child.status != "pending":
                        return False
                    child.status = "skipped"
                    child.error = f"skipped: dependency {root} failed"
                    child.completed_at = now_iso()
                    return True

                child = await self.store.update_job(execution_id, child_id, skip)
                if child is not None and child.applied:
                    skipped.append(child_id)
                    frontier.append((child.value, root))
                    await self._job_event(execution_id, child.value, "skipped", error=child.value.error)
        return skipped

    def _finish_if_done(self, rec: ExecutionRecord) -> None:
        rec.updated_at = now_iso()
        if rec.status in FINAL_EXECUTION_STATES:
            return
        if rec.counts.running and rec.status == "pending":
            rec.status = "running"
        status = final_status(rec.counts, rec.job_count)
        if status is not None:
            rec.status = status
            rec.completed_at = now_iso()

    async def _after_change(self, rec: ExecutionRecord) -> None:
        """Checkpoint when enough jobs completed or the execution ended; announce the end."""
        pending = self._pending_cp.get(rec.execution_id)
        final = rec.status in FINAL_EXECUTION_STATES
        if final and (rec.execution_id in self._doubtful or _impossible(rec.counts)):
            await self._verify_counts(rec.execution_id)
        if final or (pending is not None and len(pending.completed) >= self.settings.checkpoint_every):
            await self.checkpoint(rec.execution_id)
        if final:
            current = await self.store.get_execution(rec.execution_id)
            if current is not None:
                await self._execution_event(current.value, current.value.status)
            log.info("execution finished", executionId=rec.execution_id, status=rec.status)
            self._pending_cp.pop(rec.execution_id, None)
            self.store.forget(rec.execution_id)
            self._finished.add(rec.execution_id)

    async def _verify_counts(self, execution_id: str) -> None:
        """An execution that ended after an interrupted step: its counts are deltas, and a step whose job
        write landed but whose execution write did not (a start report applied, then NATS gone) leaves one
        delta out — later deltas can then take a count below zero, and recovery, which only recounts open
        executions, never sees it. The job records are the truth: recount from them (once per such
        execution, not per job)."""
        self._doubtful.discard(execution_id)
        counts = count_jobs(await self.store.all_jobs(execution_id))

        def fix(rec: ExecutionRecord) -> bool:
            if msgspec.structs.asdict(rec.counts) == msgspec.structs.asdict(counts):
                return False
            status = final_status(counts, rec.job_count)
            if rec.status != "cancelled" and status is None:
                log.error("ended with jobs still open in their records", executionId=execution_id, counts=counts)
                return False
            if rec.status != "cancelled" and status is not None:
                rec.status = status
            rec.counts = counts
            return True

        fixed = await self.store.update_execution(execution_id, fix, fresh=True)
        if fixed is not None and fixed.applied:
            log.warning("counts of an ended execution corrected from its job records", executionId=execution_id)

    async def checkpoint(self, execution_id: str) -> None:
        """Persist a checkpoint of the execution's progress and name it in the execution record."""
        pending = self._pending_cp.pop(execution_id, _Pending())
        current = await self.store.get_execution(execution_id, fresh=True)
        if current is None:
            return
        seq = current.value.checkpoint_seq + 1
        checkpoint_id = f"{execution_id}-cp{seq}"

        def name_it(rec: ExecutionRecord) -> bool:
            if rec.checkpoint_seq >= seq:
                return False
            rec.checkpoint_seq = seq
            rec.checkpoint_id = checkpoint_id
            return True

        cp = Checkpoint(
            checkpoint_id=checkpoint_id,
            execution_id=execution_id,
            seq=seq,
            round=current.value.round,
            at=now_iso(),
            status=current.value.status,
            counts=current.value.counts,
            completed_jobs=pending.completed,
        )
        await self.checkpoints.put(execution_id, _encode(cp))
        named = await self.store.update_execution(execution_id, name_it)
        if named is not None and named.applied:
            await publish_event(
                self.js,
                self.names.execution_event(execution_id, "checkpoint"),
                cp,
                msg_id=f"{checkpoint_id}.r{cp.round}",
            )

    # --- cancel and retry ----------------------------------------------------------------------------

    async def cancel(self, execution_id: str) -> ExecutionView:
        async with self._lock(execution_id):
            result = await self._cancel(execution_id)
        self._unlock_finished(execution_id)
        return result

    async def _cancel(self, execution_id: str) -> ExecutionView:
        def stop(rec: ExecutionRecord) -> bool:
            if rec.status in FINAL_EXECUTION_STATES:
                raise Conflict(f"execution {execution_id} already ended ({rec.status}); nothing to cancel")
            rec.status = "cancelled"
            rec.completed_at = now_iso()
            rec.updated_at = rec.completed_at
            return True

        updated = await self.store.update_execution(execution_id, stop)
        if updated is None:
            raise NotFound(f"execution {execution_id} does not exist")
        # Workers listen for this event: running handlers of this execution are cancelled, queued messages
        # of it are dropped unrun.
        await self._execution_event(updated.value, "cancelled")
        for job in await self.store.all_jobs(execution_id):
            if job.status in FINAL_JOB_STATES:
                continue

            def cancel_job(j: JobRecord) -> bool:
                if j.status in FINAL_JOB_STATES:
                    return False
                j.status = "cancelled"
                j.completed_at = now_iso()
                j.retry_at = None
                return True

            changed = await self.store.update_job(execution_id, job.id, cancel_job)
            timer = self._timers.pop((execution_id, job.id), None)
            if timer is not None:
                timer.cancel()
            if changed is not None and changed.applied:
                await self._job_event(execution_id, changed.value, "cancelled")
        counts = count_jobs(await self.store.all_jobs(execution_id))

        def recount(rec: ExecutionRecord) -> bool:
            rec.counts = counts
            return True

        final = await self.store.update_execution(execution_id, recount)
        await self.checkpoint(execution_id)
        self.store.forget(execution_id)
        self._finished.add(execution_id)
        assert final is not None
        log.info("execution cancelled", executionId=execution_id)
        return view(final.value)

    async def retry(self, execution_id: str) -> ExecutionView:
        """Run again, from the latest checkpoint, every job of a finished execution that did not complete."""
        async with self._lock(execution_id):
            result = await self._retry(execution_id)
        self._unlock_finished(execution_id)
        return result

    async def _retry(self, execution_id: str) -> ExecutionView:
        current = await self.store.get_execution(execution_id, fresh=True)
        if current is None:
            raise NotFound(f"execution {execution_id} does not exist")
        rec = current.value
        if rec.status not in FINAL_EXECUTION_STATES:
            raise Conflict(f"execution {execution_id} is still {rec.status}; only a finished execution can be retried")
        if rec.status == "completed":
            raise Conflict(f"execution {execution_id} completed; every job already has its result")
        new_round = rec.round + 1
        jobs = {job.id: job for job in await self.store.all_jobs(execution_id)}
        done = {job_id for job_id, job in jobs.items() if job.status == "completed"}
        ready: list[str] = []
        for job in jobs.values():
            if job.status == "completed":
                continue
            parents = await self.store.load_links(execution_id, job, "depends_on")
            remaining = sum(1 for p in parents if p not in done)

            def reset(j: JobRecord, remaining: int = remaining) -> bool:
                if j.status == "completed":
                    return False
                j.status = "ready" if remaining == 0 else "pending"
                j.remaining = remaining
                j.round = new_round
                j.attempt = 0
                j.worker_id = None
                j.queued_at = j.started_at = j.completed_at = j.retry_at = None
                j.error = None
                j.result = None
                return True

            changed = await self.store.update_job(execution_id, job.id, reset)
            if changed is not None and changed.applied and changed.value.status == "ready":
                ready.append(job.id)
            if changed is not None:
                jobs[job.id] = changed.value
        counts = count_jobs(jobs.values())

        def reopen(r: ExecutionRecord) -> bool:
            if r.status not in FINAL_EXECUTION_STATES or r.round != rec.round:
                raise Conflict(f"execution {execution_id} changed while retrying; try again")
            r.status = "pending"
            r.round = new_round
            r.completed_at = None
            r.error = None
            r.counts = counts
            r.updated_at = now_iso()
            return True

        updated = await self.store.update_execution(execution_id, reopen)
        assert updated is not None
        log.info("execution retried", executionId=execution_id, round=new_round, jobs=len(jobs) - len(done))
        await self._execution_event(updated.value, "retried")
        await self.admit(execution_id, ready)
        return view(updated.value)

    # --- reads ---------------------------------------------------------------------------------------

    async def jobs(self, execution_id: str) -> list[JobView]:
        if await self.store.get_execution(execution_id, fresh=True) is None:
            raise NotFound(f"execution {execution_id} does not exist")
        jobs = await self.store.all_jobs(execution_id)
        jobs.sort(key=lambda j: j.index)
        return [job_view(job) for job in jobs]

    # --- recovery ------------------------------------------------------------------------------------

    async def reconcile(self, execution_id: str, *, startup: bool = False) -> bool:
        """Returns False when the counts could not be checked yet (the execution is busy): try again later."""
        async with self._lock(execution_id):
            done = await self._reconcile(execution_id, startup=startup)
        self._unlock_finished(execution_id)
        return done

    async def _reconcile(self, execution_id: str, *, startup: bool = False) -> bool:
        """Re-derive an open execution from its job records and finish whatever was left half done.

        Runs at startup for every open execution, when a report suggests interrupted processing, and when
        an execution has not changed for a while. Every step is a compare-and-set or an idempotent publish,
        so running it while another replica works on the same execution is safe.
        """
        current = await self.store.get_execution(execution_id, fresh=True)
        if current is None:
            return True
        if current.value.status in FINAL_EXECUTION_STATES:
            if execution_id not in self._finished and current.value.status != "cancelled":
                # It ended, but whoever ended it was interrupted before checkpointing and announcing it.
                await self._after_change(current.value)
            return True
        jobs = {job.id: job for job in await self.store.all_jobs(execution_id)}
        complete = len(jobs) == current.value.job_count
        if not complete:
            log.warning("incomplete job listing; recovery retried later", executionId=execution_id, seen=len(jobs))
        # Dependencies decide a pending job's fate: all completed → ready; one failed or skipped → skipped.
        for job in list(jobs.values()):
            if job.status != "pending":
                continue
            parents = await self.store.load_links(execution_id, job, "depends_on")
            statuses = [jobs[p].status for p in parents if p in jobs]
            dead = next(
                (p for p in parents if p in jobs and jobs[p].status in ("failed", "skipped", "cancelled")), None
            )
            remaining = sum(1 for st in statuses if st != "completed")

            def fix(j: JobRecord, dead: str | None = dead, remaining: int = remaining) -> bool:
                if j.status != "pending":
                    return False
                if dead is not None:
                    j.status = "skipped"
                    j.error = f"skipped: dependency {dead} failed"
                    j.completed_at = now_iso()
                elif remaining == 0:
                    j.status = "ready"
                    j.remaining = 0
                else:
                    # Never rewrite the counter from this snapshot: parents completing right now decrement
                    # it, and a stale value written back would lose their arrival. Only the two stable facts
                    # (all parents completed; one parent failed) are acted on.
                    return False
                return True

            changed = await self.store.update_job(execution_id, job.id, fix)
            if changed is not None:
                jobs[job.id] = changed.value
        counts = count_jobs(jobs.values())
        # Counts are rebuilt from this snapshot only when the execution record has not changed for a while
        # and did not change while we read the jobs: otherwise a step in progress (here or in another
        # replica) could apply its delta on top of a snapshot that already contains it. A lost delta only
        # ever leaves too many jobs open, so waiting for a quiet moment is safe.
        quiet = complete and now_ms() - ms_from_iso(current.value.updated_at) >= self.settings.quiet_s * 1000
        snapshot_revision = current.revision

        def recount(rec: ExecutionRecord) -> bool:
            if rec.status in FINAL_EXECUTION_STATES or not quiet:
                return False
            if self.store.last_read_revision != snapshot_revision:
                return False
            same = msgspec.structs.asdict(rec.counts) == msgspec.structs.asdict(counts)
            if same and final_status(counts, rec.job_count) is None:
                return False
            rec.counts = counts
            self._finish_if_done(rec)
            return True

        updated = await self.store.update_execution(execution_id, recount, fresh=True)
        if updated is None:
            return True
        if updated.applied:
            log.info("execution reconciled", executionId=execution_id, status=updated.value.status)
        if updated.value.status in FINAL_EXECUTION_STATES:
            await self._after_change(updated.value)
            return True
        now = now_ms()
        for job in jobs.values():
            if job.status == "delayed" and job.retry_at is not None:
                self._arm_retry(execution_id, job.id, job.retry_at)
            elif job.status == "queued" and job.queued_at is not None:
                young = now - ms_from_iso(job.queued_at) < REPUBLISH_WINDOW_MS
                if young or (startup and await self.queue.pending_for(job.capability, job.type) == 0):
                    await self._publish_job(execution_id, job)
        ready = sorted((job for job in jobs.values() if job.status == "ready"), key=lambda j: j.index)
        if ready:
            if updated.value.parallelism is None:
                await self.admit(execution_id, [job.id for job in ready])
            else:
                for job in ready:
                    await self._job_event(execution_id, job, "ready")
                await self.pump(execution_id)
        return quiet


@dataclass
class _Outcome:
    """What one job's reports of a batch changed."""

    delta: dict[str, int] = field(default_factory=dict)
    job: JobRecord | None = None
    suspicious: bool = False

    def move(self, frm: str, to: str) -> None:
        self.delta[frm] = self.delta.get(frm, 0) - 1
        self.delta[to] = self.delta.get(to, 0) + 1


class _Moved(Exception):
    """The ready-queue cursor moved under us."""

"""The life of one owned execution: inputs in, one journal append per step, effects out, and its end.

An `Owned` execution has two loops, each a task only while it has work (never a task per message):

- the commit loop takes every input waiting (worker reports, timers, commands), runs each through the machine,
  and appends the step to the journal — one append for everything it took. Once the append is stored, it acks
  the reports, answers the commands and arms the timers;
- the effects loop then does, in order, what the steps imply for the world: job messages, the batched job event,
  the execution's own events, its record, checkpoints, and at the end the snapshot of its jobs.

So a report is acked only once its consequences are durable, the job messages and events of step k go out
before those of step k+1, and a crash at any point leaves a journal from which a new owner derives the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared import tracing
from shared.commands import Conflict, Unavailable
from shared.keys import (
    checkpoint_msg_id,
    execution_event_msg_id,
    execution_key,
    execution_toggle_msg_id,
    jobs_event_msg_id,
    result_key,
    snapshot_key,
)
from shared.logging import get_logger
from shared.messages import (
    FINAL_EXECUTION_STATES,
    FINAL_JOB_STATES,
    AnyJobReport,
    Checkpoint,
    ExecutionEvent,
    ExecutionPatch,
    ExecutionRecord,
    ExecutionView,
    JobChange,
    JobFinishedReport,
    JobPatch,
    JobRecord,
    JobsEvent,
    JournalStep,
    SnapshotPart,
)
from shared.metrics import SchedulerMetrics
from shared.pipeline import JetStreamError, Pipeline
from shared.subjects import Names
from shared.timeutil import ms_from_iso, now_ms

from . import machine
from .dispatch import Dispatcher, Durations
from .gates import Gates
from .journal import Fenced, Journal, split_step
from .machine import Env, ExecutionState, Step
from .views import change_of, execution_view, job_change, progress

__all__ = ["INLINE_RESULT_BYTES", "AckRef", "Context", "Owned"]

log = get_logger(__name__)
METRICS = SchedulerMetrics.process()

INLINE_RESULT_BYTES = 64 * 1024
"""Results up to this size live in the journal; larger ones in the executions bucket (`result_key`)."""
RECORD_INTERVAL_S = 1.0
"""While an execution runs, its record (listings, stats) is at most this old."""
PLACED_FLUSH_S = 1.0
"""A stored job message is noted in the journal with the next step, or after this long at the latest."""
SNAPSHOT_PART_BYTES = 512 * 1024
EVENT_PART_BYTES = 256 * 1024
"""A step's job changes are announced in JobsEvents of at most about this size (errors can be long)."""

_encode = msgspec.json.Encoder().encode
_record_decoder = msgspec.json.Decoder(ExecutionRecord)


class AckRef:
    """One report message: acked once every report in it is committed, naked if one could not be."""

    __slots__ = ("failed", "msg", "pending")

    def __init__(self, msg: Msg, pending: int) -> None:
        self.msg = msg
        self.pending = pending
        self.failed = False

    def settle(self, ok: bool) -> Msg | None:
        """Count one report done; returns the message once all are (to ack or nak)."""
        self.pending -= 1
        if not ok:
            self.failed = True
        return self.msg if self.pending == 0 else None


class DispatchTokens:
    """Unguessable dispatch tokens (8 random bytes as hex), drawn from the OS's random source a few hundred at
    a time: one system call per token was 3 % of the scheduler's time on many small executions."""

    TOKEN_BYTES = 8
    BATCH = 512

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = secrets.token_bytes(self.TOKEN_BYTES * self.BATCH), 0
        token = self._pool[self._at : self._at + self.TOKEN_BYTES].hex()
        self._at += self.TOKEN_BYTES
        return token


@dataclass
class Context:
    """What every execution this replica owns shares."""

    nc: Client
    js: JetStreamContext
    pipeline: Pipeline
    journal: Journal
    dispatcher: Dispatcher
    names: Names
    replica_id: str
    durations: Durations
    checkpoint_every: int
    schedule_timeout_s: float
    on_gone: Callable[[Owned], None]
    """Called when an execution leaves this replica (ended, or taken over by another)."""
    on_reload: Callable[[Owned], Awaitable[None]]
    """Called when a step's outcome is unknown (NATS trouble): read the execution back from its journal."""
    on_record: Callable[[ExecutionRecord, int], None]
    """Called with every record written (the replica's index sees its own writes at once)."""
    gates: Gates
    """Concurrency keys and rate limits, shared with every replica."""
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))
    tokens: DispatchTokens = field(default_factory=DispatchTokens)

    @property
    def bucket(self) -> str:
        return self.names.executions_bucket

    def env(self) -> Env:
        return Env(
            now_ms=now_ms(),
            token=self.tokens.next,
            jitter=lambda: 0.8 + 0.4 * self.rng.random(),
            bundle_size=self.durations.bundle_size,
            limited_types=self.gates.limited_types,
        )


@dataclass(slots=True)
class _Report:
    report: AnyJobReport
    worker_id: str
    ref: AckRef


@dataclass(slots=True)
class _Command:
    kind: str
    future: asyncio.Future[ExecutionView]


@dataclass(slots=True)
class _Timer:
    kind: str
    job_id: str


@dataclass(slots=True)
class _Waiting:
    reasons: dict[str, str | None]


@dataclass(slots=True)
class _Requeue:
    job_ids: list[str]


@dataclass(slots=True)
class _Cleared:
    job_ids: list[str]


@dataclass(slots=True)
class _Limited:
    job_id: str
    until_ms: int
    reason: str


class _Start:
    """A new execution or round: roots get slots."""


class _Resume:
    """After a takeover: finish what the previous owner left undone."""


class _Flush:
    """Note stored job messages in the journal even though nothing else happened."""


Input = _Report | _Command | _Timer | _Waiting | _Requeue | _Cleared | _Limited | _Start | _Resume | _Flush


@dataclass(slots=True)
class _Effects:
    steps: list[Step]
    seq: int
    at: str
    final: bool
    status_changed: ExecutionPatch | None
    paused_changed: bool
    """Paused or resumed (POST /execute/{id}/pause|resume): its record is written at once."""
    events: list[tuple[str, bytes, str]]
    """The step's events as of the step (built when it was committed: the state moves on meanwhile)."""


class _RecordDue:
    """The effects loop writes the record (its interval passed with changes unwritten)."""


class _RepublishDue:
    """The effects loop publishes again the job messages the stream did not store (NATS was away)."""


class _WithdrawDue:
    """The effects loop deletes the job messages no job is on any more (a paused execution taken over)."""


_RECORD_DUE = _RecordDue()
_REPUBLISH_DUE = _RepublishDue()
_WITHDRAW_DUE = _WithdrawDue()
REPUBLISH_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_RELEASING = frozenset({"completed", "failed", "cancelled", "skipped", "pending", "ready"})
"""A keyed job entering these gives its concurrency slot (or its place in line) back: it ended, or it is back
to ready (its execution was paused, or a backoff or a rate limit's wait ended) and asks again when it may go."""
_HOLDING = frozenset({"queued", "running", "delayed"})
"""A keyed job in these holds a slot (a delayed one through its retry backoff or its rate limit's wait)."""


class Owned:
    """One execution this replica owns: its state in memory, its journal position, its two loops."""

    def __init__(
        self,
        ctx: Context,
        state: ExecutionState,
        *,
        journal_seq: int,
        started_at: str,
        record_revision: int,
        checkpoint_seq: int = 0,
        checkpoint_id: str | None = None,
        snapshot: int = 0,
        snapshot_parts: int = 0,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.seq = journal_seq
        self.started_at = started_at
        self.record_revision = record_revision
        self.checkpoint_seq = checkpoint_seq
        self.checkpoint_id = checkpoint_id
        self.snapshot = snapshot
        self.snapshot_parts = snapshot_parts
        self.inbox: list[Input] = []
        self._placed: list[tuple[str, tuple[str, ...]]] = []
        self._effects: list[_Effects | _RecordDue | _RepublishDue | _WithdrawDue] = []
        self._republish_timer: asyncio.TimerHandle | None = None
        self._republish_attempt = 0
        self._commit_task: asyncio.Task[None] | None = None
        self._effects_task: asyncio.Task[None] | None = None
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._record_timer: asyncio.TimerHandle | None = None
        self._record_at = 0.0
        self._record_counts: tuple[int, ...] | None = None
        self._completed_since_checkpoint: list[str] = []
        self.committed = asyncio.Event()
        self.committed.set()
        self.finished = asyncio.Event()
        """Set when the execution has ended and its snapshot and final record are written."""
        self.gone = False
        self.log = log.bind(executionId=state.execution_id)

    @property
    def execution_id(self) -> str:
        return self.state.execution_id

    # --- inputs ---------------------------------------------------------------------------------------------

    def submit(self, item: Input) -> None:
        if self.gone:
            if isinstance(item, _Report):
                self._settle_refs([item.ref], ok=False)
            elif isinstance(item, _Command) and not item.future.done():
                item.future.set_exception(Unavailable(f"execution {self.execution_id} is moving; try again"))
            return
        self.inbox.append(item)
        if self._commit_task is None:
            self._commit_task = asyncio.create_task(self._commit_loop(), name=f"commit {self.execution_id}")

    def report(self, report: AnyJobReport, worker_id: str, ref: AckRef) -> None:
        self.submit(_Report(report, worker_id, ref))

    async def command(self, kind: str) -> ExecutionView:
        future: asyncio.Future[ExecutionView] = asyncio.get_running_loop().create_future()
        self.submit(_Command(kind, future))
        return await future

    def start(self) -> None:
        """A new execution starts now, or at its runAt when it is a delayed one."""
        if self._due():
            self.submit(_Start())
        else:
            self._arm_start()

    def resume(self) -> None:
        """After a takeover; a delayed execution not due yet waits for its start timer (arm_all). The slots
        its dispatched jobs hold are confirmed from this replica now."""
        if self.state.paused:
            # Its previous owner may have died between journalling the pause and deleting the messages.
            self._queue_effects(_WITHDRAW_DUE)
        held = [j for j in self.state.jobs if j.concurrency_key is not None and j.status in _HOLDING]
        if held:
            self.ctx.gates.adopt(self, held)
        if self._due():
            self.submit(_Resume())

    def _due(self) -> bool:
        run_at = self.state.run_at
        return run_at is None or self.state.round > 1 or ms_from_iso(run_at) <= now_ms()

    def _arm_start(self) -> None:
        """Start a delayed execution at its runAt. Re-armed at most hourly: a long wait follows the wall clock,
        not the event loop's monotonic one."""
        if self._due():
            self.submit(_Start())
            return
        assert self.state.run_at is not None
        wait = (ms_from_iso(self.state.run_at) - now_ms()) / 1000
        self._timers[("start", "")] = asyncio.get_running_loop().call_later(min(wait, 3600.0), self._arm_start)

    def waiting(self, reasons: dict[str, str | None]) -> None:
        self.submit(_Waiting(reasons))

    def requeue(self, job_ids: list[str]) -> None:
        self.submit(_Requeue(job_ids))

    def cleared(self, job_ids: list[str]) -> None:
        """The gates let these jobs through."""
        self.submit(_Cleared(job_ids))

    def limited(self, job_id: str, until_ms: int, reason: str) -> None:
        """A rate limit holds this job until `until_ms`."""
        self.submit(_Limited(job_id, until_ms, reason))

    async def view(self) -> ExecutionView:
        """The execution as of its last durable step (a step being appended is waited for). An execution that
        ended is shown ended once its end is written in full (snapshot, record): whoever sees it ended can
        list it, and list its jobs, as ended."""
        await self.committed.wait()
        if self.state.final and not self.finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), 10)
        return execution_view(self.state, started_at=self.started_at, checkpoint_id=self.checkpoint_id)

    async def settled(self) -> None:
        await self.committed.wait()

    # --- the commit loop ------------------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        try:
            while self.inbox and not self.gone:
                items, self.inbox = self.inbox, []
                self.committed.clear()
                try:
                    await self._commit(items)
                finally:
                    self.committed.set()
        except Exception:
            self.log.exception("commit loop failed")
            await self._lost("commit loop failed", reload=True)
        finally:
            self._commit_task = None
            if self.inbox and not self.gone:
                self._commit_task = asyncio.create_task(self._commit_loop(), name=f"commit {self.execution_id}")

    def _apply(self, env: Env, item: Input) -> tuple[Step | None, Exception | None]:
        state = self.state
        match item:
            case _Report(report=report, worker_id=worker_id):
                if isinstance(report, JobFinishedReport):
                    job = state.job(report.job_id)
                    if job is not None and report.token == job.token:
                        self.ctx.durations.add(job.capability, job.type, report.duration_ms)
                    if report.traceparent is not None:
                        # The scheduler's verdict on a result: a span of the trace the job's dispatch started.
                        with tracing.span(
                            "result", parent=report.traceparent, attributes={"jetdag.job_id": report.job_id}
                        ):
                            step = machine.on_report(state, env, report, worker_id, fill=False)
                        return step, None
                step = machine.on_report(state, env, report, worker_id, fill=False)
                if step.ignored and "forged" in step.ignored:
                    self.log.warning(
                        "report ignored",
                        jobId=report.job_id,
                        claimedWorker=worker_id,
                        kind=type(report).__name__,
                        reason=step.ignored,
                    )
                return step, None
            case _Command(kind="cancel"):
                if state.final:
                    return None, Conflict(
                        f"execution {self.execution_id} already ended ({state.status}); nothing to cancel"
                    )
                return machine.on_cancel(state, env), None
            case _Command(kind="retry"):
                if not state.final:
                    return None, Conflict(
                        f"execution {self.execution_id} is still {state.status}; only a finished execution can "
                        "be retried"
                    )
                if state.status == "completed":
                    return None, Conflict(f"execution {self.execution_id} completed; every job already has its result")
                return machine.on_retry(state, env), None
            case _Command(kind="pause" | "resume" as kind):
                if state.final:
                    return None, Conflict(
                        f"execution {self.execution_id} already ended ({state.status}); there is nothing to {kind}"
                    )
                return (machine.on_pause if kind == "pause" else machine.on_unpause)(state, env), None
            case _Timer(kind="backoff", job_id=job_id):
                return machine.on_backoff_over(state, env, job_id), None
            case _Timer(kind="schedule", job_id=job_id):
                job = state.job(job_id)
                timeout = self._schedule_timeout(job) if job is not None else None
                reason = (job.waiting_reason if job else None) or "no worker took it"
                why = f"not started within {timeout:g} s of being queued: {reason}"
                return machine.on_schedule_timeout(state, env, job_id, why), None
            case _Waiting(reasons=reasons):
                return machine.on_waiting(state, env, reasons), None
            case _Requeue(job_ids=job_ids):
                return machine.on_requeue(state, env, job_ids), None
            case _Cleared(job_ids=job_ids):
                return machine.on_cleared(state, env, job_ids), None
            case _Limited(job_id=job_id, until_ms=until_ms, reason=reason):
                return machine.on_limited(state, env, job_id, until_ms, reason), None
            case _Start():
                return machine.on_start(state, env), None
            case _Resume():
                return machine.on_resume(state, env), None
            case _:
                return None, None

    async def _commit(self, items: list[Input]) -> None:
        env = self.ctx.env()
        state = self.state
        was = state.status
        steps: list[Step] = []
        outcomes: list[tuple[Input, Exception | None]] = []
        for item in items:
            step, error = self._apply(env, item)
            if step:
                steps.append(step)
            outcomes.append((item, error))
        if any(isinstance(item, _Report) for item in items):
            # Reports were applied without filling slots: what they made ready is dispatched together.
            filled = machine.on_batch_end(state, env)
            if filled:
                steps.append(filled)
        if self._placed:
            for bundle, job_ids in self._placed:
                placed = machine.on_placed(state, env, job_ids, bundle)
                if placed:
                    steps.append(placed)
            self._placed = []
        execution = _merge_execution(steps)
        patches = [p for step in steps for p in step.jobs]
        if patches or execution is not None:
            entry = JournalStep(at=env.now, jobs=await self._journal_patches(patches), execution=execution)
            started = time.perf_counter()
            try:
                self.seq = await self.ctx.journal.append_all(
                    self.execution_id, split_step(entry, _encode(entry)), last=self.seq
                )
                METRICS.batch(len(patches), time.perf_counter() - started)
            except Fenced:
                await self._lost("another replica appended to its journal", items=items)
                return
            except Exception as exc:
                self.log.warning("journal append failed; reading the execution back", error=repr(exc))
                await self._lost("journal append failed", items=items, reload=True)
                return
        # Durable: tell whoever is waiting.
        refs: list[AckRef] = []
        for item, error in outcomes:
            if isinstance(item, _Report):
                refs.append(item.ref)
            elif isinstance(item, _Command) and not item.future.done():
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(
                        execution_view(state, started_at=self.started_at, checkpoint_id=self.checkpoint_id)
                    )
        self._arm_timers(patches)
        self._count(patches)
        self._gate(steps, patches)
        if steps:
            status_changed = execution if execution is not None and state.status != was else None
            paused_changed = execution is not None and execution.paused is not msgspec.UNSET and not state.final
            events = self._events(steps, env.now, status_changed, paused_changed)
            self._queue_effects(_Effects(steps, self.seq, env.now, state.final, status_changed, paused_changed, events))
        # Acked after the effects are queued: their task runs before the connection's flusher, so the acks and
        # the first job messages and events leave in one socket write (a loop turn and a syscall less per hop).
        await self._ack(refs)

    def _gate(self, steps: list[Step], patches: list[JobPatch]) -> None:
        """Send gated jobs to the gates; free the slots of keyed jobs that ended (or start a new round)."""
        jobs = self.state.jobs
        gated = [jobs[i] for step in steps for i in step.gated]
        if gated:
            self.ctx.gates.ask(self, gated)
        ended = [
            job
            for p in patches
            if p.status in _RELEASING and (job := jobs[self.state.by_id[p.job]]).concurrency_key is not None
        ]
        if ended:
            self.ctx.gates.settle(self, ended)

    def _queue_effects(self, effects: _Effects | _RecordDue | _RepublishDue | _WithdrawDue) -> None:
        if self.gone:
            return
        self._effects.append(effects)
        if self._effects_task is None:
            self._effects_task = asyncio.create_task(self._effects_loop(), name=f"effects {self.execution_id}")

    async def _journal_patches(self, patches: list[JobPatch]) -> list[JobPatch]:
        """The patches as the journal keeps them: a large result goes to the bucket, the journal names its key."""
        out = patches
        for i, patch in enumerate(patches):
            if patch.result is msgspec.UNSET or patch.result is None:
                continue
            data = _encode(patch.result)
            if len(data) <= INLINE_RESULT_BYTES:
                continue
            key = result_key(self.execution_id, patch.job)
            await self.ctx.pipeline.kv_write(self.ctx.bucket, key, data, last=None)
            job = self.state.job(patch.job)
            if job is not None:
                job.result_ref = key
            if out is patches:
                out = list(patches)
            out[i] = msgspec.structs.replace(patch, result=msgspec.UNSET, result_ref=key)
        return out

    async def _ack(self, refs: list[AckRef], ok: bool = True) -> None:
        for ref in refs:
            msg = ref.settle(ok)
            if msg is None:
                continue
            with contextlib.suppress(Exception):
                if ref.failed:
                    await msg.nak()
                else:
                    await msg.ack()

    def _settle_refs(self, refs: list[AckRef], ok: bool) -> None:
        asyncio.get_running_loop().create_task(self._ack(refs, ok))

    def _count(self, patches: list[JobPatch]) -> None:
        """Metrics of what the step changed: jobs that ended (and how long they ran), waits for a worker."""
        jobs, by_id = self.state.jobs, self.state.by_id
        for patch in patches:
            status = patch.status
            if status is msgspec.UNSET:
                continue
            job = jobs[by_id[patch.job]]
            if status in FINAL_JOB_STATES:
                seconds = None
                if job.started_at is not None and job.completed_at is not None and status != "skipped":
                    seconds = (ms_from_iso(job.completed_at) - ms_from_iso(job.started_at)) / 1000
                METRICS.job_finished(status, job.type, seconds)
            if isinstance(patch.started_at, str) and job.queued_at is not None:
                METRICS.queue_wait(job.type, (ms_from_iso(patch.started_at) - ms_from_iso(job.queued_at)) / 1000)

    # --- timers -----------------------------------------------------------------------------------------------

    def _schedule_timeout(self, job: machine.Job) -> float | None:
        timeout = job.schedule_timeout_s if job.schedule_timeout_s is not None else self.ctx.schedule_timeout_s
        return timeout if timeout and timeout > 0 else None

    def _arm_timers(self, patches: list[JobPatch]) -> None:
        for patch in patches:
            if patch.status == "delayed":
                job = self.state.job(patch.job)
                if job is not None and job.retry_at is not None:
                    self._arm("backoff", job.id, (ms_from_iso(job.retry_at) - now_ms()) / 1000)
            elif patch.status == "queued" and patch.token is not msgspec.UNSET:
                job = self.state.job(patch.job)
                timeout = self._schedule_timeout(job) if job is not None else None
                if job is not None and timeout is not None:
                    self._arm("schedule", job.id, timeout)

    def arm_all(self) -> None:
        """After a takeover: the timers the state implies."""
        if not self._due() and not self.state.final:
            self._arm_start()
        for job in self.state.jobs:
            if job.status == "delayed" and job.retry_at is not None:
                self._arm("backoff", job.id, (ms_from_iso(job.retry_at) - now_ms()) / 1000)
            elif job.status == "queued" and job.queued_at is not None:
                timeout = self._schedule_timeout(job)
                if timeout is not None:
                    self._arm("schedule", job.id, timeout - (now_ms() - ms_from_iso(job.queued_at)) / 1000)

    def _arm(self, kind: str, job_id: str, delay_s: float) -> None:
        key = (kind, job_id)
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.submit(_Timer(kind, job_id))

        self._timers[key] = asyncio.get_running_loop().call_later(max(0.0, delay_s), fire)

    def _cancel_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for timer in (self._flush_timer, self._record_timer, self._republish_timer):
            if timer is not None:
                timer.cancel()

    # --- the effects loop -------------------------------------------------------------------------------------

    async def _effects_loop(self) -> None:
        try:
            while self._effects and not self.gone:
                batch, self._effects = self._effects, []
                for effects in batch:
                    if isinstance(effects, _RecordDue):
                        await self._maybe_write_record()
                    elif isinstance(effects, _RepublishDue):
                        await self.republish_unplaced()
                    elif isinstance(effects, _WithdrawDue):
                        await self.withdraw_stale()
                    else:
                        await self._apply_effects(effects)
        except Exception:
            self.log.exception("effects failed; reading the execution back")
            await self._lost("effects failed", reload=True)
        finally:
            self._effects_task = None
            if self._effects and not self.gone:
                self._effects_task = asyncio.create_task(self._effects_loop(), name=f"effects {self.execution_id}")

    async def _apply_effects(self, e: _Effects) -> None:
        state = self.state
        dispatched: dict[int, None] = {}
        for step in e.steps:
            for index in step.dispatched:
                dispatched[index] = None
        if any(step.withdrawn for step in e.steps):
            # Paused: the jobs are `ready` again under no token, so a worker that gets one of these messages
            # before it is gone has its reports ignored; deleting them keeps workers from running them at all.
            await self.withdraw_stale()
        if e.status_changed is not None and e.status_changed.status == "cancelled":
            await self._withdraw()
            if e.events:
                await self._publish_events(e.events)
        else:
            jobs = [state.jobs[i] for i in dispatched]
            jobs = [j for j in jobs if j.status == "queued" and not j.placed]
            if jobs and e.events:
                # Both already hold in the journal, so neither waits for the other: they leave in one write.
                await asyncio.gather(self.publish(jobs), self._publish_events(e.events))
            elif jobs:
                await self.publish(jobs)
            elif e.events:
                await self._publish_events(e.events)
        completed = [p.job for step in e.steps for p in step.jobs if p.status == "completed"]
        self._completed_since_checkpoint.extend(completed)
        if e.final:
            await self._finish()
            return
        if len(self._completed_since_checkpoint) >= self.ctx.checkpoint_every:
            await self._checkpoint()
        await self._maybe_write_record(force=e.status_changed is not None or e.paused_changed)

    async def publish(self, jobs: list[machine.Job]) -> None:
        """Publish job messages; note what the stream stored (journaled with the next step, or soon). What
        it did not store (NATS away, a stream electing its leader) is published again, under the same message
        ids, until it is."""
        outgoing = await self.ctx.dispatcher.prepare(self.state, jobs)
        placed = await self.ctx.dispatcher.publish(outgoing)
        loop = asyncio.get_running_loop()
        if placed:
            self._placed.extend((o.bundle, o.job_ids) for o in placed)
            if self._flush_timer is None:
                self._flush_timer = loop.call_later(PLACED_FLUSH_S, self._flush)
        if len(placed) < len(outgoing):
            if self._republish_timer is None:
                delay = REPUBLISH_BACKOFF_S[min(self._republish_attempt, len(REPUBLISH_BACKOFF_S) - 1)]
                self._republish_attempt += 1
                self._republish_timer = loop.call_later(delay, self._republish_due)
        else:
            self._republish_attempt = 0

    def republish_soon(self) -> None:
        if self._republish_timer is None:
            self._queue_effects(_REPUBLISH_DUE)

    def _republish_due(self) -> None:
        self._republish_timer = None
        self._queue_effects(_REPUBLISH_DUE)

    async def republish_unplaced(self) -> None:
        """Publish the messages of queued jobs the stream is not known to hold (the same bundles and ids: one it
        did store after all is dropped as a duplicate)."""
        placed_now = {job_id for _, job_ids in self._placed for job_id in job_ids}
        unplaced = [
            j
            for j in self.state.jobs
            if j.status == "queued" and not j.placed and j.token is not None and j.id not in placed_now
        ]
        if unplaced and not self.gone:
            await self.publish(unplaced)

    def _flush(self) -> None:
        self._flush_timer = None
        if self._placed:
            self.submit(_Flush())

    async def withdraw_stale(self) -> None:
        deleted = await self.ctx.dispatcher.withdraw_stale(self.state)
        if deleted:
            self.log.info("stale job messages withdrawn", messages=deleted, paused=self.state.paused)

    async def _withdraw(self) -> None:
        await self.ctx.dispatcher.withdraw(self.execution_id)
        await self.ctx.dispatcher.notify_cancel(self.execution_id, self.state.round)

    def _events(
        self, steps: list[Step], at: str, status_changed: ExecutionPatch | None, paused_changed: bool
    ) -> list[tuple[str, bytes, str]]:
        """The events of one commit, as of now: its job changes (batched), then the execution's own change."""
        state = self.state
        # One change per job per commit, in the order jobs first changed: what a job went through within a
        # few milliseconds (ready then queued, queued then completed) shows as where it ended up.
        changed: dict[str, None] = {}
        for step in steps:
            for patch in step.jobs:
                if change_of(patch):
                    changed[patch.job] = None
        messages: list[tuple[str, bytes, str]] = []
        if changed:
            changes = [job_change(state, state.jobs[state.by_id[job_id]], at) for job_id in changed]
            prog = progress(state.counts, len(state.jobs))
            parts: list[list[JobChange]] = [[]]
            size = 0
            for change in changes:
                n = 64 + len(change.error or "") + len((change.progress and change.progress.message) or "")
                if parts[-1] and size + n > EVENT_PART_BYTES:
                    parts.append([])
                    size = 0
                parts[-1].append(change)
                size += n
            subject = self.ctx.names.execution_event(self.execution_id, "jobs")
            for n, part in enumerate(parts):
                event = JobsEvent(execution_id=self.execution_id, round=state.round, at=at, jobs=part, progress=prog)
                messages.append((subject, _encode(event), jobs_event_msg_id(self.execution_id, self.seq, n)))
        if status_changed is not None and status_changed.status is not msgspec.UNSET:
            what: str = status_changed.status
            if what == "pending" and status_changed.round is not msgspec.UNSET:
                what = "retried"
            if what not in FINAL_EXECUTION_STATES:  # the final event goes out once the snapshot is written
                messages.append(self._execution_event(what, at))
        if paused_changed:
            what = "paused" if state.paused else "resumed"
            subject, data, _ = self._execution_event(what, at)
            messages.append((subject, data, execution_toggle_msg_id(self.execution_id, what, self.seq)))
        return messages

    def _execution_event(self, what: str, at: str) -> tuple[str, bytes, str]:
        state = self.state
        event = ExecutionEvent(
            execution_id=self.execution_id,
            workflow_id=state.workflow_id,
            status=state.status,
            at=at,
            progress=progress(state.counts, len(state.jobs)),
            checkpoint_id=self.checkpoint_id,
            error=state.error,
            round=state.round,
            paused=state.paused,
        )
        subject = self.ctx.names.execution_event(self.execution_id, what)
        return subject, _encode(event), execution_event_msg_id(self.execution_id, what, state.round)

    async def execution_event(self, what: str) -> None:
        await self._publish_events([self._execution_event(what, self.ctx.env().now)])

    async def _publish_events(self, messages: list[tuple[str, bytes, str]]) -> None:
        # Events describe what the journal already holds: one that cannot be stored is logged, not retried
        # forever (it would hold up the job messages behind it).
        try:
            await self.ctx.pipeline.publish_all(messages, attempts=3)
        except Exception as exc:
            self.log.warning("event not published", error=repr(exc))

    # --- records, checkpoints, the end ------------------------------------------------------------------------

    def record(self) -> ExecutionRecord:
        state = self.state
        return ExecutionRecord(
            execution_id=self.execution_id,
            workflow_id=state.workflow_id,
            status=state.status,
            created_at=state.created_at,
            started_at=self.started_at,
            completed_at=state.completed_at,
            job_count=len(state.jobs),
            parallelism=state.parallelism,
            counts=msgspec.structs.replace(state.counts),
            updated_at=self.ctx.env().now,
            round=state.round,
            shard=state.shard,
            journal_seq=self.seq,
            checkpoint_id=self.checkpoint_id,
            checkpoint_seq=self.checkpoint_seq,
            error=state.error,
            snapshot=self.snapshot,
            snapshot_parts=self.snapshot_parts,
            submitted_by=state.submitted_by,
            run_at=state.run_at,
            priority=state.priority,
            paused=state.paused,
            paused_at=state.paused_at,
        )

    async def _maybe_write_record(self, *, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        counts = msgspec.structs.astuple(self.state.counts)
        if not force and counts == self._record_counts:
            return
        wait = RECORD_INTERVAL_S - (loop.time() - self._record_at)
        if force or wait <= 0:
            await self.write_record()
        elif self._record_timer is None:
            self._record_timer = loop.call_later(wait, self._record_due)

    def _record_due(self) -> None:
        """The record is due (progress changed since it was written, and nothing else wrote it since)."""
        self._record_timer = None
        self._queue_effects(_RECORD_DUE)

    async def write_record(self) -> None:
        """Write the execution record; a record written by a newer owner (a later journal position) wins."""
        record = self.record()
        self._record_counts = msgspec.structs.astuple(record.counts)
        self._record_at = asyncio.get_running_loop().time()
        data = _encode(record)
        key = execution_key(self.execution_id)
        for _ in range(10):
            try:
                self.record_revision = await self.ctx.pipeline.kv_write(
                    self.ctx.bucket, key, data, last=self.record_revision
                )
                self.ctx.on_record(record, self.record_revision)
                return
            except JetStreamError as exc:
                if not exc.wrong_last_sequence:
                    raise
            found = await self.ctx.pipeline.kv_get(self.ctx.bucket, key)
            if found is None:
                self.record_revision = 0
                continue
            current = _record_decoder.decode(found[0])
            if current.journal_seq > self.seq:
                raise Fenced(f"record of {self.execution_id} written by a newer owner")
            self.record_revision = found[1]
        raise RuntimeError(f"could not write the record of {self.execution_id}")

    async def _checkpoint(self) -> None:
        checkpoint = await self._store_checkpoint()
        await self._publish_events([self._checkpoint_event(checkpoint)])

    async def _store_checkpoint(self) -> Checkpoint:
        state = self.state
        self.checkpoint_seq += 1
        checkpoint_id = f"{self.execution_id}-cp{self.checkpoint_seq}"
        cp = Checkpoint(
            checkpoint_id=checkpoint_id,
            execution_id=self.execution_id,
            seq=self.checkpoint_seq,
            round=state.round,
            at=self.ctx.env().now,
            status=state.status,
            counts=msgspec.structs.replace(state.counts),
            completed_jobs=self._completed_since_checkpoint,
        )
        self._completed_since_checkpoint = []
        await self.ctx.pipeline.kv_write(
            self.ctx.names.checkpoints_bucket, execution_key(self.execution_id), _encode(cp), last=None
        )
        self.checkpoint_id = checkpoint_id
        return cp

    def _checkpoint_event(self, cp: Checkpoint) -> tuple[str, bytes, str]:
        subject = self.ctx.names.execution_event(self.execution_id, "checkpoint")
        return subject, _encode(cp), checkpoint_msg_id(cp.checkpoint_id, cp.round)

    async def _finish(self) -> None:
        """The execution ended: checkpoint and snapshot its jobs, write the final record, announce both, purge
        its journal. Each step is idempotent: a takeover in the middle does them again. Writes that do not
        depend on each other go together: an end costs four round trips, not six."""
        state = self.state
        self._cancel_timers()
        generation = self.snapshot + 1
        parts = _snapshot_parts(state, generation)
        snapshot = asyncio.gather(
            *(
                self.ctx.pipeline.kv_write(
                    self.ctx.bucket, snapshot_key(self.execution_id, generation, n), data, last=None
                )
                for n, data in enumerate(parts)
            )
        )
        try:
            checkpoint = await self._store_checkpoint()
        finally:
            await snapshot
        previous = self.snapshot
        self.snapshot, self.snapshot_parts = generation, len(parts)
        await self.write_record()  # the end is committed: the snapshot it names is stored
        # In this order on the events stream: the last checkpoint, then the end a follower stops at.
        await self._publish_events(
            [self._checkpoint_event(checkpoint), self._execution_event(state.status, self.ctx.env().now)]
        )
        purges: list[Awaitable[object]] = [self.ctx.journal.purge(self.execution_id)]
        if previous:
            purges.append(
                self.ctx.js.purge_stream(
                    f"KV_{self.ctx.bucket}",
                    subject=f"$KV.{self.ctx.bucket}.{self.execution_id}.snapshot.{previous}.>",
                )
            )
        await asyncio.gather(*purges)
        self.log.info("execution finished", status=state.status, round=state.round)
        METRICS.execution_finished(state.status)
        self.finished.set()
        self.gone = True
        self.ctx.gates.forget(self)
        self.ctx.on_gone(self)

    async def finish_again(self) -> None:
        """Adopted already ended (its owner died while finishing): do the end's steps again."""
        await self._finish()

    # --- losing it ----------------------------------------------------------------------------------------------

    async def let_go(self, timeout_s: float = 5.0) -> None:
        """Hand the execution over (its shard is given away): finish the step in flight, then let go."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (self._commit_task is not None or self._effects_task is not None) and not self.gone:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            tasks = [t for t in (self._commit_task, self._effects_task) if t is not None]
            await asyncio.wait(tasks, timeout=remaining)
        await self._lost("its shard moved to another replica", planned=True)

    async def give_up(self, why: str) -> None:
        """Stop owning it without reading it back (the caller retries the adoption)."""
        await self._lost(why)

    async def _lost(
        self, why: str, *, items: list[Input] | None = None, reload: bool = False, planned: bool = False
    ) -> None:
        """Stop owning the execution: what was in flight is handed back (reports naked, commands told to try
        again). With `reload` the replica reads it back from its journal (a failure of unknown outcome)."""
        if self.gone:
            return
        self.gone = True
        self._cancel_timers()
        (self.log.info if planned else self.log.warning)("execution let go", reason=why, reload=reload)
        pending = (items or []) + self.inbox
        self.inbox = []
        refs = [i.ref for i in pending if isinstance(i, _Report)]
        await self._ack(refs, ok=False)
        for item in pending:
            if isinstance(item, _Command) and not item.future.done():
                item.future.set_exception(
                    Unavailable(f"execution {self.execution_id} is moving to another owner; try again")
                )
        self.ctx.gates.forget(self)
        self.ctx.on_gone(self)
        if reload:
            await self.ctx.on_reload(self)


def _merge_execution(steps: list[Step]) -> ExecutionPatch | None:
    merged: dict[str, Any] = {}
    for step in steps:
        if step.execution is not None:
            for name in ExecutionPatch.__struct_fields__:
                value = getattr(step.execution, name)
                if value is not msgspec.UNSET:
                    merged[name] = value
    return ExecutionPatch(**merged) if merged else None


def _snapshot_parts(state: ExecutionState, generation: int) -> list[bytes]:
    """The jobs of an ended execution as SnapshotParts of at most SNAPSHOT_PART_BYTES each."""
    chunks: list[list[JobRecord]] = [[]]
    size = 0
    for job in state.jobs:
        record = machine.record_of(state, job)
        n = len(_encode(record))
        if chunks[-1] and size + n > SNAPSHOT_PART_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(record)
        size += n
    total = len(chunks)
    return [
        _encode(SnapshotPart(execution_id=state.execution_id, generation=generation, part=n, parts=total, jobs=chunk))
        for n, chunk in enumerate(chunks)
    ]

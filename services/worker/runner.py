"""Consuming and running jobs.

For each (capability, type) the worker can serve — its capabilities plus `any`, times its handler types — the
scheduler hands it the durable consumer. Each is pulled with `shared.consume.PullConsumer`, asking only for what
the worker can start (its free slots, in messages: a message is a bundle of one or more jobs of one execution).
Jobs of a bundle wait for slots in arrival order; the bundle's message is kept alive with in-progress acks
while any of its jobs waits or runs (one keep-alive loop for all of them), and acked once every job's report is
stored. Reports go out batched (services/worker/reports.py).

A bundle delivered again (its first worker died or froze) is not run as a whole: each of its jobs is handed
back to the scheduler, which dispatches it alone — so one job that kills its worker cannot take its bundle
neighbours down with it, and after the configured deliveries it fails alone as a poison job.

Cancellation is the scheduler's: it takes an execution's queued messages off the job stream and tells workers to
stop that execution's running handlers (a CancelNotice for one round). The notice is remembered a few minutes only
to catch a message already on its way here; it never outlives its round.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg

from shared import tracing
from shared.commands import CommandError, request
from shared.consume import PullConsumer, delivery_of
from shared.keys import result_key
from shared.logging import capture_lines, get_logger
from shared.messages import (
    ANY_CAPABILITY,
    CancelNotice,
    ConsumerPauseAdvisory,
    ConsumerRef,
    ConsumerSet,
    EnsureConsumer,
    ErrorInfo,
    JobBundle,
    JobFinishedReport,
    JobItem,
    JobProgress,
    JobProgressReport,
    JobReturnedReport,
    JobStartedReport,
)
from shared.pipeline import Pipeline
from shared.service import ServiceContext
from shared.timeutil import now_iso

from .bands import Waiting, first_unclear, may_take
from .handlers import Handler, HandlerRegistry, JobContext, JobFailed, NonRetryable
from .options import WorkerOptions
from .reports import Reporter

__all__ = ["MAX_RESULT_BYTES", "Runner"]

log = get_logger(__name__)
MAX_RESULT_BYTES = 256 * 1024
START_REPORT_AFTER_S = 0.05
"""A job still running this long after it started is reported started (quicker ones only report their end)."""
CANCEL_MEMORY_S = 600.0
TRACEBACK_FRAMES = 15
TRACEBACK_BYTES = 8 * 1024
ERROR_BYTES = 8 * 1024
"""An error message is kept to this length (it travels in reports, the journal, events and listings)."""
PULL_EXPIRES_S = 1.0
QUICK_JOB_MS = 20.0
"""Jobs of a type this quick are fetched a little ahead of free slots (they free them within milliseconds)."""

_encode = msgspec.json.Encoder().encode


@dataclass
class _Pool:
    """One (capability, type, band) consumer and what the worker learned of its messages."""

    ref: ConsumerRef
    consumer: PullConsumer | None = None
    jobs_per_message: float = 1.0
    mean_ms: float | None = None
    paused: bool = False
    """As JetStream's last pause advisory said. Its requests go on (a missed advisory costs order, not
    progress)."""
    asking: bool = False
    """Its consumer was found gone and is being asked for again."""


@dataclass(eq=False)
class _Held:
    """A job message in this worker's hands: acked when all its jobs are reported, kept alive until then."""

    msg: Msg
    bundle: JobBundle
    pool: _Pool
    delivery: int
    open: int
    touched: bool = False
    """Some job of it started or was reported (a bundle nobody touched is simply naked at shutdown)."""


@dataclass(eq=False)
class _Run:
    item: JobItem
    held: _Held
    ctx: JobContext
    started_at: str
    task: asyncio.Task[None] | None = None
    start_reported: bool = False
    start_timer: asyncio.TimerHandle | None = None
    finished: bool = False


@dataclass
class _Cancelled:
    until: dict[tuple[str, int], float] = field(default_factory=dict)

    def add(self, execution_id: str, round_: int) -> None:
        now = time.monotonic()
        self.until[(execution_id, round_)] = now + CANCEL_MEMORY_S
        if len(self.until) > 10_000:
            self.until = {k: v for k, v in self.until.items() if v > now}

    def __contains__(self, key: tuple[str, int]) -> bool:
        deadline = self.until.get(key)
        return deadline is not None and deadline > time.monotonic()


class Runner:
    def __init__(self, ctx: ServiceContext, options: WorkerOptions, handlers: HandlerRegistry, grace_s: float) -> None:
        self.ctx = ctx
        self.options = options
        self.handlers = handlers
        self.grace_s = grace_s
        self.pipeline = Pipeline(ctx.nc, timeout=ctx.nats.request_timeout_s)
        self.reporter = Reporter(
            self.pipeline, ctx.names, options.worker_id, idle=self._idle, after_stored=self._flush_acks
        )
        self.running: dict[str, _Run] = {}
        """By dispatch token."""
        self.waiting: Waiting[tuple[JobItem, _Held]] = Waiting()
        self.held: dict[int, _Held] = {}
        """By the message's stream sequence."""
        self.pools: list[_Pool] = []
        self._top: int | None = None
        self._top_stale = True
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancelled = _Cancelled()
        self._decoder = msgspec.json.Decoder(JobBundle)
        self._threads = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="handler")
        self._to_ack: list[Msg] = []
        self.problem: str | None = None
        """Why the worker cannot take jobs yet (its heartbeats say it), e.g. the consumers it needs refused."""
        self.log = log.bind(workerId=options.worker_id)

    @property
    def load(self) -> int:
        return len(self.running)

    def _idle(self) -> bool:
        return not self.running and not self.waiting

    def pairs(self) -> list[tuple[str, str]]:
        caps = sorted({*self.options.capabilities, ANY_CAPABILITY})
        return [(cap, job_type) for cap in caps for job_type in self.handlers.types()]

    # --- start --------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        names = self.ctx.names
        await self.pipeline.start()
        await self.ctx.nc.subscribe(names.workers_cancel, cb=self._on_cancel)
        await self.ctx.nc.subscribe(names.jobs_pause_advisories, cb=self._on_pause_advisory)
        for cap, job_type in self.pairs():
            for ref in (await self._consumers(cap, job_type)).consumers:
                pool = _Pool(ref)
                pool.consumer = PullConsumer(
                    self.ctx.nc,
                    stream=ref.stream,
                    consumer=ref.consumer,
                    handle=functools.partial(self._on_messages, pool),
                    credit=functools.partial(self._credit, pool),
                    # Short-lived requests: one outstanding on this consumer when a job of another consumer took
                    # the last slot is credit the worker no longer has (a frozen worker would sit on what it
                    # brings). Their expiry says they are gone: no heartbeats needed.
                    expires_s=PULL_EXPIRES_S,
                    heartbeat_s=PULL_EXPIRES_S,
                    on_drained=self._on_drained,
                    on_clear_changed=self._bands_changed,
                    on_missing=functools.partial(self._ask_again, pool),
                    probe=True,
                )
                self.pools.append(pool)
                self._bands_changed()
                self._tasks.append(asyncio.create_task(pool.consumer.run(), name=f"pull {ref.consumer}"))
        self.problem = None
        self._tasks.append(asyncio.create_task(self._keepalive(), name="keepalive"))
        self.ctx.reconnect_listeners.append(self._on_reconnect)
        self.log.info("consuming", consumers=[p.ref.consumer for p in self.pools], concurrency=self.options.concurrency)

    def _on_reconnect(self) -> None:
        for pool in self.pools:
            if pool.consumer is not None:
                pool.consumer.reset()

    async def _consumers(self, cap: str, job_type: str) -> ConsumerSet:
        """Ask the scheduler (owner of the job stream) for the consumers (one per priority band); wait for it if
        it is not up yet."""
        delay = 0.2
        while True:
            try:
                return await request(
                    self.ctx.nc,
                    self.ctx.names.scheduler("consumer"),
                    EnsureConsumer(capability=cap, type=job_type),
                    ConsumerSet,
                    service="scheduler",
                    timeout=self.ctx.nats.request_timeout_s,
                )
            except CommandError as exc:
                if self.ctx.stop.is_set():
                    raise
                self.problem = f"no consumer for ({cap}, {job_type}) yet: {exc.message}"
                self.log.warning("waiting for the scheduler", error=exc.message, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- taking messages ----------------------------------------------------------------------------------------

    def _top_unclear(self) -> int | None:
        """Kept until a consumer's `clear` or a pause changes: asked for by every pool on every slot freed, it
        would otherwise cost a walk of all the pools (a band of every capability and type) each time."""
        if self._top_stale:
            self._top = first_unclear(
                (p.ref.priority, p.paused or p.consumer.clear) for p in self.pools if p.consumer is not None
            )
            self._top_stale = False
        return self._top

    def _bands_changed(self) -> None:
        self._top_stale = True

    def _ask_again(self, pool: _Pool) -> None:
        """The pool's consumer is gone (removed as stale while no worker served its pool, or by an operator):
        ask the scheduler for it again, then pull as before."""
        pair = self.ctx.names.jobs_consumer_pair(pool.ref.consumer)
        if pool.asking or pair is None or self.stopping.is_set():
            return
        pool.asking = True

        async def again() -> None:
            try:
                await self._consumers(*pair)
                self.log.info("job consumer made again", consumer=pool.ref.consumer)
            except Exception as exc:  # NATS away, or stopping
                if self.stopping.is_set():
                    return
                self.log.warning(
                    "job consumer not made again; pulling to see", consumer=pool.ref.consumer, error=repr(exc)
                )
                await asyncio.sleep(1.0)
            finally:
                pool.asking = False
            # Pull again: a pull that finds it still missing asks for it again.
            if pool.consumer is not None:
                pool.consumer.reset()

        task = asyncio.create_task(again(), name=f"consumer {pool.ref.consumer}")
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _on_pause_advisory(self, msg: Msg) -> None:
        """A paused consumer answers "no messages" and holds long requests past its resume: while it is paused
        it holds nothing for us (lower bands go on), and once resumed nothing is known of it until it is
        probed again. JetStream sends these in the order the consumers changed, and the scheduler resumes the
        highest band first, so a higher band's consumers are unknown again before a lower one's are pulled."""
        try:
            advisory = msgspec.json.decode(msg.data, type=ConsumerPauseAdvisory)
        except msgspec.DecodeError:
            return
        for pool in self.pools:
            if pool.ref.consumer == advisory.consumer and pool.consumer is not None:
                pool.paused = advisory.paused
                self._bands_changed()
                if not advisory.paused:
                    pool.consumer.reset()
        self._start_waiting()
        self._wake()

    def _credit(self, pool: _Pool) -> int:
        """Messages this consumer may have outstanding: the free slots, in messages of the size it has seen;
        none while a higher band holds jobs (see bands.py)."""
        if self.stopping.is_set():
            return 0
        band = pool.ref.priority
        if not may_take(band, self._top_unclear()):
            return 0
        free = self.options.concurrency - len(self.running) - self.waiting.up_to(band)
        if pool.mean_ms is not None and pool.mean_ms < QUICK_JOB_MS:
            free += self.options.concurrency // 2
        if free <= 0:
            return 0
        return max(1, math.ceil(free / max(1.0, pool.jobs_per_message)))

    def _wake(self) -> None:
        # Only the bands that may take jobs now: a lower band's pull would ask for nothing. When a higher band
        # runs dry (`_on_drained`) or is paused, this runs again with the lower bands let in.
        top = self._top_unclear()
        for pool in self.pools:
            if pool.consumer is not None and may_take(pool.ref.priority, top):
                pool.consumer.wake()

    def _on_drained(self) -> None:
        """A band ran dry: held jobs of lower bands may start, their consumers be pulled."""
        self._start_waiting()
        self._wake()

    async def _on_messages(self, pool: _Pool, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                bundle = self._decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.log.error("unreadable job message terminated", subject=msg.subject, error=str(exc))
                await msg.term()
                continue
            delivery, seq = delivery_of(msg)
            n = len(bundle.jobs)
            pool.jobs_per_message += 0.2 * (n - pool.jobs_per_message)
            held = _Held(msg, bundle, pool, delivery, open=n)
            self.held[seq] = held
            if (bundle.execution_id, bundle.round) in self._cancelled:
                self._close(held, n)
            elif delivery > pool.ref.max_deliveries:
                self._poison(held)
            elif delivery > 1 and n > 1:
                self._split(held)
            else:
                self.waiting.add(pool.ref.priority, ((item, held) for item in bundle.jobs))
        self._start_waiting()
        await self._flush_acks()

    def _poison(self, held: _Held) -> None:
        """Every earlier delivery ended without a result: the process running it died (or froze past its lease)
        each time. Running it again would kill another worker."""
        deliveries = held.delivery - 1
        message = (
            f"delivered {deliveries} times without a result: the worker running it died or stopped responding "
            "each time (poison job)"
        )
        for item in held.bundle.jobs:
            self.log.error(
                "poison job: failing it instead of running it again", jobId=item.job_id, deliveries=deliveries
            )
            report = self._finished(held, item, now_iso(), 0.0, error=ErrorInfo(type="PoisonJob", message=message))
            self.reporter.add(held.bundle.shard, report, functools.partial(self._close, held, 1))

    def _split(self, held: _Held) -> None:
        for item in held.bundle.jobs:
            report = JobReturnedReport(
                execution_id=held.bundle.execution_id,
                job_id=item.job_id,
                token=item.token,
                at=now_iso(),
                reason="its bundle was delivered again (a worker died running it): each job is dispatched alone",
                delivery=held.delivery,
            )
            self.reporter.add(held.bundle.shard, report, functools.partial(self._close, held, 1))

    def _close(self, held: _Held, jobs: int) -> None:
        """`jobs` of the message's jobs are done with (reported, or dropped by a cancel): ack it once all are."""
        held.open -= jobs
        if held.open <= 0:
            _, seq = delivery_of(held.msg)
            if self.held.pop(seq, None) is not None:
                self._to_ack.append(held.msg)

    async def _flush_acks(self) -> None:
        """Ack the messages whose jobs are all reported (after the reporter stored them, or a cancel)."""
        msgs, self._to_ack = self._to_ack, []
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.ack()

    def _start_waiting(self) -> None:
        top = self._top_unclear()
        while len(self.running) < self.options.concurrency and not self.stopping.is_set():
            band = self.waiting.first_band()
            if band is None or not may_take(band, top):
                return  # a higher band's jobs are on their way (or its requests will say it ran dry)
            item, held = self.waiting.popleft(band)
            if (held.bundle.execution_id, held.bundle.round) in self._cancelled:
                self._close(held, 1)
                continue
            self._start(item, held)

    def _start(self, item: JobItem, held: _Held) -> None:
        bundle = held.bundle
        handler = self.handlers.get(bundle.type)
        assert handler is not None, "consumers are only bound for types with a handler"
        held.touched = True
        ctx = JobContext(
            execution_id=bundle.execution_id,
            job_id=item.job_id,
            name=item.name,
            type=bundle.type,
            attempt=item.attempt,
            config=item.config,
            dependencies=dict(item.dependencies),
            worker_id=self.options.worker_id,
            log=self.log.bind(executionId=bundle.execution_id, jobId=item.job_id, attempt=item.attempt),
            workflow_id=bundle.workflow_id,
            round=bundle.round,
        )
        run = _Run(item, held, ctx, started_at=now_iso())
        ctx.on_progress = lambda fraction, message, run=run: self._progress(run, fraction, message)
        run.start_timer = asyncio.get_running_loop().call_later(START_REPORT_AFTER_S, self._report_start, run)
        self.running[item.token] = run
        run.task = asyncio.create_task(self._run(run, handler), name=f"job {item.job_id}")

    def _report_start(self, run: _Run) -> None:
        run.start_timer = None
        if run.finished or run.start_reported:
            return
        run.start_reported = True
        held = run.held
        report = JobStartedReport(
            execution_id=held.bundle.execution_id,
            job_id=run.item.job_id,
            token=run.item.token,
            at=run.started_at,
            attempt=run.item.attempt,
            delivery=held.delivery,
        )
        self.reporter.add(held.bundle.shard, report)

    def _progress(self, run: _Run, fraction: float | None, message: str | None) -> None:
        if run.finished:
            return
        held = run.held
        report = JobProgressReport(
            execution_id=held.bundle.execution_id,
            job_id=run.item.job_id,
            token=run.item.token,
            at=now_iso(),
            progress=JobProgress(fraction=fraction, message=message, at=now_iso()),
        )
        self.reporter.add(held.bundle.shard, report)

    # --- running a job ------------------------------------------------------------------------------------------

    async def _run(self, run: _Run, handler: Handler) -> None:
        item, held = run.item, run.held
        t0 = time.perf_counter()
        report: JobFinishedReport | None = None
        try:
            bundle = held.bundle
            attributes = {"jetdag.execution_id": bundle.execution_id, "jetdag.job_id": item.job_id}
            with tracing.span(f"job {bundle.type}", headers=held.msg.headers, kind="consumer", attributes=attributes):
                report = await self._execute(run, handler)
                if report is not None and tracing.enabled():
                    report.traceparent = tracing.current_traceparent()
        finally:
            run.finished = True
            if run.start_timer is not None:
                run.start_timer.cancel()
            self.running.pop(item.token, None)
            duration = (time.perf_counter() - t0) * 1000
            pool = held.pool
            pool.mean_ms = duration if pool.mean_ms is None else pool.mean_ms + 0.2 * (duration - pool.mean_ms)
            if report is not None:
                size = len(report.result) if isinstance(report.result, msgspec.Raw) else 256
                self.reporter.add(held.bundle.shard, report, lambda: self._close(held, 1), size=size)
            self._start_waiting()
            self._wake()

    async def _execute(self, run: _Run, handler: Handler) -> JobFinishedReport | None:
        item, ctx = run.item, run.ctx
        started = time.perf_counter()
        value: Any = None
        error: ErrorInfo | None = None
        retryable = True
        cancelled = False
        with capture_lines() as lines:
            try:
                if item.fetch_dependencies:
                    ctx.dependencies.update(await self._fetch_dependencies(run))
                if asyncio.iscoroutinefunction(handler):
                    coro = handler(ctx)
                    value = await asyncio.wait_for(coro, item.timeout_s) if item.timeout_s else await coro
                else:
                    value = await self._run_sync(handler, ctx, item.timeout_s)
            except TimeoutError:
                ctx.cancelled.set()
                error = ErrorInfo(type="TimeoutError", message=f"timed out after {item.timeout_s:g} s")
            except asyncio.CancelledError:
                if self.stopping.is_set() and not ctx.cancelled.is_set():
                    return None  # handed back at shutdown (reported by stop)
                cancelled = True
                error = ErrorInfo(type="Cancelled", message="cancelled")
            except NonRetryable as exc:
                error, retryable = _error_info(exc, str(exc) or "failed"), False
            except JobFailed as exc:
                error = _error_info(exc, str(exc) or "failed", traceback_too=False)
            except Exception as exc:
                error = _error_info(exc, f"{type(exc).__name__}: {exc}")
            if error is not None and lines:
                error.log = list(lines)
        result: Any = None
        if error is None:
            try:
                data = _encode(value)
            except (TypeError, msgspec.EncodeError, OverflowError) as exc:
                error = ErrorInfo(type=type(exc).__name__, message=f"result is not JSON-serialisable: {exc}")
            else:
                if len(data) > MAX_RESULT_BYTES:
                    error = ErrorInfo(
                        type="ResultTooLarge",
                        message=f"result is {len(data)} bytes of JSON; the limit is {MAX_RESULT_BYTES}",
                    )
                else:
                    result = msgspec.Raw(data)
        duration = round((time.perf_counter() - started) * 1000, 3)
        if error is None:
            ctx.log.info("job completed", duration_ms=duration)
        else:
            ctx.log.info("job failed", error=error.message, duration_ms=duration)
        return self._finished(
            run.held,
            item,
            run.started_at,
            duration,
            result=result,
            error=error,
            retryable=retryable,
            cancelled=cancelled,
        )

    async def _run_sync(self, handler: Handler, ctx: JobContext, timeout_s: float | None) -> Any:
        """A plain `def` handler in the worker's thread pool. Its slot stays taken until the thread returns,
        whatever happens meanwhile (a timeout, a cancel): Python cannot stop a thread, and a freed slot would
        let one more job run than the worker promised."""
        # In a copy of this task's context: what the handler logs from its thread is captured as the job's.
        run = contextvars.copy_context().run
        future = asyncio.get_running_loop().run_in_executor(self._threads, run, handler, ctx)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            ctx.cancelled.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(future)
            raise

    def _finished(
        self,
        held: _Held,
        item: JobItem,
        started_at: str,
        duration_ms: float,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        retryable: bool = True,
        cancelled: bool = False,
    ) -> JobFinishedReport:
        """This worker's report of one attempt."""
        return JobFinishedReport(
            execution_id=held.bundle.execution_id,
            job_id=item.job_id,
            token=item.token,
            at=now_iso(),
            attempt=item.attempt,
            ok=error is None,
            started_at=started_at,
            duration_ms=duration_ms,
            result=result,
            error=error,
            retryable=retryable,
            cancelled=cancelled,
            delivery=held.delivery,
        )

    async def _fetch_dependencies(self, run: _Run) -> dict[str, Any]:
        out = {}
        bucket = self.ctx.names.executions_bucket
        for dep in run.item.fetch_dependencies:
            found = await self.pipeline.kv_get(bucket, result_key(run.held.bundle.execution_id, dep))
            if found is not None:
                out[dep] = msgspec.json.decode(found[0])
        return out

    # --- keeping messages alive, cancels ------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Renew the lease of every message in hand (one loop for all of them, not a task per message)."""
        interval = max(0.2, min((p.ref.ack_wait_s for p in self.pools), default=5.0) / 4)
        while True:
            await asyncio.sleep(interval)
            for held in list(self.held.values()):
                with contextlib.suppress(Exception):
                    await held.msg.in_progress()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            notice = msgspec.json.decode(msg.data, type=CancelNotice)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self._cancelled.add(notice.execution_id, notice.round)
        for run in list(self.running.values()):
            bundle = run.held.bundle
            if bundle.execution_id == notice.execution_id and bundle.round <= notice.round:
                run.ctx.cancelled.set()
                run.ctx.log.info("cancelling: the execution was cancelled")
                if run.task is not None:
                    run.task.cancel()
        for _, held in self.waiting.remove_if(
            lambda entry: entry[1].bundle.execution_id == notice.execution_id and entry[1].bundle.round <= notice.round
        ):
            self._close(held, 1)
        self._start_waiting()
        await self._flush_acks()

    # --- shutdown -----------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop taking jobs; let running ones finish within the grace period; hand back the rest."""
        self.stopping.set()
        for pool in self.pools:
            if pool.consumer is not None:
                pool.consumer.stop()
                for msg in pool.consumer.take_buffered():
                    with contextlib.suppress(Exception):
                        await msg.nak()
        if self.running:
            self.log.info("waiting for running jobs", jobs=len(self.running), grace_s=self.grace_s)
            tasks = [run.task for run in self.running.values() if run.task is not None]
            await asyncio.wait(tasks, timeout=self.grace_s)
        unfinished = list(self.running.values())
        for run in unfinished:
            run.ctx.log.warning("handing back unfinished job")
            if run.task is not None:
                run.task.cancel()
        if unfinished:
            await asyncio.wait([r.task for r in unfinished if r.task is not None], timeout=5)
        # What did not run (or did not finish) goes back to the scheduler: a message nothing of which was
        # touched is naked (delivered again at once); of one partly done, each leftover job is handed back.
        leftovers: dict[_Held, list[JobItem]] = {}
        for item, held in self.waiting:
            leftovers.setdefault(held, []).append(item)
        for run in unfinished:
            leftovers.setdefault(run.held, []).append(run.item)
        self.waiting.clear()
        for held, items in leftovers.items():
            if not held.touched and held.open == len(held.bundle.jobs):
                _, seq = delivery_of(held.msg)
                self.held.pop(seq, None)
                with contextlib.suppress(Exception):
                    await held.msg.nak()
                self.log.info("handed back", executionId=held.bundle.execution_id, jobs=len(items))
                continue
            for item in items:
                report = JobReturnedReport(
                    execution_id=held.bundle.execution_id,
                    job_id=item.job_id,
                    token=item.token,
                    at=now_iso(),
                    reason="its worker stopped before it finished",
                    delivery=held.delivery,
                )
                self.reporter.add(held.bundle.shard, report, functools.partial(self._close, held, 1))
                self.log.info("handed back", executionId=held.bundle.execution_id, jobId=item.job_id)
        await self.reporter.drain(timeout=5)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait(self._tasks, timeout=3)
        self._threads.shutdown(wait=False, cancel_futures=True)


def _error_info(exc: BaseException, message: str, *, traceback_too: bool = True) -> ErrorInfo:
    """The attempt's error: its type, message (bounded) and a bounded traceback (the last frames: the user's
    code)."""
    tb = None
    if traceback_too:
        text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))
        tb = text[-TRACEBACK_BYTES:]
    if len(message) > ERROR_BYTES:
        message = message[: ERROR_BYTES - 1] + "…"
    return ErrorInfo(type=type(exc).__name__, message=message, traceback=tb)

"""Consuming and running jobs.

For each (capability, type) the worker can serve — its capabilities plus `any`, times its handler types —
the scheduler hands it the durable consumer; the worker pulls from it only when it has a free slot, so it
never receives a job it cannot run and never holds more than `--concurrency`. While a job runs its message is
kept alive with in-progress acks (the consumer's ack wait is short, so a dead worker's jobs come back fast).
The result is published, durably, before the message is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared.commands import CommandError, request
from shared.logging import get_logger
from shared.messages import (
    ANY_CAPABILITY,
    ConsumerRef,
    EnsureConsumer,
    ExecutionEvent,
    JobMessage,
    JobRecord,
    JobResult,
    JobStarted,
)
from shared.pipeline import Pipeline
from shared.service import ServiceContext
from shared.timeutil import now_iso

from .handlers import HandlerRegistry, JobContext, JobFailed
from .options import WorkerOptions

__all__ = ["MAX_RESULT_BYTES", "Runner"]

log = get_logger(__name__)
MAX_RESULT_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 1.0
MAX_BATCH = 64
BURST_TIMEOUT_S = 0.05
PUBLISH_ATTEMPTS = 8
_encode = msgspec.json.Encoder().encode


class Slots:
    """A counting semaphore that can also take several free slots at once without waiting, and lets loops
    wait for "some slot is free" without taking one."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._changed = asyncio.Event()
        self._waking = False

    def locked(self) -> bool:
        return self.free <= 0

    def try_acquire(self, limit: int) -> int:
        n = min(limit, max(0, self.free))
        self.free -= n
        return n

    async def acquire(self) -> None:
        while self.free <= 0 and not self._waking:
            self._changed.clear()
            await self._changed.wait()
        self.free -= 1

    async def wait_free(self) -> None:
        while self.free <= 0 and not self._waking:
            self._changed.clear()
            await self._changed.wait()

    def release(self, n: int = 1) -> None:
        if n > 0:
            self.free += n
            self._changed.set()

    def wake_all(self) -> None:
        """Shutdown: let every waiter return (they check the stop flag)."""
        self._waking = True
        self._changed.set()


class Runner:
    def __init__(self, ctx: ServiceContext, options: WorkerOptions, handlers: HandlerRegistry, grace_s: float) -> None:
        self.ctx = ctx
        self.options = options
        self.handlers = handlers
        self.grace_s = grace_s
        # FIFO-fair: a pull loop whose long-poll timed out queues behind the loops already waiting.
        self.slots = Slots(options.concurrency)
        self._subs: list[Any] = []
        self.running: dict[tuple[str, str], tuple[asyncio.Task[Any], JobContext, Msg]] = {}
        self.stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._decoder = msgspec.json.Decoder(JobMessage)
        self._kv: KeyValue | None = None
        self.pipeline = Pipeline(ctx.nc, timeout=ctx.nats.request_timeout_s)
        self.log = log.bind(workerId=options.worker_id)

    @property
    def load(self) -> int:
        return len(self.running)

    def pairs(self) -> list[tuple[str, str]]:
        caps = sorted({*self.options.capabilities, ANY_CAPABILITY})
        return [(cap, job_type) for cap in caps for job_type in self.handlers.types()]

    async def start(self) -> None:
        names = self.ctx.names
        await self.pipeline.start()
        await self.ctx.nc.subscribe(names.cancellations, cb=self._on_cancel)
        for cap, job_type in self.pairs():
            ref = await self._consumer(cap, job_type)
            sub = await self.ctx.js.pull_subscribe_bind(ref.consumer, stream=ref.stream)
            self._subs.append(sub)
            self._loops.append(asyncio.create_task(self._loop(sub, ref), name=f"pull {ref.consumer}"))
        self.log.info(
            "consuming", consumers=[f"{c}__{t}" for c, t in self.pairs()], concurrency=self.options.concurrency
        )

    async def _consumer(self, cap: str, job_type: str) -> ConsumerRef:
        """Ask the scheduler (owner of the job stream) for the consumer; wait for it if it is not up yet."""
        delay = 0.2
        while True:
            try:
                return await request(
                    self.ctx.nc,
                    self.ctx.names.scheduler("consumer"),
                    EnsureConsumer(capability=cap, type=job_type),
                    ConsumerRef,
                    service="scheduler",
                    timeout=self.ctx.nats.request_timeout_s,
                )
            except CommandError as exc:
                if self.ctx.stop.is_set():
                    raise
                self.log.warning("waiting for the scheduler", error=exc.message, retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- slots and the pull loops ---------------------------------------------------------------------
    #
    # Every consumer has one loop with one outstanding long-poll for a single message, issued only while a
    # slot is free: a job for any of the consumers is picked up at once, without reserving slots that other
    # consumers' jobs would wait for. After a message arrives the loop takes the free slots it can and pulls
    # that many more in one batch (the throughput path). Two loops can race for the last slot; the loser
    # keeps its message alive (in-progress acks) until a slot frees, so nothing is redelivered meanwhile.

    async def _acquire(self) -> None:
        await self.slots.acquire()

    def _try_acquire(self, limit: int) -> int:
        return self.slots.try_acquire(limit)

    def _give_slots(self, n: int) -> None:
        self.slots.release(n)

    async def _loop(self, sub: Any, ref: ConsumerRef) -> None:
        while not self.stopping.is_set():
            await self.slots.wait_free()
            if self.stopping.is_set():
                return
            try:
                msgs: list[Msg] = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                continue
            except Exception as exc:
                if not self.stopping.is_set():
                    self.log.warning("fetch failed", consumer=ref.consumer, error=repr(exc))
                    await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self._admit(msg, ref)
            while not self.stopping.is_set():
                n = self._try_acquire(MAX_BATCH)
                if n == 0:
                    break
                try:
                    more: list[Msg] = await sub.fetch(n, timeout=BURST_TIMEOUT_S)
                except Exception:
                    more = []
                self._give_slots(n - len(more))
                for msg in more:
                    await self._start(msg, ref)
                if len(more) < n:
                    break

    async def _admit(self, msg: Msg, ref: ConsumerRef) -> None:
        """Take a slot for a message that arrived without one (waiting, if need be, with the message kept alive)."""
        if not self.slots.locked():
            await self._acquire()
        else:
            keepalive = asyncio.create_task(self._keepalive(msg, ref.ack_wait_s))
            try:
                await self._acquire()
            finally:
                keepalive.cancel()
        if self.stopping.is_set():
            self._give_slots(1)
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        await self._start(msg, ref)

    async def _start(self, msg: Msg, ref: ConsumerRef) -> None:
        try:
            job = self._decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            self.log.error("unreadable job message terminated", subject=msg.subject, error=str(exc))
            await msg.term()
            self._give_slots(1)
            return
        key = (job.execution_id, job.job_id)
        handler = self.handlers.get(job.type)
        assert handler is not None, "consumers are only bound for types with a handler"
        ctx = JobContext(
            execution_id=job.execution_id,
            job_id=job.job_id,
            name=job.name,
            type=job.type,
            attempt=job.attempt,
            config=job.config,
            dependencies=dict(job.dependencies),
            worker_id=self.options.worker_id,
            log=self.log.bind(executionId=job.execution_id, jobId=job.job_id, attempt=job.attempt),
        )
        task = asyncio.create_task(self._run(job, ctx, msg, ref))
        self.running[key] = (task, ctx, msg)

    async def _run(self, job: JobMessage, ctx: JobContext, msg: Msg, ref: ConsumerRef) -> None:
        key = (job.execution_id, job.job_id)
        keepalive: asyncio.Task[None] | None = None
        try:
            if job.execution_id in self._cancelled:
                ctx.log.info("dropping job of a cancelled execution")
                await msg.ack()
                return
            deliveries = msg.metadata.num_delivered or 1
            if deliveries > ref.max_deliveries:
                # Every earlier delivery ended without a result: the process running it died (or froze past
                # its lease) each time. Running it again would kill another worker.
                ctx.log.error("poison job: failing it instead of running it again", deliveries=deliveries)
                poison = self._result(
                    job,
                    error=(
                        f"delivered {deliveries - 1} times without a result: the worker running it died or "
                        "stopped responding each time (poison job)"
                    ),
                )
                await self._publish(self.ctx.names.job_event(job.execution_id, job.job_id, "result"), poison, job, "r")
                await msg.ack()
                return
            keepalive = asyncio.create_task(self._keepalive(msg, ref.ack_wait_s))
            started = JobStarted(
                execution_id=job.execution_id,
                job_id=job.job_id,
                attempt=job.attempt,
                round=job.round,
                worker_id=self.options.worker_id,
                at=now_iso(),
            )
            # The start report travels while the handler runs; it must be stored before the result is sent.
            reporting = asyncio.create_task(
                self._publish(self.ctx.names.job_event(job.execution_id, job.job_id, "started"), started, job, "s")
            )
            try:
                result = await self._execute(job, ctx)
            finally:
                await reporting
            if result is None:  # handed back at shutdown
                return
            await self._publish(self.ctx.names.job_event(job.execution_id, job.job_id, "result"), result, job, "r")
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Publishing the report failed for good (NATS gone for long): leave the message unacked so it is
            # delivered again; the job's report is what counts, not this attempt's effort.
            ctx.log.error("job report not delivered; the job will be redelivered", error=repr(exc))
        finally:
            if keepalive is not None:
                keepalive.cancel()
            self.running.pop(key, None)
            self._give_slots(1)

    async def _execute(self, job: JobMessage, ctx: JobContext) -> JobResult | None:
        started = time.perf_counter()
        handler = self.handlers.get(job.type)
        assert handler is not None
        ok, value, error, cancelled = False, None, None, False
        try:
            if job.fetch_dependencies:
                ctx.dependencies.update(await self._fetch_dependencies(job))
            ctx.log.debug("job started")
            coro = self.handlers.call(handler, ctx)
            value = await asyncio.wait_for(coro, job.timeout_s) if job.timeout_s else await coro
            size = len(_encode(value))
            if size > MAX_RESULT_BYTES:
                error = f"result is {size} bytes of JSON; the limit is {MAX_RESULT_BYTES}"
                value = None
            else:
                ok = True
        except TimeoutError:
            ctx.cancelled.set()
            error = f"timed out after {job.timeout_s:g} s"
        except asyncio.CancelledError:
            if self.stopping.is_set() and job.execution_id not in self._cancelled:
                return None
            cancelled, error = True, "cancelled"
        except JobFailed as exc:
            error = str(exc) or "failed"
        except (TypeError, msgspec.EncodeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration = round((time.perf_counter() - started) * 1000, 3)
        if ok:
            ctx.log.info("job completed", duration_ms=duration)
        else:
            ctx.log.info("job failed", error=error, duration_ms=duration)
        return self._result(job, ok=ok, duration_ms=duration, result=value, error=error, cancelled=cancelled)

    def _result(
        self,
        job: JobMessage,
        *,
        ok: bool = False,
        duration_ms: float = 0.0,
        result: Any = None,
        error: str | None = None,
        cancelled: bool = False,
    ) -> JobResult:
        """This worker's report of one attempt of `job`."""
        return JobResult(
            execution_id=job.execution_id,
            job_id=job.job_id,
            attempt=job.attempt,
            round=job.round,
            worker_id=self.options.worker_id,
            ok=ok,
            at=now_iso(),
            duration_ms=duration_ms,
            result=result,
            error=error,
            cancelled=cancelled,
        )

    async def _fetch_dependencies(self, job: JobMessage) -> dict[str, Any]:
        if self._kv is None:
            self._kv = await self.ctx.js.key_value(self.ctx.names.executions_bucket)
        out = {}
        for dep in job.fetch_dependencies:
            try:
                entry = await self._kv.get(f"{job.execution_id}.job.{dep}")
            except KeyNotFoundError:
                continue
            assert entry.value is not None
            out[dep] = msgspec.json.decode(entry.value, type=JobRecord).result
        return out

    async def _publish(self, subject: str, report: msgspec.Struct, job: JobMessage, kind: str) -> None:
        """Durable publish, retried through NATS blips; its message id makes a retry a no-op."""
        msg_id = f"{job.execution_id}.{job.job_id}.r{job.round}.a{job.attempt}.{kind}"
        await self.pipeline.publish_all([(subject, _encode(report), msg_id)], attempts=PUBLISH_ATTEMPTS)

    async def _keepalive(self, msg: Msg, ack_wait_s: float) -> None:
        interval = max(0.2, ack_wait_s / 4)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = msgspec.json.decode(msg.data, type=ExecutionEvent)
        except msgspec.DecodeError:
            return
        self._cancelled[event.execution_id] = None
        while len(self._cancelled) > 10_000:
            self._cancelled.popitem(last=False)
        for (execution_id, _), (task, ctx, _) in list(self.running.items()):
            if execution_id == event.execution_id:
                ctx.cancelled.set()
                task_ctx = ctx
                task_ctx.log.info("cancelling: the execution was cancelled")
                task.cancel()

    # --- shutdown ------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop taking jobs; let running ones finish within the grace period; hand back the rest."""
        self.stopping.set()
        self.slots.wake_all()
        # Each loop ends once its long-poll returns; together, not one after the other, so the bound holds.
        if self._loops:
            await asyncio.wait(self._loops, timeout=FETCH_TIMEOUT_S + 2)
        if self.running:
            self.log.info("waiting for running jobs", jobs=len(self.running), grace_s=self.grace_s)
            tasks = [task for task, _, _ in self.running.values()]
            await asyncio.wait(tasks, timeout=self.grace_s)
        for (execution_id, job_id), (task, ctx, msg) in list(self.running.items()):
            ctx.log.warning("handing back unfinished job")
            task.cancel()
            with contextlib.suppress(Exception):
                await msg.nak()
            self.log.info("handed back", executionId=execution_id, jobId=job_id)
        for loop in self._loops:
            loop.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

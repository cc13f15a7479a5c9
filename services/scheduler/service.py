"""The scheduler service: executions, the job stream and its consumers, queue control.

Several replicas may run at once: commands are queue-grouped, worker reports are shared through one durable
consumer, and every state change is a compare-and-set (see `engine.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from contextlib import AsyncExitStack
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from shared.commands import Endpoint, Invalid, NotFound, Unavailable, add_endpoints
from shared.ids import check_id, check_name
from shared.jetstream import (
    ensure_bucket,
    ensure_stream,
    events_stream_config,
    jobs_stream_config,
    kv_config,
)
from shared.logging import get_logger
from shared.messages import (
    FINAL_EXECUTION_STATES,
    ConsumerRef,
    EnsureConsumer,
    ExecuteCommand,
    ExecuteRequest,
    ExecutionList,
    ExecutionRecord,
    ExecutionRef,
    ExecutionView,
    JobList,
    JobResult,
    JobStarted,
    ListExecutions,
    QueueControl,
    QueueStats,
    QueueStatsReply,
)
from shared.pipeline import Pipeline
from shared.service import ServiceContext
from shared.settings import ExecutionSettings, load
from shared.timeutil import ms_from_iso, now_ms

from .engine import Engine, EngineSettings, view
from .index import ExecutionIndex
from .queue import JobQueue
from .retention import BATCH as RETENTION_BATCH
from .retention import Retention
from .store import Store

__all__ = ["SchedulerService"]

log = get_logger(__name__)
VERSION = "0.1.0"
REPORTS_CONSUMER = "scheduler"
REPORT_BATCH = 256


class SchedulerService:
    name = "scheduler"

    def __init__(self, settings: ExecutionSettings | None = None) -> None:
        self.settings = settings or load(ExecutionSettings)
        self._ctx: ServiceContext | None = None
        self._executions: KeyValue | None = None
        self._checkpoints: KeyValue | None = None
        self._submissions: ObjectStore | None = None
        self.caught_up = asyncio.Event()
        self._reconciled: dict[str, str] = {}

    async def ensure(self, ctx: ServiceContext) -> None:
        await ensure_stream(ctx.js, events_stream_config(ctx.names, ctx.storage))
        await ensure_stream(ctx.js, jobs_stream_config(ctx.names, ctx.storage))
        self._executions = await ensure_bucket(
            ctx.js,
            kv_config(ctx.names.executions_bucket, "jetdag executions and job state", ctx.storage),
            msg_ttl=True,  # retention's delete markers expire (services/scheduler/retention.py)
        )
        cp = kv_config(ctx.names.checkpoints_bucket, "jetdag execution checkpoints", ctx.storage)
        cp.history = 64  # the latest checkpoints of an execution stay readable with `nats kv history`
        self._checkpoints = await ensure_bucket(ctx.js, cp)
        self._submissions = await ctx.js.create_object_store(
            ctx.names.submissions_bucket,
            config=ObjectStoreConfig(
                description="DAGs staged by the gateway when too large for one message",
                storage=StorageType.MEMORY if ctx.storage.memory else StorageType.FILE,
                replicas=ctx.storage.replicas,
                ttl=3600,
            ),
        )
        await ctx.js.add_consumer(
            ctx.names.events_stream,
            ConsumerConfig(
                durable_name=REPORTS_CONSUMER,
                description="the scheduler's intake of worker reports (job started, job result)",
                filter_subjects=ctx.names.scheduler_reports,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                # A report lost with a dying node comes back after this; processing one takes milliseconds.
                ack_wait=10,
                max_ack_pending=20_000,
            ),
        )

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        self._ctx = ctx
        assert self._executions is not None and self._checkpoints is not None
        self.pipeline = Pipeline(ctx.nc, timeout=ctx.nats.request_timeout_s)
        await self.pipeline.start()
        self.store = Store(ctx.js, self._executions, ctx.names.executions_bucket, self.pipeline)
        self.queue = JobQueue(
            ctx.js,
            self._executions,
            ctx.names,
            ack_wait_s=self.settings.job_ack_wait_s,
            max_deliver=self.settings.job_max_deliver,
        )
        self.engine = Engine(
            ctx.js,
            store=self.store,
            queue=self.queue,
            names=ctx.names,
            settings=EngineSettings(
                max_jobs=self.settings.max_jobs,
                checkpoint_every=self.settings.checkpoint_every,
                quiet_s=self.settings.stall_after_s,
            ),
            checkpoints=self._checkpoints,
        )
        self.index = ExecutionIndex(ctx.js, ctx.names.executions_bucket, on_finished=self.store.settle)
        self.retention = Retention(
            ctx.js,
            self.pipeline,
            self.index,
            bucket=ctx.names.executions_bucket,
            checkpoints_bucket=ctx.names.checkpoints_bucket,
            retention_s=self.settings.execution_retention_s,
        )
        ctx.spawn(self.index.run(), "index")
        ctx.reconnect_listeners.append(self.index.resubscribe)
        await asyncio.wait_for(self.index.ready.wait(), 30)
        svc = await add_endpoints(
            ctx.nc,
            service=ctx.names.scheduler_service,
            description="jetdag scheduler: executions, job stream, queue control",
            version=VERSION,
            prefix=ctx.names.scheduler_prefix,
            endpoints={
                "execute": Endpoint(ExecuteCommand, self.execute),
                "get": Endpoint(ExecutionRef, self.get),
                "jobs": Endpoint(ExecutionRef, self.jobs),
                "list": Endpoint(ListExecutions, self.list_executions),
                "cancel": Endpoint(ExecutionRef, self.cancel),
                "retry": Endpoint(ExecutionRef, self.retry),
                "queue.stats": Endpoint(ExecutionRef, self.stats),
                "queue.pause": Endpoint(ExecutionRef, self.pause),
                "queue.resume": Endpoint(ExecutionRef, self.resume),
                "consumer": Endpoint(EnsureConsumer, self.consumer),
            },
        )
        stack.push_async_callback(self._report_cas)
        stack.push_async_callback(self.engine.close)
        stack.push_async_callback(svc.stop)
        ctx.spawn(self._reports(), "reports")
        ctx.spawn(self._sweeper(), "sweeper")
        ctx.spawn(self._retention_loop(), "retention")
        ctx.spawn(self._startup_recovery(), "startup-recovery")

    @property
    def ctx(self) -> ServiceContext:
        assert self._ctx is not None
        return self._ctx

    # --- commands ------------------------------------------------------------------------------------

    def _admit(self, jobs: int) -> None:
        """Backpressure: refuse a submission that would push the open jobs over the configured bound,
        before anything of it is written."""
        open_jobs = self.index.open_jobs
        if open_jobs + jobs > self.settings.max_open_jobs:
            raise Unavailable(
                f"the scheduler is at capacity: {open_jobs} jobs are open and this execution adds {jobs} "
                f"(limit {self.settings.max_open_jobs}); retry later"
            )

    async def execute(self, cmd: ExecuteCommand) -> ExecutionView:
        if cmd.request is not None:
            self._admit(len(cmd.request.jobs))
            return await self.engine.execute(cmd.request)
        if cmd.staged is None:
            raise Invalid("execute needs a request or a staged submission")
        assert self._submissions is not None
        try:
            obj = await self._submissions.get(cmd.staged)
        except (ObjectNotFoundError, NotFoundError):
            raise Invalid(f"staged submission {cmd.staged} does not exist") from None
        try:
            request = msgspec.json.decode(obj.data or b"", type=ExecuteRequest)
        except msgspec.ValidationError as exc:
            raise Invalid(f"invalid request: {exc}") from None
        try:
            self._admit(len(request.jobs))
            return await self.engine.execute(request)
        finally:
            with contextlib.suppress(Exception):
                await self._submissions.delete(cmd.staged)

    async def get(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        found = await self._record(execution_id)
        if found is None:
            raise NotFound(f"execution {execution_id} does not exist")
        record, revision = found
        # Read-your-writes: a change this replica just made (a cancel, a retry) may not have reached the index.
        mine = self.store.cached_execution(execution_id)
        if mine is not None and mine.revision > revision:
            return view(mine.value)
        return view(record)

    async def _record(self, execution_id: str) -> tuple[ExecutionRecord, int] | None:
        """From the index, which follows the bucket within milliseconds and holds open executions and the
        last finished ones; otherwise (just created, finished long ago) from the bucket."""
        indexed = self.index.get(execution_id)
        if indexed is not None:
            return indexed
        found = await self.store.get_execution(execution_id, fresh=True)
        if found is None:
            return None
        if found.value.status in FINAL_EXECUTION_STATES:
            self.index.remember(found.value, found.revision)
        return found.value, found.revision

    async def jobs(self, ref: ExecutionRef) -> JobList:
        jobs = await self.engine.jobs(check_id("executionId", ref.execution_id))
        return JobList(execution_id=ref.execution_id, jobs=jobs)

    async def cancel(self, ref: ExecutionRef) -> ExecutionView:
        return await self.engine.cancel(check_id("executionId", ref.execution_id))

    async def retry(self, ref: ExecutionRef) -> ExecutionView:
        return await self.engine.retry(check_id("executionId", ref.execution_id))

    async def list_executions(self, query: ListExecutions) -> ExecutionList:
        ids = self.index.select(
            before=query.cursor, status=query.status, workflow_id=query.workflow_id, limit=query.limit + 1
        )
        more = len(ids) > query.limit
        page = ids[: query.limit]
        found = await asyncio.gather(*(self._record(execution_id) for execution_id in page))
        # An execution removed meanwhile (retention) is left out; a status filter is checked again on the
        # record read, which may be newer than the summary it was selected by.
        records = [r for r, _ in (f for f in found if f is not None) if query.status in (None, r.status)]
        return ExecutionList(executions=[view(r) for r in records], next_cursor=page[-1] if more else None)

    async def stats(self, _: Any) -> QueueStatsReply:
        # Right after a reconnect the cumulative counters are being replayed from the bucket: wait for them
        # rather than answer numbers that are behind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.index.current.wait(), 5)
        counts = await self.queue.counts()
        in_stream = max(0, counts.messages - counts.active)
        stats = QueueStats(
            waiting=0 if counts.paused else in_stream,
            active=counts.active,
            completed=self.index.completed,
            failed=self.index.failed,
            delayed=self.index.delayed,
            paused=in_stream if counts.paused else 0,
            total=0,
        )
        stats.total = stats.waiting + stats.active + stats.completed + stats.failed + stats.delayed + stats.paused
        return QueueStatsReply(stats=stats, is_paused=counts.paused, healthy=True)

    async def pause(self, _: Any) -> QueueControl:
        changed, consumers = await self.queue.set_paused(True)
        return QueueControl(is_paused=True, changed=changed, consumers=consumers)

    async def resume(self, _: Any) -> QueueControl:
        changed, consumers = await self.queue.set_paused(False)
        return QueueControl(is_paused=False, changed=changed, consumers=consumers)

    async def consumer(self, cmd: EnsureConsumer) -> ConsumerRef:
        check_name("capability", cmd.capability)
        check_name("type", cmd.type)
        return await self.queue.ensure_consumer(cmd.capability, cmd.type)

    async def _report_cas(self) -> None:
        """How often compare-and-set lost a race (other replicas, or this one's own concurrent steps)."""
        writes, conflicts = self.store.writes, self.store.conflicts
        rate = conflicts / (writes + conflicts) if writes + conflicts else 0.0
        log.info("compare-and-set totals", writes=writes, conflicts=conflicts, conflict_rate=round(rate, 4))

    # --- worker reports ------------------------------------------------------------------------------

    async def _reports(self) -> None:
        sub = await self.ctx.js.pull_subscribe_bind(REPORTS_CONSUMER, stream=self.ctx.names.events_stream)
        started_dec = msgspec.json.Decoder(JobStarted)
        result_dec = msgspec.json.Decoder(JobResult)
        try:
            await self._report_loop(sub, started_dec, result_dec)
        finally:
            # Unsubscribe before the connection drains: a drained pull subscription waits on its queue.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _report_loop(self, sub: Any, started_dec: Any, result_dec: Any) -> None:
        while True:
            try:
                msgs = await sub.fetch(REPORT_BATCH, timeout=1)
            except TimeoutError:
                self.caught_up.set()
                continue
            except Exception as exc:
                log.warning("fetching reports failed", error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            if len(msgs) < REPORT_BATCH:
                self.caught_up.set()
            by_execution: dict[str, list[tuple[Msg, Any]]] = defaultdict(list)
            for msg in msgs:
                try:
                    if msg.subject.endswith(".started"):
                        report: Any = started_dec.decode(msg.data)
                    else:
                        report = result_dec.decode(msg.data)
                except msgspec.DecodeError:
                    log.warning("unreadable report dropped", subject=msg.subject)
                    await msg.term()
                    continue
                by_execution[report.execution_id].append((msg, report))
            await asyncio.gather(*(self._process(items) for items in by_execution.values()))

    async def _process(self, items: list[tuple[Msg, Any]]) -> None:
        """Reports of one execution, applied as one batch; acked once applied, redelivered otherwise."""
        execution_id = items[0][1].execution_id
        try:
            await self.engine.process_reports(execution_id, [report for _, report in items])
        except Exception as exc:
            log.warning("reports not processed; they will be redelivered", executionId=execution_id, error=repr(exc))
            self.engine.suspect(execution_id)
            for msg, _ in items:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1)
            return
        for msg, _ in items:
            with contextlib.suppress(Exception):
                await msg.ack()

    # --- recovery ------------------------------------------------------------------------------------

    async def _startup_recovery(self) -> None:
        """Pick up every open execution once the report backlog is processed (a crashed predecessor may
        have left work half done)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.caught_up.wait(), 30)
        for record in self.index.open_executions():
            try:
                if await self.engine.reconcile(record.execution_id, startup=True):
                    self._reconciled[record.execution_id] = record.updated_at
            except Exception as exc:
                log.warning("startup recovery failed", executionId=record.execution_id, error=repr(exc))

    async def _retention_loop(self) -> None:
        while True:
            try:
                removed = await self.retention.sweep()
            except Exception as exc:
                log.warning("removing expired executions failed; retrying", error=repr(exc))
                removed = 0
            if removed < RETENTION_BATCH:  # a full batch: more may be waiting, go on at once
                await asyncio.sleep(self.settings.sweep_interval_s)

    async def _sweeper(self) -> None:
        stall_ms = self.settings.stall_after_s * 1000
        failed: set[str] = set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.engine.suspect_event.wait(), self.settings.sweep_interval_s)
            # A reconcile that failed (NATS unreachable, a stream electing its leader) is tried again next
            # round: an execution that ended in an interrupted step is only announced by it, and the stall
            # check below only ever brings back open executions.
            todo = self.engine.take_suspects() | failed
            failed = set()
            now = now_ms()
            open_ids = set()
            for record in self.index.open_executions():
                open_ids.add(record.execution_id)
                stalled = now - ms_from_iso(record.updated_at) > stall_ms
                if stalled and self._reconciled.get(record.execution_id) != record.updated_at:
                    todo.add(record.execution_id)
            for execution_id in list(self._reconciled):
                if execution_id not in open_ids:
                    del self._reconciled[execution_id]
            for execution_id in todo:
                try:
                    complete = await self.engine.reconcile(execution_id)
                except Exception as exc:
                    log.warning("reconcile failed; retrying", executionId=execution_id, error=repr(exc))
                    failed.add(execution_id)
                    continue
                if not complete:
                    continue  # busy right now: the stall check will bring it back
                current = self.index.open_record(execution_id)
                if current is not None:
                    self._reconciled[execution_id] = current.updated_at

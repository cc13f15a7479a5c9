"""The scheduler service: executions, the job stream and its consumers, queue control.

Replicas share the work by shards (services/scheduler/shards.py): each open execution is owned by the replica
holding its shard, which keeps its state in memory and journals its decisions. Commands reach any replica and are
carried out by the owner (services/scheduler/commands.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import AsyncExitStack
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError

from shared.commands import add_endpoints, drain, subscribe_endpoints
from shared.ids import check_id
from shared.jetstream import (
    ensure_bucket,
    ensure_stream,
    events_stream_config,
    jobs_stream_config,
    journal_stream_config,
    kv_config,
    reports_stream_config,
)
from shared.logging import get_logger
from shared.pipeline import Pipeline
from shared.service import ServiceContext
from shared.settings import ExecutionSettings, load

from .audit import Audit
from .commands import Commands
from .dispatch import Dispatcher, Durations
from .gates import Gates
from .index import ExecutionIndex
from .journal import Journal
from .lifecycle import Context
from .queue import JobQueue
from .retention import BATCH as RETENTION_BATCH
from .retention import Retention
from .schedules import Schedules
from .shards import ShardManager, read_layout

__all__ = ["SchedulerService"]

log = get_logger(__name__)
VERSION = "0.1.0"
CONSUMER_EXISTS = 10148
COMMANDS_DRAIN_S = 3.0
"""At shutdown, how long the commands being answered may take to end before the shards are handed over."""


class SchedulerService:
    name = "scheduler"

    def __init__(self, settings: ExecutionSettings | None = None) -> None:
        self.settings = settings or load(ExecutionSettings)
        self.replica_id = self.settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        check_id("JETDAG_SCHEDULER_ID", self.replica_id)
        self.shards = 0
        self._kv: dict[str, Any] = {}

    async def ensure(self, ctx: ServiceContext) -> None:
        names, storage = ctx.names, ctx.storage
        for config in (
            events_stream_config(names, storage),
            jobs_stream_config(names, storage),
            journal_stream_config(names, storage),
            reports_stream_config(names, storage),
        ):
            await ensure_stream(ctx.js, config)
        self._kv["executions"] = await ensure_bucket(
            ctx.js,
            kv_config(names.executions_bucket, "jetdag executions: records, job snapshots, large results", storage),
            msg_ttl=True,  # retention's delete markers and idempotency keys expire
        )
        checkpoints = kv_config(names.checkpoints_bucket, "jetdag execution checkpoints", storage)
        checkpoints.history = 64  # the latest checkpoints of an execution stay readable with `nats kv history`
        self._kv["checkpoints"] = await ensure_bucket(ctx.js, checkpoints)
        self._kv["schedulers"] = await ensure_bucket(
            ctx.js,
            kv_config(names.schedulers_bucket, "jetdag scheduler replicas and shard leases", storage),
            msg_ttl=True,
        )
        self._kv["schedules"] = await ensure_bucket(
            ctx.js, kv_config(names.schedules_bucket, "jetdag schedules: definitions, ticks and runs", storage)
        )
        self._kv["submissions"] = await ctx.js.create_object_store(
            names.submissions_bucket,
            config=ObjectStoreConfig(
                description="DAGs staged by the gateway when too large for one message",
                storage=StorageType.MEMORY if storage.memory else StorageType.FILE,
                replicas=storage.replicas,
                ttl=3600,
            ),
        )
        pipeline = Pipeline(ctx.nc, timeout=ctx.nats.request_timeout_s)
        await pipeline.start()
        self.shards = await read_layout(pipeline, names.schedulers_bucket, self.settings.shards)
        for n in range(self.shards):
            consumer = ConsumerConfig(
                durable_name=names.reports_consumer(n),
                description=f"worker reports about executions of shard {n}, pulled by the shard's owner",
                filter_subject=names.reports(n),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                # A report held by an owner that died comes back to the next owner after this.
                ack_wait=self.settings.job_ack_wait_s,
                max_ack_pending=20_000,
                max_waiting=64,
            )
            try:
                await ctx.js.add_consumer(names.reports_stream, consumer)
            except BadRequestError as exc:
                if exc.err_code != CONSUMER_EXISTS:
                    raise

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        names = ctx.names
        pipeline = Pipeline(ctx.nc, timeout=ctx.nats.request_timeout_s)
        await pipeline.start()
        index = ExecutionIndex(ctx.js, names.executions_bucket)
        ctx.spawn(index.run(), "index")
        ctx.reconnect_listeners.append(index.resubscribe)
        await asyncio.wait_for(index.ready.wait(), 30)
        queue = JobQueue(
            ctx.js,
            self._kv["executions"],
            names,
            ack_wait_s=self.settings.job_ack_wait_s,
            max_deliver=self.settings.job_max_deliver,
        )
        manager = ShardManager(
            nc=ctx.nc,
            js=ctx.js,
            pipeline=pipeline,
            names=names,
            index=index,
            shards=self.shards,
            lease_ttl_s=self.settings.lease_s,
            ack_wait_s=self.settings.job_ack_wait_s,
            replica_id=self.replica_id,
        )
        gates = Gates(self._kv["schedulers"])
        await gates.start()
        stack.push_async_callback(gates.stop)
        context = Context(
            nc=ctx.nc,
            js=ctx.js,
            pipeline=pipeline,
            journal=Journal(ctx.js, pipeline, names),
            dispatcher=Dispatcher(ctx.nc, ctx.js, pipeline, names, names.executions_bucket),
            names=names,
            replica_id=self.replica_id,
            durations=Durations(),
            checkpoint_every=self.settings.checkpoint_every,
            schedule_timeout_s=self.settings.schedule_timeout_s,
            on_gone=manager.on_gone,
            on_reload=manager.on_reload,
            on_record=index.observe,
            gates=gates,
        )
        manager.context = context
        commands = Commands(
            ctx=context,
            manager=manager,
            index=index,
            queue=queue,
            names=names,
            submissions=self._kv["submissions"],
            max_jobs=self.settings.max_jobs,
            max_open_jobs=self.settings.max_open_jobs,
            timeout_s=ctx.nats.request_timeout_s,
            idempotency_ttl_s=self.settings.idempotency_ttl_s,
            max_types=self.settings.max_types_per_execution,
            max_open_per_token=self.settings.max_open_per_token,
        )
        owner_endpoints = commands.owner_endpoints()
        schedules = Schedules(
            js=ctx.js,
            pipeline=pipeline,
            names=names,
            commands=commands,
            manager=manager,
            grace_s=self.settings.schedule_misfire_grace_s,
            max_jobs=self.settings.max_jobs,
        )

        async def serve_shard(n: int) -> Any:
            return await subscribe_endpoints(
                ctx.nc,
                service=names.scheduler_service,
                subject_prefix=names.scheduler_shard(n, "").rstrip("."),
                endpoints=owner_endpoints,
            )

        manager.serve_commands = serve_shard
        ctx.reconnect_listeners.append(manager.on_reconnect)
        served = {**commands.endpoints(), **schedules.endpoints()}
        svc = await add_endpoints(
            ctx.nc,
            service=names.scheduler_service,
            description="jetdag scheduler: executions, job stream, queue control",
            version=VERSION,
            prefix=names.scheduler_prefix,
            endpoints=served,
        )
        retention = Retention(ctx.js, pipeline, index, names=names, retention_s=self.settings.execution_retention_s)
        audit = Audit(
            ctx=context,
            manager=manager,
            queue=queue,
            stall_after_s=self.settings.stall_after_s,
            stale_consumer_s=self.settings.stale_consumer_s,
        )
        # Unwound in reverse: stop answering commands, hand every shard over, then report what was done.
        stack.push_async_callback(self._report, context, manager)
        stack.push_async_callback(manager.stop)
        stack.callback(schedules.stop)  # before the shards go: no tick fires for a shard on its way out
        # Once no new command comes in, the ones being answered (a submit half journalled) end before the
        # shards are handed over.
        stack.push_async_callback(drain, [*served.values(), *owner_endpoints.values()], COMMANDS_DRAIN_S)
        stack.push_async_callback(svc.stop)
        ctx.spawn(manager.run(), "shards")
        ctx.spawn(self._retention_loop(retention), "retention")
        ctx.spawn(audit.run(self.settings.sweep_interval_s), "audit")
        ctx.spawn(schedules.run(), "schedules")
        ctx.spawn(queue.run(), "queue pauses")
        log.info("scheduler replica", replica=self.replica_id, shards=self.shards)

    async def _report(self, context: Context, manager: ShardManager) -> None:
        log.info(
            "scheduler totals",
            replica=self.replica_id,
            journal_appends=context.journal.appends,
            job_messages=context.dispatcher.published,
            reports=sum(s.intake.reports for s in manager.held.values()) + manager.reports_done,
        )

    async def _retention_loop(self, retention: Retention) -> None:
        while True:
            try:
                removed = await retention.sweep()
            except Exception as exc:
                log.warning("removing expired executions failed; retrying", error=repr(exc))
                removed = 0
            if removed < RETENTION_BATCH:  # a full batch: more may be waiting, go on at once
                await asyncio.sleep(self.settings.sweep_interval_s)

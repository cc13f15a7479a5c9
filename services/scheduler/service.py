"""The scheduler: owns the job stream, the executions and checkpoints buckets.

Execution support lands with the execution issue; until then the scheduler creates what it owns and answers
its nats.micro ping, so `/health` reports it truthfully.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from nats.micro import add_service

from shared.jetstream import (
    ensure_bucket,
    ensure_stream,
    events_stream_config,
    jobs_stream_config,
    kv_config,
)
from shared.service import ServiceContext

__all__ = ["SchedulerService"]

VERSION = "0.1.0"


class SchedulerService:
    name = "scheduler"

    async def ensure(self, ctx: ServiceContext) -> None:
        await ensure_stream(ctx.js, events_stream_config(ctx.names, ctx.storage))
        await ensure_stream(ctx.js, jobs_stream_config(ctx.names, ctx.storage))
        await ensure_bucket(
            ctx.js, kv_config(ctx.names.executions_bucket, "jetdag executions and job state", ctx.storage)
        )
        await ensure_bucket(
            ctx.js, kv_config(ctx.names.checkpoints_bucket, "jetdag execution checkpoints", ctx.storage)
        )

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        svc = await add_service(
            ctx.nc,
            name=ctx.names.scheduler_service,
            version=VERSION,
            description="jetdag scheduler: executions, job stream, queue control",
        )
        stack.push_async_callback(svc.stop)

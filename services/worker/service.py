"""The worker service: presence in the registry now; job consumption lands with the execution issue."""

from __future__ import annotations

from contextlib import AsyncExitStack

from shared.service import ServiceContext

from .options import WorkerOptions
from .presence import Presence

__all__ = ["WorkerService"]


class WorkerService:
    name = "worker"

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.running = 0

    async def ensure(self, ctx: ServiceContext) -> None:
        """Workers own no stream or bucket: the scheduler owns the job stream and its consumers."""

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        presence = Presence(ctx.nc, ctx.names, self.options, lambda: self.running, timeout=ctx.nats.request_timeout_s)
        await presence.register_until_done(ctx.stop)
        stack.push_async_callback(presence.deregister)
        ctx.spawn(presence.beat_forever(), "heartbeat")

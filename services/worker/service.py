"""The worker service: presence in the registry plus the job runner."""

from __future__ import annotations

from contextlib import AsyncExitStack

from shared.service import ServiceContext

from .handlers import HandlerRegistry, default_registry, load_modules
from .options import WorkerOptions
from .presence import Presence
from .runner import Runner

__all__ = ["WorkerService"]


class WorkerService:
    name = "worker"

    def __init__(self, options: WorkerOptions, handlers: HandlerRegistry | None = None) -> None:
        self.options = options
        self.handlers = handlers or default_registry
        # Running jobs get their grace period; handing back and deregistering get the rest.
        self.shutdown_limit_s = options.grace_s + 10

    async def ensure(self, ctx: ServiceContext) -> None:
        """Workers own no stream or bucket: the scheduler owns the job stream and its consumers."""

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        load_modules(self.options.handler_modules)
        runner = Runner(ctx, self.options, self.handlers, grace_s=self.options.grace_s)
        presence = Presence(
            ctx.nc,
            ctx.names,
            self.options,
            lambda: runner.load,
            timeout=ctx.nats.request_timeout_s,
            metadata={"handlers": self.handlers.types()},
            problem=lambda: runner.problem,
        )
        # Startup hooks first (a model loaded once), so the first job finds what they prepared.
        await self.handlers.run_hooks(self.handlers.startup)
        await presence.register_until_done(ctx.stop)
        # Unwound in reverse: stop taking jobs and finish/hand back running ones, run the shutdown hooks,
        # then deregister.
        stack.push_async_callback(presence.deregister)
        stack.push_async_callback(self.handlers.run_hooks, self.handlers.shutdown)
        # Heartbeats from the start: a worker waiting for its consumers is alive, and says what it waits for.
        ctx.spawn(presence.beat_forever(), "heartbeat")
        await runner.start()
        stack.push_async_callback(runner.stop)

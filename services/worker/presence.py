"""A worker's presence in the registry: register at start, heartbeat with the live load, deregister at exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from nats.aio.client import Client

from shared.commands import CommandError, request
from shared.logging import get_logger
from shared.messages import (
    DeregisterReply,
    HeartbeatCommand,
    RegisterReply,
    RegisterWorker,
    WorkerRef,
    WorkerView,
)
from shared.subjects import Names

from .options import WorkerOptions

__all__ = ["Presence"]

log = get_logger(__name__)


class Presence:
    def __init__(
        self,
        nc: Client,
        names: Names,
        options: WorkerOptions,
        load: Callable[[], int],
        *,
        timeout: float,
        metadata: dict[str, object] | None = None,
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.nc = nc
        self.names = names
        self.options = options
        self.load = load
        self.problem = problem
        self.timeout = timeout
        self.metadata = metadata or {}
        self.leaving = False
        self.log = log.bind(workerId=options.worker_id)

    async def register(self) -> RegisterReply:
        cmd = RegisterWorker(
            worker_id=self.options.worker_id,
            hostname=self.options.hostname,
            pid=os.getpid(),
            capabilities=list(self.options.capabilities),
            max_concurrency=self.options.concurrency,
            current_load=min(self.load(), self.options.concurrency),
            metadata=self.metadata,
            heartbeat_interval_s=self.options.heartbeat_interval_s,
        )
        reply = await request(
            self.nc,
            self.names.registry("register"),
            cmd,
            RegisterReply,
            service="registry",
            timeout=self.timeout,
        )
        self.log.info("registered", created=reply.created)
        return reply

    async def register_until_done(self, stop: asyncio.Event) -> None:
        """Register, retrying while the registry is not up yet (services start in any order)."""
        delay = 0.2
        while not stop.is_set():
            try:
                await self.register()
                return
            except CommandError as exc:
                self.log.warning("registration failed; retrying", error=exc.message, retry_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)

    async def heartbeat(self) -> WorkerView | None:
        cmd = HeartbeatCommand(worker_id=self.options.worker_id, current_load=self.load(), problem=self.problem())
        try:
            return await request(
                self.nc,
                self.names.registry("heartbeat"),
                cmd,
                WorkerView,
                service="registry",
                timeout=self.timeout,
            )
        except CommandError as exc:
            if exc.status == 404 and self.leaving:
                return None  # a heartbeat that crossed our deregistration: we are going, stay gone
            if exc.status == 404:
                # Reaped or deregistered while we were unreachable: we are alive, so register again.
                self.log.warning("registry forgot this worker; registering again")
                await self.register()
                return None
            raise

    async def beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_interval_s)
            try:
                await self.heartbeat()
            except CommandError as exc:
                self.log.warning("heartbeat failed", error=exc.message)

    async def deregister(self) -> None:
        self.leaving = True
        try:
            await request(
                self.nc,
                self.names.registry("deregister"),
                WorkerRef(worker_id=self.options.worker_id),
                DeregisterReply,
                service="registry",
                timeout=self.timeout,
            )
            self.log.info("deregistered")
        except CommandError as exc:
            self.log.warning("deregistration failed", error=exc.message)

"""The dashboard's overview, live: one computation per gateway, shared by every browser that watches it.

Worker load and queue depth change without an event (load travels in heartbeats, depth is consumer state), so
the event stream cannot carry the overview. The gateway computes it instead: while at least one client watches,
one task asks the registry and the scheduler every `interval_s` and sends the result to each watcher when it
changed. N open dashboards cost the backing services one set of requests per interval, not N; nothing runs
while nobody watches. Each watcher holds at most the latest snapshot, so a slow client skips states instead of
growing the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from shared.api import OVERVIEW_EVENT, HealthResponse, Overview, QueueStatsResponse
from shared.commands import CommandError
from shared.logging import get_logger
from shared.messages import ExecutionView, ListExecutions, WorkerView
from shared.timeutil import now_iso

from .backend import Backend
from .routes.health import check_health
from .sse import HEARTBEAT, RETRY, control

__all__ = ["RECENT_EXECUTIONS", "OverviewHub"]

log = get_logger(__name__)

RECENT_EXECUTIONS = 10
_CLOSED = b""

_encoder = msgspec.json.Encoder()


class OverviewHub:
    def __init__(self, backend: Backend, interval_s: float, heartbeat_s: float) -> None:
        self.backend = backend
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self._watchers: set[asyncio.Queue[bytes]] = set()
        self._task: asyncio.Task[None] | None = None
        self._latest: bytes | None = None
        self._fingerprint: bytes | None = None
        self._closed = False

    async def snapshot(self) -> Overview:
        """The overview now: every part asked for at once; a part that fails is reported, not fatal."""
        errors: dict[str, str] = {}

        async def part(name: str, call: Callable[[], Awaitable[Any]]) -> Any:
            try:
                return await call()
            except CommandError as exc:
                errors[name] = exc.message
            except Exception as exc:
                log.warning("overview part failed", part=name, error=repr(exc))
                errors[name] = "internal error in the gateway; see its log"
            return None

        async def queue() -> QueueStatsResponse:
            reply = await self.backend.queue_stats()
            return QueueStatsResponse(
                healthy=reply.healthy, stats=reply.stats, is_paused=reply.is_paused, pauses=reply.pauses
            )

        async def workers() -> list[WorkerView]:
            return (await self.backend.list_workers()).workers

        async def executions() -> list[ExecutionView]:
            return (await self.backend.list_executions(ListExecutions(limit=RECENT_EXECUTIONS))).executions

        health, worker_list, queue_stats, recent = await asyncio.gather(
            part("health", lambda: check_health(self.backend)),
            part("workers", workers),
            part("queue", queue),
            part("executions", executions),
        )
        return Overview(
            at=now_iso(),
            health=health,
            workers=worker_list,
            queue=queue_stats,
            executions=recent,
            errors=errors,
        )

    async def watch(self) -> AsyncIterator[bytes]:
        """The SSE body of one watcher: the current overview at once, then each change, until it leaves."""
        mailbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        self._watchers.add(mailbox)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="overview")
        try:
            yield RETRY
            if self._latest is not None:
                yield self._latest
            while not self._closed:
                try:
                    frame = await asyncio.wait_for(mailbox.get(), self.heartbeat_s)
                except TimeoutError:
                    yield HEARTBEAT
                    continue
                if frame == _CLOSED:
                    return
                yield frame
        finally:
            self._watchers.discard(mailbox)

    async def close(self) -> None:
        """End every stream (the gateway is stopping: HTTP shutdown would otherwise wait for them)."""
        self._closed = True
        for mailbox in list(self._watchers):
            _deliver(mailbox, _CLOSED)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._watchers and not self._closed:
            started = asyncio.get_running_loop().time()
            try:
                overview = await self.snapshot()
            except Exception as exc:  # one failed round must not end the stream of every watcher
                log.warning("overview failed", error=repr(exc))
            else:
                fingerprint = _encoder.encode(_stable(overview))
                if fingerprint != self._fingerprint:
                    self._fingerprint = fingerprint
                    self._latest = control(OVERVIEW_EVENT, _encoder.encode(overview))
                    for mailbox in list(self._watchers):
                        _deliver(mailbox, self._latest)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, self.interval_s - elapsed))
        self._latest = self._fingerprint = None


def _deliver(mailbox: asyncio.Queue[bytes], frame: bytes) -> None:
    """Latest wins: a watcher that has not taken the previous snapshot yet gets this one instead."""
    with contextlib.suppress(asyncio.QueueEmpty):
        if mailbox.full():
            mailbox.get_nowait()
    mailbox.put_nowait(frame)


def _stable(overview: Overview) -> Overview:
    """The overview without what changes on every computation (times, latencies, uptimes): a new snapshot is
    sent only when something a person would notice changed. Browsers compute ages from the timestamps."""
    health = overview.health
    if health is not None:
        components = msgspec.structs.replace(
            health.components,
            **{
                name: msgspec.structs.replace(getattr(health.components, name), latency_ms=0.0)
                for name in ("queue", "worker_manager", "state_store", "scheduler")
            },
        )
        health = HealthResponse(
            success=health.success,
            healthy=health.healthy,
            components=components,
            workers=health.workers,
            checked_at="",
            error=health.error,
        )
    workers = [msgspec.structs.replace(w, uptime=0.0) for w in overview.workers] if overview.workers else None
    return msgspec.structs.replace(overview, at="", health=health, workers=workers)

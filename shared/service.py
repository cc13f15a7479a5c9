"""The one run loop every service uses: connect → ensure streams/buckets → serve → drain on SIGTERM.

A service implements `Service`: `ensure` creates what it owns, `serve` starts its endpoints and tasks and
pushes their shutdown onto the exit stack. Shutdown unwinds the stack in reverse: endpoints stop taking
commands first, tasks finish, and the NATS connection drains last so in-flight replies still go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import tracing
from shared.logging import configure_logging, get_logger
from shared.metrics import serve_scrapes
from shared.nats_conn import connect
from shared.settings import LoggingSettings, NatsSettings, StorageSettings, load
from shared.subjects import Names

__all__ = ["Service", "ServiceContext", "cancel_and_wait", "run_service"]

DEFAULT_SHUTDOWN_LIMIT_S = 15.0

log = get_logger(__name__)


@dataclass
class ServiceContext:
    """What a running service gets: its connection, names and settings, and the stop signal."""

    name: str
    nc: Client
    js: JetStreamContext
    names: Names
    nats: NatsSettings
    storage: StorageSettings
    stop: asyncio.Event
    reconnect_listeners: list[Callable[[], None]] = field(default_factory=list)
    """Called after the connection to NATS is re-established (server-side ephemeral state may be gone)."""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    failed: bool = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a background task for the life of the service; if it crashes the service stops (exit 1)
        so a supervisor restarts it, instead of limping on without it."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.error("background task crashed", task=name, error=repr(exc), exc_info=exc)
                self.failed = True
                self.stop.set()

        task.add_done_callback(done)
        return task

    async def cancel_tasks(self) -> None:
        await cancel_and_wait(self.tasks)


class Service(Protocol):
    name: str

    async def ensure(self, ctx: ServiceContext) -> None:
        """Create or update the streams and buckets this service needs."""

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        """Start serving; push every cleanup onto `stack`."""


async def _main(service: Service, ready: Callable[[ServiceContext], Awaitable[None]] | None) -> int:
    nats_settings = load(NatsSettings)
    storage = load(StorageSettings)
    names = Names(nats_settings.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    bound = log.bind(namespace=names.namespace)
    name = f"{names.namespace}-{service.name}"
    # Replies come back to this role's own inboxes: the only ones its NATS credential may read.
    inbox = names.inbox_prefix(service.name)
    nc = Client()
    listeners: list[Callable[[], None]] = []
    connecting: asyncio.Task[Client] | None = None
    if getattr(service, "serves_before_nats", False):
        # The gateway answers (503, naming NATS) from the start instead of refusing connections.
        connecting = asyncio.create_task(
            connect(nats_settings, name, stop=stop, client=nc, on_reconnect=listeners, inbox_prefix=inbox)
        )
    else:
        try:
            await connect(nats_settings, name, stop=stop, client=nc, on_reconnect=listeners, inbox_prefix=inbox)
        except Exception:
            if stop.is_set():
                bound.info("stopped before nats answered")
                return 0
            raise
    ctx = ServiceContext(
        name=service.name,
        nc=nc,
        js=nc.jetstream(timeout=nats_settings.request_timeout_s),
        names=names,
        nats=nats_settings,
        storage=storage,
        stop=stop,
        reconnect_listeners=listeners,
    )
    stack = AsyncExitStack()
    try:
        stack.push_async_callback(_close, nc)
        stack.push_async_callback(ctx.cancel_tasks)
        if connecting is not None:
            stack.push_async_callback(cancel_and_wait, [connecting])
        if not await _ensure(service, ctx):
            return 0
        await service.serve(ctx, stack)
        ctx.spawn(_answer_scrapes(service, ctx, connecting), "metrics")
        bound.info("service ready")
        if ready is not None:
            await ready(ctx)
        await stop.wait()
        bound.info("service stopping")
    finally:
        # Bounded: with NATS gone, steps that wait on the server (a flush, a drain) would wait forever, and a
        # SIGTERM must still end the process.
        limit = getattr(service, "shutdown_limit_s", DEFAULT_SHUTDOWN_LIMIT_S)
        try:
            await asyncio.wait_for(stack.aclose(), limit)
        except TimeoutError:
            bound.warning("shutdown did not finish in time; closing the connection", limit_s=limit)
            with contextlib.suppress(Exception):
                await nc.close()
    bound.info("service stopped")
    return 1 if ctx.failed else 0


async def _answer_scrapes(service: Service, ctx: ServiceContext, connecting: asyncio.Task[Client] | None) -> None:
    """Answer the gateway's metrics scrapes (once connected: the gateway serves before NATS answers)."""
    if connecting is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(connecting)
        if not ctx.nc.is_connected:
            return
    await serve_scrapes(
        ctx.nc, ctx.names.metrics_scrape, service.name, refresh=getattr(service, "refresh_metrics", None)
    )


def dump_tasks() -> None:
    """SIGUSR1: log what every task is waiting on — the answer to "why does this process hang?" in
    production, and what the tests collect before they kill a process that would not stop."""
    tasks = [{"task": task.get_name(), "at": _await_chain(task)} for task in asyncio.all_tasks()]
    log.warning("task dump", tasks=tasks)


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """The task's coroutine and every coroutine it is awaiting, outermost first (`Task.get_stack` gives
    only the outermost frame of a suspended task)."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(chain) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


async def _ensure(service: Service, ctx: ServiceContext) -> bool:
    """Create what the service owns, retrying while JetStream cannot yet (a cluster electing its meta
    leader, a server restarting). False if told to stop meanwhile."""
    delay = 0.25
    while True:
        try:
            await service.ensure(ctx)
            return True
        except Exception as exc:
            if ctx.stop.is_set():
                return False
            log.warning("jetstream not ready; retrying", error=repr(exc), retry_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), delay)
        if ctx.stop.is_set():
            return False
        delay = min(delay * 2, 5.0)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until they have ended, cancelling again those that are still running.

    Once is not always enough on Python 3.11: a task inside `asyncio.wait_for` (nats-py's request) whose
    awaited reply arrives in the same loop iteration as the cancellation carries on as if never cancelled
    (CPython gh-86296, fixed in 3.12). Seen for real: a worker's heartbeat swallowed it and the shutdown
    then waited on that task forever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: a crash was already reported by whoever owns the task


async def _close(nc: Client) -> None:
    if nc.is_closed or not (nc.is_connected or nc.is_reconnecting):
        with contextlib.suppress(Exception):
            await nc.close()
        return
    try:
        await asyncio.wait_for(nc.drain(), 5)
    except Exception:
        with contextlib.suppress(Exception):
            await nc.close()


def run_service(service: Service, ready: Callable[[ServiceContext], Awaitable[None]] | None = None) -> None:
    """Entry point of `python -m services.<name>`: configure logging, run until SIGTERM/SIGINT, exit."""
    configure_logging(service.name)
    tracing.setup(service.name)
    loop_factory = None
    if load(LoggingSettings).uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(_main(service, ready))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

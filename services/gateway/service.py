"""The gateway as a jetdag service: the shared run loop connects to NATS, then uvicorn serves the app."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack

import uvicorn

from shared.logging import get_logger
from shared.service import ServiceContext
from shared.settings import GatewaySettings, load

from .app import create_app
from .auth import AuthConfigError, AuthPolicy
from .backend import Backend

__all__ = ["GatewayService", "bind_socket"]

log = get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the shared run loop owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class PortInUse(SystemExit):
    pass


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so a busy port is one clear line, not a uvicorn traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets it knows are TCP; without it
    # every request after the first on a keep-alive connection waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"gateway: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayService:
    name = "gateway"
    # HTTP comes up at once and answers 503 naming NATS until the connection is there.
    serves_before_nats = True

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or load(GatewaySettings)
        try:
            self.policy = AuthPolicy.from_settings(self.settings)
        except AuthConfigError as exc:
            # Before anything starts, one line: an exposed gateway without tokens would let anyone steer it.
            raise SystemExit(f"gateway: {exc}") from None

    async def ensure(self, ctx: ServiceContext) -> None:
        """The gateway owns no stream or bucket."""

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        sock = bind_socket(self.settings.host, self.settings.port)
        backend = Backend(
            ctx.nc,
            ctx.names,
            timeout=ctx.nats.request_timeout_s,
            health_timeout=self.settings.health_timeout_s,
            metrics_window=self.settings.metrics_window_s,
            command_timeout=self.settings.command_timeout_s,
        )
        app = create_app(backend, self.settings, self.policy)
        log.info("api auth", enabled=self.policy.enabled, tokens=[t.name for t in self.policy.tokens])
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="http")

        def on_exit(t: asyncio.Task[None]) -> None:
            # uvicorn returning on its own means it failed to start: stop the service instead of idling.
            if not ctx.stop.is_set():
                ctx.failed = True
                ctx.stop.set()

        task.add_done_callback(on_exit)
        # uvicorn exposes readiness only as a flag; poll it briefly (startup only, bounded by the task).
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        log.info("gateway listening", url=f"http://{self.settings.host}:{self.settings.port}")

        async def shutdown() -> None:
            # Live streams first: uvicorn's graceful shutdown waits for open responses to end.
            await app.state.overview.close()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await task
            sock.close()

        stack.push_async_callback(shutdown)

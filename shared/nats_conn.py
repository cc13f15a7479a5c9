"""Connecting to NATS: credentials from settings, endless reconnects, and a patient first connect."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client
from nats.errors import NoServersError

from shared.logging import get_logger
from shared.settings import NatsSettings

__all__ = ["connect", "connect_options"]

log = get_logger(__name__)


def connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` built from settings."""
    opts: dict[str, Any] = {
        "servers": [s.strip() for s in settings.url.split(",") if s.strip()],
        "name": name,
        # Reconnect forever, quickly: a restarted nats-server must find every service again by itself.
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        # Detect a dead server (or a partition) within ~10 s rather than the 2-minute default.
        "ping_interval": 5,
        "max_outstanding_pings": 2,
    }
    if settings.user:
        opts["user"] = settings.user
        opts["password"] = settings.password
    if settings.token:
        opts["token"] = settings.token
    if settings.creds:
        opts["user_credentials"] = settings.creds
    if settings.nkey:
        opts["nkeys_seed"] = settings.nkey
    return opts


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    stop: asyncio.Event | None = None,
    client: Client | None = None,
    **overrides: Any,
) -> Client:
    """Connect, retrying the first connect until NATS answers (or `stop` is set).

    A service may start before its NATS server is reachable (containers start in any order); it waits and
    says so instead of crashing.
    """
    listeners = overrides.pop("on_reconnect", [])
    opts = connect_options(settings, name)
    opts.update(overrides)
    bound = log.bind(nats_url=settings.url, connection=name)

    async def on_disconnect() -> None:
        bound.warning("nats disconnected")

    async def on_reconnect() -> None:
        bound.info("nats reconnected")
        for listener in listeners:
            listener()

    async def on_error(exc: Exception) -> None:
        bound.warning("nats error", error=str(exc) or type(exc).__name__)

    opts.setdefault("disconnected_cb", on_disconnect)
    opts.setdefault("reconnected_cb", on_reconnect)
    opts.setdefault("error_cb", on_error)
    delay = 0.2
    while True:
        try:
            nc = client or Client()
            await nc.connect(**opts)
            bound.info("nats connected", server=nc.connected_url.netloc if nc.connected_url else None)
            return nc
        except (TimeoutError, NoServersError, OSError) as exc:
            if stop is not None and stop.is_set():
                raise
            bound.warning("waiting for nats", error=str(exc) or type(exc).__name__, retry_in_s=delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)

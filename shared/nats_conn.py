"""Connecting to NATS: credentials from settings, endless reconnects, and a patient, stoppable first connect."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Coroutine
from typing import Any

from nats.aio.client import Client
from nats.errors import NoServersError

from shared.logging import get_logger
from shared.metrics import NatsMetrics
from shared.settings import NatsSettings

__all__ = ["connect", "connect_options", "tls_context"]

log = get_logger(__name__)

STILL_WAITING_EVERY_S = 60.0
"""While the first connect keeps failing, the wait is logged when it starts and then at most this often."""


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
    context = tls_context(settings)
    if context is not None:
        opts["tls"] = context
    return opts


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """TLS for `tls://` URLs (or when a CA or client certificate is configured): the server's certificate is
    verified against `NATS_CA` (else the system's CAs), and `NATS_CERT`/`NATS_KEY` answer a server that asks
    for a client certificate."""
    if "tls://" not in settings.url and not settings.ca and not settings.cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca or None)
    if settings.cert:
        context.load_cert_chain(settings.cert, settings.key)
    return context


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    stop: asyncio.Event | None = None,
    client: Client | None = None,
    **overrides: Any,
) -> Client:
    """Connect, retrying the first connect with backoff until NATS answers (or `stop` is set).

    A service may start before its NATS server is reachable (containers start in any order); it waits and
    says so once instead of crashing. nats-py would retry a first connect forever by itself (with endless
    reconnects configured), deaf to SIGTERM and logging every attempt: each attempt here is one pass over the
    servers, raced against `stop`, and endless reconnects apply only once connected.
    """
    listeners = overrides.pop("on_reconnect", [])
    opts = connect_options(settings, name)
    opts.update(overrides)
    reconnect_attempts = opts["max_reconnect_attempts"]
    # One attempt is a pass over the servers: nats-py drops a server after more than this many failed
    # tries (0 would mean never), so at most two tries each, back to back.
    opts["max_reconnect_attempts"] = 1
    opts["reconnect_time_wait"] = 0
    bound = log.bind(nats_url=settings.url, connection=name)
    nc = client or Client()
    metrics = NatsMetrics.process()  # created now: a scrape shows 0 reconnects, not no metric

    async def on_disconnect() -> None:
        # A close we asked for (drain at shutdown) is not news; losing the server is.
        if nc.is_closed:
            bound.info("nats connection closed")
        else:
            bound.warning("nats disconnected")

    async def on_reconnect() -> None:
        bound.info("nats reconnected")
        metrics.reconnected()
        for listener in listeners:
            listener()

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, ssl.SSLError):
            # Never transient (a CA or certificate that does not fit), and nats-py 2.16 may hang after it
            # instead of failing the connect: say it here, every time.
            bound.warning("nats TLS handshake failed", error=str(exc) or type(exc).__name__)
            return
        if not nc.is_connected and not nc.is_reconnecting:
            return  # a failed first-connect attempt: the wait below logs it, once
        bound.warning("nats error", error=str(exc) or type(exc).__name__)

    opts.setdefault("disconnected_cb", on_disconnect)
    opts.setdefault("reconnected_cb", on_reconnect)
    opts.setdefault("error_cb", on_error)
    delay = 0.2
    waited_since: float | None = None
    next_report = 0.0
    while True:
        try:
            await _until_stopped(nc.connect(**opts), stop)
            nc.options["max_reconnect_attempts"] = reconnect_attempts
            nc.options["reconnect_time_wait"] = connect_options(settings, name)["reconnect_time_wait"]
            server = nc.connected_url.netloc if nc.connected_url else None
            if waited_since is None:
                bound.info("nats connected", server=server)
            else:
                bound.info("nats connected", server=server, waited_s=round(time.monotonic() - waited_since, 1))
            return nc
        except (TimeoutError, NoServersError, OSError) as exc:
            if stop is not None and stop.is_set():
                raise
            error = str(exc) or type(exc).__name__
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
                next_report = now + STILL_WAITING_EVERY_S
                bound.warning("waiting for nats", error=error)
            elif now >= next_report:
                next_report = now + STILL_WAITING_EVERY_S
                bound.warning("still waiting for nats", error=error, waited_s=round(now - waited_since))
            bound.debug("nats connect attempt failed", error=error, retry_in_s=delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise NoServersError() from None
            delay = min(delay * 2, 5.0)


async def _until_stopped(attempt: Coroutine[Any, Any, None], stop: asyncio.Event | None) -> None:
    """Await `attempt` unless `stop` is set first (then cancel it and raise NoServersError)."""
    if stop is None:
        await attempt
        return
    task = asyncio.ensure_future(attempt)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise NoServersError()
    task.result()

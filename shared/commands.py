"""Request/reply commands between services, on both sides.

Server side: `add_endpoints` wraps typed `async def handler(cmd) -> reply` functions as `nats.micro`
endpoints, so `nats micro ls/info/stats` see every service. Errors travel as the standard micro headers
`Nats-Service-Error-Code` (an HTTP status) and `Nats-Service-Error` (one readable sentence).

Client side: `request` sends a command and returns the typed reply, or raises `CommandError` carrying the
status the gateway answers with (503 when nobody answers in time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from shared import tracing
from shared.logging import get_logger

__all__ = [
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "CommandError",
    "Conflict",
    "Endpoint",
    "Invalid",
    "NotFound",
    "Unavailable",
    "add_endpoints",
    "drain",
    "forward",
    "request",
    "subscribe_endpoints",
]

log = get_logger(__name__)

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

In = TypeVar("In", bound=msgspec.Struct)
Out = TypeVar("Out", bound=msgspec.Struct)


class CommandError(Exception):
    """A command failed in a way the caller should see: `status` is the HTTP status the gateway answers."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class Invalid(CommandError):
    status = 400


class NotFound(CommandError):
    status = 404


class Conflict(CommandError):
    status = 409


class Unavailable(CommandError):
    status = 503


class Endpoint:
    """One typed command handler: decodes `request_type`, encodes whatever Struct the handler returns.

    nats-py runs a subscription's callbacks one at a time, so by default an endpoint answers one request
    after the other. `concurrent` > 1 lets up to that many run at once: for handlers that are safe to
    interleave (reads, and submits, whose writes are fenced), so that one slow request — a 20,000-job DAG
    being journalled, a lookup waiting for its owner — does not hold up every other caller behind it."""

    def __init__(
        self, request_type: type[In], handler: Callable[[In], Awaitable[msgspec.Struct]], *, concurrent: int = 1
    ) -> None:
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(request_type)
        self.handler: Callable[[Any], Awaitable[msgspec.Struct]] = handler
        self.concurrent = concurrent
        self.running: set[asyncio.Task[None]] = set()
        """Requests being answered (a `concurrent` endpoint's): `drain` waits for them."""


async def drain(endpoints: Iterable[Endpoint], timeout: float) -> None:
    """Wait (at most `timeout`) for the requests concurrent endpoints are still answering: at shutdown, after
    the service stopped taking new ones, so that what was taken is answered before the process lets go."""
    running = [task for endpoint in endpoints for task in endpoint.running]
    if running:
        await asyncio.wait(running, timeout=timeout)


_encoder = msgspec.json.Encoder()


async def _respond_error(req: Request | _Responder, status: int, message: str) -> None:
    await req.respond(b"", headers={ERROR_CODE_HEADER: str(status), ERROR_HEADER: message})


class _Responder:
    """What `_wrap` needs of a request: nats.micro's Request, or a plain core NATS message."""

    def __init__(self, nc: Client, msg: Msg) -> None:
        self.nc = nc
        self.reply = msg.reply
        self.data = msg.data

    async def respond(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.nc.publish(self.reply, data, headers=headers)


def _wrap(service: str, name: str, endpoint: Endpoint) -> Callable[[Any], Awaitable[None]]:
    bound = log.bind(endpoint=f"{service}.{name}")

    async def handle(req: Any) -> None:
        try:
            cmd = endpoint.decoder.decode(req.data)
        except msgspec.ValidationError as exc:
            await _respond_error(req, 400, f"invalid request: {exc}")
            return
        except msgspec.DecodeError as exc:
            await _respond_error(req, 400, f"malformed request: {exc}")
            return
        except RecursionError:
            await _respond_error(req, 400, "malformed request: it nests too deeply")
            return
        try:
            with tracing.span(f"{service} {name}", headers=getattr(req, "headers", None), kind="server"):
                reply = await endpoint.handler(cmd)
        except CommandError as exc:
            await _respond_error(req, exc.status, exc.message)
            return
        except Exception:
            bound.exception("command failed")
            await _respond_error(req, 500, f"internal error in the {service} service; see its log")
            return
        await req.respond(_encoder.encode(reply))

    if endpoint.concurrent <= 1:
        return handle
    return _concurrently(handle, endpoint.concurrent, endpoint.running)


def _concurrently(
    handle: Callable[[Any], Awaitable[None]], limit: int, running: set[asyncio.Task[None]]
) -> Callable[[Any], Awaitable[None]]:
    """Run each request as its own task, at most `limit` at once; past that the subscription's own queue
    holds the rest (the callback waits for a free place before it returns)."""
    places = asyncio.Semaphore(limit)

    def done(task: asyncio.Task[None]) -> None:
        running.discard(task)
        places.release()

    async def guarded(req: Any) -> None:
        try:
            await handle(req)
        except Exception as exc:  # the reply could not be sent (the connection went): the caller times out
            log.warning("command reply not sent", error=repr(exc))

    async def dispatch(req: Any) -> None:
        await places.acquire()
        task = asyncio.create_task(guarded(req))
        running.add(task)  # a strong reference: the loop keeps only weak ones
        task.add_done_callback(done)

    return dispatch


async def add_endpoints(
    nc: Client,
    *,
    service: str,
    description: str,
    version: str,
    prefix: str,
    endpoints: Mapping[str, Endpoint],
) -> Service:
    """Start a nats.micro service whose endpoints are `<prefix>.<name>`, queue-grouped across replicas."""
    svc = await add_service(nc, name=service, version=version, description=description)
    group = svc.add_group(name=prefix)
    for name, endpoint in endpoints.items():
        # `queue.stats` → endpoint name `queue-stats` (micro names allow no dots) on subject `<prefix>.queue.stats`.
        await group.add_endpoint(name=name.replace(".", "-"), subject=name, handler=_wrap(service, name, endpoint))
    return svc


async def subscribe_endpoints(
    nc: Client, *, service: str, subject_prefix: str, endpoints: Mapping[str, Endpoint]
) -> Subscription:
    """Serve `<subject_prefix>.<name>` for each endpoint on a plain subscription (for subjects that come and go
    at run time, such as one shard's commands, which nats.micro cannot remove again)."""
    handlers = {name: _wrap(service, name, endpoint) for name, endpoint in endpoints.items()}
    cut = len(subject_prefix) + 1

    async def on_msg(msg: Msg) -> None:
        handler = handlers.get(msg.subject[cut:])
        if handler is None:
            await _respond_error(_Responder(nc, msg), 404, f"no command {msg.subject[cut:]!r}")
            return
        await handler(_Responder(nc, msg))

    return await nc.subscribe(f"{subject_prefix}.*", cb=on_msg)


async def forward(nc: Client, subject: str, data: bytes, *, service: str, timeout: float) -> Msg:
    """Send an encoded command on and return the raw reply (errors travel in its headers, as from the owner)."""
    try:
        return await nc.request(subject, data, timeout=timeout)
    except NoRespondersError:
        raise Unavailable(
            f"the {service} owning this is not available right now (nothing answers on {subject})"
        ) from None
    except (TimeoutError, NatsTimeoutError):
        raise Unavailable(f"the {service} did not answer within {timeout:g} s") from None


async def request(
    nc: Client,
    subject: str,
    command: msgspec.Struct | bytes,
    reply_type: type[Out],
    *,
    service: str,
    timeout: float,
) -> Out:
    """Send `command` (a Struct, or one already encoded) and decode the reply; every failure becomes a
    CommandError with the right status."""
    if not nc.is_connected:
        raise Unavailable("NATS is not reachable; try again shortly")
    payload = command if isinstance(command, bytes) else _encoder.encode(command)
    try:
        with tracing.span(f"request {subject}", kind="client", attributes={"messaging.destination.name": subject}):
            msg = await nc.request(subject, payload, timeout=timeout, headers=tracing.inject())
    except NoRespondersError:
        raise Unavailable(f"the {service} service is not running (nothing answers on {subject})") from None
    except (TimeoutError, NatsTimeoutError):
        raise Unavailable(f"the {service} service did not answer within {timeout:g} s") from None
    except ConnectionClosedError:
        raise Unavailable("the connection to NATS is closed") from None
    headers = msg.headers or {}
    code = headers.get(ERROR_CODE_HEADER)
    if code is not None:
        try:
            status = int(code)
        except ValueError:
            status = 500
        raise CommandError(headers.get(ERROR_HEADER) or f"the {service} service failed", status)
    return msgspec.json.decode(msg.data, type=reply_type)

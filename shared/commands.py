"""Request/reply commands between services, on both sides.

Server side: `add_endpoints` wraps typed `async def handler(cmd) -> reply` functions as `nats.micro`
endpoints, so `nats micro ls/info/stats` see every service. Errors travel as the standard micro headers
`Nats-Service-Error-Code` (an HTTP status) and `Nats-Service-Error` (one readable sentence).

Client side: `request` sends a command and returns the typed reply, or raises `CommandError` carrying the
status the gateway answers with (503 when nobody answers in time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from shared import tracing
from shared.logging import get_logger

__all__ = [
    "CommandError",
    "Conflict",
    "Endpoint",
    "Invalid",
    "NotFound",
    "Unavailable",
    "add_endpoints",
    "request",
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
    """One typed command handler: decodes `request_type`, encodes whatever Struct the handler returns."""

    def __init__(self, request_type: type[In], handler: Callable[[In], Awaitable[msgspec.Struct]]) -> None:
        self.decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(request_type)
        self.handler: Callable[[Any], Awaitable[msgspec.Struct]] = handler


_encoder = msgspec.json.Encoder()


async def _respond_error(req: Request, status: int, message: str) -> None:
    await req.respond(b"", headers={ERROR_CODE_HEADER: str(status), ERROR_HEADER: message})


def _wrap(service: str, name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[None]]:
    bound = log.bind(endpoint=f"{service}.{name}")

    async def handle(req: Request) -> None:
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

    return handle


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

"""Typed errors of the client: each carries the HTTP status (None when nothing answered) and the API's sentence."""

from __future__ import annotations

import msgspec

__all__ = [
    "AuthError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "JetdagError",
    "NotFound",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "error_for",
]


class JetdagError(Exception):
    """Base of every error the client raises for an answer of the API (or for no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class Invalid(JetdagError):
    """400 or 413: the request is malformed or fails validation; nothing changed."""


class AuthError(JetdagError):
    """401 or 403."""


class Unauthorized(AuthError):
    """401: a token is required, or the one sent is not valid."""


class Forbidden(AuthError):
    """403: the token is valid but may not do this."""


class NotFound(JetdagError):
    """404: no such execution, worker or endpoint."""


class Conflict(JetdagError):
    """409: the request conflicts with the resource's state (cancel a finished execution, reuse a key)."""


class Unavailable(JetdagError):
    """503, or the gateway could not be reached: the request was not done (retrying is safe for reads)."""


class ServerError(JetdagError):
    """500 and other unexpected answers."""


class WaitTimeout(JetdagError, TimeoutError):
    """`wait()` gave up before the execution ended (the execution itself goes on)."""


class _ErrorBody(msgspec.Struct):
    error: str = ""


_BY_STATUS: dict[int, type[JetdagError]] = {
    400: Invalid,
    413: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    503: Unavailable,
}


def error_for(status: int, body: bytes) -> JetdagError:
    """The typed error of a failed answer; the message is the API's `error` sentence when there is one."""
    try:
        message = msgspec.json.decode(body, type=_ErrorBody).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = ""
    if not message:
        text = body.decode(errors="replace").strip()
        message = f"HTTP {status}" + (f": {text[:200]}" if text else "")
    return _BY_STATUS.get(status, ServerError)(message, status)

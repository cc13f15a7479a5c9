"""Execution ids: `exec-` + a ULID-style id (10 characters of time, 16 of randomness), so they sort by
creation time — listings page through them in order, and retention finds old executions by id alone."""

from __future__ import annotations

import secrets

from shared.timeutil import now_ms

__all__ = ["execution_id_floor", "new_execution_id"]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def _time_part(ms: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[ms & 31])
        ms >>= 5
    return "".join(reversed(chars))


def new_execution_id() -> str:
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    tail = []
    for _ in range(16):
        tail.append(_CROCKFORD[rand & 31])
        rand >>= 5
    return "exec-" + _time_part(now_ms()) + "".join(tail)


def execution_id_floor(ms: int) -> str:
    """Sorts before every id created at or after `ms`, and after every id created before it."""
    return "exec-" + _time_part(ms)

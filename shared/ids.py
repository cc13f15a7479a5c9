"""Validation of every user-supplied token that can end up in a subject, a consumer name or a KV key.

A `.` splits subject tokens, `*` and `>` are wildcards and whitespace ends a subject: letting any of them
through would let one client address another's data. Everything else is rejected with a readable sentence.
"""

from __future__ import annotations

import re

from shared.commands import Invalid

__all__ = [
    "IDEMPOTENCY_KEY_RE",
    "ID_RE",
    "NAME_RE",
    "WORKFLOW_RE",
    "IdError",
    "check_id",
    "check_idempotency_key",
    "check_name",
]

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Capabilities and job types form consumer names `<capability>__<type>`; a `__` inside either would make
# two different pairs collide on one consumer.
NAME_RE = re.compile(r"^(?!.*__)[A-Za-z0-9_-]{1,64}$")
WORKFLOW_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# An Idempotency-Key is never used raw in a subject or key (it is hashed); UUIDs and `<client>:<n>` fit.
IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")


class IdError(Invalid, ValueError):
    """An id is not of the accepted form; the message names the field. A 400 wherever it is raised: in a
    REST route or a service command alike."""


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_id(field: str, value: object) -> str:
    """Return `value` if it is a valid id (1-128 of `[A-Za-z0-9_-]`), else raise IdError naming `field`."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise IdError(f"{field} must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-', got {_describe(value)}")
    return value


def check_name(field: str, value: object) -> str:
    """Validate a capability or job type (1-64 of `[A-Za-z0-9_-]`, no `__`)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise IdError(
            f"{field} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-' without '__', got {_describe(value)}"
        )
    return value


def check_idempotency_key(value: object) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.match(value):
        raise IdError(
            f"Idempotency-Key must be 1-255 characters of A-Z, a-z, 0-9, '_', '-', '.' or ':', got {_describe(value)}"
        )
    return value

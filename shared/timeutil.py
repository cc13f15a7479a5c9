"""Wall-clock timestamps as the API shows them: ISO-8601 UTC with milliseconds (`2026-11-27T21:09:31.123Z`)."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from msgspec import Meta

__all__ = ["Timestamp", "iso_from_ms", "ms_from_iso", "now_iso", "now_ms"]

Timestamp = Annotated[
    str,
    Meta(
        description="ISO-8601 UTC time with milliseconds",
        examples=["2026-11-27T21:09:31.123Z"],
        extra_json_schema={"format": "date-time"},
    ),
]
"""A time field on the wire: a string (exactly what `now_iso` writes), documented as `format: date-time`."""


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def iso_from_ms(ms: int) -> str:
    seconds, milli = divmod(ms, 1000)
    return f"{_second(seconds)}{milli:03d}Z"


@functools.lru_cache(maxsize=8)
def _second(seconds: int) -> str:
    # The scheduler stamps several records and events per job: each second is formatted once, not per call.
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))


def now_iso() -> str:
    return iso_from_ms(now_ms())


def ms_from_iso(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS  # exact: float timestamps lose a millisecond now and then

"""Server-sent events, the pure part: the wire format, the request's resume point and kinds, and the bounded
buffer between the event stream and one HTTP client."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass

from shared.commands import Invalid

__all__ = [
    "HEADERS",
    "HEARTBEAT",
    "RETRY",
    "Frame",
    "StreamBuffer",
    "comment",
    "control",
    "event",
    "parse_kinds",
    "parse_last_id",
]

RETRY = b"retry: 2000\n\n"
"""Sent first: a browser's EventSource reconnects after 2 s (with Last-Event-ID) when a stream breaks."""
HEARTBEAT = b": heartbeat\n\n"
HEADERS = {
    "Cache-Control": "no-cache",
    # A reverse proxy (nginx) must pass each event on at once instead of buffering the response.
    "X-Accel-Buffering": "no",
}
"""Response headers of every event stream."""
KIND_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_KINDS = 32


@dataclass(frozen=True, slots=True)
class Frame:
    """One event from the stream, as delivered to the gateway."""

    seq: int
    kind: str
    data: bytes
    pending: int
    """Events matching this stream's filter that follow this one in the stream right now."""


def event(kind: str, seq: int, data: bytes) -> bytes:
    # Payloads are single-line JSON (msgspec never emits a raw newline), so one `data:` line carries it whole.
    return b"event: %s\nid: %d\ndata: %s\n\n" % (kind.encode(), seq, data)


def control(kind: str, data: bytes) -> bytes:
    """A message of the gateway's own (end, dropped): no `id:`, so a client's Last-Event-ID stays on the last
    real event."""
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), data)


def comment(text: str) -> bytes:
    return b": %s\n\n" % text.encode()


def parse_last_id(header: str | None, query: str | None) -> int | None:
    """The sequence to resume after: the Last-Event-ID header (what EventSource sends on reconnect), else the
    `lastEventId` query parameter (a first connect from a browser cannot set headers)."""
    raw = header if header not in (None, "") else query
    if raw in (None, ""):
        return None
    assert raw is not None
    if not raw.isdigit() or len(raw) > 20:
        raise Invalid(f"Last-Event-ID must be an event id from this stream (a non-negative integer), got {raw[:40]!r}")
    return int(raw)


def parse_kinds(raw: str | None) -> frozenset[str] | None:
    """`?kinds=completed,failed,jobs` → the kinds to send; None: every kind."""
    if raw is None or not raw.strip():
        return None
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    if len(kinds) > MAX_KINDS:
        raise Invalid(f"kinds names at most {MAX_KINDS} kinds, got {len(kinds)}")
    for kind in kinds:
        if not KIND_RE.match(kind):
            raise Invalid(f"kinds: {kind[:40]!r} is not an event kind (lowercase letters, digits, '_' or '-')")
    return frozenset(kinds)


class StreamBuffer:
    """Events on their way to one client, bounded in bytes. When it is full, the event stream waits (so a
    replay of a long history is paced by the client); a client that takes nothing for `patience` seconds
    while it is full is slow: it is dropped (and resumes with Last-Event-ID) instead of growing the gateway."""

    def __init__(self, max_bytes: int, patience: float) -> None:
        self.max_bytes = max_bytes
        self.patience = patience
        self.size = 0
        self.overflowed = False
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()

    def _full_for(self, frame: Frame) -> bool:
        # One frame always fits an empty buffer, however large.
        return bool(self._frames) and self.size + len(frame.data) > self.max_bytes

    async def put(self, frame: Frame) -> bool:
        """Add `frame`, waiting for room; False (nothing added) when the client made none in time."""
        if self.overflowed:
            return False
        try:
            async with asyncio.timeout(self.patience):
                while self._full_for(frame):
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            self.overflowed = True
            self._ready.set()
            return False
        self._frames.append(frame)
        self.size += len(frame.data)
        self._ready.set()
        return True

    async def get(self, timeout: float) -> Frame | None:
        """The next frame; None after `timeout` seconds without one, or when it is empty after an overflow."""
        if not self._frames and not self.overflowed:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self.size -= len(frame.data)
        self._space.set()
        return frame

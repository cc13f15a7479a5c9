"""Server-sent events as the client yields them: the stream sequence, the kind, and the payload decoded with
the Structs of `shared` (a kind the client does not know yet is yielded with its JSON as a dict). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import msgspec

from shared.api import SSE_DROPPED, SSE_END, StreamDropped, StreamEnd
from shared.messages import Checkpoint, ExecutionEvent, JobsEvent, QueueEvent, WorkerEvent

__all__ = ["Event", "Payload", "decode_event", "read_sse"]

Payload: TypeAlias = ExecutionEvent | Checkpoint | JobsEvent | WorkerEvent | QueueEvent | dict[str, Any]

EXECUTION_KINDS = frozenset({"created", "running", "completed", "failed", "cancelled", "retried", "paused", "resumed"})


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the event stream (docs/events.md)."""

    id: int
    """JetStream stream sequence: pass it as `last_event_id` to resume right after this event."""
    kind: str
    """The last token of `execution.<exec>.<kind>` (`jobs` for the batched job changes); `worker` for
    `worker.<id>.<what>`, `queue` for `queue.<paused|resumed>`."""
    payload: Payload


def decode_event(event_id: int, kind: str, data: bytes | str) -> Event:
    """Decode one event by its kind; a payload that does not fit its Struct is kept as its JSON."""
    raw: Any = msgspec.json.decode(data)
    payload: Payload = raw
    if isinstance(raw, dict):
        try:
            if kind in EXECUTION_KINDS:
                payload = msgspec.convert(raw, ExecutionEvent)
            elif kind == "checkpoint":
                payload = msgspec.convert(raw, Checkpoint)
            elif kind == "jobs":
                payload = msgspec.convert(raw, JobsEvent)
            elif kind == "worker":
                payload = msgspec.convert(raw, WorkerEvent)
            elif kind == "queue":
                payload = msgspec.convert(raw, QueueEvent)
        except msgspec.ValidationError:
            payload = raw
    return Event(event_id, kind, payload)


def read_sse(kind: str, event_id: str, data: str) -> Event | StreamEnd | StreamDropped | None:
    """One SSE message: an event, the gateway's end-of-stream or dropped notice, or None (nothing to yield)."""
    if kind == SSE_END:
        return msgspec.json.decode(data, type=StreamEnd)
    if kind == SSE_DROPPED:
        return msgspec.json.decode(data, type=StreamDropped)
    if not event_id or not data:
        return None
    return decode_event(int(event_id), kind, data)

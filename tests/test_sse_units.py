"""The pure part of the gateway's SSE: wire format, request parsing, the bounded buffer. No services."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from jetdag.client.events import decode_event
from services.gateway.sse import Frame, StreamBuffer, control, event, parse_kinds, parse_last_id
from shared.commands import Invalid
from shared.messages import ExecutionEvent, QueueEvent, WorkerEvent
from shared.subjects import Names


def test_wire_format() -> None:
    assert event("job", 7, b'{"a":1}') == b'event: job\nid: 7\ndata: {"a":1}\n\n'
    assert control("end", b"{}") == b"event: end\ndata: {}\n\n"


def test_last_event_id_and_kinds() -> None:
    assert parse_last_id(None, None) is None
    assert parse_last_id("12", "3") == 12
    assert parse_last_id("", "3") == 3
    with pytest.raises(Invalid, match="Last-Event-ID"):
        parse_last_id("-1", None)
    assert parse_kinds(None) is None and parse_kinds(" ") is None
    assert parse_kinds("completed, jobs") == frozenset({"completed", "jobs"})
    with pytest.raises(Invalid, match="kinds"):
        parse_kinds("Completed")


def test_kinds_map_to_filters_that_never_overlap() -> None:
    names = Names("ns")
    assert names.events_of_kinds({"jobs", "failed", "worker"}) == [
        "ns.events.execution.*.failed",
        "ns.events.execution.*.jobs",
        "ns.events.worker.>",
    ]
    assert names.event_kind("ns.events.execution.e1.jobs") == "jobs"
    assert names.event_kind("ns.events.worker.w1.registered") == "worker"


def frame(seq: int, size: int) -> Frame:
    return Frame(seq, "jobs", b"x" * size, 0)


async def test_a_full_buffer_waits_for_the_client_then_gives_up() -> None:
    buffer = StreamBuffer(max_bytes=10, patience=5)
    assert await buffer.put(frame(1, 8))
    # Full: the next put waits until the client takes a frame.
    waiting = asyncio.create_task(buffer.put(frame(2, 8)))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert (await buffer.get(1)) == frame(1, 8)
    assert await waiting and buffer.size == 8
    # A client that takes nothing for `patience` overflows it; what is buffered is still delivered.
    impatient = StreamBuffer(max_bytes=10, patience=0.05)
    assert await impatient.put(frame(1, 100))  # one frame always fits an empty buffer
    assert not await impatient.put(frame(2, 1))
    assert impatient.overflowed and (await impatient.get(1)) == frame(1, 100)
    assert await impatient.get(1) is None


async def test_get_times_out_on_an_idle_stream() -> None:
    assert await StreamBuffer(10, 1).get(0.01) is None


def test_every_documented_kind_decodes_to_its_struct() -> None:
    """docs/events.md's payloads: the client yields each kind as its Struct, not as a dict."""
    progress = {"total": 1, "completed": 0, "failed": 0, "running": 1}
    execution: dict[str, Any] = {"executionId": "exec-1", "workflowId": "w", "status": "running", "at": "2026-12-03"}
    execution["progress"] = progress
    for kind in ("created", "running", "paused", "resumed", "completed"):
        assert isinstance(decode_event(1, kind, json.dumps(execution)).payload, ExecutionEvent), kind
    queue = {"event": "paused", "at": "2026-12-03T00:00:00Z"}
    assert isinstance(decode_event(2, "queue", json.dumps(queue)).payload, QueueEvent)
    worker = {"event": "registered", "workerId": "w1", "at": "2026-12-03T00:00:00Z"}
    assert isinstance(decode_event(3, "worker", json.dumps(worker)).payload, WorkerEvent)
    assert decode_event(4, "later-kind", '{"x": 1}').payload == {"x": 1}

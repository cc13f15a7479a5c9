"""Server-sent events from the gateway (issue 9 part 4), read with a real SSE client (httpx-sse) against real
services: every event of an execution in stream order, resume with no gap and no duplicate, heartbeats, kinds,
no consumer left behind by 200 clients, a slow client dropped instead of growing the gateway, CORS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse
from nats.aio.client import Client as Nats
from nats.js.api import DeliverPolicy

from jetdag.client import AsyncClient
from shared.messages import Checkpoint, ExecutionEvent, JobsEvent
from tests.api import job, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for

Triple = tuple[str, int, str]


async def stream_contents(nc: Nats, stack: Stack, subject: str) -> list[Triple]:
    """What the event stream holds for `subject`, read straight from JetStream: (kind, seq, data)."""
    js = nc.jetstream()
    sub = await js.subscribe(
        subject, stream=stack.names.events_stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    out: list[Triple] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append((stack.names.event_kind(msg.subject), msg.metadata.sequence.stream, msg.data.decode()))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def read_sse(
    http: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None, limit: int | None = None
) -> tuple[list[Triple], list[tuple[str, str]]]:
    """Events (kind, id, data) and control messages (end, dropped) until the server ends the stream, or the
    first `limit` events (then the connection is dropped)."""
    events: list[Triple] = []
    controls: list[tuple[str, str]] = []
    async with aconnect_sse(http, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # the `retry:` advice
            if sse.event in ("end", "dropped"):
                # No `id:` line; httpx-sse repeats the last id seen (the spec's last-event-id buffer).
                controls.append((sse.event, sse.data))
                continue
            events.append((sse.event, int(sse.id), sse.data))
            if limit is not None and len(events) >= limit:
                break
    return events, controls


async def consumers(nc: Nats, stack: Stack) -> int:
    info = await nc.jetstream().stream_info(stack.names.events_stream)
    return int(info.state.consumer_count)


async def test_an_execution_stream_is_its_events_in_order_then_ends(
    stack: Stack, http: httpx.AsyncClient, nc: Nats
) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"]), job("c", "fail", ["a"])])
    events, controls = await read_sse(http, f"{stack.url}/execute/{eid}/events")
    assert controls == [("end", msgspec.json.encode({"executionId": eid, "status": "failed"}).decode())]
    stored = await stream_contents(nc, stack, stack.names.execution_stream(eid))
    # The stream ends after the final event: everything stored up to it, in stream order, byte for byte.
    final = next(i for i, (kind, _, _) in enumerate(stored) if kind == "failed")
    assert events == stored[: final + 1]
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "created" and kinds[-1] == "failed" and "jobs" in kinds and "checkpoint" in kinds
    # Reconnecting after the end gets the end at once, nothing again.
    again, controls = await read_sse(
        http, f"{stack.url}/execute/{eid}/events", headers={"Last-Event-ID": str(events[-1][1])}
    )
    assert again == [] and controls[0][0] == "end"


async def test_resume_yields_exactly_the_missed_events(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    jobs = [job("a", "sleep", config={"seconds": 0.3})] + [job(f"b{i}", "noop", ["a"]) for i in range(4)]
    eid = await submit(http, stack.url, jobs)
    url = f"{stack.url}/execute/{eid}/events"
    first, _ = await read_sse(http, url, limit=3)  # then the connection drops
    await wait_final(http, stack.url, eid)
    rest, controls = await read_sse(http, url, headers={"Last-Event-ID": str(first[-1][1])})
    whole, _ = await read_sse(http, url)
    assert first + rest == whole and controls[-1][0] == "end"
    assert len({seq for _, seq, _ in whole}) == len(whole)
    # A browser's first connect cannot set headers: the query parameter does the same.
    by_query, _ = await read_sse(http, f"{url}?lastEventId={first[-1][1]}")
    assert by_query == rest


async def test_the_client_resumes_across_a_gateway_restart(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    eid = await submit(
        http, stack.url, [job("a", "sleep", config={"seconds": 1}), job("b", "sleep", ["a"], config={"seconds": 1})]
    )
    seen = []
    async with AsyncClient(stack.url, retries=20) as jd:
        async for event in jd.events(eid):
            seen.append(event)
            if len(seen) == 2:
                gateway = next(p for p in stack.procs if p.name == "gateway")
                await gateway.aterminate()
                await gateway.start().wait_ready()
    whole, _ = await read_sse(http, f"{stack.url}/execute/{eid}/events")
    assert [(e.kind, e.id) for e in seen] == [(kind, seq) for kind, seq, _ in whole]
    payloads = {type(e.payload) for e in seen}
    assert ExecutionEvent in payloads and JobsEvent in payloads and Checkpoint in payloads
    assert seen[-1].kind == "completed" and isinstance(seen[-1].payload, ExecutionEvent)
    assert seen[-1].payload.progress.completed == 2


async def test_all_executions_from_now_filtered_by_kind(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1, JETDAG_SSE_HEARTBEAT_S="0.2")
    before = await submit(http, stack.url, [job("a")])
    await wait_final(http, stack.url, before)
    got: list[Triple] = []
    heartbeats = 0
    async with http.stream("GET", f"{stack.url}/events", params={"kinds": "completed,created"}) as response:
        assert response.status_code == 200
        eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"])])
        buffer = ""
        async for chunk in response.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                message, buffer = buffer.split("\n\n", 1)
                if message.startswith(": heartbeat"):
                    heartbeats += 1
                fields = dict(line.split(": ", 1) for line in message.splitlines() if not line.startswith(":"))
                if "id" in fields:
                    got.append((fields["event"], int(fields["id"]), fields["data"]))
            if any(kind == "completed" for kind, _, _ in got) and heartbeats:
                break
    # From now: nothing of the earlier execution; only the kinds asked for.
    assert [kind for kind, _, _ in got] == ["created", "completed"]
    assert all(msgspec.json.decode(data)["executionId"] == eid for _, _, data in got)
    assert heartbeats >= 1


async def test_bad_requests(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    r = await http.get(f"{stack.url}/execute/exec-nope/events")
    assert r.status_code == 404 and r.json()["success"] is False
    r = await http.get(f"{stack.url}/execute/a.b/events")
    assert r.status_code == 400 and "executionId" in r.json()["error"]
    r = await http.get(f"{stack.url}/events", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]
    r = await http.get(f"{stack.url}/events", params={"kinds": "completed,>"})
    assert r.status_code == 400 and "kinds" in r.json()["error"]


async def test_200_clients_connecting_and_dropping_leave_no_consumer(stack: Stack, nc: Nats) -> None:
    await stack.up()
    baseline = await consumers(nc, stack)
    limits = httpx.Limits(max_connections=250)
    async with httpx.AsyncClient(timeout=30, limits=limits) as many, contextlib.AsyncExitStack() as open_streams:

        async def connect() -> None:
            response = await open_streams.enter_async_context(many.stream("GET", f"{stack.url}/events"))
            assert response.status_code == 200
            await response.aiter_raw().__anext__()  # the stream is up: its consumer exists

        await asyncio.gather(*(connect() for _ in range(200)))
        assert await consumers(nc, stack) == baseline + 200
    # Every connection is closed here, without reading to the end.

    async def back_to_baseline() -> bool:
        return await consumers(nc, stack) == baseline

    await wait_for(back_to_baseline, timeout=30, message="the SSE consumers to be freed")


async def test_too_many_streams_is_a_503(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_SSE_MAX_STREAMS="1", JETDAG_SSE_HEARTBEAT_S="0.2")  # a closed client shows at the next write
    async with http.stream("GET", f"{stack.url}/events") as first:
        assert first.status_code == 200
        second = await http.get(f"{stack.url}/events")
        assert second.status_code == 503 and "JETDAG_SSE_MAX_STREAMS" in second.json()["error"]
    # Closing the first frees its place as soon as the gateway sees the disconnect.

    async def admitted() -> bool:
        async with http.stream("GET", f"{stack.url}/events") as third:
            return third.status_code == 200

    await wait_for(admitted, timeout=10, message="the closed stream's place to be freed")


async def test_a_slow_client_is_dropped_and_resumes(stack: Stack, http: httpx.AsyncClient, nc: Nats) -> None:
    await stack.up(workers=1, JETDAG_SSE_BUFFER_BYTES="65536", JETDAG_SSE_SLOW_CLIENT_S="1")
    # Errors are in the events: 1,000 jobs failing with 8 KiB messages put ~8 MB on the stream, more than the
    # kernel's socket buffers can absorb for a client that does not read.
    message = "x" * 8000
    for _ in range(2):
        eid = await submit(http, stack.url, [job(f"j{i}", "fail", config={"message": message}) for i in range(500)])
        await wait_final(http, stack.url, eid, timeout=120)
    stored = await stream_contents(nc, stack, stack.names.events_all)
    baseline = await consumers(nc, stack)
    gateway = next(p for p in stack.procs if p.name == "gateway")
    assert stack.gateway_port is not None

    # A client that asks for everything from the start, then reads nothing with a tiny receive window.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", stack.gateway_port))
    request = (
        "GET /api/distributed/events?lastEventId=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    slow.sendall(request.encode())
    await wait_for(lambda: gateway.has_logged("sse client too slow; stream dropped"), timeout=60)

    async def freed() -> bool:
        return await consumers(nc, stack) == baseline

    await wait_for(freed, timeout=30, message="the slow client's consumer to be freed")

    # Now read what it was sent: events in order, then the `dropped` notice naming the last id sent.
    received = b""
    slow.settimeout(10)
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of the chunked response
        chunk = await asyncio.to_thread(slow.recv, 1 << 20)
        if not chunk:
            break
        received += chunk
    slow.close()
    messages = [m for m in _dechunk(received).split("\n\n") if m.startswith("event:")]
    assert messages[-1].startswith("event: dropped"), messages[-1][:200]
    notice: dict[str, Any] = msgspec.json.decode(messages[-1].split("data: ", 1)[1])
    ids = [int(m.split("\nid: ", 1)[1].split("\n", 1)[0]) for m in messages[:-1]]
    assert ids and notice["lastEventId"] == ids[-1] and "too slowly" in notice["error"]
    assert len(ids) < len(stored)

    # Resuming from the notice's id gets exactly the rest.
    rest, _ = await read_sse(
        http, f"{stack.url}/events", headers={"Last-Event-ID": str(ids[-1])}, limit=len(stored) - len(ids)
    )
    assert ids + [seq for _, seq, _ in rest] == [seq for _, seq, _ in stored]


def _dechunk(raw: bytes) -> str:
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"200 OK" in head.split(b"\r\n", 1)[0], head[:200]
    out = b""
    while body:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out.decode()


async def test_cors_is_off_by_default_and_configurable(stack: Stack, http: httpx.AsyncClient, tmp_path: Path) -> None:
    await stack.up()
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "GET"}
    r = await http.get(f"{stack.url}/health", headers={"Origin": "http://app.example"})
    assert "access-control-allow-origin" not in r.headers
    gateway = next(p for p in stack.procs if p.name == "gateway")
    await gateway.aterminate()
    await stack.gateway(JETDAG_CORS_ORIGINS="http://app.example")
    r = await http.options(
        f"{stack.url}/events", headers={**preflight, "Access-Control-Request-Headers": "last-event-id"}
    )
    assert r.status_code in (200, 204), r.text
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    assert "last-event-id" in r.headers["access-control-allow-headers"].lower()
    r = await http.get(f"{stack.url}/health", headers={"Origin": "http://app.example"})
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    r = await http.get(f"{stack.url}/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers

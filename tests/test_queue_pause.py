"""Finer pause (issue 13 part 5) against real services: a timed pause of one job type holds only those jobs and
ends by itself through JetStream's pause_until; a pause of one capability covers a consumer created later; a
resume by scope leaves what another pause covers paused; stats, /health and the queue events show it all; every
bad body is a 400 that changes nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from shared.messages import PRIORITIES
from shared.timeutil import ms_from_iso, now_ms
from tests.api import job, jobs, stats, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def bands(nc: Client, stack: Stack, capability: str, job_type: str) -> list[ConsumerInfo]:
    """The consumers of every priority band of (capability, type)."""
    js = nc.jetstream()
    return [
        await js.consumer_info(stack.names.jobs_stream, stack.names.jobs_consumer(capability, job_type, p))
        for p in PRIORITIES
    ]


async def follow_queue_events(nc: Client, stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def on(msg: Msg) -> None:
        seen.append((msg.subject.rsplit(".", 1)[-1], json.loads(msg.data)))

    await nc.subscribe(stack.names.queue_event("*"), cb=on)
    await nc.flush()
    return seen


async def test_a_timed_pause_of_one_type_holds_only_it_and_ends_by_itself(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up(workers=1)
    second = await stack.scheduler("scheduler-2")
    events = await follow_queue_events(nc, stack)
    before = now_ms()
    r = await http.post(f"{stack.url}/queue/pause", json={"type": "noop", "durationS": 4, "reason": "deploy"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["isPaused"] is False and body["message"].startswith("queue paused: type 'noop' until ")
    [pause] = body["pauses"]
    assert pause["type"] == "noop" and pause["capability"] is None and pause["reason"] == "deploy"
    until = ms_from_iso(pause["until"])
    assert before + 4000 <= until <= now_ms() + 4000

    eid = await submit(http, stack.url, [job("held"), job("runs", "sleep", config={"seconds": 0.01})])

    async def sleep_done() -> bool:
        return bool((await jobs(http, stack.url, eid))["runs"]["status"] == "completed")

    await wait_for(sleep_done, timeout=20, message="the sleep job, not paused, completed")
    assert (await jobs(http, stack.url, eid))["held"]["status"] == "queued"
    # Every band of the type is paused until the pause's end on the server; the other type's are not.
    noop = await bands(nc, stack, "any", "noop")
    assert all(c.paused and ms_from_iso(c.config.pause_until or "") == until for c in noop), noop
    assert not any(c.paused for c in await bands(nc, stack, "any", "sleep"))
    listed = await stats(http, stack.url)
    assert listed["isPaused"] is False and listed["pauses"] == [pause]
    health = (await http.get(f"{stack.url}/health")).json()
    assert health["pauses"] == [pause]

    # Nobody resumes: the server ends the pause at its `until`, the held job runs, the end is an event.
    final = await wait_final(http, stack.url, eid, timeout=30)
    assert final["status"] == "completed"
    assert ms_from_iso((await jobs(http, stack.url, eid))["held"]["startedAt"]) >= until - 50
    assert (await stats(http, stack.url))["pauses"] == []
    await wait_for(lambda: len(events) >= 2, timeout=10, message="paused and resumed events")
    assert [(what, e.get("type"), e.get("expired", False)) for what, e in events] == [
        ("paused", "noop", False),
        ("resumed", "noop", True),
    ]
    assert events[0][1]["until"] == pause["until"] and events[0][1]["reason"] == "deploy"
    # One replica claimed the end (compare-and-set on the state) and announced it; the other did not.
    replicas = [stack.procs[1], second]
    await wait_for(
        lambda: any(r.has_logged("queue pause ended") for r in replicas), timeout=10, message="the end announced"
    )
    assert [r.has_logged("queue pause ended") for r in replicas].count(True) == 1
    info = await nc.jetstream().stream_info(stack.names.events_stream, subjects_filter=stack.names.queue_event("*"))
    assert info.state.subjects == {stack.names.queue_event("paused"): 1, stack.names.queue_event("resumed"): 1}


async def test_a_capability_pause_covers_a_later_consumer_and_resume_by_scope(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up(workers=1, JETDAG_STALL_AFTER_S="1", JETDAG_SWEEP_INTERVAL_S="0.3")
    events = await follow_queue_events(nc, stack)
    r = await http.post(f"{stack.url}/queue/pause", json={"capability": "gpu", "reason": "driver update"})
    assert r.status_code == 200 and r.json()["message"].startswith("queue paused: capability 'gpu'"), r.text
    eid = await submit(http, stack.url, [job("cpu-side"), job("gpu-side", capability="gpu")])
    # The gpu consumers do not exist yet: the gpu worker creates them, paused.
    await stack.worker("gpu-1", "--capabilities", "gpu")

    async def cpu_done() -> bool:
        return bool((await jobs(http, stack.url, eid))["cpu-side"]["status"] == "completed")

    await wait_for(cpu_done, timeout=20, message="the job not needing gpu completed")
    assert all(c.paused for c in await bands(nc, stack, "gpu", "noop"))
    assert not any(c.paused for c in await bands(nc, stack, "any", "noop"))
    assert (await jobs(http, stack.url, eid))["gpu-side"]["status"] == "queued"

    async def says_which_pause() -> bool:
        return (await jobs(http, stack.url, eid))["gpu-side"].get("waitingReason") == (
            "the queue is paused for capability 'gpu'"
        )

    await wait_for(says_which_pause, timeout=20, message="the held job names the pause holding it")

    # A pause of everything on top; ending the gpu pause leaves gpu paused by it.
    assert (await http.post(f"{stack.url}/queue/pause", json={})).json()["isPaused"] is True
    r = await http.post(f"{stack.url}/queue/resume", json={"capability": "gpu"})
    assert r.status_code == 200 and r.json()["message"].startswith("queue resumed: capability 'gpu'"), r.text
    assert [p["capability"] for p in r.json()["pauses"]] == [None]
    assert all(c.paused for c in await bands(nc, stack, "gpu", "noop"))
    r = await http.post(f"{stack.url}/queue/resume", json={"capability": "gpu"})
    assert "no pause of that scope" in r.json()["message"]

    # The reference clients' resume: no body, every pause ends.
    r = await http.post(f"{stack.url}/queue/resume")
    assert r.status_code == 200 and r.json()["isPaused"] is False and r.json()["pauses"] == []
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    assert (await jobs(http, stack.url, eid))["gpu-side"]["workerId"] == "gpu-1"
    await wait_for(lambda: len(events) >= 4, timeout=10, message="four queue events")
    assert [(what, e.get("capability")) for what, e in events] == [
        ("paused", "gpu"),
        ("paused", None),
        ("resumed", "gpu"),
        ("resumed", None),
    ]


BAD_PAUSES: list[tuple[dict[str, Any], str]] = [
    ({"durationS": 5, "until": "2999-01-01T00:00:00Z"}, "until and durationS"),
    ({"until": "2020-01-01T00:00:00Z"}, "until must be in the future"),
    ({"until": "tomorrow"}, "until"),
    ({"durationS": 0}, "durationS"),
    ({"capability": "a__b"}, "capability"),
    ({"type": "no spaces"}, "type"),
    ({"reason": "x" * 501}, "reason"),
    ({"capabilty": "gpu"}, "capabilty"),
]


async def test_bad_pause_bodies_are_400_and_change_nothing(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    for body, words in BAD_PAUSES:
        r = await http.post(f"{stack.url}/queue/pause", json=body)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    r = await http.post(f"{stack.url}/queue/resume", json={"type": "a__b"})
    assert r.status_code == 400 and "type" in r.json()["error"], r.text
    assert (await stats(http, stack.url))["pauses"] == []

"""Events: a plain NATS subscription sees an execution's state changes, in order, with readable payloads."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from nats.aio.client import Client

from tests.api import job, submit, wait_final
from tests.conftest import Stack
from tests.helpers import ROOT


def job_order(events: list[tuple[str, dict[str, Any]]], job_id: str) -> list[str]:
    return [subject.rsplit(".", 1)[1] for subject, _ in events if subject.split(".")[-2] == job_id]


async def test_live_subscription_sees_every_event_in_order(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(workers=2)
    events: list[tuple[str, dict[str, Any]]] = []
    received = asyncio.Event()

    async def collect(msg: Any) -> None:
        events.append((msg.subject, json.loads(msg.data)))
        if msg.subject.endswith((".completed", ".failed")) and ".execution." in msg.subject:
            received.set()

    await nc.subscribe(f"{stack.names.events_prefix}.*.*.>", cb=collect)
    await nc.flush()
    eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"]), job("c", "fail", ["a"])])
    await asyncio.wait_for(received.wait(), 30)
    await nc.flush()
    mine = [(s, p) for s, p in events if s.split(".")[3] == eid]
    execution = [s.rsplit(".", 1)[1] for s, _ in mine if s.split(".")[2] == "execution"]
    assert execution[0] == "created" and execution[-1] == "failed", execution
    assert "running" in execution and "checkpoint" in execution
    assert job_order(mine, "a") == ["queued", "started", "result", "completed"]
    assert job_order(mine, "b") == ["queued", "started", "result", "completed"]
    assert job_order(mine, "c") == ["queued", "started", "result", "failed"]
    # a's completion comes before b or c is queued
    subjects = [s for s, _ in mine]
    a_done = subjects.index(f"{stack.names.events_prefix}.job.{eid}.a.completed")
    assert a_done < subjects.index(f"{stack.names.events_prefix}.job.{eid}.b.queued")
    failed = next(p for s, p in mine if s.endswith(".c.failed"))
    assert failed == {**failed, "executionId": eid, "jobId": "c", "status": "failed", "error": "failed on purpose"}
    final = next(p for s, p in mine if s.endswith(f"execution.{eid}.failed"))
    assert final["progress"]["completed"] == 2 and final["progress"]["failed"] == 1


async def test_follow_example_prints_progress(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("one"), job("two", "sleep", ["one"], config={"seconds": 0.3})])
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "follow.py"),
        eid,
        "--server",
        stack.nats_url,
        "--namespace",
        stack.namespace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    lines = text.splitlines()
    assert "execution created" in lines[0]
    assert any("job one" in line and "completed" in line for line in lines)
    assert "execution completed" in lines[-1] and "2/2 completed" in lines[-1]
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"

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


def changes(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every job change of the batched `jobs` events, in the order they happened."""
    return [c for subject, payload in events if subject.endswith(".jobs") for c in payload["jobs"]]


def job_order(events: list[tuple[str, dict[str, Any]]], job_id: str) -> list[str]:
    return [c["status"] for c in changes(events) if c["jobId"] == job_id]


async def test_live_subscription_sees_every_event_in_order(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(workers=2)
    events: list[tuple[str, dict[str, Any]]] = []
    received = asyncio.Event()

    async def collect(msg: Any) -> None:
        events.append((msg.subject, json.loads(msg.data)))
        if msg.subject.endswith((".completed", ".failed")):
            received.set()

    await nc.subscribe(f"{stack.names.events_prefix}.execution.*.*", cb=collect)
    await nc.flush()
    eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"]), job("c", "fail", ["a"])])
    await asyncio.wait_for(received.wait(), 30)
    await nc.flush()
    mine = [(s, p) for s, p in events if s.split(".")[3] == eid]
    execution = [s.rsplit(".", 1)[1] for s, _ in mine if not s.endswith(".jobs")]
    assert execution[0] == "created" and execution[-1] == "failed", execution
    assert "running" in execution and "checkpoint" in execution
    # A quick job's start travels with its result: `running` shows only for jobs still running a moment on.
    for job_id, end in (("a", "completed"), ("b", "completed"), ("c", "failed")):
        assert [s for s in job_order(mine, job_id) if s != "running"] == ["queued", end], job_order(mine, job_id)
    # a's completion comes before b or c is queued
    order = [(c["jobId"], c["status"]) for c in changes(mine)]
    assert order.index(("a", "completed")) < order.index(("b", "queued"))
    assert order.index(("a", "completed")) < order.index(("c", "queued"))
    failed = next(c for c in changes(mine) if c["jobId"] == "c" and c["status"] == "failed")
    assert failed == {**failed, "jobId": "c", "status": "failed", "error": "failed on purpose", "attempt": 1}
    batch = next(p for s, p in mine if s.endswith(".jobs"))
    assert batch["executionId"] == eid and batch["round"] == 1 and "progress" in batch
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

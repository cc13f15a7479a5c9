"""Scale: a 10,000-job DAG, and 200 executions at once, through the REST API on real workers."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from tests.api import stats, wait_final
from tests.conftest import Stack

pytestmark = pytest.mark.slow


def layered(n: int, width: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        layer = i // width
        deps = [] if layer == 0 else sorted({f"j{(layer - 1) * width + rng.randrange(width)}" for _ in range(2)})
        # Long names push the body past one NATS message: the gateway stages it in the object store.
        jobs.append({"id": f"j{i}", "name": f"job {i} of a large layered dag", "type": "noop", "dependsOn": deps})
    return jobs


async def test_10000_job_dag_completes(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up()
    await stack.worker("w1", "--concurrency", "32")
    await stack.worker("w2", "--concurrency", "32")
    jobs = layered(10_000, 100)
    started = time.monotonic()
    r = await http.post(f"{stack.url}/execute", json={"workflowId": "big", "jobs": jobs}, timeout=120)
    assert r.status_code == 201, r.text
    assert len(r.request.content) > 768 * 1024  # the staged path was taken
    eid = r.json()["executionId"]
    final = await wait_final(http, stack.url, eid, timeout=600)
    elapsed = time.monotonic() - started
    print(f"\n10,000-job DAG: {elapsed:.1f} s ({10_000 / elapsed:.0f} jobs/s)")
    assert final["status"] == "completed" and final["progress"]["completed"] == 10_000
    # No KV value or message of it comes near 1 MiB.
    js = nc.jetstream()
    for stream in (f"KV_{stack.names.executions_bucket}", stack.names.jobs_stream, stack.names.events_stream):
        info = await js.stream_info(stream)
        assert info.config.max_msg_size == 1024 * 1024, stream
    s = (await stats(http, stack.url))["stats"]
    assert s["completed"] == 10_000 and s["failed"] == 0


async def test_200_concurrent_executions(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "--concurrency", "32")
    await stack.worker("w2", "--concurrency", "32")
    dag = [
        {"id": "a", "name": "a", "type": "noop", "dependsOn": []},
        {"id": "b", "name": "b", "type": "noop", "dependsOn": ["a"]},
        {"id": "c", "name": "c", "type": "noop", "dependsOn": ["a"]},
        {"id": "d", "name": "d", "type": "noop", "dependsOn": ["b", "c"]},
    ]
    started = time.monotonic()

    async def one(i: int) -> str:
        r = await http.post(f"{stack.url}/execute", json={"workflowId": f"many-{i}", "jobs": dag}, timeout=60)
        assert r.status_code == 201, r.text
        return str(r.json()["executionId"])

    ids = await asyncio.gather(*(one(i) for i in range(200)))
    finals = await asyncio.gather(*(wait_final(http, stack.url, eid, timeout=300) for eid in ids))
    elapsed = time.monotonic() - started
    print(f"\n200 concurrent executions x 4 jobs: {elapsed:.1f} s")
    assert [f["status"] for f in finals] == ["completed"] * 200
    assert (await stats(http, stack.url))["stats"]["completed"] == 800

"""Priorities end to end: JetStream's priority bands decide which ready job a saturated worker starts next."""

from __future__ import annotations

import httpx

from tests.api import job, jobs, stats, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def test_higher_priority_jobs_start_first_across_executions_and_capabilities(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up()
    await stack.worker("one-slot", "--concurrency", "1", "--capabilities", "gpu")
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    sleep = {"seconds": 0.02}  # starts at least 20 ms apart: their order is unambiguous
    low = await submit(http, stack.url, [job(f"l{i}", "sleep", config=sleep) for i in range(50)], priority=5)
    # The execution says 5, each job says 1: the job's value wins. Another capability, another type's consumer.
    high = await submit(
        http,
        stack.url,
        [job(f"h{i}", "sleep", config=sleep, capability="gpu", priority=1) for i in range(5)],
        priority=5,
    )

    async def all_queued() -> bool:
        return bool((await stats(http, stack.url))["stats"]["paused"] == 55)

    await wait_for(all_queued, timeout=20, message="the 55 jobs queued behind the pause")
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200
    assert (await wait_final(http, stack.url, high))["status"] == "completed"
    assert (await wait_final(http, stack.url, low))["status"] == "completed"
    high_jobs, low_jobs = await jobs(http, stack.url, high), await jobs(http, stack.url, low)
    started = sorted((j["startedAt"], j["id"]) for j in [*high_jobs.values(), *low_jobs.values()])
    assert [job_id for _, job_id in started[:5]] == [f"h{i}" for i in range(5)], started[:8]
    assert {j["priority"] for j in high_jobs.values()} == {1}
    assert {j["priority"] for j in low_jobs.values()} == {5}


async def test_a_priority_outside_1_to_5_is_refused(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    for body in (
        {"workflowId": "wf", "jobs": [job("a")], "priority": 0},
        {"workflowId": "wf", "jobs": [job("a", priority=6)]},
        {"workflowId": "wf", "jobs": [job("a", priority="high")]},
    ):
        r = await http.post(f"{stack.url}/execute", json=body)
        assert r.status_code == 400, r.text
        assert "priority" in r.json()["error"], r.text
    assert (await http.get(f"{stack.url}/executions")).json()["executions"] == []

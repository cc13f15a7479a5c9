"""Concurrency keys and rate limits end to end: real scheduler replicas, workers and the gateway."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx

from jetdag.client import Client
from tests.api import job, jobs, stats, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for
from tests.test_cli_api import jetdag


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in edges:  # an end sorts before a start at the same instant (-1 < 1)
        running += change
        peak = max(peak, running)
    return peak


async def test_a_concurrency_key_caps_running_jobs_across_executions_and_replicas(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=2)
    await stack.scheduler("scheduler-2")  # the executions spread over two owners: the count is cluster-wide
    gpu: dict[str, Any] = {"concurrencyKey": "gpu", "maxConcurrent": 2}
    ids = [
        await submit(http, stack.url, [job(f"j{i}", "sleep", config={"seconds": 0.3}, **gpu) for i in range(4)])
        for _ in range(5)
    ]
    peak = 0
    seen_waiting: list[str] = []
    ready_in_stats = 0

    async def all_done() -> bool:
        nonlocal peak, ready_in_stats
        ready_in_stats = max(ready_in_stats, (await stats(http, stack.url))["ready"])
        listed = [await jobs(http, stack.url, execution_id) for execution_id in ids]
        every = [j for per in listed for j in per.values()]
        peak = max(peak, sum(1 for j in every if j["status"] == "running"))
        seen_waiting.extend(j["waitingReason"] for j in every if j["status"] == "ready" and j.get("waitingReason"))
        return all(j["status"] == "completed" for j in every)

    # 20 jobs of 0.3 s, 2 at a time: about 3 s of work. The bound is loose for a loaded machine, and tight
    # enough to catch a slot given back by one replica that the other's waiting jobs never hear of (it
    # stalled them until their entries went stale, 30 s each time).
    await wait_for(all_done, timeout=25, interval=0.05, message="the 20 jobs of key gpu to complete")
    assert peak <= 2
    intervals = [
        (_at(j["startedAt"]), _at(j["completedAt"]))
        for execution_id in ids
        for j in (await jobs(http, stack.url, execution_id)).values()
    ]
    assert _max_overlap(intervals) == 2, intervals  # never more than 2, and the slots were used
    assert any("concurrency key 'gpu'" in reason for reason in seen_waiting), seen_waiting[:3]
    assert ready_in_stats > 0  # the jobs waiting for a slot are `ready` in /queue/stats too
    assert (await stats(http, stack.url))["ready"] == 0
    one = (await jobs(http, stack.url, ids[0]))["j0"]
    assert one["concurrencyKey"] == "gpu"


async def test_a_rate_limit_spreads_starts_and_delays_the_jobs_it_holds(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=2)
    limit: dict[str, Any] = {"rateLimit": {"key": "partner-api", "limit": 10, "periodS": 1}}
    execution_id = await submit(http, stack.url, [job(f"j{i}", "noop", **limit) for i in range(50)])
    reasons: list[str] = []

    async def delayed_with_reason() -> bool:
        listed = (await jobs(http, stack.url, execution_id)).values()
        reasons.extend(j["waitingReason"] for j in listed if j["status"] == "delayed" and j.get("waitingReason"))
        return bool(reasons)

    await wait_for(delayed_with_reason, timeout=30, interval=0.05, message="a job held by the rate limit")
    assert "rate limit 'partner-api': 10 starts per 1 s" in reasons[0]
    assert (await wait_final(http, stack.url, execution_id, timeout=90))["status"] == "completed"
    listed = (await jobs(http, stack.url, execution_id)).values()
    # The limit holds dispatches: 50 at 10 per second are 5 windows, the last one exactly 4 s after the first.
    # The workers' startedAt adds each delivery's own few milliseconds, either way.
    starts = sorted(_at(j["startedAt"]) for j in listed)
    assert starts[-1] - starts[0] >= 4.0 - 0.1, starts
    per_second = max(sum(1 for t in starts if first <= t < first + 0.9) for first in starts)
    assert per_second <= 10, starts


async def test_a_configured_limit_applies_to_every_job_of_a_type(stack: Stack, http: httpx.AsyncClient) -> None:
    """Set with the CLI, read with the client and over HTTP, removed over HTTP."""
    await stack.up(workers=1)
    done = await jetdag(stack, "rate-limits", "set", "type:noop", "--limit", "2", "--period", "1")
    assert done.returncode == 0 and "type:noop" in done.stdout, done.stderr
    with Client(stack.url) as jd:
        [configured] = jd.rate_limits()
        assert (configured.key, configured.limit, configured.period_s) == ("type:noop", 2, 1.0)
    execution_id = await submit(http, stack.url, [job(f"j{i}", "noop") for i in range(6)])
    assert (await wait_final(http, stack.url, execution_id, timeout=60))["status"] == "completed"
    starts = sorted(_at(j["startedAt"]) for j in (await jobs(http, stack.url, execution_id)).values())
    # 6 starts, 2 per second: the fifth and sixth start at least 2 s after the first two.
    assert starts[-1] - starts[0] >= 2.0 - 0.05, starts
    url = f"{stack.url}/rate-limits/type:noop"
    assert (await http.get(url)).json()["rateLimit"]["recentStarts"] <= 2
    assert (await http.delete(url)).status_code == 200
    assert (await http.get(url)).status_code == 404
    assert (await http.delete(url)).status_code == 404
    listed = await jetdag(stack, "rate-limits", "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


async def test_bad_keys_and_limits_are_refused_and_change_nothing(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    bad: list[tuple[dict[str, Any], str]] = [
        (job("a", concurrencyKey="customer-{config.customerId}"), "config.customerId"),
        (job("a", concurrencyKey="{config.name}", config={"name": "a b"}), "concurrencyKey"),
        (job("a", maxConcurrent=2), "maxConcurrent needs a concurrencyKey"),
        (job("a", concurrencyKey="k", maxConcurrent=0), "maxConcurrent"),
        (job("a", rateLimit={"key": "api", "limit": 0, "periodS": 1}), "limit"),
        (job("a", rateLimit={"key": "a b", "limit": 1, "periodS": 1}), "key"),
        (job("a", rateLimit={"key": "api", "limit": 1}), "periodS"),
    ]
    for body, needle in bad:
        r = await http.post(f"{stack.url}/execute", json={"workflowId": "wf", "jobs": [body]})
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    assert (await http.get(f"{stack.url}/executions")).json()["executions"] == []
    for key, body in (("type:noop", {"limit": 0, "periodS": 1}), ("bad key", {"limit": 1, "periodS": 1})):
        r = await http.put(f"{stack.url}/rate-limits/{key}", json=body)
        assert r.status_code == 400, r.text
    assert (await http.put(f"{stack.url}/rate-limits/x", json={"limit": 1})).status_code == 400
    assert (await http.get(f"{stack.url}/rate-limits")).json()["rateLimits"] == []


async def test_pausing_an_execution_gives_back_the_slots_of_its_withdrawn_jobs(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=1)
    key: dict[str, Any] = {"concurrencyKey": "shared", "maxConcurrent": 1}
    # No worker has capability 'nowhere': the job is queued holding the key's one slot, and never starts.
    holder = await submit(http, stack.url, [job("stuck", "noop", capability="nowhere", **key)])

    async def queued() -> bool:
        return bool((await jobs(http, stack.url, holder))["stuck"]["status"] == "queued")

    await wait_for(queued, message="the job holding the slot queued")
    other = await submit(http, stack.url, [job("next", "noop", **key)])

    async def waits_for_the_slot() -> bool:
        reason = (await jobs(http, stack.url, other))["next"].get("waitingReason") or ""
        return "concurrency key 'shared': 1 of 1 running" in reason

    await wait_for(waits_for_the_slot, message="the other execution's job waiting for the slot")
    assert (await http.post(f"{stack.url}/execute/{holder}/pause")).status_code == 200
    assert (await wait_final(http, stack.url, other, timeout=30))["status"] == "completed"
    assert (await jobs(http, stack.url, holder))["stuck"]["status"] == "ready"

"""Delayed executions (`runAt`, `delayS`): persisted at once, started at their time, also by a scheduler that
took them over; bad times are a 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.timeutil import ms_from_iso, now_ms
from tests.api import job, jobs, status, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def test_delay_starts_the_execution_later_and_a_takeover_keeps_the_timer(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=1)
    before = now_ms()
    # Long enough that the takeover below is over before it, even on a loaded 2-core machine.
    eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"])], delayS=10)
    view = await status(http, stack.url, eid)
    assert view["status"] == "pending" and view["runAt"] is not None
    run_at = ms_from_iso(view["runAt"])
    assert before + 10_000 <= run_at <= now_ms() + 10_000
    # The replica that took it dies; the one that takes the execution over starts it at its time all the same.
    await stack.procs[1].aterminate()
    await stack.scheduler("scheduler-2")
    listing = await jobs(http, stack.url, eid)
    assert {j["status"] for j in listing.values()} == {"pending"} and now_ms() < run_at
    final = await wait_final(http, stack.url, eid, timeout=30)
    assert final["status"] == "completed" and final["runAt"] == view["runAt"]
    started = min(ms_from_iso(j["startedAt"]) for j in (await jobs(http, stack.url, eid)).values())
    assert started >= run_at


async def test_run_at_in_the_past_starts_at_once_and_cancel_before_the_start(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=1)
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    eid = await submit(http, stack.url, [job("a")], runAt=past)
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    held = await submit(http, stack.url, [job("x")], runAt=later)
    assert (await status(http, stack.url, held))["runAt"].startswith(later[:19])
    r = await http.post(f"{stack.url}/execute/{held}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await jobs(http, stack.url, held))["x"]["status"] == "cancelled"
    assert (await jobs(http, stack.url, held))["x"]["startedAt"] is None


async def test_bad_start_times_are_400(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    base = {"workflowId": "wf", "jobs": [job("a")]}
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "both": ({"runAt": soon, "delayS": 5}, "runAt and delayS are both given"),
        "naive": ({"runAt": "2030-01-01T00:00:00"}, "runAt"),
        "not a time": ({"runAt": "tomorrow"}, "runAt"),
        "negative": ({"delayS": -1}, "delayS"),
        "too far": ({"delayS": 400 * 86400}, "delayS"),
        "far runAt": ({"runAt": "2999-01-01T00:00:00Z"}, "runAt must be at most 366 days ahead"),
    }
    for name, (extra, needle) in cases.items():
        r = await http.post(f"{stack.url}/execute", json={**base, **extra})
        assert r.status_code == 400, (name, r.text)
        assert needle in r.json()["error"], (name, r.json()["error"])

    async def nothing_created() -> bool:
        r = await http.get(f"{stack.url}/executions")
        return bool(r.status_code == 200 and r.json()["count"] == 0)

    await wait_for(nothing_created, timeout=5, message="no execution from the refused requests")

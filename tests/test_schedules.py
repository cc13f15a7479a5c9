"""Schedules (issue 13 part 4) against real services: ticks fire once each with two scheduler replicas and carry
on after a restart; pause, resume, trigger, overlap, runs, delete; every bad definition is a 400."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetdag.client import Client, Conflict, Invalid, NotFound
from shared.timeutil import ms_from_iso
from tests.api import job
from tests.conftest import Stack
from tests.helpers import wait_for
from tests.test_cli_api import jetdag

WORKFLOW = {"workflowId": "every-2", "jobs": [job("a")]}


async def create(http: httpx.AsyncClient, url: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    r = await http.post(f"{url}/schedules", json=body)
    assert r.status_code == status, r.text
    schedule: dict[str, Any] = r.json()["schedule"]
    return schedule


async def runs(http: httpx.AsyncClient, url: str, schedule_id: str) -> list[dict[str, Any]]:
    r = await http.get(f"{url}/schedules/{schedule_id}/runs", params={"limit": 100})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["runs"]
    return found


async def executions(http: httpx.AsyncClient, url: str, workflow_id: str) -> list[dict[str, Any]]:
    r = await http.get(f"{url}/executions", params={"workflowId": workflow_id, "limit": 500})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["executions"]
    return found


async def test_every_2s_fires_once_per_tick_with_two_replicas_and_after_a_restart(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=1)
    second = await stack.scheduler("scheduler-2")
    schedule = await create(http, stack.url, {"scheduleId": "every-2", "everyS": 2, "workflow": WORKFLOW})
    assert schedule["everyS"] == 2 and not schedule["paused"] and len(schedule["nextRuns"]) == 5
    first_tick = ms_from_iso(schedule["nextRuns"][0])
    assert ms_from_iso(schedule["createdAt"]) + 2000 == first_tick
    # 6 s from creation: the ticks at 2, 4 and 6 s.
    deadline = ms_from_iso(schedule["createdAt"]) + 6000
    await wait_for(lambda: time.time() * 1000 > deadline + 500, timeout=15, message="6 s of schedule")
    made = await executions(http, stack.url, "every-2")
    assert 2 <= len(made) <= 4, [e["executionId"] for e in made]
    fired = [r for r in await runs(http, stack.url, "every-2") if r["executionId"]]
    assert len(fired) == len(made) and {r["executionId"] for r in fired} == {e["executionId"] for e in made}
    ticks = [ms_from_iso(r["tick"]) for r in fired]
    assert len(set(ticks)) == len(ticks) and all((t - first_tick) % 2000 == 0 for t in ticks)

    # Both replicas stop; a new one picks the schedule up where it was.
    await second.aterminate()
    await stack.procs[1].aterminate()
    await stack.scheduler("scheduler-3")
    stopped = len(await executions(http, stack.url, "every-2"))

    async def more() -> bool:
        return len(await executions(http, stack.url, "every-2")) >= stopped + 2

    await wait_for(more, timeout=20, message="ticks after the restart")
    fired = [r for r in await runs(http, stack.url, "every-2") if r["executionId"]]
    ticks = [ms_from_iso(r["tick"]) for r in fired]
    assert len(set(ticks)) == len(ticks), "a tick fired twice"
    assert all(r["status"] in ("pending", "running", "completed") for r in fired)


async def test_pause_resume_trigger_overlap_and_delete(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1, JETDAG_WORKER_GRACE_S="1")  # its 30 s jobs are handed back at teardown
    slow = {"workflowId": "slow", "jobs": [job("s", "sleep", config={"seconds": 30})]}
    body = {"scheduleId": "slow", "cron": "0 3 * * *", "timezone": "Europe/Berlin", "workflow": slow}
    schedule = await create(http, stack.url, body)
    assert schedule["overlap"] == "skip" and schedule["catchUp"] is True and schedule["timezone"] == "Europe/Berlin"
    # 3:00 in Berlin is 2:00 or 1:00 UTC.
    assert all(t[11:16] in ("01:00", "02:00") for t in schedule["nextRuns"])
    # The same definition again is no second schedule; another one under the id is a conflict.
    assert (await create(http, stack.url, body, status=200))["createdAt"] == schedule["createdAt"]
    r = await http.post(f"{stack.url}/schedules", json={**body, "cron": "0 4 * * *"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]

    r = await http.post(f"{stack.url}/schedules/slow/pause")
    assert r.status_code == 200 and r.json()["schedule"]["paused"] is True and r.json()["schedule"]["nextRuns"] == []
    # Trigger runs it now, paused or not; a second trigger while that run is open is skipped (overlap: skip).
    r = await http.post(f"{stack.url}/schedules/slow/trigger")
    assert r.status_code == 201, r.text
    first = r.json()["executionId"]
    r = await http.post(f"{stack.url}/schedules/slow/trigger")
    assert r.status_code == 409 and first in r.json()["error"] and "overlap: skip" in r.json()["error"]
    listed = await runs(http, stack.url, "slow")
    assert [(x["trigger"], x["executionId"]) for x in listed] == [("manual", None), ("manual", first)]
    assert listed[1]["status"] in ("pending", "running") and "still" in listed[0]["skipped"]

    r = await http.post(f"{stack.url}/schedules/slow/resume")
    assert r.status_code == 200 and r.json()["schedule"]["paused"] is False and r.json()["schedule"]["nextRuns"]
    r = await http.get(f"{stack.url}/schedules")
    assert r.status_code == 200 and [s["scheduleId"] for s in r.json()["schedules"]] == ["slow"]
    assert r.json()["schedules"][0]["workflow"] is None and r.json()["schedules"][0]["fired"] == 1

    # cancel-previous: a trigger cancels the open run first.
    other = {"scheduleId": "replace", "everyS": 3600, "overlap": "cancel-previous", "workflow": slow}
    await create(http, stack.url, other)
    one = (await http.post(f"{stack.url}/schedules/replace/trigger")).json()["executionId"]
    two = (await http.post(f"{stack.url}/schedules/replace/trigger")).json()["executionId"]
    assert one != two
    assert (await http.get(f"{stack.url}/execute/{one}")).json()["execution"]["status"] == "cancelled"

    r = await http.delete(f"{stack.url}/schedules/slow")
    assert r.status_code == 200 and r.json()["scheduleId"] == "slow"
    for method, path in (("GET", "slow"), ("DELETE", "slow"), ("POST", "slow/pause"), ("GET", "slow/runs")):
        r = await http.request(method, f"{stack.url}/schedules/{path}")
        assert r.status_code == 404 and "schedule slow does not exist" in r.json()["error"], (method, path)
    # The executions it created stay.
    assert (await http.get(f"{stack.url}/execute/{first}")).status_code == 200


async def test_bad_definitions_are_400_and_create_nothing(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    ok = {"scheduleId": "s", "cron": "*/5 * * * *", "workflow": WORKFLOW}
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "bad cron": ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not a valid cron expression"),
        "6 fields": ({"cron": "0 0 * * * *"}, "must have 5 fields"),
        "both": ({"everyS": 5}, "exactly one of cron and everyS, not both"),
        "neither": ({"cron": None}, "exactly one of cron and everyS"),
        "timezone": ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not a known IANA time zone"),
        "overlap": ({"overlap": "queue"}, "overlap"),
        "everyS < 1": ({"cron": None, "everyS": 0.5}, "everyS"),
        "id": ({"scheduleId": "a.b"}, "scheduleId"),
        "unknown field": ({"cronExpr": "x"}, "cronExpr"),
        "cycle": (
            {"workflow": {"workflowId": "w", "jobs": [job("a", "noop", ["b"]), job("b", "noop", ["a"])]}},
            "workflow: the jobs form a cycle",
        ),
        "dangling": ({"workflow": {"workflowId": "w", "jobs": [job("a", "noop", ["z"])]}}, "workflow: job 'a'"),
        "empty jobs": ({"workflow": {"workflowId": "w", "jobs": []}}, "workflow.jobs"),
        "delayed": ({"workflow": {**WORKFLOW, "delayS": 5}}, "workflow.delayS"),
    }
    for name, (change, needle) in cases.items():
        body = {k: v for k, v in {**ok, **change}.items() if v is not None}
        r = await http.post(f"{stack.url}/schedules", json=body)
        assert r.status_code == 400, (name, r.text)
        assert needle in r.json()["error"], (name, r.json()["error"])
    r = await http.get(f"{stack.url}/schedules")
    assert r.status_code == 200 and r.json()["count"] == 0


async def test_cli_and_client(stack: Stack, tmp_path: Path) -> None:
    await stack.up(workers=1)
    flow = tmp_path / "nightly.yaml"
    flow.write_text("workflowId: nightly\njobs:\n  - {id: a, type: noop}\n")
    made = await jetdag(stack, "schedules", "create", "nightly", str(flow), "--cron", "30 2 * * *", "--timezone", "UTC")
    assert made.returncode == 0, made.stderr
    assert re.match(r"^nightly created; next run \d{4}-\d\d-\d\d 02:30:00 UTC$", made.stdout.strip()), made.stdout
    bad = await jetdag(stack, "schedules", "create", "x", str(flow), "--cron", "99 * * * *")
    assert bad.returncode == 2 and "cron: '99 * * * *' is not a valid cron expression" in bad.stderr
    listing = await jetdag(stack, "schedules", "ls")
    assert listing.returncode == 0 and re.search(r"nightly\s+30 2 \* \* \*\s+UTC\s+active", listing.stdout)
    run = await jetdag(stack, "schedules", "trigger", "nightly")
    assert run.returncode == 0 and run.stdout.strip().startswith("exec-")
    shown = await jetdag(stack, "schedules", "runs", "nightly", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)[0]["executionId"] == run.stdout.strip()
    assert (await jetdag(stack, "schedules", "pause", "nightly")).stdout.strip() == "nightly paused"

    def client_side() -> None:
        with Client(stack.url) as jd:
            again = jd.create_schedule("nightly", str(flow), cron="30 2 * * *", timezone="UTC")
            assert again.paused is True  # the same definition: the schedule as it is, no second one
            with pytest.raises(Conflict):
                jd.create_schedule("nightly", str(flow), cron="0 4 * * *")
            with pytest.raises(Invalid):  # checked locally, never sent
                jd.create_schedule("other", str(flow), cron="0 4 * * *", every_s=5)
            assert [s.schedule_id for s in jd.schedules()] == ["nightly"]
            assert jd.schedule("nightly").workflow is not None
            assert jd.resume_schedule("nightly").next_runs
            assert jd.schedule_runs("nightly")[0].status in ("pending", "running", "completed")
            assert jd.delete_schedule("nightly").schedule_id == "nightly"
            with pytest.raises(NotFound):
                jd.schedule("nightly")

    await asyncio.to_thread(client_side)
    gone = await jetdag(stack, "schedules", "show", "nightly")
    assert gone.returncode == 4 and "schedule nightly does not exist" in gone.stderr

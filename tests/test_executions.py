"""DAG execution end to end: HTTP → gateway → scheduler → job stream → real worker processes → results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from shared.timeutil import ms_from_iso
from tests.api import job, jobs, stats, status, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


def ms(value: str | None) -> int:
    assert value is not None
    return ms_from_iso(value)


def assert_dependency_order(listing: dict[str, dict[str, Any]]) -> None:
    for j in listing.values():
        for dep in j["dependsOn"]:
            parent = listing[dep]
            assert ms(j["startedAt"]) >= ms(parent["completedAt"]), (dep, "->", j["id"], parent, j)


async def test_diamond_runs_in_dependency_order(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=2)
    dag = [
        job("a", "sleep", config={"seconds": 0.05}),
        job("b", "sleep", ["a"], config={"seconds": 0.2}),
        job("c", "sleep", ["a"], config={"seconds": 0.2}),
        job("d", "noop", ["b", "c"]),
    ]
    eid = await submit(http, stack.url, dag)
    final = await wait_final(http, stack.url, eid)
    assert final["status"] == "completed"
    assert final["progress"] == {**final["progress"], "total": 4, "completed": 4, "failed": 0, "running": 0}
    assert final["completedAt"] is not None and final["checkpointId"] is not None
    listing = await jobs(http, stack.url, eid)
    assert list(listing) == ["a", "b", "c", "d"]
    assert {j["status"] for j in listing.values()} == {"completed"}
    assert all(j["attempts"] == 1 and j["workerId"] in ("w1", "w2") for j in listing.values())
    assert_dependency_order(listing)
    # b and c are independent: with two workers they overlap.
    b, c = listing["b"], listing["c"]
    assert ms(b["startedAt"]) < ms(c["completedAt"]) and ms(c["startedAt"]) < ms(b["completedAt"])


async def test_layered_dag_and_results_flow(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "tests.handlers")
    await stack.worker("w2", "tests.handlers")
    # 3 layers: each job adds its value to the totals of its parents.
    dag = [job(f"l0-{i}", "add", config={"value": i + 1}) for i in range(4)]
    dag += [job(f"l1-{i}", "add", [f"l0-{i}", f"l0-{(i + 1) % 4}"], config={"value": 10}) for i in range(4)]
    dag += [job("top", "add", [f"l1-{i}" for i in range(4)], config={"value": 100})]
    eid = await submit(http, stack.url, dag)
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    listing = await jobs(http, stack.url, eid)
    assert_dependency_order(listing)
    assert listing["l1-0"]["result"] == {"total": 10 + 1 + 2, "inputs": ["l0-0", "l0-1"]}
    # every l0 value reaches the top twice (two l1 parents each): 100 + 4*10 + 2*(1+2+3+4)
    assert listing["top"]["result"]["total"] == 160
    assert listing["top"]["result"]["inputs"] == ["l1-0", "l1-1", "l1-2", "l1-3"]


async def test_parallelism_cap_is_never_exceeded(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("w1", "--concurrency", "8")
    await stack.worker("w2", "--concurrency", "8")
    dag = [job(f"j{i}", "sleep", config={"seconds": 0.15}) for i in range(16)]
    dag.append(job("end", "noop", [f"j{i}" for i in range(16)]))
    eid = await submit(http, stack.url, dag, parallelism=3)
    assert (await wait_final(http, stack.url, eid, timeout=90))["status"] == "completed"
    listing = await jobs(http, stack.url, eid)
    edges = []
    for j in listing.values():
        edges.append((ms(j["startedAt"]), 1))
        edges.append((ms(j["completedAt"]), -1))
    edges.sort(key=lambda e: (e[0], e[1]))  # at equal times a finish frees its slot before a start
    level = peak = 0
    for _, delta in edges:
        level += delta
        peak = max(peak, level)
    assert peak == 3, f"observed concurrency {peak} with parallelism 3"


async def test_retry_then_succeed(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(workers=1)
    sub = await nc.subscribe(f"{stack.names.events_prefix}.execution.*.jobs")
    dag = [job("flaky", "fail", config={"times": 2, "message": "boom"}, retries=2, backoffMs=100)]
    eid = await submit(http, stack.url, dag)
    final = await wait_final(http, stack.url, eid)
    assert final["status"] == "completed"
    flaky = (await jobs(http, stack.url, eid))["flaky"]
    assert flaky["attempts"] == 3 and flaky["result"] == {"succeededOnAttempt": 3} and flaky["error"] is None
    seen: list[tuple[str, int]] = []
    while not seen or seen[-1][0] != "completed":
        msg = await sub.next_msg(timeout=10)
        seen.extend((c["status"], c["attempt"]) for c in json.loads(msg.data)["jobs"] if c["jobId"] == "flaky")
    # attempt 1 and 2 fail and wait out a backoff; attempt 3 completes
    assert [s for s in seen if s[0] != "running"] == [
        ("queued", 1),
        ("delayed", 1),
        ("queued", 2),
        ("delayed", 2),
        ("queued", 3),
        ("completed", 3),
    ], seen
    assert [d["attempt"] for d in flaky["deliveries"]] == [1, 2, 3]


async def test_retry_exhausted_skips_dependents_and_independent_branch_completes(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    await stack.up(workers=2)
    dag = [
        job("root"),
        job("bad", "fail", ["root"], config={"message": "disk full"}, retries=1, backoffMs=50),
        job("after-bad", "noop", ["bad"]),
        job("after-after", "noop", ["after-bad"]),
        job("good", "sleep", ["root"], config={"seconds": 0.3}),
        job("after-good", "noop", ["good"]),
    ]
    eid = await submit(http, stack.url, dag)
    final = await wait_final(http, stack.url, eid)
    assert final["status"] == "failed"
    assert final["progress"]["completed"] == 3 and final["progress"]["failed"] == 1
    assert final["progress"]["skipped"] == 2
    assert final["error"] == "job bad failed: disk full"
    listing = await jobs(http, stack.url, eid)
    assert listing["bad"]["status"] == "failed" and listing["bad"]["attempts"] == 2
    assert listing["bad"]["error"] == "disk full"
    assert listing["after-bad"]["status"] == "skipped" and listing["after-after"]["status"] == "skipped"
    assert "bad" in listing["after-after"]["error"]
    assert listing["after-bad"]["attempts"] == 0 and listing["after-bad"]["startedAt"] is None
    assert listing["good"]["status"] == "completed" and listing["after-good"]["status"] == "completed"


async def test_timeout_fails_the_attempt(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("slow", "sleep", config={"seconds": 30}, timeoutS=0.5)])
    final = await wait_final(http, stack.url, eid, timeout=30)
    assert final["status"] == "failed"
    slow = (await jobs(http, stack.url, eid))["slow"]
    assert slow["status"] == "failed" and slow["error"] == "timed out after 0.5 s"
    assert ms(slow["completedAt"]) - ms(slow["startedAt"]) < 10_000


async def test_cancel_while_running(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    dag = [job("long", "sleep", config={"seconds": 60}), job("next", "noop", ["long"])]
    dag += [job(f"q{i}", "sleep", config={"seconds": 60}) for i in range(6)]  # more than the worker's 4 slots
    eid = await submit(http, stack.url, dag)

    async def running() -> bool:
        return bool((await status(http, stack.url, eid))["progress"]["running"] == 4)

    await wait_for(running, timeout=20, message="four jobs running")
    r = await http.post(f"{stack.url}/execute/{eid}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["completedAt"] is not None
    final = await status(http, stack.url, eid)
    assert final["status"] == "cancelled"
    listing = await jobs(http, stack.url, eid)
    assert {j["status"] for j in listing.values()} == {"cancelled"}
    worker = stack.procs[-1]
    # The running handlers were cancelled on the worker, and the queued jobs were dropped unrun.
    await wait_for(lambda: worker.has_logged("job failed", error="cancelled"), timeout=10, message="cancel")

    async def drained() -> bool:
        s = (await stats(http, stack.url))["stats"]
        return bool(s["active"] == 0 and s["waiting"] == 0)

    await wait_for(drained, timeout=30, message="queue drained after cancel")
    assert not worker.has_logged("job completed")
    r = await http.post(f"{stack.url}/execute/{eid}/cancel")
    assert r.status_code == 409 and "already ended" in r.json()["error"]


async def test_retry_from_checkpoint_reruns_only_what_did_not_complete(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await stack.up()
    worker = await stack.worker("w1", "tests.handlers")
    gate_file = tmp_path / "open"
    dag = [
        job("a", "add", config={"value": 1}),
        job("b", "add", ["a"], config={"value": 2}),
        job("gate", "gate", ["a"], config={"path": str(gate_file)}),
        job("c", "add", ["b"], config={"value": 3}),
        job("d", "add", ["c", "gate"], config={"value": 4}),
    ]
    eid = await submit(http, stack.url, dag)
    first = await wait_final(http, stack.url, eid)
    assert first["status"] == "failed" and first["checkpointId"] is not None
    before = await jobs(http, stack.url, eid)
    assert [before[j]["status"] for j in "abcd"] == ["completed", "completed", "completed", "skipped"]
    gate_file.write_text("open")
    r = await http.post(f"{stack.url}/execute/{eid}/retry")
    assert r.status_code == 200, r.text
    final = await wait_final(http, stack.url, eid)
    assert final["status"] == "completed" and final["round"] == 2
    assert final["checkpointId"] != first["checkpointId"]
    after = await jobs(http, stack.url, eid)
    for kept in "abc":
        assert after[kept]["startedAt"] == before[kept]["startedAt"], kept  # not run again
        assert after[kept]["result"] == before[kept]["result"]
    assert after["gate"]["status"] == "completed" and after["d"]["status"] == "completed"
    assert after["d"]["result"]["total"] == 4 + (1 + 2 + 3) + 0  # its value + c's total + the gate's
    runs = [line for line in worker.log_lines() if line.get("event") == "job completed"]
    assert sorted(line["jobId"] for line in runs) == ["a", "b", "c", "d", "gate"]
    r = await http.post(f"{stack.url}/execute/{eid}/retry")
    assert r.status_code == 409 and "completed" in r.json()["error"]

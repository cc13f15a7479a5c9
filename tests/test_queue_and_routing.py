"""Capability routing, pause/resume by consumer pause, the exactness of the queue statistics, and job consumers
that follow the pools workers serve."""

from __future__ import annotations

import httpx
from nats.aio.client import Client

from services.scheduler.audit import pools_served
from shared.messages import PRIORITIES, WorkerView
from tests.api import job, jobs, stats, status, submit, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def test_capability_routing_waits_for_a_capable_worker(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    await stack.worker("cpu-1", "--capabilities", "cpu")
    dag = [job("prep"), job("train", "noop", ["prep"], capability="gpu"), job("eval", "noop", ["train"])]
    eid = await submit(http, stack.url, dag)

    async def train_waiting() -> bool:
        listing = await jobs(http, stack.url, eid)
        return bool(listing["prep"]["status"] == "completed" and listing["train"]["status"] == "queued")

    await wait_for(train_waiting, timeout=20, message="train to wait for a gpu worker")
    s = (await stats(http, stack.url))["stats"]
    assert s["waiting"] == 1 and s["active"] == 0
    # Still waiting after the cpu worker had every chance to take it: it is never delivered there.
    assert (await jobs(http, stack.url, eid))["train"]["workerId"] is None
    await stack.worker("gpu-1", "--capabilities", "gpu")
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    listing = await jobs(http, stack.url, eid)
    assert listing["train"]["workerId"] == "gpu-1" and listing["train"]["capability"] == "gpu"
    assert listing["prep"]["workerId"] in ("cpu-1", "gpu-1")


async def test_pause_holds_new_jobs_until_resume(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(workers=2)
    r = await http.post(f"{stack.url}/queue/pause")
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["isPaused"] is True
    r = await http.post(f"{stack.url}/queue/pause")  # idempotent
    assert r.status_code == 200 and "already paused" in r.json()["message"]
    eid = await submit(http, stack.url, [job(f"p{i}") for i in range(5)])

    async def all_held() -> bool:
        body = await stats(http, stack.url)
        return bool(body["isPaused"]) and body["stats"]["paused"] == 5

    await wait_for(all_held, timeout=20, message="5 paused jobs")
    body = await stats(http, stack.url)
    assert body["stats"]["waiting"] == 0 and body["stats"]["active"] == 0
    # The consumers are paused on the server: that is what JetStream reports.
    info = await nc.jetstream().consumer_info(stack.names.jobs_stream, stack.names.jobs_consumer("any", "noop", 3))
    assert info.paused is True and (info.num_pending or 0) == 5
    assert (await status(http, stack.url, eid))["progress"]["running"] == 0
    assert {j["startedAt"] for j in (await jobs(http, stack.url, eid)).values()} == {None}
    # A consumer created while paused starts paused.
    await stack.worker("late", "tests.handlers")
    info = await nc.jetstream().consumer_info(stack.names.jobs_stream, stack.names.jobs_consumer("any", "add", 3))
    assert info.paused is True
    r = await http.post(f"{stack.url}/queue/resume")
    assert r.status_code == 200 and r.json()["isPaused"] is False
    r = await http.post(f"{stack.url}/queue/resume")
    assert r.status_code == 200 and "not paused" in r.json()["message"]
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    info = await nc.jetstream().consumer_info(stack.names.jobs_stream, stack.names.jobs_consumer("any", "add", 3))
    assert not info.paused


async def test_pause_survives_a_scheduler_restart(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    scheduler = stack.procs[1]
    await scheduler.aterminate()
    await stack.scheduler()
    assert (await stats(http, stack.url))["isPaused"] is True
    eid = await submit(http, stack.url, [job("x")])

    async def held() -> bool:
        return bool((await stats(http, stack.url))["stats"]["paused"] == 1)

    await wait_for(held, timeout=20, message="job held while paused")
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"


async def test_stats_are_exact_after_runs(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=2)
    ok = await submit(http, stack.url, [job(f"ok{i}") for i in range(7)])
    bad = await submit(
        http,
        stack.url,
        [job("f1", "fail", retries=1, backoffMs=10), job("f2", "fail"), job("s", "noop", ["f1"]), job("fine")],
    )
    assert (await wait_final(http, stack.url, ok))["status"] == "completed"
    assert (await wait_final(http, stack.url, bad))["status"] == "failed"

    async def settled() -> dict[str, int] | None:
        s: dict[str, int] = (await stats(http, stack.url))["stats"]
        return s if s["active"] == 0 and s["waiting"] == 0 else None

    s = await wait_for(settled, timeout=20, message="queue to settle")
    # 8 completed (7 + fine), 2 failed (f1 after its retry, f2), s skipped (not counted), nothing else.
    assert s == {"waiting": 0, "active": 0, "completed": 8, "failed": 2, "delayed": 0, "paused": 0, "total": 10}
    # Kept across restarts: a new scheduler rebuilds them from the executions bucket.
    await stack.procs[1].aterminate()
    await stack.scheduler()
    assert (await stats(http, stack.url))["stats"] == s


async def test_delayed_counts_jobs_waiting_out_a_backoff(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    eid = await submit(http, stack.url, [job("later", "fail", config={"times": 1}, retries=1, backoffMs=3000)])

    async def delayed() -> bool:
        return bool((await stats(http, stack.url))["stats"]["delayed"] == 1)

    await wait_for(delayed, timeout=20, message="a delayed job")
    assert (await status(http, stack.url, eid))["progress"]["delayed"] == 1
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    assert (await stats(http, stack.url))["stats"]["delayed"] == 0


# --- stale consumers --------------------------------------------------------------------------------------


def _worker(status: str, capabilities: list[str], handlers: object) -> WorkerView:
    at = "2026-12-03T00:00:00Z"
    return WorkerView(
        worker_id="w", hostname="h", pid=1, capabilities=capabilities, status=status,  # type: ignore[arg-type]
        current_load=0, max_concurrency=1, utilization=0.0, last_heartbeat=at, uptime=0.0, registered_at=at,
        heartbeat_interval_s=1.0, metadata={"handlers": handlers},
    )  # fmt: skip


def test_the_pools_live_workers_serve() -> None:
    served = pools_served(
        [
            _worker("idle", ["gpu"], ["train", "noop"]),
            _worker("unhealthy", ["tpu"], ["noop"]),  # not live
            _worker("busy", ["cpu"], None),  # says nothing of its handlers
        ]
    )
    assert served == {("any", "train"), ("gpu", "train"), ("any", "noop"), ("gpu", "noop")}


async def test_a_pool_its_workers_left_loses_its_consumers_and_gets_them_back(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up(JETDAG_STALE_CONSUMER_S="1", JETDAG_SWEEP_INTERVAL_S="0.1")
    js = nc.jetstream()
    names = stack.names

    async def consumers() -> set[str]:
        return {c.name or "" for c in await js.consumers_info(names.jobs_stream)}

    gpu = {names.jobs_consumer("gpu", "noop", band) for band in PRIORITIES}
    first = await stack.worker("w1", "--capabilities", "gpu")
    assert gpu <= await consumers()
    first.terminate()  # it deregisters: nothing serves the pool any more
    # A job of the pool queued meanwhile keeps its band's consumer: only consumers holding nothing go.
    queued = await submit(http, stack.url, [job("g", capability="gpu")])
    kept = names.jobs_consumer("gpu", "noop", 3)

    async def only_the_busy_one_left() -> bool:
        return (await consumers()) & gpu == {kept}

    await wait_for(only_the_busy_one_left, timeout=20, message="the gpu pool's empty consumers removed")
    # A worker serving the pool again asks for its consumers, which are made again; the job runs.
    again = await stack.worker("w2", "--capabilities", "gpu")
    assert (await wait_final(http, stack.url, queued))["status"] == "completed"
    assert gpu <= await consumers()
    # A consumer removed under a live worker (by an operator here): the worker's pull finds it gone, it asks for
    # it again instead of pulling in a loop, and the next job of its pool runs.
    await js.delete_consumer(names.jobs_stream, kept)
    later = await submit(http, stack.url, [job("h", capability="gpu")])
    assert (await wait_final(http, stack.url, later, timeout=30))["status"] == "completed"
    assert again.has_logged("job consumer made again")

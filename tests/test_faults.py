"""Fault tolerance, proven with real processes killed by their pid: every accepted execution ends in the
right final state, every job is counted once, nothing accepted is lost.

Each scenario prints what it measured (run with `-s`); docs/reliability.md holds the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from shared.jetstream import kv_entries
from tests.api import job, jobs, stats, status, submit, wait_final
from tests.conftest import Stack, start_nats
from tests.helpers import ServiceProcess, wait_for

FAST = {
    # Short leases and stall checks so that recovery happens within test time; the defaults are 5 s and 15 s.
    "JETDAG_JOB_ACK_WAIT_S": "2",
    "JETDAG_STALL_AFTER_S": "3",
    "JETDAG_HEARTBEAT_INTERVAL_S": "1",
}


async def up(stack: Stack, workers: int = 0, **env: str) -> Stack:
    stack.env_overrides.update(FAST)
    stack.env_overrides.update(env)
    return await stack.up(workers=workers)


def completions(workers: list[ServiceProcess]) -> Counter[tuple[str, str]]:
    """(execution, job) → how many times a worker process ran it to completion (from their logs)."""
    runs: Counter[tuple[str, str]] = Counter()
    for w in workers:
        for line in w.log_lines(since_start=False):
            if line.get("event") == "job completed":
                runs[(line["executionId"], line["jobId"])] += 1
    return runs


async def settle(http: httpx.AsyncClient, url: str) -> dict[str, int]:
    async def settled() -> dict[str, int] | None:
        s: dict[str, int] = (await stats(http, url))["stats"]
        return s if s["active"] == 0 and s["waiting"] == 0 and s["delayed"] == 0 else None

    result: dict[str, int] = await wait_for(settled, timeout=60, message="the queue to settle")
    return result


async def dispatches(http: httpx.AsyncClient, url: str, eid: str) -> dict[str, int]:
    """How many times each job of an execution was delivered to a worker (its deliveries)."""
    return {job_id: len(j["deliveries"]) for job_id, j in (await jobs(http, url, eid)).items()}


async def wait_progress(http: httpx.AsyncClient, url: str, ids: list[str], jobs: int) -> None:
    """Wait until the executions have completed `jobs` jobs between them: the fault then hits work in flight."""

    async def enough() -> bool:
        done = [(await status(http, url, eid))["progress"]["completed"] for eid in ids]
        return bool(sum(done) >= jobs)

    await wait_for(enough, timeout=30, message=f"{jobs} completed jobs before the fault")


def diamond(width: int = 3, seconds: float = 0.2) -> list[dict[str, Any]]:
    mids = [job(f"m{i}", "sleep", ["top"], config={"seconds": seconds}) for i in range(width)]
    return [job("top", "sleep", config={"seconds": seconds}), *mids, job("end", "noop", [m["id"] for m in mids])]


# --- 1. multi-worker ------------------------------------------------------------------------------------


async def test_three_workers_share_one_dag_and_every_job_runs_once(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack)
    workers = [await stack.worker(f"w{i}", "--concurrency", "2") for i in range(1, 4)]
    dag = [job(f"j{i}", "sleep", config={"seconds": 0.2}) for i in range(30)]
    eid = await submit(http, stack.url, dag)
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    listing = await jobs(http, stack.url, eid)
    per_worker = Counter(j["workerId"] for j in listing.values())
    print(f"\nmulti-worker: jobs per worker {dict(per_worker)}")
    assert set(per_worker) == {"w1", "w2", "w3"}, per_worker
    runs = completions(workers)
    assert len(runs) == 30 and set(runs.values()) == {1}, runs
    assert all(j["attempts"] == 1 for j in listing.values())


# --- 2. worker killed mid-job ----------------------------------------------------------------------------


async def test_worker_killed_mid_job_is_redelivered_quickly(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await up(stack)
    victim = await stack.worker("victim", "--concurrency", "4")
    dag = [job(f"long{i}", "sleep", config={"seconds": 2}) for i in range(4)] + [
        job("after", "noop", [f"long{i}" for i in range(4)])
    ]
    starts: list[tuple[float, str, str]] = []

    async def on_jobs(msg: Any) -> None:
        for change in json.loads(msg.data)["jobs"]:
            if change["status"] == "running":
                starts.append((time.monotonic(), change["jobId"], change["workerId"]))

    await nc.subscribe(f"{stack.names.events_prefix}.execution.*.jobs", cb=on_jobs)
    eid = await submit(http, stack.url, dag)

    async def all_running() -> bool:
        return bool((await status(http, stack.url, eid))["progress"]["running"] == 4)

    await wait_for(all_running, timeout=20, message="the victim to run all four jobs")
    survivor = await stack.worker("survivor", "--concurrency", "4")
    victim.kill()
    killed_at = time.monotonic()
    final = await wait_final(http, stack.url, eid, timeout=60)
    assert final["status"] == "completed" and final["progress"]["completed"] == 5
    listing = await jobs(http, stack.url, eid)
    assert {listing[f"long{i}"]["workerId"] for i in range(4)} == {"survivor"}
    assert all(j["attempts"] == 1 for j in listing.values())  # a lost worker is not a failed attempt
    assert [d["workerId"] for d in listing["long0"]["deliveries"]] == ["victim", "survivor"]
    redelivered = [t - killed_at for t, _, w in starts if w == "survivor" and t > killed_at]
    print(f"\nworker kill -9: first redelivery {min(redelivered):.2f} s after the kill, last {max(redelivered):.2f} s")
    assert min(redelivered) < 2 + 3  # the lease (2 s here) plus scheduling slack
    assert completions([survivor])[(eid, "long0")] == 1
    s = await settle(http, stack.url)
    assert s["completed"] == 5 and s["failed"] == 0


async def test_live_long_job_keeps_its_lease(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack)
    worker = await stack.worker("w1")
    # Runs for 4 leases: only the in-progress renewals keep it from being delivered again.
    eid = await submit(http, stack.url, [job("marathon", "sleep", config={"seconds": 8})])
    assert (await wait_final(http, stack.url, eid, timeout=60))["status"] == "completed"
    assert completions([worker]) == Counter({(eid, "marathon"): 1})
    starts = [line for line in worker.log_lines() if line.get("event") == "job completed"]
    assert len(starts) == 1


# --- 3. stale worker fenced --------------------------------------------------------------------------------


async def test_frozen_worker_is_fenced(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await up(stack)
    frozen = await stack.worker("frozen", "--concurrency", "1")
    eid = await submit(http, stack.url, [job("work", "sleep", config={"seconds": 3}), job("child", "noop", ["work"])])

    async def running_on_frozen() -> bool:
        return bool((await jobs(http, stack.url, eid))["work"]["workerId"] == "frozen")

    await wait_for(running_on_frozen, timeout=20, message="the job to run on the worker we freeze")
    frozen.signal(signal.SIGSTOP)
    other = await stack.worker("other", "--concurrency", "1")
    try:
        final = await wait_final(http, stack.url, eid, timeout=60)
        assert final["status"] == "completed"
    finally:
        frozen.signal(signal.SIGCONT)
    # The frozen worker wakes up, finishes its copy, reports and acks: none of it may count.
    await wait_for(
        lambda: frozen.has_logged("job completed", jobId="work"), timeout=30, message="the stale copy to finish"
    )
    listing = await jobs(http, stack.url, eid)
    assert listing["work"]["workerId"] == "other" and listing["work"]["attempts"] == 1
    assert listing["child"]["attempts"] == 1
    runs = completions([frozen, other])
    assert runs[(eid, "work")] == 2  # at-least-once delivery: it really ran twice...
    assert runs[(eid, "child")] == 1  # ...but its dependent was dispatched once
    s = await settle(http, stack.url)
    assert s["completed"] == 2 and s["failed"] == 0  # ...and it is counted once
    assert (await status(http, stack.url, eid))["progress"]["completed"] == 2
    assert [d["workerId"] for d in listing["work"]["deliveries"]] == ["frozen", "other"]  # the books show both runs
    assert len(listing["child"]["deliveries"]) == 1


# --- 4. poison job -----------------------------------------------------------------------------------------


async def test_poison_job_fails_after_configured_deliveries(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack, 0, JETDAG_JOB_MAX_DELIVER="2")
    started = 0

    async def supervise() -> None:
        """Restart the worker whenever it dies, like compose's `restart: unless-stopped`."""
        nonlocal started
        while True:
            started += 1
            # Not waiting for "ready": the poison job may kill it before it gets that far.
            proc = stack.process(f"w{started}", "services.worker", "--id", f"w{started}", "tests.handlers").start()
            assert proc.proc is not None
            await asyncio.to_thread(proc.proc.wait)

    supervisor = asyncio.create_task(supervise())
    try:
        dag = [job("poison", "crash"), job("after", "noop", ["poison"]), job("independent", "sleep")]
        eid = await submit(http, stack.url, dag)
        final = await wait_final(http, stack.url, eid, timeout=90)
    finally:
        supervisor.cancel()
    listing = await jobs(http, stack.url, eid)
    assert final["status"] == "failed"
    assert listing["poison"]["status"] == "failed"
    assert listing["poison"]["error"].startswith("delivered 2 times without a result"), listing["poison"]
    assert "poison job" in listing["poison"]["error"]
    assert listing["after"]["status"] == "skipped" and listing["independent"]["status"] == "completed"
    crashed = [p for p in stack.procs if p.name.startswith("w") and p.proc and p.proc.returncode == 3]
    print(f"\npoison job: {len(crashed)} worker processes died before the job was failed")
    assert len(crashed) == 2


# --- 5. scheduler killed; two replicas ---------------------------------------------------------------------


async def test_scheduler_killed_mid_execution_and_restarted(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await up(stack, 2)
    ids = [await submit(http, stack.url, diamond(3, 0.3)) for _ in range(6)]
    await wait_progress(http, stack.url, ids, 3)
    scheduler = stack.procs[1]
    scheduler.kill()
    killed_at = time.monotonic()
    await stack.scheduler("scheduler-2")
    back_at = time.monotonic()
    finals = [await wait_final(http, stack.url, eid, timeout=60) for eid in ids]
    done_at = time.monotonic()
    print(
        f"\nscheduler kill -9: replacement ready {back_at - killed_at:.2f} s after the kill; "
        f"all executions done {done_at - killed_at:.2f} s after it"
    )
    assert [f["status"] for f in finals] == ["completed"] * 6
    for eid in ids:
        listing = await jobs(http, stack.url, eid)
        assert all(j["status"] == "completed" and j["attempts"] == 1 for j in listing.values())
    s = await settle(http, stack.url)
    assert s["completed"] == 6 * 5 and s["failed"] == 0
    for eid in ids:  # no job was dispatched twice
        assert set((await dispatches(http, stack.url, eid)).values()) == {1}


async def test_two_scheduler_replicas_under_contention(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await up(stack)
    second = await stack.scheduler("scheduler-b")
    for i in range(3):
        await stack.worker(f"w{i}", "--concurrency", "8")
    dag = [job("a"), *[job(f"b{i}", "noop", ["a"]) for i in range(6)], job("c", "noop", [f"b{i}" for i in range(6)])]
    ids = await asyncio.gather(*(submit(http, stack.url, dag, parallelism=3) for _ in range(50)))
    finals = await asyncio.gather(*(wait_final(http, stack.url, eid, timeout=120) for eid in ids))
    assert [f["status"] for f in finals] == ["completed"] * 50
    assert all(f["progress"]["completed"] == 8 for f in finals)
    s = await settle(http, stack.url)
    assert s["completed"] == 50 * 8 and s["failed"] == 0
    runs = completions([p for p in stack.procs if p.name.startswith("w")])
    assert len(runs) == 50 * 8 and set(runs.values()) == {1}  # no job dispatched twice
    first = stack.procs[1]
    await first.aterminate()
    await second.aterminate()
    totals = [next(line for line in p.log_lines() if line.get("event") == "scheduler totals") for p in (first, second)]
    print(
        "\ntwo schedulers, 50 executions: journal appends, job messages per replica "
        f"{[(t['journal_appends'], t['job_messages']) for t in totals]}"
    )
    assert all(t["journal_appends"] > 0 for t in totals), "both replicas must have owned executions"


# --- 6. gateway restarted ---------------------------------------------------------------------------------


async def test_gateway_restart_does_not_touch_executions(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack, 2)
    ids = [await submit(http, stack.url, diamond(2, 0.5)) for _ in range(3)]
    gateway = stack.procs[2]
    assert gateway.name == "gateway"
    gateway.kill()
    with pytest.raises(httpx.ConnectError):
        await http.get(f"{stack.url}/health")
    started = time.monotonic()
    await stack.gateway()
    print(f"\ngateway kill -9: answering again {time.monotonic() - started:.2f} s after its restart began")
    finals = [await wait_final(http, stack.url, eid) for eid in ids]
    assert [f["status"] for f in finals] == ["completed"] * 3


async def test_gateway_started_without_nats_answers_503(
    tmp_path: Path, namespace: str, http: httpx.AsyncClient
) -> None:
    server = start_nats(tmp_path, "late")
    server.stop()  # the address is known but nothing listens there yet
    stack = Stack(server.url, namespace, tmp_path / "logs")
    try:
        await stack.gateway()
        r = await http.get(f"{stack.url}/workers")
        assert r.status_code == 503 and "NATS" in r.json()["error"]
        r = await http.get(f"{stack.url}/health")
        assert r.status_code == 503 and r.json()["components"]["queue"]["error"] == "NATS is not reachable"
        server.start()
        server.wait_ready()
        await stack.registry()
        await stack.scheduler()

        async def answers() -> bool:
            return (await http.get(f"{stack.url}/health")).status_code == 200

        await wait_for(answers, timeout=30, message="the gateway to connect once NATS is up")
    finally:
        stack.stop_all()
        server.stop()


# --- 7. nats-server restarted -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_nats_server_restart_mid_run(tmp_path: Path, namespace: str, http: httpx.AsyncClient, how: str) -> None:
    server = start_nats(tmp_path, "restarted")
    stack = Stack(server.url, namespace, tmp_path / "logs")
    try:
        await up(stack, 2)
        ids = [await submit(http, stack.url, diamond(3, 0.4)) for _ in range(8)]
        await wait_progress(http, stack.url, ids, 4)
        if how == "kill9":
            server.kill()
        else:
            server.stop()
        down_at = time.monotonic()
        server.start()
        server.wait_ready()
        up_at = time.monotonic()
        finals = [await wait_final(http, stack.url, eid, timeout=120) for eid in ids]
        done_at = time.monotonic()
        print(
            f"\nnats-server {how}: down {up_at - down_at:.2f} s; every execution done "
            f"{done_at - up_at:.2f} s after it was back"
        )
        assert [f["status"] for f in finals] == ["completed"] * 8
        for f in finals:
            assert f["progress"]["completed"] == 5 and f["progress"]["failed"] == 0
        s = await settle(http, stack.url)
        assert s["completed"] == 8 * 5 and s["failed"] == 0
        assert all(p.alive() for p in stack.procs), "every service reconnects by itself"
    finally:
        stack.stop_all()
        server.stop()


# --- 9. high load ------------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_high_load_200_executions_of_20_jobs(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack)
    for i in range(3):
        await stack.worker(f"w{i}", "--concurrency", "48")
    scheduler = stack.procs[1]
    dag = [job(f"s{i}", "sleep", config={"seconds": 0.3}) for i in range(16)]
    dag += [job(f"t{i}", "noop", [f"s{4 * i + k}" for k in range(4)]) for i in range(4)]
    rss = []
    for round_ in range(3):
        peak = [0]
        done = asyncio.Event()

        async def sample(peak: list[int] = peak, done: asyncio.Event = done) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], (await stats(http, stack.url))["stats"]["active"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.05)

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        ids = await asyncio.gather(*(submit(http, stack.url, dag) for _ in range(200)))
        finals = await asyncio.gather(*(wait_final(http, stack.url, eid, timeout=300) for eid in ids))
        elapsed = time.monotonic() - started
        done.set()
        await sampler
        peak_active = peak[0]
        assert [f["status"] for f in finals] == ["completed"] * 200
        s = await settle(http, stack.url)
        assert s["completed"] == (round_ + 1) * 200 * 20 and s["failed"] == 0
        rss.append(rss_kb(scheduler.pid))
        print(
            f"\nhigh load round {round_ + 1}: 4,000 jobs in {elapsed:.1f} s, peak {peak_active} in flight, "
            f"scheduler RSS {rss[-1] / 1024:.1f} MiB"
        )
        assert peak_active >= 100
    # Executions are kept (for listings and stats), so a little growth per round is data, not a leak.
    assert rss[2] - rss[1] < 16 * 1024, rss


# --- 10. graceful shutdown ----------------------------------------------------------------------------------


async def test_sigterm_worker_hands_back_running_jobs(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack)
    leaving = await stack.worker("leaving", "--concurrency", "3", "--grace", "1")
    eid = await submit(http, stack.url, [job(f"slow{i}", "sleep", config={"seconds": 6}) for i in range(3)])

    async def running() -> bool:
        return bool((await status(http, stack.url, eid))["progress"]["running"] == 3)

    await wait_for(running, timeout=20, message="three running jobs")
    staying = await stack.worker("staying", "--concurrency", "3")
    started = time.monotonic()
    assert await leaving.aterminate(timeout=15) == 0
    exited = time.monotonic() - started
    print(f"\nworker SIGTERM with 3 running jobs, grace 1 s: exited after {exited:.2f} s, jobs handed back")
    assert exited < 1 + 5
    assert leaving.has_logged("handed back")
    final = await wait_final(http, stack.url, eid, timeout=60)
    assert final["status"] == "completed"
    assert {j["workerId"] for j in (await jobs(http, stack.url, eid)).values()} == {"staying"}
    assert not leaving.has_logged("job completed")
    assert completions([staying]) == Counter({(eid, f"slow{i}"): 1 for i in range(3)})


async def test_sigterm_each_service_under_load_loses_nothing(stack: Stack, http: httpx.AsyncClient) -> None:
    await up(stack, 2)
    ids = [await submit(http, stack.url, diamond(3, 0.3)) for _ in range(10)]
    timings = {}
    restart = {"scheduler": stack.scheduler, "registry": stack.registry, "gateway": stack.gateway}
    for name in ("scheduler", "registry", "gateway"):
        proc = next(p for p in stack.procs if p.name == name and p.alive())
        started = time.monotonic()
        assert await proc.aterminate(timeout=15) == 0
        timings[name] = time.monotonic() - started
        await restart[name]()
    print("\nSIGTERM under load, seconds to exit: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    assert all(t < 10 for t in timings.values()), timings
    finals = [await wait_final(http, stack.url, eid, timeout=90) for eid in ids]
    assert [f["status"] for f in finals] == ["completed"] * 10
    s = await settle(http, stack.url)
    assert s["completed"] == 10 * 5 and s["failed"] == 0


# --- backpressure ------------------------------------------------------------------------------------------


async def test_backpressure_refuses_whole_executions(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await up(stack, 1, JETDAG_MAX_OPEN_JOBS="10")
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    first = await submit(http, stack.url, [job(f"a{i}") for i in range(8)])
    r = await http.post(f"{stack.url}/execute", json={"workflowId": "over", "jobs": [job(f"b{i}") for i in range(5)]})
    assert r.status_code == 503
    assert r.json()["error"] == (
        "the scheduler is at capacity: 8 jobs are open and this execution adds 5 (limit 10); retry later"
    )
    listed = (await http.get(f"{stack.url}/executions")).json()
    assert [e["executionId"] for e in listed["executions"]] == [first]  # nothing of it was written
    keys = [e.key for e in await kv_entries(nc.jetstream(), stack.names.executions_bucket)]
    assert [k for k in keys if k.startswith("exec-")] == [first]  # nats-py's kv.keys() can end early
    journals = await nc.jetstream().stream_info(stack.names.journal_stream, subjects_filter=">")
    assert list(journals.state.subjects or {}) == [stack.names.journal(first)]
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200
    assert (await wait_final(http, stack.url, first))["status"] == "completed"
    second = await submit(http, stack.url, [job(f"b{i}") for i in range(5)])
    assert (await wait_final(http, stack.url, second))["status"] == "completed"


async def test_concurrent_submits_cannot_slip_past_the_bound_together(stack: Stack, http: httpx.AsyncClient) -> None:
    """Submits are answered concurrently: each admitted one counts against the bound while it is created, so
    a burst admits exactly what fits."""
    await up(stack, 1, JETDAG_MAX_OPEN_JOBS="10")
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    bodies = [{"workflowId": f"burst-{n}", "jobs": [job(f"j{i}") for i in range(4)]} for n in range(8)]
    answers = await asyncio.gather(*(http.post(f"{stack.url}/execute", json=b) for b in bodies))
    codes = Counter(r.status_code for r in answers)
    assert codes == {201: 2, 503: 6}, [(r.status_code, r.text) for r in answers]
    refused = [r.json()["error"] for r in answers if r.status_code == 503]
    assert all(e.startswith("the scheduler is at capacity: 8 jobs are open") for e in refused), refused
    accepted = {r.json()["executionId"] for r in answers if r.status_code == 201}
    listed = (await http.get(f"{stack.url}/executions")).json()
    assert {e["executionId"] for e in listed["executions"]} == accepted
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200
    assert [(await wait_final(http, stack.url, eid))["status"] for eid in accepted] == ["completed"] * 2


async def test_sigterm_ends_every_service_even_with_nats_gone(tmp_path: Path, namespace: str) -> None:
    server = start_nats(tmp_path, "gone")
    stack = Stack(server.url, namespace, tmp_path / "logs")
    try:
        await up(stack, 1)
        server.kill()
        timings = {}
        for proc in list(stack.procs):
            started = time.monotonic()
            await proc.aterminate(timeout=30)
            timings[proc.name] = round(time.monotonic() - started, 2)
        print(f"\nSIGTERM with nats-server gone, seconds to exit: {timings}")
        assert all(t < 25 for t in timings.values()), timings
    finally:
        stack.stop_all()
        server.stop()


async def test_sigusr1_logs_what_every_task_waits_on(stack: Stack) -> None:
    """The debugging aid for a process that hangs (docs/debugging.md); the test harness uses it too."""
    await up(stack)
    worker = await stack.worker("w1")
    worker.signal(signal.SIGUSR1)
    await wait_for(lambda: worker.has_logged("task dump"), timeout=10, message="the task dump")
    dump = next(line for line in worker.log_lines() if line.get("event") == "task dump")
    names = {t["task"] for t in dump["tasks"]}
    assert "heartbeat" in names and any(n.startswith("pull ") for n in names), names
    assert all(t["at"] for t in dump["tasks"] if t["task"] == "heartbeat")
    assert worker.alive()  # a dump, not a stop

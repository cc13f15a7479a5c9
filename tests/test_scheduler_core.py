"""The scheduler core against real processes: owners and takeovers, bundles and their fairness, the journal."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import msgspec
from nats.aio.client import Client

from services.scheduler.audit import waiting_reason
from services.scheduler.dispatch import MAX_BUNDLE, bundle_size
from shared.messages import AnyJournalEntry, JournalCreated, JournalStep, WorkerView
from shared.timeutil import ms_from_iso
from tests.api import job, jobs, stats, submit, wait_final
from tests.conftest import Stack
from tests.helpers import ServiceProcess, wait_for

FAST = {"JETDAG_JOB_ACK_WAIT_S": "2", "JETDAG_STALL_AFTER_S": "3", "JETDAG_HEARTBEAT_INTERVAL_S": "1"}


# --- pure policies ------------------------------------------------------------------------------------------


def test_bundle_size_follows_how_long_jobs_take() -> None:
    assert bundle_size(None) == 1  # never measured: may be long
    assert bundle_size(1000.0) == 1
    assert bundle_size(2.0) == 2
    assert bundle_size(0.05) == MAX_BUNDLE


def worker(worker_id: str, caps: list[str], handlers: list[str], load: int = 0, status: str = "idle") -> WorkerView:
    return WorkerView(
        worker_id=worker_id,
        hostname="h",
        pid=1,
        capabilities=caps,
        status=status,  # type: ignore[arg-type]
        current_load=load,
        max_concurrency=2,
        utilization=load / 2,
        last_heartbeat="2026-12-02T00:00:00.000Z",
        uptime=1,
        registered_at="2026-12-02T00:00:00.000Z",
        heartbeat_interval_s=10,
        metadata={"handlers": handlers},
    )


def test_waiting_reasons_name_what_is_missing() -> None:
    cpu = worker("w1", ["cpu"], ["noop", "sleep"])
    assert (
        waiting_reason("train", "tpu", [cpu], None) == "no live worker has capability 'tpu' and a handler for 'train'"
    )
    assert waiting_reason("noop", "tpu", [cpu], None) == "no live worker has capability 'tpu'"
    assert waiting_reason("preprocessing", None, [cpu], None) == "no live worker has a handler for 'preprocessing'"
    assert waiting_reason("preprocessing", "cpu", [cpu], None) == (
        "no live worker with capability 'cpu' has a handler for 'preprocessing'"
    )
    assert waiting_reason("noop", None, [], None) == "no live worker is connected"
    assert waiting_reason("noop", None, [cpu], "the queue is paused") == "the queue is paused"  # it wins over the rest
    busy = worker("w2", ["cpu"], ["noop"], load=2, status="busy")
    assert waiting_reason("noop", None, [busy], None) == "every worker able to run it is busy (2 of 2 slots)"
    gone = worker("w3", ["tpu"], ["train"], status="unhealthy")
    assert waiting_reason("train", "tpu", [gone], None) == "no live worker is connected"


# --- bundles --------------------------------------------------------------------------------------------------


async def test_long_jobs_spread_over_every_free_slot_of_every_worker(stack: Stack, http: httpx.AsyncClient) -> None:
    """2 workers x 4 slots, 8 ready 1 s jobs: all 8 run at once (about 1 s), none queues behind another on one
    worker — also once the scheduler has learned how long they take."""
    await stack.up()
    await stack.worker("w1", "--concurrency", "4")
    await stack.worker("w2", "--concurrency", "4")
    for _ in range(2):  # the second run is dispatched knowing the jobs' duration
        eid = await submit(http, stack.url, [job(f"s{i}", "sleep", config={"seconds": 1}) for i in range(8)])
        assert (await wait_final(http, stack.url, eid))["status"] == "completed"
        listing = await jobs(http, stack.url, eid)
        last_start = max(ms_from_iso(j["startedAt"]) for j in listing.values())
        first_end = min(ms_from_iso(j["completedAt"]) for j in listing.values())
        assert last_start < first_end, "a job started only after another ended: it queued behind it"
        assert Counter(j["workerId"] for j in listing.values()) == {"w1": 4, "w2": 4}


async def test_quick_jobs_share_job_messages(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(workers=1)
    warm = await submit(http, stack.url, [job(f"w{i}") for i in range(20)])
    await wait_final(http, stack.url, warm)
    before = (await nc.jetstream().stream_info(stack.names.jobs_stream)).state.last_seq
    eid = await submit(http, stack.url, [job(f"n{i}") for i in range(200)])
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    messages = (await nc.jetstream().stream_info(stack.names.jobs_stream)).state.last_seq - before
    print(f"\n200 quick jobs in {messages} job messages")
    assert messages < 50
    assert all(len(j["deliveries"]) == 1 for j in (await jobs(http, stack.url, eid)).values())


# --- owners ---------------------------------------------------------------------------------------------------


async def journal(nc: Client, stack: Stack, eid: str) -> list[AnyJournalEntry]:
    sub = await nc.jetstream().subscribe(stack.names.journal(eid), ordered_consumer=True)
    decoder = msgspec.json.Decoder(AnyJournalEntry)
    entries: list[AnyJournalEntry] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except TimeoutError:
                return entries
            entries.append(decoder.decode(msg.data))
    finally:
        await sub.unsubscribe()


async def test_the_journal_is_readable_and_holds_every_decision(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    await stack.up()  # no worker: the execution stays open and its journal with it
    eid = await submit(http, stack.url, [job("a"), job("b", "noop", ["a"])])

    async def queued() -> list[AnyJournalEntry] | None:
        entries = await journal(nc, stack, eid)
        kinds = [type(e).__name__ for e in entries]
        return entries if "JournalStep" in kinds else None

    entries = await wait_for(queued, timeout=10, message="the first step in the journal")
    assert [type(e).__name__ for e in entries][:2] == ["JournalCreated", "JournalStep"]
    created = entries[0]
    assert isinstance(created, JournalCreated) and created.owner and created.epoch is not None
    step = entries[1]
    assert isinstance(step, JournalStep)
    assert [(p.job, p.status) for p in step.jobs] == [("a", "ready"), ("a", "queued")]
    await stack.worker("w1")
    assert (await wait_final(http, stack.url, eid))["status"] == "completed"
    # Ended: its jobs are in a snapshot, its journal is purged.
    assert await journal(nc, stack, eid) == []
    assert [j["status"] for j in (await jobs(http, stack.url, eid)).values()] == ["completed", "completed"]


async def owner_of(stack: Stack, http: httpx.AsyncClient, eid: str, schedulers: list[ServiceProcess]) -> ServiceProcess:
    """The replica whose log says it accepted or adopted the execution last."""

    def owner() -> ServiceProcess | None:
        found = None
        for proc in schedulers:
            for line in proc.log_lines(since_start=False):
                if line.get("executionId") == eid and line.get("event") in ("execution accepted", "execution adopted"):
                    found = proc
        return found

    result: ServiceProcess = await wait_for(owner, timeout=10, message=f"the owner of {eid}")
    return result


async def test_a_killed_owner_loses_its_executions_to_the_survivor_and_they_finish_exactly(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    stack.env_overrides.update(FAST)
    await stack.registry()
    first = await stack.scheduler("scheduler-a")
    await stack.gateway()
    second = await stack.scheduler("scheduler-b")
    for i in range(2):
        await stack.worker(f"w{i}", "--concurrency", "8")

    async def balanced() -> bool:
        held = [
            line.get("shard")
            for p in (first, second)
            for line in p.log_lines(since_start=False)
            if line.get("event") == "shard acquired"
        ]
        released = sum(1 for line in first.log_lines(since_start=False) if line.get("event") == "shard released")
        return len(held) - released >= 8 and released >= 1

    await wait_for(balanced, timeout=30, message="the shards spread over both replicas")
    dag = [job("top", "sleep", config={"seconds": 0.5})]
    dag += [job(f"m{i}", "sleep", ["top"], config={"seconds": 0.5}) for i in range(4)]
    dag += [job("end", "noop", [f"m{i}" for i in range(4)])]
    # Paused: every execution is still open when its owner dies, whatever the machine's speed.
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    ids = [await submit(http, stack.url, dag) for _ in range(12)]
    owner = {eid: (await owner_of(stack, http, eid, [first, second])).name for eid in ids}
    assert set(owner.values()) == {"scheduler-a", "scheduler-b"}, owner  # executions spread over the replicas
    first.kill()
    killed = time.monotonic()
    assert (await http.post(f"{stack.url}/queue/resume")).status_code == 200

    def adopted() -> set[str]:
        lines = second.log_lines(since_start=False)
        return {line["executionId"] for line in lines if line.get("event") == "execution adopted"}

    orphans = {eid for eid, name in owner.items() if name == "scheduler-a"}
    await wait_for(lambda: orphans <= adopted(), timeout=30, message="the survivor to adopt the victim's executions")
    took_over = time.monotonic() - killed
    finals = await asyncio.gather(*(wait_final(http, stack.url, eid, timeout=90) for eid in ids))
    done = time.monotonic() - killed
    print(
        f"\nowner kill -9: {len(orphans)} executions taken over {took_over:.2f} s after the kill; "
        f"all 12 done {done:.2f} s after it"
    )
    assert [f["status"] for f in finals] == ["completed"] * 12
    assert all(f["progress"]["completed"] == 6 for f in finals)
    for eid in ids:
        listing = await jobs(http, stack.url, eid)
        assert all(j["status"] == "completed" for j in listing.values())
    s = (await stats(http, stack.url))["stats"]
    assert s["completed"] >= 12 * 6 and s["failed"] == 0

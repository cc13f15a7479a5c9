"""Worker endpoints end to end: HTTP → gateway → NATS → registry → KV, with real processes."""

from __future__ import annotations

import json

import httpx
import msgspec
from nats.aio.client import Client

from services.worker.options import WorkerOptions
from services.worker.presence import Presence
from shared.messages import WorkerRecord
from tests.conftest import Stack
from tests.helpers import wait_for

W1 = {
    "workerId": "worker-1",
    "hostname": "worker-node-1",
    "capabilities": ["cpu", "high-memory"],
    "maxConcurrency": 4,
    "metadata": {"cpuCores": 8, "memoryGB": 32},
}
W2 = {"workerId": "worker-2", "hostname": "worker-node-2", "pid": 4242, "capabilities": ["gpu"], "maxConcurrency": 2}


async def test_register_list_heartbeat_deregister(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up()
    # 1-2: register two workers
    r = await http.post(f"{stack.url}/workers/register", json=W1)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["success"] is True and body["workerId"] == "worker-1"
    assert body["registeredAt"].endswith("Z") and len(body["registeredAt"]) == 24
    r = await http.post(f"{stack.url}/workers/register", json=W2)
    assert r.status_code == 201

    # 3: list with statistics
    r = await http.get(f"{stack.url}/workers")
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["count"] == 2
    by_id = {w["workerId"]: w for w in body["workers"]}
    w1 = by_id["worker-1"]
    assert w1["hostname"] == "worker-node-1"
    assert w1["capabilities"] == ["cpu", "high-memory"]
    assert w1["status"] == "idle" and w1["currentLoad"] == 0 and w1["maxConcurrency"] == 4
    assert w1["utilization"] == 0.0 and w1["uptime"] >= 0
    assert w1["metadata"] == {"cpuCores": 8, "memoryGB": 32}
    assert by_id["worker-2"]["pid"] == 4242

    # 4: heartbeat with load → busy, utilization follows
    r = await http.post(f"{stack.url}/workers/worker-1/heartbeat", json={"currentLoad": 3})
    assert r.status_code == 200, r.text
    hb = r.json()
    assert hb == {
        "success": True,
        "workerId": "worker-1",
        "status": "busy",
        "currentLoad": 3,
        "lastHeartbeat": hb["lastHeartbeat"],
    }
    r = await http.get(f"{stack.url}/workers/worker-1")
    assert r.json()["worker"]["utilization"] == 0.75

    # The KV record is plain JSON a human can read with `nats kv get`.
    kv = await nc.jetstream().key_value(stack.names.workers_bucket)
    entry = await kv.get("worker-1")
    assert entry.value is not None
    raw = json.loads(entry.value)
    assert raw["workerId"] == "worker-1" and raw["currentLoad"] == 3
    msgspec.json.decode(entry.value, type=WorkerRecord)

    # 12-13: deregister → gone from every listing at once
    r = await http.delete(f"{stack.url}/workers/worker-1")
    assert r.status_code == 200
    assert r.json() == {"success": True, "workerId": "worker-1", "message": "worker worker-1 deregistered"}
    r = await http.get(f"{stack.url}/workers")
    assert [w["workerId"] for w in r.json()["workers"]] == ["worker-2"]
    r = await http.get(f"{stack.url}/workers/worker-1")
    assert r.status_code == 404
    r = await http.post(f"{stack.url}/workers/worker-1/heartbeat", json={"currentLoad": 0})
    assert r.status_code == 404 and r.json()["success"] is False
    r = await http.delete(f"{stack.url}/workers/worker-1")
    assert r.status_code == 404

    # 14: cleanup
    r = await http.delete(f"{stack.url}/workers/worker-2")
    assert r.status_code == 200
    assert (await http.get(f"{stack.url}/workers")).json() == {"success": True, "count": 0, "workers": []}


async def test_reregistration_replaces_record(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    r = await http.post(f"{stack.url}/workers/register", json=W1)
    assert r.status_code == 201
    first = r.json()["registeredAt"]
    await http.post(f"{stack.url}/workers/worker-1/heartbeat", json={"currentLoad": 2})
    # The worker restarted on its host with another configuration: its new record replaces the old one.
    changed = {**W1, "capabilities": ["cpu"], "maxConcurrency": 8}
    r = await http.post(f"{stack.url}/workers/register", json=changed)
    assert r.status_code == 200, r.text
    assert r.json()["registeredAt"] >= first
    worker = (await http.get(f"{stack.url}/workers/worker-1")).json()["worker"]
    assert worker["capabilities"] == ["cpu"] and worker["maxConcurrency"] == 8
    assert worker["hostname"] == W1["hostname"] and worker["currentLoad"] == 0
    assert (await http.get(f"{stack.url}/workers")).json()["count"] == 1
    # Issue 11: another host may not take the id of a live worker (no admin token: auth is off here).
    r = await http.post(f"{stack.url}/workers/register", json={**W1, "hostname": "node-b"})
    assert r.status_code == 409, r.text
    assert r.json() == {
        "success": False,
        "error": f"worker id worker-1 is held by a live worker on {W1['hostname']}; deregister it first, or "
        "register with an admin API token",
    }
    assert (await http.get(f"{stack.url}/workers/worker-1")).json()["worker"]["hostname"] == W1["hostname"]
    # Deregistered first, the id is free for the other host.
    assert (await http.delete(f"{stack.url}/workers/worker-1")).status_code == 200
    assert (await http.post(f"{stack.url}/workers/register", json={**W1, "hostname": "node-b"})).status_code == 201


async def test_status_turns_unhealthy_then_recovers(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(JETDAG_WORKER_REAP_CHECK_S="0.2")
    events = await nc.subscribe(stack.names.worker_events)
    body = {**W2, "heartbeatIntervalS": 0.3}
    assert (await http.post(f"{stack.url}/workers/register", json=body)).status_code == 201

    async def status() -> str:
        return str((await http.get(f"{stack.url}/workers/worker-2")).json()["worker"]["status"])

    async def is_unhealthy() -> bool:
        return await status() == "unhealthy"

    assert await status() == "idle"
    await wait_for(is_unhealthy, timeout=10, message="worker to turn unhealthy")
    health = (await http.get(f"{stack.url}/health")).json()
    assert health["workers"]["unhealthy"] == 1 and health["workers"]["active"] == 0

    async def next_event() -> str:
        return str(json.loads((await events.next_msg(timeout=10)).data)["event"])

    assert await next_event() == "registered"
    assert await next_event() == "unhealthy"  # announced once by the registry's reaper pass
    r = await http.post(f"{stack.url}/workers/worker-2/heartbeat", json={"currentLoad": 1})
    assert r.json()["status"] == "busy"
    assert await next_event() == "recovered"


async def test_silent_worker_is_reaped_with_event(stack: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    await stack.up(JETDAG_WORKER_REAP_AFTER_S="1", JETDAG_WORKER_REAP_CHECK_S="0.2")
    sub = await nc.subscribe(stack.names.worker_event("ghost", "reaped"))
    body = {**W1, "workerId": "ghost", "heartbeatIntervalS": 0.2}
    assert (await http.post(f"{stack.url}/workers/register", json=body)).status_code == 201
    msg = await sub.next_msg(timeout=15)
    event = json.loads(msg.data)
    assert event["event"] == "reaped" and event["workerId"] == "ghost" and "no heartbeat" in event["reason"]
    assert (await http.get(f"{stack.url}/workers/ghost")).status_code == 404


async def test_own_workers_register_heartbeat_and_deregister(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_HEARTBEAT_INTERVAL_S="0.3")
    worker = await stack.worker("local-1", "--capabilities", "cpu,gpu", "--concurrency", "3")
    listed = (await http.get(f"{stack.url}/workers")).json()["workers"]
    assert [w["workerId"] for w in listed] == ["local-1"]
    assert listed[0]["capabilities"] == ["cpu", "gpu"] and listed[0]["maxConcurrency"] == 3
    assert listed[0]["status"] == "idle" and listed[0]["heartbeatIntervalS"] == 0.3
    first = listed[0]["lastHeartbeat"]

    async def beat_moved() -> bool:
        w = (await http.get(f"{stack.url}/workers/local-1")).json()["worker"]
        return bool(w["lastHeartbeat"] > first)

    await wait_for(beat_moved, timeout=10, message="a heartbeat from the worker process")
    assert await worker.aterminate() == 0
    assert (await http.get(f"{stack.url}/workers")).json()["count"] == 0


async def test_worker_reregisters_after_being_forgotten(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_HEARTBEAT_INTERVAL_S="0.3")
    await stack.worker("local-1")
    assert (await http.delete(f"{stack.url}/workers/local-1")).status_code == 200

    async def back() -> bool:
        return (await http.get(f"{stack.url}/workers/local-1")).status_code == 200

    await wait_for(back, timeout=10, message="the live worker to register again")


async def test_heartbeat_crossing_deregistration_does_not_register_again(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    """A worker shutting down deregisters while a heartbeat may still be on its way; the registry answers
    that one 404, which must not make the leaving worker register itself again (and linger until reaped)."""
    await stack.up()
    options = WorkerOptions("leaving", "h", ("cpu",), 2, (), 10.0, 1.0)
    presence = Presence(nc, stack.names, options, lambda: 0, timeout=5.0)
    await presence.register()
    assert (await http.get(f"{stack.url}/workers/leaving")).status_code == 200
    await presence.deregister()
    assert await presence.heartbeat() is None
    assert (await http.get(f"{stack.url}/workers/leaving")).status_code == 404
    # A worker that is not leaving and finds itself forgotten (reaped while unreachable) does register again.
    staying = Presence(nc, stack.names, WorkerOptions("staying", "h", ("cpu",), 2, (), 10.0, 1.0), lambda: 0, timeout=5)
    assert await staying.heartbeat() is None
    assert (await http.get(f"{stack.url}/workers/staying")).status_code == 200


async def test_listing_the_fleet_reads_the_registrys_copy_not_a_consumer_per_call(
    stack: Stack, http: httpx.AsyncClient, nc: Client
) -> None:
    """GET /workers (and the health summary, the dashboard, the scheduler's audit) used to cost an ephemeral
    consumer on the workers bucket per call: polled, they ran into an account's max_consumers."""
    await stack.up()
    stream = f"KV_{stack.names.workers_bucket}"
    assert (await http.post(f"{stack.url}/workers/register", json=W1)).status_code == 201
    # Read-your-writes through the copy: the new worker is listed at once, deregistered it is gone at once.
    assert [w["workerId"] for w in (await http.get(f"{stack.url}/workers")).json()["workers"]] == ["worker-1"]
    before = (await nc.jetstream().stream_info(stream)).state.consumer_count
    for _ in range(60):
        r = await http.get(f"{stack.url}/workers")
        assert r.status_code == 200 and r.json()["count"] == 1, r.text
        assert (await http.get(f"{stack.url}/health")).status_code == 200
    assert (await nc.jetstream().stream_info(stream)).state.consumer_count == before
    assert (await http.delete(f"{stack.url}/workers/worker-1")).status_code == 200
    assert (await http.get(f"{stack.url}/workers")).json()["workers"] == []

"""The seed's 14-step validation suite, and the reference client of API.md, against the real stack.

The reference client registers, heartbeats, starts executions of built-in jobs, polls GET /execute/{id} until
a final status, and deregisters: it must work unchanged.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.api import FINAL, wait_final
from tests.conftest import Stack
from tests.helpers import wait_for


async def test_seed_validation_suite(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=2)
    await seed_validation_suite(http, stack.url)


async def test_reference_client(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=2)
    await reference_client(http, stack.url)


async def seed_validation_suite(http: httpx.AsyncClient, url: str) -> None:
    """The seed's 14 steps against a stack with two jetdag workers of its own (also run on `jetdag up`)."""
    # 1. Register Worker
    w1 = {
        "workerId": "worker-1",
        "hostname": "worker-node-1",
        "capabilities": ["cpu", "high-memory"],
        "maxConcurrency": 4,
        "metadata": {"cpuCores": 8, "memoryGB": 32},
    }
    r = await http.post(f"{url}/workers/register", json=w1)
    assert r.status_code == 201 and r.json()["success"] and r.json()["workerId"] == "worker-1"
    assert r.json()["registeredAt"]
    # 2. Register Second Worker
    w2 = {
        "workerId": "worker-2",
        "hostname": "worker-node-2",
        "pid": 1234,
        "capabilities": ["gpu"],
        "maxConcurrency": 2,
    }
    assert (await http.post(f"{url}/workers/register", json=w2)).status_code == 201
    # 3. List All Workers (our two jetdag workers are there too)
    body = (await http.get(f"{url}/workers")).json()
    assert body["success"] and body["count"] == 4
    listed = {w["workerId"]: w for w in body["workers"]}
    for field in ("workerId", "hostname", "capabilities", "status", "currentLoad", "maxConcurrency", "utilization"):
        assert field in listed["worker-1"]
    assert "lastHeartbeat" in listed["worker-1"] and "uptime" in listed["worker-1"]
    # 4. Send Worker Heartbeat
    r = await http.post(f"{url}/workers/worker-1/heartbeat", json={"currentLoad": 2})
    assert r.status_code == 200
    assert r.json()["currentLoad"] == 2 and r.json()["status"] == "busy" and r.json()["lastHeartbeat"]
    # 5. Get Queue Statistics
    body = (await http.get(f"{url}/queue/stats")).json()
    assert body["success"] and body["healthy"] is True
    assert set(body["stats"]) == {"waiting", "active", "completed", "failed", "delayed", "paused", "total"}
    # 6. Pause Queue / 7. Resume Queue
    r = await http.post(f"{url}/queue/pause")
    assert r.status_code == 200 and r.json()["success"] and r.json()["message"]
    assert (await http.get(f"{url}/queue/stats")).json()["isPaused"] is True
    r = await http.post(f"{url}/queue/resume")
    assert r.status_code == 200 and r.json()["success"] and r.json()["message"]
    assert (await http.get(f"{url}/queue/stats")).json()["isPaused"] is False
    # 8. Start Distributed Execution (2-job DAG)
    dag = {
        "workflowId": "training-pipeline-1",
        "jobs": [
            {"id": "job-1", "name": "Data Preprocessing", "type": "noop", "dependsOn": [], "config": {}},
            {"id": "job-2", "name": "Model Training", "type": "noop", "dependsOn": ["job-1"], "config": {"epochs": 1}},
        ],
    }
    r = await http.post(f"{url}/execute", json=dag)
    assert r.status_code == 201
    started = r.json()
    assert started["success"] and started["executionId"] and started["jobCount"] == 2
    assert started["status"] in ("pending", "running") and started["startedAt"] and started["completedAt"] is None
    # 9. Get Execution Status
    r = await http.get(f"{url}/execute/{started['executionId']}")
    assert r.status_code == 200
    execution = r.json()["execution"]
    assert execution["executionId"] == started["executionId"] and execution["workflowId"] == "training-pipeline-1"
    assert set(execution["progress"]) >= {"total", "completed", "failed", "running"}
    assert "checkpointId" in execution
    # 10. Get Non-existent Execution
    r = await http.get(f"{url}/execute/exec-does-not-exist")
    assert r.status_code == 404 and r.json()["success"] is False and r.json()["error"]
    # 11. System Health Check
    r = await http.get(f"{url}/health")
    assert r.status_code == 200
    health = r.json()
    assert health["healthy"] is True and set(health["components"]) >= {"queue", "workerManager", "stateStore"}
    assert set(health["workers"]) == {"total", "active", "idle", "busy", "unhealthy", "utilizationPercent"}
    # 12. Deregister Worker / 13. Verify Worker Deregistration
    r = await http.delete(f"{url}/workers/worker-1")
    assert r.status_code == 200 and r.json()["success"] and r.json()["message"]
    ids = [w["workerId"] for w in (await http.get(f"{url}/workers")).json()["workers"]]
    assert "worker-1" not in ids
    # 14. Cleanup Remaining Workers
    assert (await http.delete(f"{url}/workers/worker-2")).status_code == 200
    # ...and the execution of step 8 ran to completion on the jetdag workers.
    execution = await wait_final(http, url, started["executionId"])
    assert execution["status"] == "completed" and execution["progress"]["completed"] == 2


async def reference_client(http: httpx.AsyncClient, url: str) -> None:
    """Register, heartbeat, execute built-in jobs, poll every second until final, deregister."""
    reg = {"workerId": "ref-1", "hostname": "ref-host", "pid": 42, "capabilities": ["cpu"], "maxConcurrency": 2}
    assert (await http.post(f"{url}/workers/register", json=reg)).json()["success"]
    assert (await http.post(f"{url}/workers/ref-1/heartbeat", json={"currentLoad": 0})).json()["success"]
    jobs = [
        {"id": "prep", "name": "Preprocess", "type": "sleep", "dependsOn": [], "config": {"seconds": 0.2}},
        {"id": "train", "name": "Train", "type": "noop", "dependsOn": ["prep"], "config": {"lr": 0.1}},
        {"id": "eval", "name": "Evaluate", "type": "noop", "dependsOn": ["train"], "config": {}},
    ]
    eid = (await http.post(f"{url}/execute", json={"workflowId": "ref", "jobs": jobs, "parallelism": 2})).json()[
        "executionId"
    ]

    async def final() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"{url}/execute/{eid}")).json()
        return body if body["execution"]["status"] in FINAL else None

    # The reference client's loop: poll every second until a final status (here with a deadline).
    result = await wait_for(final, timeout=60, interval=1.0, message="the execution to end")
    assert result["execution"]["status"] == "completed"
    assert result["execution"]["progress"]["completed"] == 3 and result["execution"]["completedAt"]
    assert (await http.delete(f"{url}/workers/ref-1")).json()["success"]

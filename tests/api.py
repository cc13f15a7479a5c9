"""Small HTTP helpers for execution tests (what a client of the REST API would write)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import wait_for

FINAL = ("completed", "failed", "cancelled")


def job(job_id: str, job_type: str = "noop", deps: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": job_id, "name": job_id, "type": job_type, "dependsOn": deps or [], "config": {}}
    body.update(extra)
    return body


async def submit(http: httpx.AsyncClient, url: str, jobs: list[dict[str, Any]], **extra: Any) -> str:
    r = await http.post(f"{url}/execute", json={"workflowId": "wf-test", "jobs": jobs, **extra})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["success"] is True and body["jobCount"] == len(jobs)
    return str(body["executionId"])


async def status(http: httpx.AsyncClient, url: str, execution_id: str) -> dict[str, Any]:
    r = await http.get(f"{url}/execute/{execution_id}")
    assert r.status_code == 200, r.text
    execution: dict[str, Any] = r.json()["execution"]
    return execution


async def wait_final(http: httpx.AsyncClient, url: str, execution_id: str, timeout: float = 60) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        execution = await status(http, url, execution_id)
        return execution if execution["status"] in FINAL else None

    result: dict[str, Any] = await wait_for(final, timeout=timeout, interval=0.1, message=f"{execution_id} to end")
    return result


async def jobs(http: httpx.AsyncClient, url: str, execution_id: str) -> dict[str, dict[str, Any]]:
    r = await http.get(f"{url}/execute/{execution_id}/jobs")
    assert r.status_code == 200, r.text
    return {j["id"]: j for j in r.json()["jobs"]}


async def stats(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await http.get(f"{url}/queue/stats")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body

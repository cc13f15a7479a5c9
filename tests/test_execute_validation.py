"""Every invalid DAG form is a 400 naming the problem, and nothing of it is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import NoKeysError

from tests.api import job
from tests.conftest import Stack

CASES: list[tuple[str, Any, str]] = [
    ("empty jobs", {"workflowId": "w", "jobs": []}, "invalid request: jobs: must not be empty"),
    ("duplicate ids", {"workflowId": "w", "jobs": [job("a"), job("a")]}, "duplicate job id 'a'"),
    ("dangling dependsOn", {"workflowId": "w", "jobs": [job("a", deps=["ghost"])]}, "'ghost', which is not a job"),
    ("self dependency", {"workflowId": "w", "jobs": [job("a", deps=["a"])]}, "depends on itself"),
    (
        "cycle",
        {"workflowId": "w", "jobs": [job("x", deps=["z"]), job("y", deps=["x"]), job("z", deps=["y"]), job("free")]},
        "cycle: x -> y -> z -> x",
    ),
    ("two-cycle", {"workflowId": "w", "jobs": [job("p", deps=["q"]), job("q", deps=["p"])]}, "cycle: p -> q -> p"),
    ("parallelism zero", {"workflowId": "w", "jobs": [job("a")], "parallelism": 0}, "parallelism"),
    ("parallelism string", {"workflowId": "w", "jobs": [job("a")], "parallelism": "2"}, "parallelism"),
    ("job id with dot", {"workflowId": "w", "jobs": [job("a.b")]}, "jobs[0].id"),
    ("job id wildcard", {"workflowId": "w", "jobs": [job(">")]}, "jobs[0].id"),
    ("dependsOn with space", {"workflowId": "w", "jobs": [job("a"), job("b", deps=["a b"])]}, "jobs[1].dependsOn[0]"),
    ("type with dot", {"workflowId": "w", "jobs": [job("a", "no.op")]}, "jobs[0].type"),
    ("capability wildcard", {"workflowId": "w", "jobs": [job("a", capability="*")]}, "jobs[0].capability"),
    ("workflowId with star", {"workflowId": "w*", "jobs": [job("a")]}, "workflowId"),
    ("workflowId missing", {"jobs": [job("a")]}, "workflowId"),
    ("jobs missing", {"workflowId": "w"}, "jobs"),
    ("job without type", {"workflowId": "w", "jobs": [{"id": "a", "name": "a", "dependsOn": []}]}, "type"),
    ("negative retries", {"workflowId": "w", "jobs": [job("a", retries=-1)]}, "retries"),
    ("zero timeout", {"workflowId": "w", "jobs": [job("a", timeoutS=0)]}, "timeoutS"),
    ("unknown job field", {"workflowId": "w", "jobs": [job("a", retry=3)]}, "retry"),
    ("config not an object", {"workflowId": "w", "jobs": [job("a", config=[1])]}, "config"),
    ("config too big", {"workflowId": "w", "jobs": [job("a", config={"x": "y" * 300_000})]}, "config must encode"),
]


@pytest.fixture
async def gw(stack: Stack) -> Stack:
    return await stack.up()


async def test_invalid_dags_are_rejected(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    for case, body, needle in CASES:
        r = await http.post(f"{gw.url}/execute", json=body)
        assert r.status_code == 400, (case, r.status_code, r.text)
        data = r.json()
        assert data["success"] is False and needle in data["error"], (case, data["error"])
    kv = await nc.jetstream().key_value(gw.names.executions_bucket)
    with pytest.raises(NoKeysError):
        await kv.keys()


async def test_too_many_jobs(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_MAX_JOBS="10")
    r = await http.post(f"{stack.url}/execute", json={"workflowId": "w", "jobs": [job(f"j{i}") for i in range(11)]})
    assert r.status_code == 400 and r.json()["error"] == "too many jobs: 11 (the limit is 10)"


async def test_unknown_execution_is_404_and_bad_ids_400(gw: Stack, http: httpx.AsyncClient) -> None:
    for path in ["/execute/exec-123", "/execute/exec-123/jobs"]:
        r = await http.get(f"{gw.url}{path}")
        assert r.status_code == 404 and r.json() == {"success": False, "error": "execution exec-123 does not exist"}
    for path in ["/execute/exec-123/cancel", "/execute/exec-123/retry"]:
        assert (await http.post(f"{gw.url}{path}")).status_code == 404
    for bad in ["a.b", "*", "%3E"]:
        r = await http.get(f"{gw.url}/execute/{bad}")
        assert r.status_code == 400 and "executionId" in r.json()["error"], (bad, r.text)
    r = await http.get(f"{gw.url}/executions", params={"status": "exploded"})
    assert r.status_code == 400 and "status" in r.json()["error"]
    r = await http.get(f"{gw.url}/executions", params={"limit": "0"})
    assert r.status_code == 400
    r = await http.get(f"{gw.url}/executions", params={"workflowId": "a b"})
    assert r.status_code == 400 and "workflowId" in r.json()["error"]


async def test_queue_and_execute_answer_503_without_a_scheduler(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.registry()
    await stack.gateway()
    for method, path in [("GET", "/queue/stats"), ("POST", "/queue/pause"), ("GET", "/execute/exec-1")]:
        r = await http.request(method, f"{stack.url}{path}")
        assert r.status_code == 503, (path, r.text)
        assert "scheduler service is not running" in r.json()["error"]
    r = await http.post(f"{stack.url}/execute", json={"workflowId": "w", "jobs": [job("a")]})
    assert r.status_code == 503 and "scheduler" in r.json()["error"]


async def test_parameter_errors_are_sentences_naming_the_parameter(gw: Stack, http: httpx.AsyncClient) -> None:
    """Issue 10 item 14: `?status=bogus` answered "ParamType.QUERY parameter status: Invalid enum value"."""
    cases = {
        "status=bogus": "query parameter status must be one of pending, running, completed, failed, cancelled "
        "(got 'bogus')",
        "limit=0": "query parameter limit must be at least 1 (got '0')",
        "limit=501": "query parameter limit must be at most 500 (got '501')",
        "limit=ten": "query parameter limit must be an integer (got 'ten')",
    }
    for query, error in cases.items():
        r = await http.get(f"{gw.url}/executions?{query}")
        assert r.status_code == 400, r.text
        assert r.json() == {"success": False, "error": f"invalid request: {error}"}

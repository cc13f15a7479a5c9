"""Bad input gets a clear 400/404/413 naming the problem, and changes nothing (checked in the KV bucket)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import NoKeysError

from shared.nesting import MAX_NESTING
from tests.conftest import Stack
from tests.helpers import ROOT

GOOD = {"workerId": "ok-1", "hostname": "h", "capabilities": ["cpu"], "maxConcurrency": 2}

REGISTER_CASES: list[tuple[str, Any, str]] = [
    # (case, body, a word the error must contain)
    ("missing workerId", {k: v for k, v in GOOD.items() if k != "workerId"}, "workerId"),
    ("missing hostname", {k: v for k, v in GOOD.items() if k != "hostname"}, "hostname"),
    ("missing capabilities", {k: v for k, v in GOOD.items() if k != "capabilities"}, "capabilities"),
    ("missing maxConcurrency", {k: v for k, v in GOOD.items() if k != "maxConcurrency"}, "maxConcurrency"),
    ("maxConcurrency as string", {**GOOD, "maxConcurrency": "4"}, "maxConcurrency"),
    ("maxConcurrency zero", {**GOOD, "maxConcurrency": 0}, "maxConcurrency"),
    ("maxConcurrency float", {**GOOD, "maxConcurrency": 1.5}, "maxConcurrency"),
    ("negative currentLoad", {**GOOD, "currentLoad": -1}, "currentLoad"),
    ("load above capacity", {**GOOD, "currentLoad": 3}, "currentLoad"),
    ("capabilities not a list", {**GOOD, "capabilities": "cpu"}, "capabilities"),
    ("capability with dot", {**GOOD, "capabilities": ["a.b"]}, "capabilities"),
    ("capability wildcard", {**GOOD, "capabilities": [">"]}, "capabilities"),
    ("id with dot", {**GOOD, "workerId": "a.b"}, "workerId"),
    ("id with star", {**GOOD, "workerId": "*"}, "workerId"),
    ("id with gt", {**GOOD, "workerId": ">"}, "workerId"),
    ("id with space", {**GOOD, "workerId": "a b"}, "workerId"),
    ("id with slash", {**GOOD, "workerId": "a/b"}, "workerId"),
    ("id empty", {**GOOD, "workerId": ""}, "workerId"),
    ("id too long", {**GOOD, "workerId": "a" * 129}, "workerId"),
    ("id unicode", {**GOOD, "workerId": "wörker"}, "workerId"),
    ("id not a string", {**GOOD, "workerId": 12}, "workerId"),
    ("hostname empty", {**GOOD, "hostname": ""}, "hostname"),
    ("metadata not an object", {**GOOD, "metadata": [1]}, "metadata"),
    ("metadata too big", {**GOOD, "metadata": {"x": "y" * 20_000}}, "metadata"),
    ("unknown field", {**GOOD, "maxconcurrency": 2}, "maxconcurrency"),
    ("null body", None, "object"),
    ("array body", [GOOD], "object"),
    ("pid negative", {**GOOD, "pid": -5}, "pid"),
]


@pytest.fixture
async def gw(stack: Stack) -> Stack:
    return await stack.up()


async def assert_no_workers(nc: Client, stack: Stack) -> None:
    kv = await nc.jetstream().key_value(stack.names.workers_bucket)
    with pytest.raises(NoKeysError):
        await kv.keys()


async def test_register_rejects_bad_bodies(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    for case, body, word in REGISTER_CASES:
        r = await http.post(f"{gw.url}/workers/register", json=body)
        assert r.status_code == 400, (case, r.status_code, r.text)
        data = r.json()
        assert data["success"] is False, case
        assert isinstance(data["error"], str) and word in data["error"], (case, data["error"])
        assert "Traceback" not in data["error"] and "\n" not in data["error"], case
    await assert_no_workers(nc, gw)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"workerId": "a",}', b"not json", b"\xff\xfe", b'{"workerId": "a"' + b" " * 10, b"[" * 10_000],
    ids=["empty", "open-brace", "trailing-comma", "text", "binary", "truncated", "deep-nesting"],
)
async def test_register_rejects_malformed_json(gw: Stack, http: httpx.AsyncClient, nc: Client, raw: bytes) -> None:
    r = await http.post(f"{gw.url}/workers/register", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False and r.json()["error"]
    await assert_no_workers(nc, gw)


async def test_oversized_body_is_413(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    big = b'{"workerId": "big", "hostname": "h", "capabilities": [], "maxConcurrency": 1, "metadata": {"x": "'
    big += b"a" * (5 * 1024 * 1024) + b'"}}'
    r = await http.post(f"{gw.url}/workers/register", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"success": False, "error": "the request body is too large (limit 4194304 bytes)"}

    # The limit also holds for a chunked body that announces no length.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(6):
            yield b"a" * (1024 * 1024)

    r = await http.post(f"{gw.url}/workers/register", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    await assert_no_workers(nc, gw)


async def test_heartbeat_rejects_bad_input(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    assert (await http.post(f"{gw.url}/workers/register", json=GOOD)).status_code == 201
    kv = await nc.jetstream().key_value(gw.names.workers_bucket)
    before = (await kv.get("ok-1")).revision
    cases: list[tuple[Any, str]] = [
        ({}, "currentLoad"),
        ({"currentLoad": -1}, "currentLoad"),
        ({"currentLoad": "1"}, "currentLoad"),
        ({"currentLoad": 1.5}, "currentLoad"),
        ({"currentLoad": 3}, "maxConcurrency"),
        ({"currentLoad": 1, "extra": True}, "extra"),
        (None, "object"),
    ]
    for body, word in cases:
        r = await http.post(f"{gw.url}/workers/ok-1/heartbeat", json=body)
        assert r.status_code == 400, (body, r.text)
        assert word in r.json()["error"], (body, r.json())
    for bad_id in ["a.b", "a*", "%3E", "a%20b", "x" * 129]:
        r = await http.post(f"{gw.url}/workers/{bad_id}/heartbeat", json={"currentLoad": 0})
        assert r.status_code in (400, 404), (bad_id, r.text)
        assert r.json()["success"] is False
    assert (await kv.get("ok-1")).revision == before


async def test_hostile_ids_in_paths(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    assert (await http.post(f"{gw.url}/workers/register", json=GOOD)).status_code == 201
    for bad_id in ["ok-1.x", "*", ">", "ok%2E1", "..", "ok-1%00"]:
        for method, path in [("GET", f"/workers/{bad_id}"), ("DELETE", f"/workers/{bad_id}")]:
            r = await http.request(method, f"{gw.url}{path}")
            assert r.status_code in (400, 404), (method, bad_id, r.status_code, r.text)
            body = r.json()
            assert body["success"] is False and body["error"]
    # the real worker is untouched
    assert (await http.get(f"{gw.url}/workers/ok-1")).status_code == 200
    r = await http.get(f"{gw.url}/workers/a.b")
    assert r.status_code == 400 and "workerId" in r.json()["error"]


async def test_unknown_route_and_method(gw: Stack, http: httpx.AsyncClient) -> None:
    r = await http.get(f"{gw.url}/nothing-here")
    assert r.status_code == 404 and r.json()["success"] is False
    r = await http.put(f"{gw.url}/workers")
    assert r.status_code == 405 and r.json()["success"] is False


async def test_unknown_worker_is_404(gw: Stack, http: httpx.AsyncClient) -> None:
    for method, path, body in [
        ("GET", "/workers/ghost", None),
        ("DELETE", "/workers/ghost", None),
        ("POST", "/workers/ghost/heartbeat", {"currentLoad": 0}),
    ]:
        r = await http.request(method, f"{gw.url}{path}", json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json() == {"success": False, "error": "worker ghost is not registered"}


def nested(depth: int, leaf: str) -> str:
    """JSON text of an object `depth` levels deep, `{"k": {"k": ... leaf}}` (raw: encoders recurse too)."""
    return '{"k":' * depth + leaf + "}" * depth


async def test_deep_nesting_is_a_400_and_no_body_is_ever_logged(gw: Stack, http: httpx.AsyncClient, nc: Client) -> None:
    """Issue 10 item 6: a 2 KB config nested 1,000 deep was a 500 with a 17 KB traceback holding the body."""
    marker = json.dumps(f"body-marker-{uuid.uuid4().hex}")

    def execute(config: str) -> str:
        return f'{{"workflowId":"deep","jobs":[{{"id":"a","name":{marker},"type":"noop","config":{config}}}]}}'

    def register(metadata: str) -> str:
        return json.dumps({**GOOD, "hostname": json.loads(marker)})[:-1] + f',"metadata":{metadata}}}'

    too_deep = f"the body nests too deeply: config and metadata may nest at most {MAX_NESTING} levels"
    config_error = f"invalid request: jobs[0].config nests deeper than {MAX_NESTING} levels"
    metadata_error = f"invalid request: metadata nests deeper than {MAX_NESTING} levels"
    for path, body, error in [
        ("/execute", execute(nested(1000, marker)), too_deep),
        ("/execute", execute(nested(MAX_NESTING + 1, marker)), config_error),
        ("/execute", execute(nested(MAX_NESTING, f"[{marker}]")), config_error),
        ("/workers/register", register(nested(1000, marker)), too_deep),
        ("/workers/register", register(nested(MAX_NESTING + 1, marker)), metadata_error),
    ]:
        r = await http.post(f"{gw.url}{path}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text[:300])
        assert r.json() == {"success": False, "error": error}
    await assert_no_workers(nc, gw)
    # At the limit is fine.
    for path, body in [
        ("/execute", execute(nested(MAX_NESTING, marker))),
        ("/workers/register", register(nested(MAX_NESTING, "1"))),
    ]:
        r = await http.post(f"{gw.url}{path}", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
    # Straight to the scheduler over NATS, past the gateway: a 400 there too, not a crash.
    deep_command = f'{{"request":{execute(nested(1000, marker))}}}'.encode()
    reply = await nc.request(gw.names.scheduler("execute"), deep_command, timeout=10)
    assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "400"
    for proc in gw.procs:
        assert json.loads(marker) not in proc.log_path.read_text(), f"{proc.name} logged a request body"


def test_tracebacks_are_logged_without_local_variables(tmp_path: Path) -> None:
    """The mechanism that put bodies in logs: structlog renders a traceback's locals unless told not to."""
    script = """
import sys
from shared.logging import configure_logging, get_logger
configure_logging("t", json=sys.argv[1] == "json")
def handle(body):
    raise ValueError("boom")
try:
    handle("body-marker-in-a-local")
except ValueError:
    get_logger("t").exception("request failed")
"""
    for fmt in ("json", "console"):
        out = subprocess.run(
            [sys.executable, "-c", script, fmt], check=True, cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert "boom" in out.stderr and "handle" in out.stderr, out.stderr
        assert "body-marker-in-a-local" not in out.stderr, (fmt, out.stderr)

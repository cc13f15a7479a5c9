"""REST auth: bearer tokens with scopes, the browser rules (415, Origin, Host), and the refusal to run exposed.

The pure decisions (services/gateway/auth.py) are tested directly; everything a client sees is tested through
HTTP against a real gateway, registry and scheduler.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jetdag.client import AsyncClient, Unauthorized
from services.gateway.auth import (
    AuthConfigError,
    AuthPolicy,
    Denied,
    Scope,
    check_content_type,
    hash_token,
    is_loopback,
    new_token,
    parse_tokens,
)
from shared.settings import GatewaySettings
from tests.api import job, submit
from tests.conftest import Stack
from tests.helpers import ROOT

READER, WRITER, ADMIN = new_token(), new_token(), new_token()
TOKENS = f"dash:read:{READER},ci:write:{hash_token(WRITER)},ops:admin:{ADMIN}"
WORKER = {"workerId": "rest-1", "hostname": "host-a", "capabilities": ["cpu"], "maxConcurrency": 1}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- pure decisions -------------------------------------------------------------------------------------


def test_tokens_parse_from_entries_and_lines_and_are_kept_hashed() -> None:
    tokens = parse_tokens(f"a:read:{READER}, b:WRITE:{hash_token(WRITER)}\n# a comment\nc:admin:{ADMIN}  # ops", "x")
    assert [(t.name, t.scope) for t in tokens] == [("a", Scope.READ), ("b", Scope.WRITE), ("c", Scope.ADMIN)]
    assert all(READER.encode() not in t.digest for t in tokens)
    policy = AuthPolicy(tuple(tokens), enabled=True, origins=frozenset())
    assert policy.authenticate(f"Bearer {WRITER}", Scope.WRITE) == tokens[1]  # a hashed entry works the same
    assert policy.authenticate(f"bearer {ADMIN}", Scope.READ) == tokens[2]  # admin includes read


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("onlytwo:read", "entry 1 is not name:scope:secret"),
        (f"a b:read:{READER}", "token name 'a b'"),
        (f"a:root:{READER}", "token a has scope 'root'; use read, write or admin"),
        ("a:read:short", "token a is shorter than 16 characters"),
        ("a:read:sha256:abcd", "sha256: must be followed by 64 hex digits"),
        (f"a:read:{READER},a:write:{WRITER}", "token name a is used twice"),
    ],
)
def test_bad_token_entries_name_the_problem(text: str, error: str) -> None:
    with pytest.raises(AuthConfigError, match=r"^JETDAG_API_TOKENS: ") as info:
        parse_tokens(text, "JETDAG_API_TOKENS")
    assert error in str(info.value)


def test_policy_refuses_unsafe_configurations_in_one_line() -> None:
    with pytest.raises(AuthConfigError) as info:
        AuthPolicy.from_settings(GatewaySettings(host="0.0.0.0"))
    assert str(info.value) == (
        "JETDAG_HOST=0.0.0.0 is not a loopback address and no API tokens are configured: set JETDAG_API_TOKENS "
        "or JETDAG_API_TOKENS_FILE (jetdag api-token makes one; docs/security.md)"
    )
    with pytest.raises(AuthConfigError, match=r"JETDAG_CORS_ORIGINS=\* without API tokens"):
        AuthPolicy.from_settings(GatewaySettings(cors_origins="*"))
    with pytest.raises(AuthConfigError, match="JETDAG_API_AUTH=off and API tokens are both set"):
        AuthPolicy.from_settings(GatewaySettings(api_auth="off", api_tokens=TOKENS))
    with pytest.raises(AuthConfigError, match="JETDAG_API_AUTH must be auto or off"):
        AuthPolicy.from_settings(GatewaySettings(api_auth="maybe"))
    assert not AuthPolicy.from_settings(GatewaySettings(host="0.0.0.0", api_auth="off")).enabled
    assert AuthPolicy.from_settings(GatewaySettings(host="0.0.0.0", api_tokens=TOKENS)).enabled
    assert not AuthPolicy.from_settings(GatewaySettings(host="::1")).enabled


def test_tokens_file_adds_to_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# jetdag API tokens\nrunner:write:{hash_token(WRITER)}\n")
    policy = AuthPolicy.from_settings(GatewaySettings(api_tokens=f"dash:read:{READER}", api_tokens_file=str(path)))
    assert [t.name for t in policy.tokens] == ["dash", "runner"]
    with pytest.raises(AuthConfigError, match=f"cannot read {tmp_path / 'missing'}"):
        AuthPolicy.from_settings(GatewaySettings(api_tokens_file=str(tmp_path / "missing")))


def test_origin_host_and_content_type_rules() -> None:
    policy = AuthPolicy((), enabled=False, origins=frozenset({"https://dash.example"}))
    policy.check_origin(None, "127.0.0.1:8000")
    policy.check_origin("https://dash.example", "127.0.0.1:8000")
    policy.check_origin("http://127.0.0.1:8000", "127.0.0.1:8000")  # its own pages
    for origin in ("https://evil.example", "null"):
        with pytest.raises(Denied) as info:
            policy.check_origin(origin, "127.0.0.1:8000")
        assert info.value.status == 403
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        policy.check_host(host)
    for bad in ("evil.example:8000", "10.0.0.5:8000", None):
        with pytest.raises(Denied, match="is not allowed without API tokens"):
            policy.check_host(bad)
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")
    check_content_type("POST", "application/json; charset=utf-8", True)
    check_content_type("POST", None, False)  # a change without a body (pause, cancel) needs no content type
    check_content_type("GET", "text/plain", True)
    for content_type, body in (("application/x-www-form-urlencoded", True), ("text/plain", False), (None, True)):
        with pytest.raises(Denied) as info:
            check_content_type("POST", content_type, body)
        assert info.value.status == 415


# --- through HTTP ---------------------------------------------------------------------------------------


async def test_scopes_give_401_403_and_pass_where_they_should(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_API_TOKENS=TOKENS)
    url = stack.url
    # No token, a malformed header, an unknown token: 401 in the API's error shape, with the challenge.
    for headers, message in (
        ({}, "this request needs an API token: send Authorization: Bearer <token>"),
        ({"Authorization": READER}, "the Authorization header must be: Bearer <token>"),
        (bearer("jdt_" + "x" * 43), "the API token is not valid"),
    ):
        r = await http.get(f"{url}/workers", headers=headers)
        assert r.status_code == 401 and r.json() == {"success": False, "error": message}, r.text
        assert r.headers["www-authenticate"].startswith('Bearer realm="jetdag"')
    # Each scope passes where it should and gets 403 (naming what is needed) where it should not.
    cases = [
        ("GET", "/workers", None, Scope.READ),
        ("GET", "/queue/stats", None, Scope.READ),
        ("GET", "/executions", None, Scope.READ),
        ("POST", "/execute", {"workflowId": "w", "jobs": [job("a")]}, Scope.WRITE),
        ("POST", "/queue/pause", None, Scope.ADMIN),
        ("POST", "/queue/resume", None, Scope.ADMIN),
        ("POST", "/workers/register", WORKER, Scope.ADMIN),
        ("POST", "/workers/rest-1/heartbeat", {"currentLoad": 0}, Scope.ADMIN),
        ("DELETE", "/workers/rest-1", None, Scope.ADMIN),
    ]
    names = {READER: ("dash", Scope.READ), WRITER: ("ci", Scope.WRITE), ADMIN: ("ops", Scope.ADMIN)}
    for method, path, body, needed in cases:
        for token, (name, scope) in names.items():
            r = await http.request(method, f"{url}{path}", json=body, headers=bearer(token))
            if scope >= needed:
                assert r.status_code in (200, 201), (method, path, name, r.text)
            else:
                assert r.status_code == 403, (method, path, name, r.text)
                assert (
                    r.json()["error"] == f"this request needs a token with the {needed} scope; token {name} has {scope}"
                )
                assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    executions = (await http.get(f"{url}/executions", headers=bearer(READER))).json()
    assert executions["count"] == 2  # the writer's and the admin's submissions, not the reader's
    # The event streams are reads like any other: 401 without a token, open with a read token.
    eid = executions["executions"][0]["executionId"]
    for path in ("/events", f"/execute/{eid}/events"):
        r = await http.get(f"{url}{path}")
        assert r.status_code == 401 and r.json()["success"] is False, (path, r.text)
        async with http.stream("GET", f"{url}{path}", headers=bearer(READER)) as stream:
            assert stream.status_code == 200, path
            assert stream.headers["content-type"].startswith("text/event-stream")
    # Open without a token: /health for load balancers, the OpenAPI document.
    assert (await http.get(f"{url}/health")).status_code == 200
    schema = (await http.get(f"http://127.0.0.1:{stack.gateway_port}/schema/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearerToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A jetdag API token (scopes read, write, admin).",
    }
    assert schema["security"] == [{"bearerToken": []}]
    assert schema["paths"]["/api/distributed/health"]["get"]["security"] == [{}]
    pause = schema["paths"]["/api/distributed/queue/pause"]["post"]["responses"]
    assert {"401", "403", "415"} <= set(pause)
    # /metrics needs a reader too (it names workers and job types).
    metrics = f"http://127.0.0.1:{stack.gateway_port}/metrics"
    assert (await http.get(metrics)).status_code == 401
    assert (await http.get(metrics, headers=bearer(READER))).status_code == 200


async def test_only_an_admin_token_takes_over_a_live_workers_id(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_API_TOKENS=TOKENS)
    url = stack.url
    assert (await http.post(f"{url}/workers/register", json=WORKER, headers=bearer(ADMIN))).status_code == 201
    # The registry refuses the plain `register` command for another host (what a worker credential may send).
    r = await http.post(f"{url}/workers/register", json={**WORKER, "hostname": "host-b"}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert (await http.get(f"{url}/workers/rest-1", headers=bearer(READER))).json()["worker"]["hostname"] == "host-b"
    registry = next(p for p in stack.procs if p.name == "registry")
    assert registry.has_logged("worker taken over", workerId="rest-1", holder="host-a")


async def test_browser_attacks_change_nothing_on_the_default_loopback_gateway(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """Issue 11's CSRF: a form pausing the queue and a text/plain POST /execute, and a DNS-rebinding page."""
    await stack.up(JETDAG_CORS_ORIGINS="https://dash.example")
    url = stack.url
    form = await http.post(f"{url}/queue/pause", data={"x": "1"})
    assert form.status_code == 415, form.text
    assert form.json() == {
        "success": False,
        "error": "a request that changes something must have Content-Type: application/json "
        "(got application/x-www-form-urlencoded)",
    }
    dag = '{"workflowId": "w", "jobs": [{"id": "a", "name": "a", "type": "noop", "dependsOn": [], "config": {}}]}'
    plain = await http.post(f"{url}/execute", content=dag, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    multipart = await http.post(f"{url}/execute", files={"f": ("dag.json", dag.encode())})
    assert multipart.status_code == 415
    cross = await http.post(f"{url}/queue/pause", headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and cross.json()["error"] == (
        "requests from origin https://evil.example are not allowed; add it to JETDAG_CORS_ORIGINS"
    )
    rebinding = await http.post(f"{url}/queue/pause", headers={"Host": f"evil.example:{stack.gateway_port}"})
    assert rebinding.status_code == 403 and "is not allowed without API tokens" in rebinding.json()["error"]
    # Nothing changed.
    stats = (await http.get(f"{url}/queue/stats")).json()
    assert stats["isPaused"] is False
    assert (await http.get(f"{url}/executions")).json()["count"] == 0
    # The allowed origin may, with JSON, and gets its CORS headers; a preflight is answered.
    eid = await submit(http, url, [job("a")])
    assert eid
    ok = await http.post(f"{url}/queue/pause", headers={"Origin": "https://dash.example"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://dash.example"
    preflight = await http.options(
        f"{url}/execute",
        headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code in (200, 204) and "POST" in preflight.headers["access-control-allow-methods"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    return {**env, "NATS_URL": "nats://127.0.0.1:1", **extra}


@pytest.mark.parametrize("argv", [["-m", "services.gateway"], ["-m", "jetdag", "up"]], ids=["gateway", "up"])
def test_a_non_loopback_bind_without_tokens_refuses_to_start(argv: list[str], tmp_path: Path) -> None:
    env = clean_env(JETDAG_HOST="0.0.0.0", JETDAG_DATA_DIR=str(tmp_path))
    if argv[-1] == "up":
        del env["NATS_URL"]
    result = subprocess.run(
        [sys.executable, *argv], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    prefix = "gateway" if argv[-1] == "services.gateway" else "jetdag"
    assert result.returncode in (1, 2), result
    assert result.stderr.strip().splitlines() == [
        f"{prefix}: JETDAG_HOST=0.0.0.0 is not a loopback address and no API tokens are configured: set "
        "JETDAG_API_TOKENS or JETDAG_API_TOKENS_FILE (jetdag api-token makes one; docs/security.md)"
    ]
    assert not (tmp_path / "nats").exists()  # nothing was started


@pytest.fixture
def made_token() -> tuple[str, str]:
    """`jetdag api-token runner --scope admin`: the token and its entry."""
    made = subprocess.run(
        [sys.executable, "-m", "jetdag", "api-token", "runner", "--scope", "admin"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.splitlines()
    return made[0].removeprefix("token: "), made[1].removeprefix("entry: ")


async def test_api_token_command_and_the_client_with_its_token(stack: Stack, made_token: tuple[str, str]) -> None:
    token, entry = made_token
    assert token.startswith("jdt_") and entry.startswith("runner:admin:sha256:") and token not in entry
    await stack.up(JETDAG_API_TOKENS=entry)
    async with AsyncClient(stack.url.removesuffix("/api/distributed"), token=token) as jd:
        assert (await jd.pause()).is_paused is True
        assert (await jd.queue_stats()).is_paused is True
    async with AsyncClient(stack.url.removesuffix("/api/distributed")) as anonymous:
        with pytest.raises(Unauthorized, match="this request needs an API token"):
            await anonymous.workers()


async def test_a_token_may_hold_only_so_many_open_executions(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(JETDAG_API_TOKENS=TOKENS, JETDAG_MAX_OPEN_EXECUTIONS_PER_TOKEN="2")
    body = {"workflowId": "limit", "jobs": [{"id": "a", "name": "a", "type": "noop", "dependsOn": [], "config": {}}]}
    # No worker: they stay open.
    for _ in range(2):
        assert (await http.post(f"{stack.url}/execute", json=body, headers=bearer(WRITER))).status_code == 201
    r = await http.post(f"{stack.url}/execute", json=body, headers=bearer(WRITER))
    assert r.status_code == 429, r.text
    assert r.json()["error"] == (
        "token ci has 2 open executions (the limit is 2, JETDAG_MAX_OPEN_EXECUTIONS_PER_TOKEN); wait for some to end"
    )
    # Another token has its own count.
    assert (await http.post(f"{stack.url}/execute", json=body, headers=bearer(ADMIN))).status_code == 201

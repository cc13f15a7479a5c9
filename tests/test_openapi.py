"""The OpenAPI document tells the truth (issue 10 item 15): schemathesis generates requests from it against a
real stack and checks every answer against it; the explorer pages work offline."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from services.gateway.auth import new_token
from tests.conftest import Stack
from tests.helpers import ROOT

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


async def test_schemathesis_finds_no_server_error_and_no_spec_violation(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # The stack's namespace is this test's own: whatever the state-changing operations create is thrown away
    # with it. One worker, so executions run and cancel/retry see every state. With API tokens on, as the
    # document declares them: schemathesis also checks that requests without a valid token get 401.
    token = new_token()
    await stack.up(workers=1, JETDAG_API_TOKENS=f"schemathesis:admin:{token}")
    origin = stack.url.removesuffix("/api/distributed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            SCHEMATHESIS,
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{origin}/schema/openapi.json",
            "--url",
            origin,
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--max-time",
            "60",
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout[-20000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]


async def test_explorer_pages_load_everything_from_the_gateway(stack: Stack, http: httpx.AsyncClient) -> None:
    """`/schema` and `/schema/swagger` were blank offline: their scripts came from a CDN."""
    await stack.gateway()
    origin = stack.url.removesuffix("/api/distributed")
    for page in ("/schema", "/schema/swagger"):
        r = await http.get(f"{origin}{page}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", r.text)
        assert len(urls) == 4, urls  # favicon, stylesheet, bundle, preset
        for url in urls:
            assert url.startswith("/schema/assets/"), url  # nothing from another host
            asset = await http.get(f"{origin}{url}")
            assert asset.status_code == 200 and len(asset.content) > 500, url
    bundle = await http.get(f"{origin}/schema/assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in bundle.text


async def test_options_and_405_name_the_allowed_methods(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.gateway()
    for path, allowed in [
        ("/workers/w-1", "DELETE, GET, OPTIONS"),  # GET was missing: Litestar listed one handler's methods
        ("/workers", "GET, OPTIONS"),
        ("/execute", "OPTIONS, POST"),
        ("/execute/e-1/cancel", "OPTIONS, POST"),
    ]:
        r = await http.options(f"{stack.url}{path}")
        assert r.status_code == 204 and r.headers["allow"] == allowed, (path, r.headers)
        r = await http.put(f"{stack.url}{path}", json={})
        assert r.status_code == 405 and r.headers["allow"] == allowed, (path, r.headers)
        assert r.json() == {"success": False, "error": f"method PUT is not allowed on /api/distributed{path}"}


async def test_the_document_describes_every_operation(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.gateway()
    spec = (await http.get(f"{stack.url.removesuffix('/api/distributed')}/schema/openapi.json")).json()
    for path, operations in spec["paths"].items():
        assert "_" not in "".join(re.findall(r"\{(\w+)\}", path)), path  # {workerId}, not {worker_id}
        for method, operation in operations.items():
            assert operation.get("description"), f"{method.upper()} {path} has no description"
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"]["pattern"], (path, parameter)
    schemas = spec["components"]["schemas"]
    for body in ("RegisterWorker", "HeartbeatRequest", "ExecuteRequest", "JobConfig"):
        assert schemas[body]["additionalProperties"] is False, body
    assert schemas["ExecuteRequest"]["properties"]["jobs"]["minItems"] == 1
    assert schemas["ExecuteResponse"]["properties"]["startedAt"]["format"] == "date-time"
    assert schemas["ExecuteResponse"]["properties"]["status"]["enum"] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    register = spec["paths"]["/api/distributed/workers/register"]["post"]["responses"]
    assert {"200", "201"} <= set(register)

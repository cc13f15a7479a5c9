"""The dashboard as files and HTTP: the vendored libraries are exactly the pinned npm packages' files, the wheel
carries the page, the gateway serves it with no build step, and the overview streams live."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import Stack
from tests.helpers import ROOT

UI = ROOT / "services" / "gateway" / "ui"
PACKAGE = json.loads((ROOT / "package.json").read_text())


def test_vendored_files_are_the_pinned_packages_own() -> None:
    modules = ROOT / "node_modules"
    if not modules.is_dir():
        message = "node_modules is missing: run `npm ci`"
        if os.environ.get("JETDAG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    listed = set()
    for pkg, files in PACKAGE["jetdagVendor"].items():
        locked = lock[f"node_modules/{pkg}"]["version"]
        installed = json.loads((modules / pkg / "package.json").read_text())["version"]
        assert installed == locked, f"{pkg}: node_modules has {installed}, the lock pins {locked}: run `npm ci`"
        pinned = PACKAGE["dependencies"].get(pkg)
        assert pinned in (None, locked), f"{pkg}: package.json pins {pinned}, the lock {locked}"
        for file in files:
            vendored = UI / "vendor" / pkg / file
            listed.add(vendored)
            assert vendored.read_bytes() == (modules / pkg / file).read_bytes(), (
                f"{vendored.relative_to(ROOT)} differs from {pkg}@{locked}: run `just vendor`"
            )
    present = {p for p in (UI / "vendor").rglob("*") if p.is_file()}
    assert present == listed, f"vendor/ holds files package.json does not list: {sorted(present - listed)}"


def test_every_import_of_the_page_resolves_to_a_file() -> None:
    index = (UI / "index.html").read_text()
    import_map = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.S).group(1))  # type: ignore[union-attr]
    for url in import_map["imports"].values():
        assert (UI / url.removeprefix("/ui/assets/")).is_file(), url
    for module in UI.glob("*.js"):
        for name in re.findall(r'^import .*? from "([^"]+)";$', module.read_text(), re.M):
            if name.startswith("./"):
                assert (UI / name[2:]).is_file(), f"{module.name} imports {name}"
            else:
                assert name in import_map["imports"], f"{module.name} imports {name}, which the import map lacks"


def test_the_wheel_carries_the_dashboard(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("jetdag-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [p for p in UI.rglob("*") if p.is_file()]:
        assert str(path.relative_to(ROOT)) in names, f"the wheel lacks {path.relative_to(ROOT)}"


async def test_the_gateway_serves_the_page_and_a_live_overview(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up()
    origin = stack.url.removesuffix("/api/distributed")
    for path in ("/", "/ui/", "/ui/executions", "/ui/executions/exec-123"):
        r = await http.get(origin + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "script-src 'self' 'sha256-" in r.headers["content-security-policy"]
        assert '<script type="module" src="/ui/assets/app.js">' in r.text
    assert (await http.get(f"{origin}/ui/assets/app.js")).headers["content-type"].startswith("text/javascript")
    assert (await http.get(f"{origin}/ui/assets/missing.js")).status_code == 404

    body = (await http.get(f"{stack.url}/overview")).json()
    assert body["workers"] == [] and body["queue"]["isPaused"] is False and body["health"]["healthy"] is True
    async with aconnect_sse(http, "GET", f"{stack.url}/overview/events") as source:
        events = source.aiter_sse()

        async def next_overview() -> dict[str, Any]:
            async for event in events:  # skips the `retry:` line
                if event.event == "overview":
                    data: dict[str, Any] = json.loads(event.data)
                    return data
            raise AssertionError("the stream ended")

        first = await next_overview()
        assert first["workers"] == []
        r = await http.post(
            f"{stack.url}/workers/register",
            json={"workerId": "rest-1", "hostname": "h", "capabilities": ["cpu"], "maxConcurrency": 2},
        )
        assert r.status_code == 201
        # The next snapshot is sent because something changed, without the client asking.
        second = await next_overview()
        assert [w["workerId"] for w in second["workers"]] == ["rest-1"]


def test_the_pages_job_logic() -> None:
    """services/gateway/ui/jobs.js (event order, attempts, progress, layers, condensing) under node's test runner."""
    if shutil.which("node") is None:
        message = "node is not installed"
        if os.environ.get("JETDAG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    argv = ["node", "--test", "tests/browser/jobs.test.mjs"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout

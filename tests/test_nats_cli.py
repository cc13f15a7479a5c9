"""The real `nats` CLI against a running stack prints what docs/debugging.md shows.

The test runs its own nats-server and a stack in the default namespace `jetdag`, so every name the CLI prints is
the one the document uses. Without the CLI the test is skipped, unless JETDAG_REQUIRE_NATS_CLI=1 (CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.permissions import Role
from shared.subjects import Names
from tests.api import job, wait_final
from tests.conftest import Stack, start_secure_nats
from tests.helpers import ROOT

pytestmark = pytest.mark.cli

DOC = ROOT / "docs" / "debugging.md"

WORKER = {
    "workerId": "worker-1",
    "hostname": "worker-node-1",
    "capabilities": ["cpu", "high-memory"],
    "maxConcurrency": 4,
    "metadata": {"cpuCores": 8, "memoryGB": 32},
}

# Every command docs/debugging.md shows, exactly as it spells it. The first saves the operator's context: the
# test swaps in its own server and seed for the two values the document writes for `jetdag up`.
DOC_SERVER = "nats://127.0.0.1:4222"
DOC_SEED = ".jetdag/credentials/operator.nk"
CONTEXT_SAVE = ["context", "save", "jetdag", "--server", DOC_SERVER, "--nkey", DOC_SEED, "--select"]
MICRO_LS = ["micro", "ls"]
MICRO_INFO = ["micro", "info", "jetdag-registry"]
KV_LS = ["kv", "ls"]
KV_GET = ["kv", "get", "jetdag_workers", "worker-1", "--raw"]
STREAM_INFO = ["stream", "info", "JETDAG_JOBS"]
REQ_LIST = ["req", "jetdag.registry.list", "{}"]
# An execution's commands name it; the document writes `<exec>` where the test puts the real id.
EXEC = "<exec>"
KV_GET_EXECUTION = ["kv", "get", "jetdag_executions", EXEC, "--raw"]
SUB_EVENTS = [
    "sub",
    "--stream",
    "JETDAG_EVENTS",
    "--all",
    "--terminate-at-end",
    "--subjects-only",
    f"jetdag.events.*.{EXEC}.>",
]
COMMANDS = [CONTEXT_SAVE, MICRO_LS, MICRO_INFO, KV_LS, KV_GET, STREAM_INFO, REQ_LIST, KV_GET_EXECUTION, SUB_EVENTS]


def find_nats_cli() -> str | None:
    """The `nats` CLI on PATH, else where `go install` puts it ($GOBIN, else $(go env GOPATH)/bin)."""
    found = shutil.which("nats")
    if found:
        return found
    candidates: list[Path] = []
    go = shutil.which("go")
    if go:
        try:
            out = subprocess.run(
                [go, "env", "GOBIN", "GOPATH"], check=True, capture_output=True, text=True, timeout=30
            ).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        if out and out[0].strip():
            candidates.append(Path(out[0].strip()) / "nats")
        if len(out) > 1 and out[1].strip():
            candidates += [Path(p) / "bin" / "nats" for p in out[1].strip().split(os.pathsep) if p]
    candidates.append(Path.home() / "go" / "bin" / "nats")  # go's default GOPATH
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


class Cli:
    """Runs `nats ...` with an empty HOME and no NATS_* or XDG_* variables, so only the context the test saves
    (as the document says) can point it at a server: neither the caller's contexts nor its environment."""

    def __init__(self, binary: str, server_url: str, seed: str, home: Path) -> None:
        self.binary = binary
        self.swap = {DOC_SERVER: server_url, DOC_SEED: seed}
        home.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "XDG_"))}
        # The CLI finds its contexts through XDG_CONFIG_HOME, else the passwd entry's home: $HOME alone would let
        # the saved context land in (and select it for) the real user's ~/.config/nats.
        self.env["HOME"], self.env["XDG_CONFIG_HOME"] = str(home), str(home / ".config")

    async def __call__(self, args: list[str], execution_id: str = "") -> str:
        args = [self.swap.get(a, a).replace(EXEC, execution_id) for a in args]
        argv = [self.binary, *args]
        result: subprocess.CompletedProcess[str] = await asyncio.to_thread(
            subprocess.run,
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        shown = shlex.join(["nats", *args])
        assert result.returncode == 0, f"`{shown}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result.stdout


def table(output: str) -> list[dict[str, str]]:
    """The data rows of the first table (`│ a │ b │`) in the CLI's output, keyed by its column headers.

    A title row (one cell spanning the table) is skipped; a table merges equal cells of a column, so a blank
    cell may mean "same as above"."""
    lines = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in output.splitlines()]
    cells = [line for line in lines if len(line) > 1]
    assert cells, f"no table in:\n{output}"
    header, *data = cells
    return [dict(zip(header, row, strict=True)) for row in data if len(row) == len(header)]


def field(output: str, name: str) -> str:
    """The value of a `Name: value` line of `nats stream info` / `nats micro info`."""
    match = re.search(rf"^\s*{re.escape(name)}: (.*)$", output, re.MULTILINE)
    assert match, f"no {name!r} line in:\n{output}"
    return match.group(1).strip()


def doc_commands() -> list[str]:
    """The `$ nats ...` lines of docs/debugging.md, without the `$ `."""
    return [line[2:].strip() for line in DOC.read_text().splitlines() if line.startswith("$ nats ")]


def test_doc_shows_exactly_the_commands_tested() -> None:
    assert doc_commands() == [shlex.join(["nats", *command]) for command in COMMANDS]


async def test_nats_cli_output_matches_debugging_doc(nats_cli: str, tmp_path: Path) -> None:
    """On an authorized server like the one of `jetdag up`, with every service on its role's credential."""
    secure = start_secure_nats(tmp_path, Names("jetdag"))
    server = secure.server
    stack = Stack(server.url, "jetdag", tmp_path / "logs", credentials=secure.keys)
    try:
        await stack.up()
        async with httpx.AsyncClient(timeout=15.0) as http:
            r = await http.post(f"{stack.url}/workers/register", json=WORKER)
            assert r.status_code == 201, r.text
        nats = Cli(nats_cli, server.url, secure.seed(Role.OPERATOR), tmp_path / "home")
        await nats(CONTEXT_SAVE)
        await check_micro(nats)
        await check_kv(nats)
        await check_stream(nats)
        await check_request(nats)
        await stack.worker("worker-a")
        async with httpx.AsyncClient(timeout=15.0) as http:
            dag = {"workflowId": "cli-demo", "jobs": [job("extract"), job("load", "noop", ["extract"])]}
            r = await http.post(f"{stack.url}/execute", json=dag)
            assert r.status_code == 201, r.text
            eid = r.json()["executionId"]
            assert (await wait_final(http, stack.url, eid))["status"] == "completed"
        await check_execution(nats, eid)
        assert secure.violations() == []
    finally:
        try:
            stack.stop_all()
        finally:
            server.stop()


async def check_micro(nats: Cli) -> None:
    out = await nats(MICRO_LS)
    services = table(out)
    assert sorted(s["Name"] for s in services) == ["jetdag-registry", "jetdag-scheduler"], out
    assert {s["Version"] for s in services} - {""} == {"0.1.0"}, out

    out = await nats(MICRO_INFO)
    assert re.fullmatch(r"jetdag-registry \(\w+\)", field(out, "Service")), out
    assert field(out, "Description") == "jetdag worker registry: register, heartbeat, deregister, list", out
    assert field(out, "Version") == "0.1.0", out
    endpoints = re.findall(r"^\s*Name: (\S+)\n\s*Subject: (\S+)\n\s*Queue Group: q$", out, re.MULTILINE)
    assert endpoints == [
        (command, f"jetdag.registry.{command}")
        for command in ("register", "heartbeat", "deregister", "get", "list", "summary", "takeover")
    ], out
    # The REST registration above reached the registry over NATS: one request on `register`.
    stats = re.search(r"register Endpoint Statistics:\n\n\s*Requests: (\d+) in group \"q\"", out)
    assert stats and stats.group(1) == "1", out


async def check_kv(nats: Cli) -> None:
    out = await nats(KV_LS)
    buckets = sorted(row["Bucket"] for row in table(out))  # the test's own server: only jetdag's buckets
    assert buckets == [
        "jetdag_checkpoints",
        "jetdag_executions",
        "jetdag_schedulers",
        "jetdag_schedules",
        "jetdag_workers",
    ], out

    out = await nats(KV_GET)
    record: dict[str, Any] = json.loads(out)
    assert record["workerId"] == "worker-1"
    assert record["hostname"] == "worker-node-1"
    assert record["capabilities"] == ["cpu", "high-memory"]
    assert record["maxConcurrency"] == 4
    assert record["metadata"] == {"cpuCores": 8, "memoryGB": 32}


async def check_stream(nats: Cli) -> None:
    out = await nats(STREAM_INFO)
    assert field(out, "Description") == (
        "jetdag job messages (bundles of job attempts of one execution); consumed by workers"
    ), out
    assert field(out, "Subjects") == "jetdag.jobs.>", out
    assert field(out, "Storage") == "File", out
    assert field(out, "Retention") == "WorkQueue", out
    assert field(out, "Discard Policy") == "New", out
    assert field(out, "Maximum Message Size") == "1.0 MiB", out
    assert field(out, "Messages") == "0", out  # nothing submitted: the work queue is empty


async def check_request(nats: Cli) -> None:
    out = await nats(REQ_LIST)
    reply: dict[str, Any] = json.loads(out)  # "Sending request…" and "Received with rtt…" go to stderr
    assert [w["workerId"] for w in reply["workers"]] == ["worker-1"], out
    assert reply["workers"][0]["status"] == "idle", out


async def check_execution(nats: Cli, eid: str) -> None:
    out = await nats(KV_GET_EXECUTION, eid)
    record: dict[str, Any] = json.loads(out)
    assert record["executionId"] == eid and record["workflowId"] == "cli-demo" and record["status"] == "completed"
    assert record["counts"]["completed"] == 2 and record["jobCount"] == 2

    out = await nats(SUB_EVENTS, eid)
    subjects = re.findall(r"subject: (jetdag\.events\.\S+)", out)
    what = [s.removeprefix("jetdag.events.").replace(eid, "<exec>") for s in subjects]
    # The execution's events in the order they happened: created, then a `jobs` event per scheduler step
    # (extract queued; extract completed and load queued; load completed), running once the first job ran,
    # a checkpoint, and the end.
    assert what[0] == "execution.<exec>.created", what
    assert what[-1] == "execution.<exec>.completed", what
    assert what.count("execution.<exec>.jobs") == 3, what
    assert {"execution.<exec>.running", "execution.<exec>.checkpoint"} <= set(what), what

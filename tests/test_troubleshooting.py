"""docs/troubleshooting.md: every command it shows is run against a stack put into the state its entry describes,
and the output lines it shows are checked against what the command prints (tests/docs.py: digits and blank runs
may differ, the rest may not). The "node lost" entry runs in tests/test_production.py, on the 3-node cluster.

The stacks run in the default namespace `jetdag` on a nats-server of their own, so every name the commands
print is the one the document uses."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetdag.natsserver import NatsServer, NatsServerConfig, free_port
from shared.permissions import Role
from shared.subjects import Names
from tests.api import job, submit
from tests.conftest import Stack, start_secure_nats
from tests.docs import Block, Shell, assert_shows, blocks, console_commands
from tests.helpers import ROOT, wait_for

pytestmark = pytest.mark.cli

DOC = ROOT / "docs" / "troubleshooting.md"
BLOCKS = blocks(DOC)
TESTED_ELSEWHERE = {"node-lost"}  # tests/test_production.py
DOC_GATEWAY = "http://127.0.0.1:8000"
DOC_MONITOR = "127.0.0.1:8222"


def shell_env(home: Path, nats_cli: str, **extra: str) -> dict[str, str]:
    """A reader's shell: the venv's `jetdag` and the `nats` CLI on PATH, no jetdag or NATS settings but the
    given ones, and an empty HOME (no saved nats contexts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_", "XDG_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(Path(nats_cli).parent), env["PATH"]])
    # The nats CLI finds its contexts through XDG_CONFIG_HOME, else the passwd entry's home (not $HOME).
    env["HOME"], env["XDG_CONFIG_HOME"] = str(home), str(home / ".config")
    home.mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def own_nats(tmp: Path, name: str = "ts", **config: Any) -> NatsServer:
    server = NatsServer(
        NatsServerConfig(
            store_dir=tmp / name / "store", port=free_port(), monitor_port=free_port(), server_name=name, **config
        ),
        config_path=tmp / name / "nats.conf",
    )
    server.config_path.parent.mkdir(parents=True, exist_ok=True)
    with open(server.config_path.with_suffix(".log"), "wb") as log:
        server.start(stdout=log)
    server.wait_ready()
    return server


async def run_block(
    shell: Shell, name: str, *, expect_rc: dict[str, int] | None = None, **placeholders: str
) -> dict[str, str]:
    """Every command of the document's block `name`, each checked for the lines the document shows after it.
    Returns each command's output."""
    block: Block = BLOCKS[name]
    outputs: dict[str, str] = {}
    assert block.commands, f"block {name} shows no command"
    for command in block.commands:
        rc, out = await asyncio.to_thread(functools.partial(shell.run, command, **placeholders))
        wanted = next((code for prefix, code in (expect_rc or {}).items() if command.startswith(prefix)), 0)
        assert rc == wanted, f"{name}: `{command}` exited {rc}, not {wanted}:\n{out}"
        assert_shows(block, command, out)
        outputs[command] = out
    return outputs


def test_every_command_is_in_a_block_a_test_runs() -> None:
    marked = {c for b in BLOCKS.values() for c in b.commands}
    unmarked = [c for c in console_commands(DOC) if not any(m.startswith(c.rstrip("\\").strip()) for m in marked)]
    assert not unmarked, f"commands of {DOC.name} no test runs (mark their block `<!-- test: name -->`): {unmarked}"
    assert set(BLOCKS) == TESTED_HERE | TESTED_ELSEWHERE


TESTED_HERE = {
    "waiting-reason",
    "gated",
    "start-worker",
    "paused",
    "stuck",
    "cancel",
    "backlog",
    "unhealthy",
    "clock",
    "slow-consumers",
    "health",
    "backpressure",
    "consumers",
    "storage",
    "rest-auth",
    "nats-auth",
}


@pytest.fixture
async def plain(tmp_path: Path, nats_cli: str) -> AsyncIterator[tuple[Stack, Shell, NatsServer]]:
    """A stack in the default namespace on its own nats-server (no authorization), quick to notice trouble:
    jobs audited after 1 s, heartbeats every second."""
    server = own_nats(tmp_path)
    stack = Stack(server.url, "jetdag", tmp_path / "logs")
    try:
        await stack.up(
            JETDAG_STALL_AFTER_S="1",
            JETDAG_SWEEP_INTERVAL_S="0.2",
            JETDAG_HEARTBEAT_INTERVAL_S="1",
            JETDAG_WORKER_REAP_CHECK_S="0.5",
            JETDAG_WORKER_GRACE_S="1",
        )
        env = shell_env(
            tmp_path / "home", nats_cli, NATS_URL=server.url, JETDAG_URL=stack.url.removesuffix("/api/distributed")
        )
        shell = Shell(
            env, tmp_path, {DOC_GATEWAY: env["JETDAG_URL"], DOC_MONITOR: f"127.0.0.1:{server.config.monitor_port}"}
        )
        yield stack, shell, server
    finally:
        stack.stop_all()
        server.stop()


async def job_of(http: httpx.AsyncClient, stack: Stack, execution_id: str, job_id: str) -> dict[str, Any]:
    r = await http.get(f"{stack.url}/execute/{execution_id}/jobs")
    assert r.status_code == 200, r.text
    return next(j for j in r.json()["jobs"] if j["id"] == job_id)


async def worker_status(http: httpx.AsyncClient, stack: Stack, worker_id: str) -> str | None:
    r = await http.get(f"{stack.url}/workers")
    return next((w["status"] for w in r.json()["workers"] if w["workerId"] == worker_id), None)


RENDER_JOBS = """
from jetdag.worker import JobContext, handler


@handler("render")
async def render(ctx: JobContext) -> dict:
    return {"frames": 24}
"""


@pytest.mark.timeout(240)
async def test_waiting_jobs_stuck_executions_backlogs_unhealthy_workers_and_clocks(
    plain: tuple[Stack, Shell, NatsServer], http: httpx.AsyncClient, tmp_path: Path
) -> None:
    stack, shell, _ = plain
    await stack.worker("w1", "--concurrency", "1")

    # A job for a capability and type no worker has: its reason, then a worker that has both runs it.
    render = await submit(http, stack.url, [job("frames", "render", capability="gpu")], workflowId="render")
    await wait_for(lambda: job_of(http, stack, render, "frames"), message="the job listed")
    await wait_for(lambda: _reason(http, stack, render, "frames"), timeout=20, message="the audit's waitingReason")
    await run_block(shell, "waiting-reason", exec=render)
    (tmp_path / "render_jobs.py").write_text(RENDER_JOBS)
    [start] = BLOCKS["start-worker"].commands
    worker = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        shell.expand(start),
        cwd=tmp_path,
        env={**shell.env, "NATS_URL": stack.nats_url},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await wait_for(
            lambda: _status_is(http, stack, render, "frames", "completed"), timeout=30, message="render completed"
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)

    # The paused queue: stats say so; resume and the job runs.
    assert (await http.post(f"{stack.url}/queue/pause")).status_code == 200
    paused = await submit(http, stack.url, [job("a")], workflowId="hello")
    await wait_for(lambda: _reason(http, stack, paused, "a", "the queue is paused"), message="paused reason")
    await run_block(shell, "paused")
    await wait_for(lambda: _status_is(http, stack, paused, "a", "completed"), message="the job ran after resume")

    # Two jobs of one concurrency key with one slot: the second waits for the first, and says so.
    keyed: dict[str, Any] = {"concurrencyKey": "customer-{config.customerId}", "maxConcurrent": 1}
    gated = await submit(
        http,
        stack.url,
        [job(f"k{i}", "sleep", config={"seconds": 1.5, "customerId": 7}, **keyed) for i in range(2)],
        workflowId="gated",
    )
    await wait_for(lambda: _status_is(http, stack, gated, "k0", "running"), message="k0 running")
    await wait_for(lambda: _reason(http, stack, gated, "k1"), message="k1's waitingReason")
    await run_block(shell, "gated", exec=gated)
    await wait_for(lambda: _status_is(http, stack, gated, "k1", "completed"), timeout=30, message="k1 ran after k0")

    # A job that holds its execution up; a backlog behind it on the one slot.
    stuck = await submit(http, stack.url, [job("long", "sleep", config={"seconds": 600})], workflowId="stuck")
    await wait_for(lambda: _status_is(http, stack, stuck, "long", "running"), message="long running")
    await run_block(shell, "stuck", exec=stuck)
    behind = await submit(http, stack.url, [job(f"s{i}", "sleep", config={"seconds": 600}) for i in range(4)])
    await wait_for(lambda: _status_is(http, stack, behind, "s0", "queued"), message="the backlog queued")
    await run_block(shell, "backlog")

    # A frozen worker is shown unhealthy (3 missed beats of 1 s), and idle again once it runs.
    w1 = next(p for p in stack.procs if p.name == "w1")
    w1.signal(signal.SIGSTOP)
    try:
        await wait_for(lambda: _worker_is(http, stack, "w1", "unhealthy"), timeout=20, message="w1 unhealthy")
        await run_block(shell, "unhealthy")
    finally:
        w1.signal(signal.SIGCONT)
    await wait_for(lambda: _worker_is(http, stack, "w1", "busy"), timeout=20, message="w1 back")

    for execution_id in (stuck, behind):
        out = await run_block(shell, "cancel", exec=execution_id)
        assert execution_id in next(iter(out.values()))
    await wait_for(lambda: _status_is(http, stack, stuck, "long", "cancelled"), message="long cancelled")

    out = await run_block(shell, "clock")
    local, server = (v.strip().splitlines()[-1] for v in out.values())
    server_now = datetime.fromisoformat(server.split('"now": "')[1].split(".")[0] + "+00:00")
    assert abs((datetime.fromisoformat(local.replace("Z", "+00:00")) - server_now).total_seconds()) < 5
    await run_block(shell, "slow-consumers")


async def _reason(http: httpx.AsyncClient, stack: Stack, eid: str, jid: str, want: str | None = None) -> bool:
    reason = (await job_of(http, stack, eid, jid)).get("waitingReason")
    return bool(reason) and (want is None or reason == want)


async def _status_is(http: httpx.AsyncClient, stack: Stack, eid: str, jid: str, want: str) -> bool:
    return bool((await job_of(http, stack, eid, jid))["status"] == want)


async def _worker_is(http: httpx.AsyncClient, stack: Stack, wid: str, want: str) -> bool:
    return await worker_status(http, stack, wid) == want


@pytest.mark.timeout(180)
async def test_503s_a_frozen_scheduler_and_backpressure(tmp_path: Path, nats_cli: str, http: httpx.AsyncClient) -> None:
    server = own_nats(tmp_path)
    stack = Stack(server.url, "jetdag", tmp_path / "logs")
    try:
        await stack.up(workers=1, JETDAG_MAX_OPEN_JOBS="2", JETDAG_WORKER_GRACE_S="1")
        base = stack.url.removesuffix("/api/distributed")
        shell = Shell(shell_env(tmp_path / "home", nats_cli, JETDAG_URL=base), tmp_path, {DOC_GATEWAY: base})
        open_one = await submit(http, stack.url, [job("long", "sleep", config={"seconds": 600})])
        await run_block(shell, "backpressure")
        scheduler = next(p for p in stack.procs if p.name == "scheduler")
        scheduler.signal(signal.SIGSTOP)
        try:
            await run_block(shell, "health", expect_rc={"jetdag health": 1})
        finally:
            scheduler.signal(signal.SIGCONT)
        assert (await http.post(f"{stack.url}/execute/{open_one}/cancel")).status_code in (200, 202)
    finally:
        stack.stop_all()
        server.stop()


LIMITED_ACCOUNT = """
accounts {
  JETDAG: {
    jetstream: { max_file: 2MB, max_consumers: 40 }
    users: [ { user: jetdag, password: secret } ]
  }
}
"""


@pytest.mark.timeout(180)
async def test_the_consumer_limit_and_a_full_store(tmp_path: Path, nats_cli: str, http: httpx.AsyncClient) -> None:
    """An account allowed 40 consumers per stream and 2 MB of file store: a worker needing more consumers never
    consumes, and submissions fail once the store is full."""
    server = own_nats(tmp_path, authorization=LIMITED_ACCOUNT)
    stack = Stack(server.url, "jetdag", tmp_path / "logs")
    stack.env_overrides.update(NATS_USER="jetdag", NATS_PASSWORD="secret")
    try:
        await stack.up(workers=1, JETDAG_WORKER_GRACE_S="1")
        base = stack.url.removesuffix("/api/distributed")
        env = shell_env(tmp_path / "home", nats_cli, NATS_URL=server.url, NATS_USER="jetdag", NATS_PASSWORD="secret")
        shell = Shell(env, tmp_path, {DOC_GATEWAY: base, DOC_MONITOR: f"127.0.0.1:{server.config.monitor_port}"})
        scheduler = next(p for p in stack.procs if p.name == "scheduler")

        # w1 took 30 consumers (3 handlers x cpu, any x 5 bands); w2's gpu needs 15 more.
        w2 = stack.process("w2", "services.worker", "--id", "w2", "--capabilities", "cpu,gpu").start()
        await wait_for(lambda: "consumer refused" in scheduler.log_path.read_text(), message="limit")

        def w2_says_why() -> bool:
            # The worker's own log names the cause and the fix, not an internal error.
            text = w2.log_path.read_text()
            return "waiting for the scheduler" in text and "maximum consumers limit reached" in text

        await wait_for(w2_says_why, message="w2 waits, saying why")
        assert "internal error" not in w2.log_path.read_text()
        assert "raise the account's max_consumers" in w2.log_path.read_text()

        async def w2_listed_with_its_problem() -> bool:
            # Alive (it heartbeats while it waits), and the registry shows why it takes no jobs; w1 has none.
            r = await http.get(f"{stack.url}/workers")
            assert r.status_code == 200, r.text
            listed = {w["workerId"]: w for w in r.json()["workers"]}
            w2_view = listed.get("w2") or {}
            assert listed["w1"]["problem"] is None, listed["w1"]
            return w2_view.get("status") == "idle" and "maximum consumers limit reached" in (w2_view["problem"] or "")

        await wait_for(w2_listed_with_its_problem, timeout=20, message="w2 listed with its problem")
        await run_block(shell, "consumers")

        # Fill the 2 MB: big submissions until one fails.
        pad = "x" * 1000
        jobs = [job(f"j{i}", "sleep", config={"seconds": 600, "pad": pad}) for i in range(400)]
        refused = None
        created: list[str] = []
        for _ in range(20):
            r = await http.post(f"{stack.url}/execute", json={"workflowId": "big", "jobs": jobs}, timeout=90)
            if r.status_code != 201:
                refused = r
                break
            created.append(r.json()["executionId"])
        assert refused is not None, "the store never filled"
        # A 503 that means "not done": the answer says why, and the refused execution left nothing behind.
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error.startswith("JetStream has no room to store the execution (resource limits exceeded for account")
        assert "nothing was submitted" in error
        assert "execution refused: the store is full" in scheduler.log_path.read_text()
        listed = (await http.get(f"{stack.url}/executions", params={"workflowId": "big", "limit": 50})).json()
        assert sorted(e["executionId"] for e in listed["executions"]) == sorted(created), listed
        await run_block(shell, "storage")
    finally:
        stack.stop_all()
        server.stop()


@pytest.mark.timeout(180)
async def test_rest_and_nats_auth_errors(tmp_path: Path, nats_cli: str) -> None:
    secure = start_secure_nats(tmp_path, Names("jetdag"))
    stack = Stack(secure.url, "jetdag", tmp_path / "logs", credentials=secure.keys)
    try:
        await stack.up(JETDAG_API_TOKENS="reader:read:reader-secret-0123456789")
        base = stack.url.removesuffix("/api/distributed")
        # The document's paths are `jetdag up`'s: the credentials and the server's log under ./.jetdag.
        (tmp_path / ".jetdag").mkdir()
        (tmp_path / ".jetdag" / "credentials").symlink_to(tmp_path / "credentials")
        (tmp_path / ".jetdag" / "nats-server.log").symlink_to(secure.log_path)
        env = shell_env(tmp_path / "home", nats_cli, NATS_URL=secure.url, NATS_NKEY=secure.seed(Role.OPERATOR))
        shell = Shell(env, tmp_path, {DOC_GATEWAY: base})
        await run_block(shell, "rest-auth", read_token="reader-secret-0123456789")
        await run_block(shell, "nats-auth", expect_rc={"nats --nkey=": 1, "nats --nkey": 1})
    finally:
        stack.stop_all()
        secure.server.stop()

"""The `jetdag` commands that drive a gateway (issue 9 part 3), run through the real console script against
real services: output, --json, exit codes (0 completed, 1 failed, 2 usage/validation, 3 cancelled, 4 request
failed, 130 Ctrl-C), and `submit --watch` in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pexpect

from jetdag.client import Client
from tests.conftest import Stack
from tests.helpers import ROOT, wait_for
from tests.test_cli_basics import JETDAG

ANSI = re.compile(r"\x1b\[")


async def jetdag(stack: Stack, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = stack.env(JETDAG_URL=stack.url)
    proc = await asyncio.create_subprocess_exec(
        JETDAG, *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


async def test_submit_watch_when_piped_prints_plain_progress(stack: Stack) -> None:
    await stack.up(workers=1)
    result = await jetdag(stack, "submit", "examples/hello.yaml", "--watch")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    execution_id = lines[0]
    assert execution_id.startswith("exec-")
    assert not ANSI.search(result.stdout), "colour or a bar on a pipe"
    progress = [line for line in lines[1:-1] if re.match(r"^\s*\d+\.\ds  ", line)]
    # One line per change: done counts never go back, and end with every job.
    done = [int(re.search(r" (\d)/5 done", line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert len(progress) >= 3 and done == sorted(done) and done[-1] == 5, progress
    assert "5/5 done: 5 completed" in progress[-1]
    assert re.match(rf"^execution {execution_id} completed after \d\d:\d\d: 5/5 done: 5 completed", lines[-1])


async def test_exit_codes_by_outcome(stack: Stack, tmp_path: Path) -> None:
    await stack.up(workers=1)
    failing = write(tmp_path, "fail.yaml", "workflowId: f\njobs:\n  - {id: a, type: fail, config: {message: boom}}\n")
    result = await jetdag(stack, "submit", str(failing), "--watch")
    assert result.returncode == 1, result.stderr
    assert "failed" in result.stdout.splitlines()[-2] and "boom" in result.stdout.splitlines()[-1]

    long = write(tmp_path, "long.yaml", "workflowId: l\njobs:\n  - {id: a, type: sleep, config: {seconds: 60}}\n")
    submitted = await jetdag(stack, "submit", str(long))
    assert submitted.returncode == 0
    execution_id = submitted.stdout.strip()
    assert (await jetdag(stack, "cancel", execution_id)).stdout.strip() == f"{execution_id} cancelled"
    watched = await jetdag(stack, "watch", execution_id)
    assert watched.returncode == 3 and f"execution {execution_id} cancelled" in watched.stdout
    again = await jetdag(stack, "cancel", execution_id)
    assert again.returncode == 4 and again.stderr.startswith("jetdag: ") and "already" in again.stderr

    bad = write(tmp_path, "bad.yaml", "workflowId: b\njobs:\n  - id: a\n    type: noop\n    dependsOn: [zz]\n")
    invalid = await jetdag(stack, "submit", str(bad))
    assert invalid.returncode == 2
    assert invalid.stderr.strip() == f'{bad}:5: job "a" depends on "zz", which is not defined'
    usage = await jetdag(stack, "ls", "--limit", "0")
    assert usage.returncode == 2 and "--limit" in usage.stderr
    missing = await jetdag(stack, "status", "exec-nope")
    assert missing.returncode == 4 and "exec-nope" in missing.stderr
    nowhere = await jetdag(stack, "workers", "--url", "http://127.0.0.1:9")
    assert nowhere.returncode == 4 and "cannot reach the gateway" in nowhere.stderr


async def test_inspection_commands_and_json(stack: Stack) -> None:
    await stack.up(workers=1)
    with Client(stack.url) as client:
        run = client.submit("examples/hello.yaml", workflow_id="inspect")
        client.wait(run.execution_id, timeout=60)
    eid = run.execution_id

    status = await jetdag(stack, "status", eid)
    assert status.returncode == 0
    assert re.search(r"^status\s+completed$", status.stdout, re.M)
    flaky = next(line for line in status.stdout.splitlines() if line.startswith("flaky"))
    assert re.match(r"^flaky\s+fail\s+completed\s+2\s+w1\s+\d+\.\ds", flaky), flaky

    jobs = json.loads((await jetdag(stack, "jobs", eid, "--json")).stdout)
    assert [j["id"] for j in jobs] == ["fetch", "clean-a", "clean-b", "flaky", "report"]
    assert jobs[3]["attempts"] == 2 and jobs[0]["workerId"] == "w1"

    listed = await jetdag(stack, "ls", "--workflow", "inspect")
    assert listed.stdout.splitlines()[0].split() == [
        "execution",
        "workflow",
        "status",
        "completed",
        "started",
        "duration",
    ]
    assert re.search(rf"^{eid}\s+inspect\s+completed\s+5/5", listed.stdout, re.M)
    assert [
        e["executionId"] for e in json.loads((await jetdag(stack, "ls", "--json", "--status", "completed")).stdout)
    ] == [eid]

    workers = await jetdag(stack, "workers")
    assert re.search(r"^w1\s+\S+\s+(idle|busy)\s+\d+/4\s+cpu", workers.stdout, re.M), workers.stdout
    paused = await jetdag(stack, "queue", "pause")
    assert paused.returncode == 0 and "paused" in paused.stdout
    stats = json.loads((await jetdag(stack, "queue", "stats", "--json")).stdout)
    assert stats["isPaused"] is True and stats["stats"]["completed"] >= 5
    assert "resumed" in (await jetdag(stack, "queue", "resume")).stdout
    scoped = await jetdag(stack, "queue", "pause", "--type", "train", "--duration", "600", "--reason", "deploy")
    assert scoped.returncode == 0 and scoped.stdout.startswith("queue paused: type 'train' until "), scoped
    table = (await jetdag(stack, "queue", "stats")).stdout
    assert re.search(r"^type 'train'\s+\d{4}-\d\d-\d\d \S+\s+deploy", table, re.M) and "delivering" in table, table
    late = await jetdag(stack, "queue", "pause", "--until", "2020-01-01T00:00:00Z")
    assert late.returncode != 0 and "until must be in the future" in late.stderr, late
    assert "resumed: type 'train'" in (await jetdag(stack, "queue", "resume", "--type", "train")).stdout
    health = await jetdag(stack, "health")
    assert health.returncode == 0 and re.search(r"^scheduler\s+ok", health.stdout, re.M)

    events = await jetdag(stack, "events", eid)
    assert events.returncode == 0
    lines = events.stdout.splitlines()
    assert re.match(r"^\[#\d+\] created\s+\{", lines[0]) and re.match(r"^\[#\d+\] completed\s+\{", lines[-1])
    as_json = [json.loads(line) for line in (await jetdag(stack, "events", eid, "--json")).stdout.splitlines()]
    assert as_json[0]["kind"] == "created" and as_json[-1]["data"]["status"] == "completed"
    assert [e["id"] for e in as_json] == sorted(e["id"] for e in as_json)
    tail = await jetdag(stack, "events", eid, "--json", "--since", str(as_json[-3]["id"]))
    assert [json.loads(line)["id"] for line in tail.stdout.splitlines()] == [e["id"] for e in as_json[-2:]]

    # --json with --watch: one JSON document, the execution as it ended (no id or progress lines before it).
    watched = await jetdag(stack, "submit", "examples/hello.yaml", "--watch", "--json")
    assert watched.returncode == 0, watched.stderr
    ended = json.loads(watched.stdout)
    assert ended["status"] == "completed" and ended["progress"]["completed"] == 5


async def test_ctrl_c_stops_watching_not_the_execution(stack: Stack, tmp_path: Path) -> None:
    await stack.up(workers=1)
    long = write(tmp_path, "long.yaml", "workflowId: l\njobs:\n  - {id: a, type: sleep, config: {seconds: 60}}\n")
    proc = await asyncio.create_subprocess_exec(
        JETDAG,
        "submit",
        str(long),
        "--watch",
        cwd=ROOT,
        env=stack.env(JETDAG_URL=stack.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    execution_id = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    with Client(stack.url) as client:
        await wait_for(lambda: client.get(execution_id).status == "running", timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, err
        assert f"stopped watching; {execution_id} goes on" in err.decode()
        assert client.get(execution_id).status == "running"
        client.cancel(execution_id)


async def test_submit_watch_in_a_terminal_draws_a_bar_to_100_percent(stack: Stack) -> None:
    await stack.up(workers=1)
    env: dict[str, Any] = stack.env(JETDAG_URL=stack.url, TERM="xterm-256color", COLUMNS="120", LINES="40")

    def run() -> tuple[str, int]:
        child = pexpect.spawn(
            JETDAG,
            ["submit", "examples/hello.yaml", "--watch"],
            cwd=str(ROOT),
            env=env,
            encoding="utf-8",
            dimensions=(40, 120),
            timeout=90,
        )
        child.expect(pexpect.EOF)
        child.close()
        return child.before or "", int(child.exitstatus or 0)

    screen, code = await asyncio.to_thread(run)
    assert code == 0, screen[-2000:]
    assert ANSI.search(screen), "no terminal output"
    percents = [int(p) for p in re.findall(r"(\d+)%", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen))]
    assert percents and percents[-1] == 100, percents
    assert percents == sorted(percents), percents
    assert len(set(percents)) >= 3, f"the bar did not update: {percents}"
    assert "5 completed" in screen and "completed after" in screen


async def test_watch_after_a_retry_follows_the_new_round(stack: Stack, tmp_path: Path) -> None:
    """The replay holds the first round's `failed`; the stream (and the watch) go on to the retry's end."""
    await stack.up(workers=1)
    once = write(tmp_path, "once.yaml", "workflowId: o\njobs:\n  - {id: a, type: fail, config: {times: 1}}\n")
    first = await jetdag(stack, "submit", str(once), "--watch")
    assert first.returncode == 1
    execution_id = first.stdout.splitlines()[0]
    assert (await jetdag(stack, "retry", execution_id)).returncode == 0
    watched = await jetdag(stack, "watch", execution_id)
    # `fail` with times: 1 fails the first attempt of every round, so round 2 fails too: both rounds are shown,
    # and the watch waited for the second one's end.
    assert watched.returncode == 1, watched.stdout
    lines = watched.stdout.splitlines()
    failed_at = [i for i, line in enumerate(lines) if "  failed 1/1 done" in line]
    assert any("  pending 0/1 done" in line for line in lines[failed_at[-2] :]), watched.stdout
    assert f"execution {execution_id} failed" in watched.stdout
    status = await jetdag(stack, "status", execution_id)
    assert re.search(r"^round\s+2$", status.stdout, re.M)

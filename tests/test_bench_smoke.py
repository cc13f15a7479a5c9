"""`just bench --quick` runs end to end: its own stack, the workloads, the floor, the tables. No speed thresholds:
CI machines are too noisy for them; the point is that the bench keeps working."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

HEADER = "| workload | jobs | wall s | jobs/s | floor msgs/s | ratio | hop e2e ms | hop p50 ms | hop p99 ms |"


@pytest.mark.timeout(300)
def test_bench_quick_prints_the_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jetdag.bench", "--quick"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert HEADER in out, out
    ratio_col = HEADER.strip("|").split("|").index(" ratio ")
    table = out[out.index(HEADER) :].split("\n\n")[0].splitlines()[2:]
    rows = [line for line in table if line.startswith(("| W1 ", "| W2 "))]
    assert len(rows) == 2 == len(table), out
    for row in rows:
        ratio = row.strip("|").split("|")[ratio_col].strip()
        assert re.fullmatch(r"\d+\.\d+", ratio) and float(ratio) > 0, row
    assert "| GET /queue/stats |" in out and "| gateway |" in out, out
    for endpoint in ("GET /execute/{id}", "GET /queue/stats"):
        # The load generator read whole 200 answers, and no other kind.
        load = re.search(rf"^\| {re.escape(endpoint)} \| \d+ \| ([\d,]+) \|.*\| (\d+) \|$", out, re.MULTILINE)
        assert load is not None and int(load[1].replace(",", "")) > 0 and load[2] == "0", out
    assert re.search(r"^\| W2 [^|]+\| \d+\.\d \|$", out, re.MULTILINE), out  # the scheduler's RSS after the run


@pytest.mark.timeout(300)
def test_bench_cluster_settings_and_recovery() -> None:
    """The options docs/tuning.md and docs/scaling.md are measured with: a 3-node cluster at R3, settings given to
    every service, the worker-kill recovery, the CPU per job and the stored bytes."""
    argv = [sys.executable, "-m", "jetdag.bench", "--quick", "--workloads", "W2", "--nodes", "3", "--recovery"]
    argv += ["--gateway-seconds", "0.5", "--set", "JETDAG_JOB_ACK_WAIT_S=2", "--set", "JETDAG_HEARTBEAT_INTERVAL_S=1"]
    argv += ["--set", "JETDAG_WORKER_REAP_CHECK_S=1"]
    proc = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    out = proc.stdout
    assert "3 nats-server node(s), R3; settings JETDAG_HEARTBEAT_INTERVAL_S=1 JETDAG_JOB_ACK_WAIT_S=2" in out, out
    assert "| nats-server-n3 |" in out, out
    assert re.search(r"^\| W2 fan-out 1→50→1 \| \d+\.\d{3} \| \d+\.\d{3} \|", out, re.MULTILINE), out
    assert re.search(r"^\| BENCH_EVENTS \| [\d,]+ \| [\d,]+ \| [\d,]+ \|$", out, re.MULTILINE), out
    redelivered = re.search(r"^\| the job runs on another worker \| (\d+\.\d+) \|$", out, re.MULTILINE)
    unhealthy = re.search(r"^\| the dead worker shown unhealthy \| (\d+\.\d+) \|$", out, re.MULTILINE)
    assert redelivered and unhealthy, out
    # The lease is 2 s: the job cannot move before it ran out, nor long after (a renewal every 0.5 s).
    assert 0.5 < float(redelivered[1]) < 30, out


def test_bench_rejects_an_unknown_setting() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jetdag.bench", "--set", "JETDAG_NO_SUCH=1"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--set 'JETDAG_NO_SUCH=1': expected VAR=VALUE" in proc.stderr, proc.stderr

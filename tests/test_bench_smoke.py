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
    assert re.search(r"^\| W2 [^|]+\| \d+\.\d \|$", out, re.MULTILINE), out  # the scheduler's RSS after the run

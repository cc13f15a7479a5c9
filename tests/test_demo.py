"""`just demo` against a running stack: the example pipeline computes a real model and evaluates it."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.conftest import Stack
from tests.helpers import ROOT


async def test_demo_pipeline_runs_to_completion(stack: Stack) -> None:
    await stack.up(workers=1)
    env = stack.env(JETDAG_URL=stack.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.demo",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "execution completed: 5/5 jobs completed" in text
    evaluation = json.loads(text.split("evaluation:", 1)[1].strip().splitlines()[0])
    assert set(evaluation["accuracy"]) == {"train-slow", "train-fast"}
    # The synthetic rule is linear, so logistic regression learns it well.
    assert all(acc > 0.8 for acc in evaluation["accuracy"].values()), evaluation
    assert evaluation["best"] in evaluation["accuracy"] and evaluation["testSamples"] == 150

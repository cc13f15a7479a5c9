"""Handlers the execution tests load into real worker processes (`python -m services.worker tests.handlers`)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from jetdag.worker import JobContext, JobFailed, NonRetryable, handler


@handler("add")
async def add(ctx: JobContext) -> Any:
    """config.value plus the results of every dependency: proves results flow to dependents."""
    total = ctx.config.get("value", 0)
    for result in ctx.dependencies.values():
        total += result["total"]
    return {"total": total, "inputs": sorted(ctx.dependencies)}


@handler("gate")
def gate(ctx: JobContext) -> Any:
    """Succeeds once the file named by config.path exists (the test opens the gate before a retry).

    A plain `def`: the worker runs it in a thread (file system access must not block the event loop)."""
    if not Path(ctx.config["path"]).exists():
        raise JobFailed("gate closed")
    return {"total": 0, "passed": True}


@handler("hold")
def hold(ctx: JobContext) -> Any:
    """Runs until the file named by config.path exists (at most config.timeoutS, default 60): a job that is
    running for as long as the test needs, and ends the moment the test lets it. A plain `def` (a thread)."""
    path = Path(ctx.config["path"])
    deadline = time.monotonic() + ctx.config.get("timeoutS", 60)
    while not path.exists():
        if time.monotonic() > deadline:
            raise JobFailed(f"{path} did not appear")
        time.sleep(0.02)
    return {"total": 0, "held": True}


@handler("big")
async def big(ctx: JobContext) -> Any:
    """A result of config.bytes characters (to test the result size limit)."""
    return "x" * int(ctx.config["bytes"])


@handler("crash")
async def crash(ctx: JobContext) -> Any:
    """Kills its own worker process, every time: a poison job."""
    ctx.log.warning("crashing the worker on purpose")
    os._exit(3)


@handler("not_json")
async def not_json(ctx: JobContext) -> Any:
    """Returns something JSON cannot carry (issue: it was retried as a poison job instead of failing once)."""
    return {"when": object()}


@handler("raises")
async def raises(ctx: JobContext) -> Any:
    """Logs what it is about to do, then raises an ordinary exception from a nested call, so its traceback has a
    line to point at."""
    ctx.log.info("dividing", by=ctx.config.get("by", 0))
    return _divide(ctx.config.get("by", 0))


@handler("chatty")
def chatty(ctx: JobContext) -> Any:
    """A plain def (it runs in the worker's threads): logs 30 rows through ctx.log and a warning through the
    stdlib, then fails."""
    for n in range(30):
        ctx.log.info("row", n=n)
    logging.getLogger("user.loader").warning("disk almost full")
    raise JobFailed("no rows left")


def _divide(by: int) -> float:
    return 1 / by


@handler("progress")
async def progress(ctx: JobContext) -> Any:
    """Reports progress, then waits until config.path exists (the test reads the progress meanwhile)."""
    ctx.progress(0.5, "half way")
    while not await asyncio.to_thread(Path(ctx.config["path"]).exists):  # noqa: ASYNC110 (polls a file)
        await asyncio.sleep(0.05)
    return {"workflow": ctx.workflow_id}


@handler("final")
async def final(ctx: JobContext) -> Any:
    """Fails for good at once, whatever retries the job has."""
    raise NonRetryable("the input is malformed")

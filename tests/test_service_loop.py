"""The shared run loop's own guarantees (shared/service.py); the services' shutdowns are tested in test_faults."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from jetdag.natsserver import free_port
from shared.service import cancel_and_wait
from tests.conftest import base_env
from tests.helpers import ServiceProcess, service_argv, wait_for


async def test_cancel_and_wait_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's wait_for loses a cancellation that arrives together with the awaited result (CPython
    gh-86296): the task carries on. One cancel() then waits forever; cancel_and_wait must not."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[int] = loop.create_future()
    waiting = asyncio.Event()

    async def heartbeat() -> None:  # the shape of a worker's heartbeat: a request, then a pause
        waiting.set()
        await asyncio.wait_for(reply, 10)
        await asyncio.Event().wait()  # paused until cancelled

    task = asyncio.create_task(heartbeat())
    await waiting.wait()  # it is now suspended inside wait_for
    reply.set_result(1)
    task.cancel()
    if sys.version_info < (3, 12):  # the bug this guards against is really there
        await asyncio.wait([task], timeout=0.2)
        assert not task.done()
    await asyncio.wait_for(cancel_and_wait([task]), 10)
    assert task.cancelled()


async def test_cancel_and_wait_retrieves_exceptions_and_accepts_finished_tasks() -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    crashed = asyncio.create_task(crash())
    await asyncio.wait([crashed])
    sleeping = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait([crashed, sleeping])
    assert sleeping.cancelled() and isinstance(crashed.exception(), RuntimeError)


@pytest.mark.parametrize("module", ["services.worker", "services.scheduler", "services.registry"])
async def test_sigterm_stops_a_service_whose_nats_is_unreachable(module: str, tmp_path: Path) -> None:
    """Issue 10 item 12: nats-py retried the first connect forever on its own, logging every 0.5 s, and
    SIGTERM could not stop the service. Now every attempt is ours: backed off, logged once, stoppable."""
    closed = free_port()  # nothing listens there: every connect is refused at once
    env = base_env(f"nats://127.0.0.1:{closed}", "unreachable", JETDAG_LOG_LEVEL="debug")
    proc = ServiceProcess(module.rsplit(".", 1)[1], service_argv(module), env, tmp_path).start()
    try:

        def attempts() -> int:
            return sum(1 for line in proc.log_lines() if line.get("event") == "nats connect attempt failed")

        # Five refused attempts (~3 s of backoff): long enough for the old loop to have logged a dozen lines.
        await wait_for(lambda: attempts() >= 5, timeout=30, message="five refused connect attempts")
        started = time.monotonic()
        code = await proc.aterminate(timeout=10)
        assert code == 0, proc.tail()
        assert time.monotonic() - started < 5
        lines = proc.log_lines()
        waiting = [line for line in lines if line.get("event") == "waiting for nats"]
        assert len(waiting) == 1, waiting
        assert waiting[0]["level"] == "warning" and waiting[0]["nats_url"] == env["NATS_URL"]
        # nats-py's own per-attempt error callback no longer floods the log.
        assert not [line for line in lines if line.get("event") == "nats error"]
        assert any(line.get("event") == "stopped before nats answered" for line in lines)
    finally:
        proc.kill()

"""The shared run loop's own guarantees (shared/service.py); the services' shutdowns are tested in test_faults."""

from __future__ import annotations

import asyncio
import sys

from shared.service import cancel_and_wait


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

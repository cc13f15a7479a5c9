"""shared.commands on a real nats-server: a concurrent endpoint answers a request while another one is still
being handled; a default one answers them in order."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.aio.client import Client

from shared.commands import Endpoint, add_endpoints, request
from tests.helpers import wait_for


class Ask(msgspec.Struct):
    name: str


class Answer(msgspec.Struct):
    name: str


async def _serve(nc: Client, prefix: str, concurrent: int, release: asyncio.Event) -> list[str]:
    started: list[str] = []

    async def handle(cmd: Ask) -> Answer:
        started.append(cmd.name)
        if cmd.name == "slow":
            await release.wait()  # held until another request is answered (or the test gives up)
        return Answer(name=cmd.name)

    await add_endpoints(
        nc,
        service=f"t{uuid.uuid4().hex[:8]}",
        description="test",
        version="0.0.1",
        prefix=prefix,
        endpoints={"ask": Endpoint(Ask, handle, concurrent=concurrent)},
    )
    return started


async def test_a_concurrent_endpoint_answers_while_a_slow_request_is_held(nc: Client) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    await _serve(nc, prefix, 8, release)
    slow = asyncio.create_task(request(nc, f"{prefix}.ask", Ask(name="slow"), Answer, service="t", timeout=10))
    quick = await request(nc, f"{prefix}.ask", Ask(name="quick"), Answer, service="t", timeout=5)
    assert quick.name == "quick" and not slow.done()
    release.set()
    assert (await slow).name == "slow"


async def test_a_default_endpoint_answers_one_request_after_the_other(nc: Client) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    started = await _serve(nc, prefix, 1, release)
    slow = asyncio.create_task(request(nc, f"{prefix}.ask", Ask(name="slow"), Answer, service="t", timeout=10))
    quick = asyncio.create_task(request(nc, f"{prefix}.ask", Ask(name="quick"), Answer, service="t", timeout=10))
    await wait_for(lambda: started == ["slow"], timeout=5, message="the slow request to start")
    assert not quick.done()  # queued behind the slow one, not started
    release.set()
    assert [(await slow).name, (await quick).name] == ["slow", "quick"]
    assert started == ["slow", "quick"]

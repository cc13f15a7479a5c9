"""shared.commands on a real nats-server: a concurrent endpoint answers a request while another one is still
being handled; a default one answers them in order."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
from nats.aio.client import Client

from shared.commands import Endpoint, add_endpoints, drain, request
from tests.helpers import wait_for


class Ask(msgspec.Struct):
    name: str


class Answer(msgspec.Struct):
    name: str


async def _serve(
    nc: Client, prefix: str, concurrent: int, release: asyncio.Event, endpoint: list[Endpoint] | None = None
) -> list[str]:
    started: list[str] = []

    async def handle(cmd: Ask) -> Answer:
        started.append(cmd.name)
        if cmd.name == "slow":
            await release.wait()  # held until another request is answered (or the test gives up)
        return Answer(name=cmd.name)

    served = Endpoint(Ask, handle, concurrent=concurrent)
    if endpoint is not None:
        endpoint.append(served)
    await add_endpoints(
        nc,
        service=f"t{uuid.uuid4().hex[:8]}",
        description="test",
        version="0.0.1",
        prefix=prefix,
        endpoints={"ask": served},
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


async def test_drain_waits_for_the_requests_being_answered_and_no_longer_than_its_timeout(nc: Client) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    release = asyncio.Event()
    served: list[Endpoint] = []
    started = await _serve(nc, prefix, 8, release, served)
    slow = asyncio.create_task(request(nc, f"{prefix}.ask", Ask(name="slow"), Answer, service="t", timeout=10))
    await wait_for(lambda: started == ["slow"], timeout=5, message="the slow request to start")
    await drain(served, timeout=0.2)  # gives up while the request is still held
    assert served[0].running and not slow.done()
    drained = asyncio.create_task(drain(served, timeout=10))
    release.set()
    await drained
    assert not served[0].running
    assert (await slow).name == "slow"

"""The worker's side of priority bands, without NATS: which bands may be pulled and started, and how a consumer
tells the worker what it learned."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.worker.bands import Waiting, first_unclear, may_take
from shared.consume import PullConsumer


def test_the_top_unclear_band_is_the_highest_one_not_known_to_be_empty() -> None:
    assert first_unclear([(3, False), (1, True), (2, False), (5, False)]) == 2
    assert first_unclear([(1, True), (3, True)]) is None


def test_lower_bands_wait_while_a_higher_one_has_jobs() -> None:
    assert may_take(1, 2) and may_take(2, 2) and not may_take(3, 2)
    assert may_take(5, None)


def test_waiting_jobs_come_out_by_band_then_first_come() -> None:
    waiting: Waiting[str] = Waiting()
    waiting.add(5, ["e1", "e2"])
    waiting.add(1, ["a1"])
    waiting.add(3, ["c1"])
    assert len(waiting) == 4 and list(waiting) == ["a1", "c1", "e1", "e2"]
    assert waiting.up_to(3) == 2 and waiting.up_to(5) == 4
    band = waiting.first_band()
    assert band == 1 and waiting.popleft(band) == "a1"
    assert waiting.remove_if(lambda entry: entry.startswith("e")) == ["e1", "e2"]
    assert list(waiting) == ["c1"] and len(waiting) == 1
    waiting.clear()
    assert not waiting and waiting.first_band() is None


def _reply(pending: int) -> str:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
    return f"$JS.ACK.JOBS.c.1.7.7.1796310992062513534.{pending}"


async def test_a_consumer_says_when_clear_flips_before_it_says_it_drained() -> None:
    """The worker keeps its top band until a consumer's `clear` flips: every flip must be told, and told before
    `on_drained`, whose handler asks for the top band again."""
    calls: list[tuple[str, bool]] = []

    async def handle(msgs: list[Msg]) -> None:
        return None

    nc = Client()  # never connected: the consumer only names its inbox with it here
    consumer = PullConsumer(
        nc,
        stream="JOBS",
        consumer="c",
        handle=handle,
        credit=lambda: 1,
        on_drained=lambda: calls.append(("drained", consumer.clear)),
        on_clear_changed=lambda: calls.append(("changed", consumer.clear)),
    )

    async def answer(status: str | None = None, pending: int = 0) -> None:
        headers = {"Status": status} if status else None
        await consumer._on_msg(
            Msg(nc, subject="x", reply=_reply(pending), data=b"" if status else b"{}", headers=headers)
        )

    await answer(pending=3)  # a delivery: known, 3 more held
    assert calls == [] and not consumer.clear
    await answer(pending=0)  # the last one: drained
    assert calls == [("changed", True), ("drained", True)]
    await answer("408")  # a request expired: not known any more
    assert calls[-1] == ("changed", False)
    await answer("404")  # "no messages": clear again
    assert calls[-2:] == [("changed", True), ("drained", True)]
    n = len(calls)
    await answer("404")  # no flip, no call
    assert len(calls) == n
    consumer.reset()  # after a reconnect nothing is known
    assert calls[-1] == ("changed", False) and len(calls) == n + 1

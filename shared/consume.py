"""The one pull-consumer loop: the scheduler's report intake and the worker's job intake both use it.

nats-py's `fetch` makes a request per batch and waits out its reply before the next one can go, so a consumer
spends a round trip between batches. Here pull requests stay outstanding (`batch` = the credit the owner grants,
with an expiry and idle heartbeats), messages land in a buffer from the subscription's callback, and one task per
consumer hands whatever arrived to `handle` as a batch — no task per message, no round trip between batches.

Credit is what the owner can take now (a worker: its free slots; the scheduler: a fixed window). Status messages
from the server keep the count of what is still requested honest: 408 (a request expired; it says how many of
its messages were not delivered), 409 (the request was dropped: leader change, max waiting, …). A request the
server forgot without telling (a reconnect, a node that died) shows as missing heartbeats and is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.logging import get_logger

__all__ = ["PullConsumer", "delivery_of", "pending_of"]

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode


def delivery_of(msg: Msg) -> tuple[int, int]:
    """(times delivered, stream sequence) from a JetStream message's ack subject, without building nats-py's
    metadata object (datetimes and all) for every message."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...
        return int(tokens[6]), int(tokens[7])
    return 1, 0


def pending_of(msg: Msg) -> int:
    """How many messages the consumer still held for delivery when it delivered this one (from the ack
    subject)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[10])
    return 0


class _PullRequest(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int = 0
    idle_heartbeat: int = 0
    max_bytes: int = 0
    no_wait: bool = False


class PullConsumer:
    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        handle: Callable[[list[Msg]], Awaitable[None]],
        credit: Callable[[], int],
        expires_s: float = 10.0,
        heartbeat_s: float = 2.0,
        on_drained: Callable[[], None] | None = None,
        on_clear_changed: Callable[[], None] | None = None,
        on_missing: Callable[[], None] | None = None,
        probe: bool = False,
    ) -> None:
        """`heartbeat_s` ≥ `expires_s`: requests ask for no idle heartbeats (a short request's own expiry
        says it is gone). `on_drained` is called when the consumer becomes known to hold nothing more for us,
        `on_clear_changed` whenever `clear` flips either way. With `on_missing`, a "no responders" answer (the
        consumer does not exist, or has no leader this moment) calls it and no request is sent until `reset()`;
        without it, such an answer is a dropped request like any other. With `probe`, a request made while that
        is not known is `no_wait` (see `known`)."""
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.handle = handle
        self.credit = credit
        self.expires_s = expires_s
        self.heartbeat_s = heartbeat_s
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._requested = 0
        """Messages asked for and not yet delivered, expired or dropped."""
        self._last_heard = 0.0
        self._stopping = False
        self._sub: Subscription | None = None
        self.on_drained = on_drained
        self.on_clear_changed = on_clear_changed
        self.on_missing = on_missing
        self.missing = False
        """The server answered "no responders": the consumer is gone (asked for again by whoever owns us)."""
        self.probe = probe
        self.backlog = 0
        """Messages the consumer held for delivery when it last delivered to us (0 once it ran dry): other
        consumers' owners use it to know whether work of this consumer is still waiting."""
        self.known = False
        """Whether `backlog` is known: after a delivery or a "no messages" (404), not after a request merely
        expired (408), because a paused consumer holds requests until they expire and a resumed one does not
        serve the requests it held. While it is not known, requests are `no_wait`: answered at once."""
        self.delivered = 0
        self.log = log.bind(consumer=consumer, stream=stream)

    def wake(self) -> None:
        """Credit grew (a slot freed): ask for more now instead of at the next arrival."""
        self._arrived.set()

    @property
    def clear(self) -> bool:
        """Known to hold nothing for us."""
        return self.known and not self.backlog

    def reset(self) -> None:
        """Forget what was requested (after a reconnect the server may have dropped the requests, or the
        consumer was made again)."""
        self.missing = False
        self._requested = 0
        self._forget()
        self._arrived.set()

    def _forget(self) -> None:
        was_clear = self.clear
        self.known = False
        if was_clear and self.on_clear_changed is not None:
            self.on_clear_changed()

    async def _on_msg(self, msg: Msg) -> None:
        loop_time = asyncio.get_running_loop().time()
        self._last_heard = loop_time
        headers = msg.headers
        if headers and not msg.data and (status := headers.get("Status")) is not None:
            if status == "100":  # idle heartbeat: the request is alive
                return
            if status == "408":
                missed = headers.get("Nats-Pending-Messages")
                self._requested = max(0, self._requested - (int(missed) if missed else self._requested))
                self._forget()
            elif status == "404":
                self._requested = 0
                self._learned(0)
            elif status == "503" and self.on_missing is not None:
                # No responders: the consumer does not exist (or has no leader this moment). Asking again at once
                # would loop as fast as the server answers: wait until whoever owns us has it made again.
                self._requested = 0
                self._forget()
                if not self.missing:
                    self.missing = True
                    self.log.warning("consumer not answering (removed, or electing its leader); asking for it again")
                    self.on_missing()
            else:  # 409 and the rest: the server dropped our requests
                if status != "409" or "Leadership Change" not in (headers.get("Description") or ""):
                    self.log.debug("pull request ended", status=status, description=headers.get("Description"))
                self._requested = 0
            self._arrived.set()
            return
        self._requested = max(0, self._requested - 1)
        self._learned(pending_of(msg))
        self._buffer.append(msg)
        self._arrived.set()

    def _learned(self, backlog: int) -> None:
        was_clear = self.clear
        self.backlog = backlog
        self.known = True
        if self.clear is was_clear:
            return
        if self.on_clear_changed is not None:
            self.on_clear_changed()  # first: what on_drained does may ask which bands are clear now
        if self.clear and self.on_drained is not None:
            self.on_drained()

    async def _pull(self) -> None:
        want = self.credit() - self._requested - len(self._buffer)
        # Ask in chunks, not one message at a time as slots free one by one: each request costs a round trip on
        # the server, and a request that is mostly unused costs nothing.
        if want <= 0 or (self._requested and want < max(1, self.credit() // 4)):
            return
        if self.probe and not self.known:
            # Answered at once: messages, or "no messages" (with an expiry, the server would wait it out).
            request = _PullRequest(batch=want, no_wait=True)
        else:
            request = _PullRequest(
                batch=want,
                expires=int(self.expires_s * 1e9),
                idle_heartbeat=int(self.heartbeat_s * 1e9) if self.heartbeat_s < self.expires_s else 0,
            )
        await self.nc.publish(self._next_subject, _encode(request), reply=self._inbox)
        if not self._requested:
            self._last_heard = asyncio.get_running_loop().time()
        self._requested += want

    async def run(self) -> None:
        """Pull and hand over batches until `stop()`; survives reconnects and server-side request loss."""
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=-1)
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                try:
                    if self.nc.is_connected and not self.missing:
                        await self._pull()
                except Exception as exc:  # the connection went away between the check and the publish
                    self.log.debug("pull request not sent", error=repr(exc))
                if not self._buffer:
                    self._arrived.clear()
                    # A timer instead of asyncio.wait_for, which wraps the wait in a task of its own: three loop
                    # turns between a message's arrival and its handling instead of one, on every hop of a DAG.
                    timer = loop.call_later(self.heartbeat_s, self._arrived.set)
                    try:
                        await self._arrived.wait()
                    finally:
                        timer.cancel()
                    if self._requested and not self._buffer and loop.time() - self._last_heard > 2.5 * self.heartbeat_s:
                        # No message and no heartbeat: the server no longer holds our request.
                        self._requested = 0
                    if not self._buffer:
                        continue
                batch, self._buffer = self._buffer, []
                self.delivered += len(batch)
                await self.handle(batch)
        finally:
            with contextlib.suppress(Exception):
                if self._sub is not None:
                    await self._sub.unsubscribe()

    def stop(self) -> None:
        """Let `run` return after the batch in hand; messages delivered but not handled are redelivered by
        the server after their ack wait (or naked by whoever owns them)."""
        self._stopping = True
        self._arrived.set()

    def take_buffered(self) -> list[Msg]:
        """Messages that arrived and were not handed over (to nak them at shutdown)."""
        batch, self._buffer = self._buffer, []
        return batch

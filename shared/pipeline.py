"""Pipelined JetStream requests: many publishes (and direct gets) in flight on one reply subscription.

nats-py's `js.publish` is a full request per call (a fresh future, `wait_for`, an API-response object), and
its `publish_async` never resolves the future of a publish the server rejects (nats-py 2.16; see its test),
which is exactly what a lost compare-and-set is. The scheduler's hot path is made of those, so it uses this:
one wildcard reply subscription, a counter per request, the ack parsed with msgspec, rejections raised as
`JetStreamError` with the server's error code, and a timer per request instead of a `wait_for` task.
"""

from __future__ import annotations

import asyncio
import itertools

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["STORE_FULL_CODES", "WRONG_LAST_SEQUENCE_CODES", "JetStreamError", "Pipeline"]

# JSStreamWrongLastSequenceErrF / JSStreamWrongLastSequenceConstantErr: a compare-and-set lost its race.
WRONG_LAST_SEQUENCE_CODES = (10071, 10164)
# JSAccountResourcesExceededErr, JSInsufficientResourcesErr, JSMemoryResourcesExceededErr,
# JSStorageResourcesExceededErr: the write was refused for want of room (an account's or the server's limit, or
# the disk); nothing of it was stored.
STORE_FULL_CODES = (10002, 10023, 10028, 10047)


class JetStreamError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description

    @property
    def wrong_last_sequence(self) -> bool:
        return self.err_code in WRONG_LAST_SEQUENCE_CODES


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class Pipeline:
    def __init__(self, nc: Client, timeout: float) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = ""
        self._ids = itertools.count()
        self._pending: dict[str, asyncio.Future[Msg]] = {}

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox()
        await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) + 1 :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Msg:
        """Send and wait for the reply, without holding up other requests meanwhile."""
        if not self._prefix:
            await self.start()
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._pending[token] = future
        timer = loop.call_later(self.timeout, self._expire, token)
        try:
            await self.nc.publish(subject, data, reply=f"{self._prefix}.{token}", headers=headers)
            return await future
        finally:
            timer.cancel()
            self._pending.pop(token, None)

    def _expire(self, token: str) -> None:
        future = self._pending.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(TimeoutError(f"no JetStream answer within {self.timeout:g} s"))

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        """Publish to a stream and return the stored sequence; a rejection raises JetStreamError."""
        msg = await self.request(subject, data, headers)
        if msg.headers and msg.headers.get("Status") == "503":
            raise JetStreamError(503, 0, f"no stream answers on {subject}")
        ack = _ack_decoder.decode(msg.data)
        if ack.error is not None:
            raise JetStreamError(ack.error.code, ack.error.err_code, ack.error.description)
        return ack.seq

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """Direct get of a key's last value: (value, revision), or None if it has none or was deleted."""
        msg = await self.request(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}", b"")
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            raise JetStreamError(int(status), 0, headers.get("Description", "direct get failed"))
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return msg.data, int(headers["Nats-Sequence"])

    async def last_of_subject(self, stream: str, subject: str) -> int | None:
        """Sequence of the last message on `subject` (a direct get; the stream must allow direct access)."""
        msg = await self.request(f"$JS.API.DIRECT.GET.{stream}", b'{"last_by_subj":"' + subject.encode() + b'"}')
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            raise JetStreamError(int(status), 0, headers.get("Description", "direct get failed"))
        return int(headers["Nats-Sequence"])

    async def kv_entry(self, bucket: str, key: str) -> tuple[bytes | None, int, dict[str, str]] | None:
        """The key's last message: (value, revision, headers), value None for a delete marker; None when the
        subject holds no message at all (never written, purged, or expired by its TTL)."""
        msg = await self.request(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}", b"")
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            raise JetStreamError(int(status), 0, headers.get("Description", "direct get failed"))
        deleted = headers.get("KV-Operation") in ("DEL", "PURGE")
        return (None if deleted else msg.data), int(headers["Nats-Sequence"]), headers

    async def kv_write(self, bucket: str, key: str, value: bytes, *, last: int | None) -> int:
        """Write a key; with `last`, only if its revision is still `last` (0: only if it does not exist)."""
        headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        return await self.publish(f"$KV.{bucket}.{key}", value, headers)

    async def publish_all(self, messages: list[tuple[str, bytes, str]], *, attempts: int = 6) -> None:
        """Publish (subject, data, msg_id) messages concurrently — sent in this order — and make sure each is
        stored: a failed one is sent again (its `Nats-Msg-Id` makes a copy of a stored one a no-op)."""

        async def one(subject: str, data: bytes, msg_id: str) -> None:
            headers = {"Nats-Msg-Id": msg_id}
            for attempt in range(attempts):
                try:
                    await self.publish(subject, data, headers)
                    return
                except Exception:  # a rejection, a timeout, the connection down: all worth another try
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(min(0.2 * 2**attempt, 2.0))

        if len(messages) == 1:
            await one(*messages[0])  # no task for the common lone message: one loop turn less on its way
        else:
            await asyncio.gather(*(one(*m) for m in messages))

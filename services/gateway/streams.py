"""Server-sent events, the I/O part: one ordered (ephemeral, in-memory) consumer on the event stream per HTTP
client, never a durable one, freed when the client goes away; a bounded buffer in between."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from shared.api import SSE_DROPPED, SSE_END, StreamDropped, StreamEnd
from shared.commands import Unavailable
from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES
from shared.settings import GatewaySettings

from .backend import Backend
from .sse import HEARTBEAT, RETRY, Frame, StreamBuffer, control, event

__all__ = ["EventStreams", "Feed"]

log = get_logger(__name__)
_encode = msgspec.json.Encoder().encode

INACTIVE_THRESHOLD_S = 5.0
"""The server deletes a consumer this long after its client's subscription went away, even if the gateway
died without unsubscribing."""


class Feed:
    """One client's ordered consumer and the buffer it fills."""

    def __init__(self, streams: EventStreams) -> None:
        self.streams = streams
        self.buffer = StreamBuffer(streams.settings.sse_buffer_bytes, streams.settings.sse_slow_client_s)
        self.last: Frame | None = None
        self._sub: object | None = None
        self._closed = False
        self._closer: asyncio.Task[None] | None = None

    async def start(self, filters: list[str], after: int | None, *, from_start: bool) -> None:
        config = ConsumerConfig(filter_subjects=filters) if len(filters) > 1 else ConsumerConfig()
        if after is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = after + 1
        else:
            config.deliver_policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
        try:
            self._sub = await self.streams.js.subscribe(
                filters[0],
                stream=self.streams.backend.names.events_stream,
                cb=self._on_msg,
                config=config,
                ordered_consumer=True,
                inactive_threshold=INACTIVE_THRESHOLD_S,
            )
        except Exception as exc:
            await self.close()
            raise Unavailable(f"cannot read the event stream ({type(exc).__name__}: {exc})") from None

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        frame = Frame(
            meta.sequence.stream, self.streams.backend.names.event_kind(msg.subject), msg.data, meta.num_pending
        )
        # Waiting here for room holds back this consumer's flow control, so the server pauses delivery.
        if not await self.buffer.put(frame) and self._closer is None and not self._closed:
            last = self.last.seq if self.last else None
            log.warning("sse client too slow; stream dropped", last_event_id=last, buffered=self.buffer.size)
            # Not awaited here: unsubscribing cancels the task this callback runs in.
            self._closer = asyncio.create_task(self.close(), name="sse-overflow")

    async def close(self) -> None:
        """Free the consumer (idempotent): on the end of the stream, a disconnect, or an overflow."""
        if self._closed:
            return
        self._closed = True
        self.streams.open -= 1
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class _ExecutionEnd:
    """When the stream of one execution is over."""

    streams: EventStreams
    execution_id: str

    async def after(self, frame: Frame) -> bool:
        """After a final execution event, unless a retry of the execution already follows it in the stream."""
        if frame.kind not in FINAL_EXECUTION_STATES:
            return False
        if frame.pending == 0:
            return True
        names = self.streams.backend.names
        try:
            retried = await self.streams.js.get_last_msg(
                names.events_stream, names.execution_event(self.execution_id, "retried")
            )
        except NotFoundError:
            return True
        except Exception:
            return False  # checked again at the next idle heartbeat
        return (retried.seq or 0) < frame.seq

    async def idle(self, last: Frame | None) -> str | None:
        """The final status when the execution ended and nothing of it is left in the stream (its final event
        may be missing: events can be lost, never wrong)."""
        try:
            view = await self.streams.backend.get_execution(self.execution_id)
        except Exception:
            return None
        if view.status in FINAL_EXECUTION_STATES and (last is None or last.pending == 0):
            return view.status
        return None


class EventStreams:
    def __init__(self, backend: Backend, settings: GatewaySettings) -> None:
        self.backend = backend
        self.settings = settings
        self.js = backend.nc.jetstream(timeout=backend.timeout)
        self.open = 0

    def _feed(self) -> Feed:
        if not self.backend.nc.is_connected:
            raise Unavailable("NATS is not reachable")
        if self.open >= self.settings.sse_max_streams:
            raise Unavailable(
                f"too many event streams are open ({self.settings.sse_max_streams}, JETDAG_SSE_MAX_STREAMS); "
                "try again later"
            )
        self.open += 1
        return Feed(self)

    async def execution(self, execution_id: str, after: int | None) -> tuple[Feed, AsyncIterator[bytes]]:
        """Every event of one execution from its first (or after `after`), ending after its final one."""
        view = await self.backend.get_execution(execution_id)  # 404 for an unknown id
        names = self.backend.names
        done: str | None = None
        if view.status in FINAL_EXECUTION_STATES:
            try:
                last = await self.js.get_last_msg(names.events_stream, names.execution_stream(execution_id))
                if after is not None and (last.seq or 0) <= after:
                    done = view.status
            except NotFoundError:
                done = view.status  # its events have aged out of the stream
        feed = self._feed()
        if done is None:
            await feed.start([names.execution_stream(execution_id)], after, from_start=True)
        return feed, self._serve(feed, _ExecutionEnd(self, execution_id), execution_id, done)

    async def everything(self, kinds: frozenset[str] | None, after: int | None) -> tuple[Feed, AsyncIterator[bytes]]:
        """The events of every execution (and worker) from now, or after `after`; `kinds` filters by kind."""
        names = self.backend.names
        filters = names.events_of_kinds(kinds) if kinds else [names.events_all]
        feed = self._feed()
        await feed.start(filters, after, from_start=False)
        return feed, self._serve(feed, None, None, None)

    async def _serve(
        self, feed: Feed, end: _ExecutionEnd | None, execution_id: str | None, done: str | None
    ) -> AsyncIterator[bytes]:
        def finish(status: str) -> bytes:
            assert execution_id is not None
            return control(SSE_END, _encode(StreamEnd(execution_id=execution_id, status=status)))

        try:
            yield RETRY
            if done is not None:
                yield finish(done)
                return
            while True:
                frame = await feed.buffer.get(self.settings.sse_heartbeat_s)
                if frame is None:
                    if feed.buffer.overflowed:
                        last = feed.last.seq if feed.last else None
                        dropped = StreamDropped(
                            error="this client read events too slowly and was dropped; reconnect with "
                            "Last-Event-ID to resume",
                            last_event_id=last,
                        )
                        yield control(SSE_DROPPED, _encode(dropped))
                        return
                    status = await end.idle(feed.last) if end else None
                    if status is not None:
                        yield finish(status)
                        return
                    yield HEARTBEAT
                    continue
                feed.last = frame
                yield event(frame.kind, frame.seq, frame.data)
                if end is not None and await end.after(frame):
                    yield finish(frame.kind)
                    return
        finally:
            await feed.close()

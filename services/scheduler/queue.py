"""The job stream's consumers: one durable pull consumer per (capability, type, priority band), created when a
worker asks for them; the pauses of the queue, applied by JetStream consumer pause.

The pauses are persisted (`control.queue` in the executions bucket, a QueueState); what each one covers and
until when is pure (shared/pauses.py). A consumer is paused on the server until the latest end of the pauses
covering it (a pause of a capability or type covers every band of its pairs), so a timed pause ends by
JetStream's own `pause_until`, whatever runs. Both orders of a race between "create a consumer" and "pause" end
paused: the creator reads the pauses again after creating, and the pauser applies the pauses to every consumer it
lists after writing them. The end of a timed pause is announced (`<ns>.events.queue.resumed`, `expired`) by the
one replica that removes it from the state (compare-and-set) when it falls, or when a replica starts after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from shared.commands import Unavailable
from shared.events import publish_event
from shared.jetstream import MAX_CONSUMERS_REACHED
from shared.keys import QUEUE_KEY, queue_event_msg_id
from shared.logging import get_logger
from shared.messages import (
    PRIORITIES,
    ConsumerRef,
    ConsumerSet,
    QueueEvent,
    QueuePause,
    QueueResumeRequest,
    QueueState,
)
from shared.pauses import active, consumer_until, describe, is_global, paused, resumed
from shared.subjects import Names
from shared.timeutil import iso_from_ms, ms_from_iso, now_iso, now_ms

__all__ = ["JobQueue"]

log = get_logger(__name__)

FOLLOW_S = 2.0
"""How often a replica reads the pauses again to announce the ends of timed pauses another replica set."""
Change = Callable[[list[QueuePause]], tuple[list[QueuePause], list[QueuePause]]]
"""The pauses in effect → (the pauses in effect after, the pauses it ended)."""
KEEP_ENDED_MS = 3_600_000
"""How long an ended timed pause (no longer in effect) may wait in the state for a replica to announce its end."""


class JobQueue:
    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        names: Names,
        *,
        ack_wait_s: float,
        max_deliver: int,
    ) -> None:
        self.js = js
        self.kv = kv
        self.names = names
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self._idle_since: dict[str, float] = {}
        """Consumers seen holding nothing with no live worker serving their pool: since when (monotonic)."""
        self._lock = asyncio.Lock()
        self._ends: dict[tuple[str | None, str | None, str], asyncio.Task[None]] = {}

    async def _read(self) -> tuple[QueueState | None, int | None]:
        try:
            entry = await self.kv.get(QUEUE_KEY)
        except KeyNotFoundError:
            return None, None
        if entry.value is None:
            return None, entry.revision
        return msgspec.json.decode(entry.value, type=QueueState), entry.revision

    async def pauses(self) -> list[QueuePause]:
        """The pauses in effect now."""
        return active((await self._read())[0], now_ms())

    def consumer_config(self, capability: str, job_type: str, priority: int, *, until: str | None) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.names.jobs_consumer(capability, job_type, priority),
            description=(
                f"workers able to run {job_type!r} jobs needing capability {capability!r}, priority {priority}"
            ),
            filter_subject=self.names.jobs_filter(capability, job_type, priority),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            # Short: a dead worker's jobs come back quickly; live workers extend it with in-progress acks.
            ack_wait=self.ack_wait_s,
            # Unlimited here: the worker fails a job delivered more than `max_deliver` times (a poison job)
            # with a result that says why, instead of JetStream silently parking the message.
            max_deliver=-1,
            max_ack_pending=100_000,
            max_waiting=4096,
            pause_until=until,
        )

    def _ref(self, capability: str, job_type: str, priority: int) -> ConsumerRef:
        return ConsumerRef(
            stream=self.names.jobs_stream,
            consumer=self.names.jobs_consumer(capability, job_type, priority),
            subject=self.names.jobs_filter(capability, job_type, priority),
            ack_wait_s=self.ack_wait_s,
            max_deliveries=self.max_deliver,
            priority=priority,
        )

    async def ensure_consumers(self, capability: str, job_type: str) -> ConsumerSet:
        """Create the (capability, type) consumers of every priority band if missing, paused when a pause covers
        them."""
        refs = [self._ref(capability, job_type, p) for p in PRIORITIES]
        # Looked up every time (a worker asks when it starts, and again when a pull finds its consumer gone): a
        # replica's memory of having made one says nothing once another replica removed it as stale.
        async with self._lock:
            for ref in refs:
                await self._ensure(capability, job_type, ref)
        return ConsumerSet(consumers=refs)

    async def _ensure(self, capability: str, job_type: str, ref: ConsumerRef) -> None:
        name = ref.consumer
        try:
            await self.js.consumer_info(self.names.jobs_stream, name)
        except NotFoundError:
            until = consumer_until(await self.pauses(), capability, job_type)
            try:
                await self.js.add_consumer(
                    self.names.jobs_stream, self.consumer_config(capability, job_type, ref.priority, until=until)
                )
            except APIError as exc:
                if exc.err_code != MAX_CONSUMERS_REACHED:
                    raise
                # Not a fault of ours to trace back: a limit the operator set. Say which, to both sides: the
                # worker asking repeats this sentence in its log until the limit is raised.
                reason = (
                    f"JetStream refused consumer {name} on {self.names.jobs_stream}: {exc.description} "
                    f"(err_code {MAX_CONSUMERS_REACHED}); raise the account's max_consumers or offer fewer "
                    "(capability, handler) pairs"
                )
                log.warning("consumer refused", consumer=name, error=reason)
                raise Unavailable(reason) from None
            log.info("consumer created", consumer=name, paused_until=until)
            again = consumer_until(await self.pauses(), capability, job_type)
            if again != until:
                await self._pause_one(name, again)

    async def _pause_one(self, consumer: str, until: str | None) -> None:
        if until is None:
            await self.js.resume_consumer(self.names.jobs_stream, consumer)
        else:
            await self.js.pause_consumer(self.names.jobs_stream, consumer, until)

    async def _consumers(self) -> list[ConsumerInfo]:
        infos: list[ConsumerInfo] = []
        offset = 0
        while True:
            page = await self.js.consumers_info(self.names.jobs_stream, offset=offset)
            infos.extend(page)
            if len(page) < 256:
                return infos
            offset += len(page)

    async def _apply(self) -> int:
        """Pause every consumer until the end of the pauses covering it, resume the others; how many there are.
        The pauses are read again after the caller's write: of two replicas changing them at once, the one that
        applies last applies what was written last."""
        pauses = await self.pauses()
        consumers = await self._consumers()
        # Highest band first: on a resume, a worker's first deliveries come from the most urgent jobs.
        consumers.sort(key=lambda info: self.names.jobs_consumer_priority(info.name or "") or 0)
        for info in consumers:
            assert info.name is not None
            pair = self.names.jobs_consumer_pair(info.name)
            if pair is not None:
                await self._pause_one(info.name, consumer_until(pauses, *pair))
        return len(consumers)

    async def _write(self, change: Change) -> tuple[QueueState, list[QueuePause], list[QueuePause], bool]:
        """Change the pauses by compare-and-set (replicas may pause at once).
        Returns (what was written, the pauses in effect, the pauses it ended, whether the pauses in effect changed)."""
        while True:
            state, revision = await self._read()
            now = now_ms()
            before = active(state, now)
            after, ended = change(before)
            if after == before and state is not None:
                return state, after, ended, False
            # Ended timed pauses stay until a replica announces their end (`_claim_end`), at most KEEP_ENDED_MS.
            recent = [
                p
                for p in (state.pauses if state is not None else [])
                if p.until is not None and now - KEEP_ENDED_MS < ms_from_iso(p.until) <= now
            ]
            value = QueueState(
                paused=any(is_global(p) for p in after), changed_at=iso_from_ms(now), pauses=[*recent, *after]
            )
            encoded = msgspec.json.encode(value)
            try:
                if revision is None:
                    await self.kv.create(QUEUE_KEY, encoded)
                else:
                    await self.kv.update(QUEUE_KEY, encoded, last=revision)
            except KeyWrongLastSequenceError:  # another replica wrote first: change what it wrote
                continue
            return value, after, ended, after != before

    async def pause(self, pause: QueuePause) -> tuple[list[QueuePause], int, bool]:
        """Add (or replace, for its scope) one pause and apply it. Returns (in effect, consumers, changed)."""
        value, after, _, changed = await self._write(lambda before: (paused(before, pause), []))
        consumers = await self._apply()
        if not changed:
            return after, consumers, False
        log.info("queue paused", scope=describe(pause), until=pause.until, reason=pause.reason, consumers=consumers)
        await self._announce(
            QueueEvent(
                event="paused",
                at=pause.paused_at,
                capability=pause.capability,
                type=pause.type,
                until=pause.until,
                reason=pause.reason,
            ),
            queue_event_msg_id("paused", pause.capability, pause.type, pause.paused_at),
        )
        self._arm(value)
        return after, consumers, changed

    async def resume(self, request: QueueResumeRequest) -> tuple[list[QueuePause], list[QueuePause], int]:
        """End every pause, or the one of the request's scope. Returns (still in effect, ended, consumers)."""
        value, after, ended, _ = await self._write(lambda before: resumed(before, request))
        consumers = await self._apply()
        at = now_iso()
        for p in ended:
            log.info("queue resumed", scope=describe(p), consumers=consumers)
            await self._announce(
                QueueEvent(event="resumed", at=at, capability=p.capability, type=p.type, reason=p.reason),
                queue_event_msg_id("resumed", p.capability, p.type, at),
            )
        self._arm(value)
        return after, ended, consumers

    async def remove_stale(self, serves: Callable[[str, str], bool], idle_s: float) -> list[str]:
        """Delete the job consumers of pools no live worker serves (`serves(capability, type)` is False) that
        hold nothing — no message pending, none delivered and unacked, no pull waiting — and have been so for
        `idle_s`: what a pool leaves behind once its last worker has gone for good. A worker that comes back
        asks for its consumers again (and one that finds its consumer gone while it runs asks again then)."""
        now = asyncio.get_running_loop().time()
        removed: list[str] = []
        seen: set[str] = set()
        for info in await self._consumers():
            name = info.name or ""
            pair = self.names.jobs_consumer_pair(name)
            if pair is None:
                continue
            seen.add(name)
            empty = not info.num_pending and not info.num_ack_pending and not info.num_waiting
            if not empty or serves(*pair):
                self._idle_since.pop(name, None)
                continue
            since = self._idle_since.setdefault(name, now)
            if now - since < idle_s:
                continue
            with contextlib.suppress(NotFoundError):  # another replica removed it first
                await self.js.delete_consumer(self.names.jobs_stream, name)
                removed.append(name)
                log.info("stale consumer removed", consumer=name, idle_s=round(now - since, 1))
            self._idle_since.pop(name, None)
        self._idle_since = {k: v for k, v in self._idle_since.items() if k in seen}
        return removed

    async def paused_consumers(self) -> int:
        """How many job consumers the server holds paused now."""
        return sum(1 for info in await self._consumers() if getattr(info, "paused", False))

    # --- announcing the ends of timed pauses ------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the pauses (another replica may have set them) and announce each timed one's end when it falls."""
        try:
            while True:
                try:
                    state, _ = await self._read()
                    self._arm(state)
                except Exception as exc:
                    log.warning("reading the queue's pauses failed; retrying", error=repr(exc))
                await asyncio.sleep(FOLLOW_S)
        finally:
            for task in self._ends.values():
                task.cancel()

    def _arm(self, state: QueueState | None) -> None:
        """A timer for the end of each timed pause not yet announced (one past: at once); none for a pause
        resumed or replaced, or whose end another replica announced."""
        written = {_key(p): p for p in (state.pauses if state else []) if p.until}
        for key in set(self._ends) - set(written):
            self._ends.pop(key).cancel()
        for key, p in written.items():
            if key not in self._ends:
                self._ends[key] = asyncio.create_task(self._end(p))

    async def _end(self, pause: QueuePause) -> None:
        assert pause.until is not None
        key = _key(pause)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(max(0.0, (ms_from_iso(pause.until) - now_ms()) / 1000))
            if await self._claim_end(key):
                await self._announce(
                    QueueEvent(
                        event="resumed",
                        at=pause.until,
                        capability=pause.capability,
                        type=pause.type,
                        reason=pause.reason,
                        expired=True,
                    ),
                    queue_event_msg_id("expired", pause.capability, pause.type, pause.until),
                )
                log.info("queue pause ended", scope=describe(pause), until=pause.until)
        self._ends.pop(key, None)

    async def _claim_end(self, key: tuple[str | None, str | None, str]) -> bool:
        """Remove an ended pause from the state by compare-and-set: the one replica that does announces its end
        (False: it was resumed, replaced, or another replica removed it first)."""
        while True:
            state, revision = await self._read()
            if state is None or revision is None or not any(_key(p) == key for p in state.pauses):
                return False
            rest = [p for p in state.pauses if _key(p) != key]
            value = QueueState(
                paused=any(
                    is_global(p) for p in active(QueueState(paused=False, changed_at="", pauses=rest), now_ms())
                ),
                changed_at=state.changed_at,
                pauses=rest,
            )
            try:
                await self.kv.update(QUEUE_KEY, msgspec.json.encode(value), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return True

    async def _announce(self, event: QueueEvent, msg_id: str) -> None:
        await publish_event(self.js, self.names.queue_event(event.event), event, msg_id=msg_id)


def _key(pause: QueuePause) -> tuple[str | None, str | None, str]:
    """One timed pause: its scope and end."""
    return (pause.capability, pause.type, pause.until or "")

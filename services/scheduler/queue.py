"""The job stream's consumers: one durable pull consumer per (capability, type, priority band), created when a
worker asks for them; pause and resume by JetStream consumer pause; whether the queue is paused.

Pause is a persisted switch (`control.queue` in the executions bucket) plus server-side consumer pause on
every consumer. Both orders of a race between "create a consumer" and "pause" end paused: the creator checks
the switch again after creating, and the pauser pauses every consumer it lists after setting the switch.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared.keys import QUEUE_KEY
from shared.logging import get_logger
from shared.messages import PRIORITIES, ConsumerRef, ConsumerSet, QueueState
from shared.subjects import Names
from shared.timeutil import now_iso

__all__ = ["PAUSE_FOREVER", "JobQueue"]

log = get_logger(__name__)

# JetStream pauses until a time; "until resumed" is a time far enough away.
PAUSE_FOREVER = "2999-12-31T23:59:59Z"


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
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def is_paused(self) -> bool:
        try:
            entry = await self.kv.get(QUEUE_KEY)
        except KeyNotFoundError:
            return False
        assert entry.value is not None
        return msgspec.json.decode(entry.value, type=QueueState).paused

    def consumer_config(self, capability: str, job_type: str, priority: int, *, paused: bool) -> ConsumerConfig:
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
            pause_until=PAUSE_FOREVER if paused else None,
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
        """Create the (capability, type) consumers of every priority band if missing, paused when the queue is
        paused."""
        refs = [self._ref(capability, job_type, p) for p in PRIORITIES]
        missing = [ref for ref in refs if ref.consumer not in self._known]
        if missing:
            async with self._lock:
                for ref in missing:
                    if ref.consumer not in self._known:
                        await self._ensure(capability, job_type, ref)
        return ConsumerSet(consumers=refs)

    async def _ensure(self, capability: str, job_type: str, ref: ConsumerRef) -> None:
        name = ref.consumer
        try:
            await self.js.consumer_info(self.names.jobs_stream, name)
        except NotFoundError:
            paused = await self.is_paused()
            await self.js.add_consumer(
                self.names.jobs_stream, self.consumer_config(capability, job_type, ref.priority, paused=paused)
            )
            log.info("consumer created", consumer=name, paused=paused)
            if not paused and await self.is_paused():
                await self.js.pause_consumer(self.names.jobs_stream, name, PAUSE_FOREVER)
        self._known.add(name)

    async def _consumers(self) -> list[ConsumerInfo]:
        infos: list[ConsumerInfo] = []
        offset = 0
        while True:
            page = await self.js.consumers_info(self.names.jobs_stream, offset=offset)
            infos.extend(page)
            if len(page) < 256:
                return infos
            offset += len(page)

    async def set_paused(self, paused: bool) -> tuple[bool, int]:
        """Persist the switch, then apply it to every consumer. Returns (changed, consumers touched)."""
        was = await self.is_paused()
        await self.kv.put(QUEUE_KEY, msgspec.json.encode(QueueState(paused=paused, changed_at=now_iso())))
        consumers = await self._consumers()
        # Highest band first: on a resume, a worker's first deliveries come from the most urgent jobs.
        consumers.sort(key=lambda info: self.names.jobs_consumer_priority(info.name or "") or 0)
        for info in consumers:
            assert info.name is not None
            if paused:
                await self.js.pause_consumer(self.names.jobs_stream, info.name, PAUSE_FOREVER)
            else:
                await self.js.resume_consumer(self.names.jobs_stream, info.name)
        log.info("queue paused" if paused else "queue resumed", consumers=len(consumers), changed=was != paused)
        return was != paused, len(consumers)

    async def paused_consumers(self) -> int:
        """How many job consumers the server holds paused now."""
        return sum(1 for info in await self._consumers() if getattr(info, "paused", False))

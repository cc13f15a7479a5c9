"""Dispatch: ready jobs become job messages on the job stream, and a cancel takes them back.

Jobs of one type of one execution that become ready together may share a message (a bundle): one publish, one
delivery and one ack for many quick jobs. How many share one follows how long jobs of that type take
(`bundle_size`): quick ones are bundled, long ones travel alone so that they spread over every free slot of every
worker instead of queueing behind each other on one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import tracing
from shared.keys import result_key
from shared.logging import get_logger
from shared.messages import CancelNotice, JobBundle, JobItem
from shared.pipeline import Pipeline
from shared.subjects import Names

from .machine import ExecutionState, Job

__all__ = ["BUNDLE_BUDGET_MS", "MAX_BUNDLE", "Dispatcher", "Durations", "Outgoing", "bundle_size"]

log = get_logger(__name__)

MAX_BUNDLE = 32
BUNDLE_BUDGET_MS = 5.0
"""A bundle holds as many jobs as run in about this long: what one worker may hold that another could run."""
MAX_MESSAGE_BYTES = 900 * 1024
INLINE_DEPENDENCIES_BYTES = 256 * 1024
"""Parent results inlined per job; beyond that the worker reads them from the executions bucket."""
PUBLISH_ATTEMPTS = 6

_encode = msgspec.json.Encoder().encode
_bundle_decoder = msgspec.json.Decoder(JobBundle)


def bundle_size(mean_ms: float | None) -> int:
    """Jobs per message for a type whose jobs take `mean_ms` on average (None: not seen yet, so one: a type
    nobody has measured may be long)."""
    if mean_ms is None:
        return 1
    return max(1, min(MAX_BUNDLE, int(BUNDLE_BUDGET_MS / max(mean_ms, 0.01))))


class Durations:
    """How long jobs of each (capability, type) take, as an exponentially weighted mean of their reports."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self._mean: dict[tuple[str, str], float] = {}

    def add(self, capability: str, job_type: str, ms: float) -> None:
        key = (capability, job_type)
        old = self._mean.get(key)
        self._mean[key] = ms if old is None else old + self.weight * (ms - old)

    def mean(self, capability: str, job_type: str) -> float | None:
        return self._mean.get((capability, job_type))

    def bundle_size(self, capability: str, job_type: str) -> int:
        return bundle_size(self.mean(capability, job_type))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One job message to publish: its id (the bundle, or a part of it when too large), subject and jobs."""

    bundle: str
    msg_id: str
    subject: str
    data: bytes
    job_ids: tuple[str, ...]
    headers: dict[str, str]


class Dispatcher:
    def __init__(self, nc: Client, js: JetStreamContext, pipeline: Pipeline, names: Names, bucket: str) -> None:
        self.nc = nc
        self.js = js
        self.pipeline = pipeline
        self.names = names
        self.bucket = bucket
        self.published = 0

    def _item(self, state: ExecutionState, job: Job, spilled: list[tuple[str, Job]]) -> JobItem:
        dependencies: dict[str, object] = {}
        fetch: list[str] = []
        size = 0
        for index in job.parents:
            parent = state.jobs[index]
            if parent.result_ref is not None:
                fetch.append(parent.id)
                continue
            n = len(_encode(parent.result)) if parent.result is not None else 4
            if size + n > INLINE_DEPENDENCIES_BYTES:
                fetch.append(parent.id)
                spilled.append((result_key(state.execution_id, parent.id), parent))
                continue
            dependencies[parent.id] = parent.result
            size += n
        assert job.token is not None
        return JobItem(
            job_id=job.id,
            name=job.name,
            attempt=job.attempt,
            token=job.token,
            config=job.config,
            dependencies=dependencies,
            fetch_dependencies=fetch,
            timeout_s=job.timeout_s,
        )

    async def prepare(self, state: ExecutionState, jobs: Iterable[Job]) -> list[Outgoing]:
        """The messages for these dispatched jobs, grouped by the bundle the machine put each in."""
        bundles: dict[str, list[Job]] = {}
        for job in jobs:
            if job.bundle is not None and job.status == "queued":
                bundles.setdefault(job.bundle, []).append(job)
        out: list[Outgoing] = []
        spilled: list[tuple[str, Job]] = []
        for bundle, members in bundles.items():
            first = members[0]
            subject = self.names.jobs(first.capability, first.type, first.priority, state.execution_id)
            items = [self._item(state, job, spilled) for job in members]
            parts = _split(items)
            for n, part in enumerate(parts):
                message = JobBundle(
                    execution_id=state.execution_id,
                    workflow_id=state.workflow_id,
                    round=state.round,
                    type=first.type,
                    shard=state.shard,
                    jobs=part,
                )
                msg_id = bundle if len(parts) == 1 else f"{bundle}.{n}"
                headers = {"Nats-Msg-Id": msg_id}
                if tracing.enabled():
                    # The dispatch is a span of the submit's trace; the worker's span of the job continues it.
                    attributes: dict[str, str | int] = {
                        "jetdag.execution_id": state.execution_id,
                        "jetdag.jobs": len(part),
                    }
                    with tracing.span(
                        f"dispatch {first.type}", parent=state.traceparent, kind="producer", attributes=attributes
                    ):
                        headers = tracing.inject(headers) or headers
                out.append(Outgoing(bundle, msg_id, subject, _encode(message), tuple(i.job_id for i in part), headers))
        # Results that did not fit inline are read by the worker from the bucket: write them before the job goes.
        for key, parent in {k: p for k, p in spilled}.items():
            await self.pipeline.kv_write(self.bucket, key, _encode(parent.result), last=None)
        return out

    async def publish(self, outgoing: list[Outgoing]) -> list[Outgoing]:
        """Publish (pipelined) and return the messages the job stream stored; a failure is logged and left
        for recovery to publish again (under the same message id, so never twice)."""
        if len(outgoing) == 1:
            results = [await self._publish_one(outgoing[0])]  # a lone message needs no task
        else:
            results = await asyncio.gather(*(self._publish_one(o) for o in outgoing))
        placed = [o for o, ok in zip(outgoing, results, strict=True) if ok]
        self.published += len(placed)
        return placed

    async def _publish_one(self, o: Outgoing) -> bool:
        headers = o.headers
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await self.pipeline.publish(o.subject, o.data, headers)
                return True
            except Exception as exc:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    log.warning("job message not published; recovery will retry", msgId=o.msg_id, error=repr(exc))
                    return False
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        return False

    async def withdraw(self, execution_id: str) -> None:
        """Take every queued message of the execution off the job stream: none of its jobs will be delivered."""
        await self.js.purge_stream(self.names.jobs_stream, subject=self.names.jobs_of_execution(execution_id))

    async def withdraw_stale(self, state: ExecutionState) -> int:
        """Delete the execution's job messages in which no job is on its current dispatch (a paused execution's
        withdrawn jobs: `ready` under no token). A message holding a current dispatch stays, so one a worker is
        working through keeps its redelivery. Deleting stale messages is safe whenever it runs: a token, once
        replaced, never becomes current again. The work-queue stream holds only messages not acked yet, so this
        reads few. Returns how many were deleted."""
        stream = self.names.jobs_stream
        subject = self.names.jobs_of_execution(state.execution_id)
        deleted = 0
        seq = 1
        while True:
            try:
                msg = await self.js.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                break
            assert msg.seq is not None
            seq = msg.seq + 1
            try:
                items = _bundle_decoder.decode(msg.data or b"").jobs
            except msgspec.ValidationError:
                continue
            if not any(_current(state, item) for item in items):
                with contextlib.suppress(NotFoundError):  # acked (or deleted) meanwhile
                    await self.js.delete_msg(stream, msg.seq)
                    deleted += 1
        return deleted

    async def notify_cancel(self, execution_id: str, round_: int) -> None:
        notice = CancelNotice(execution_id=execution_id, round=round_)
        await self.nc.publish(self.names.workers_cancel, _encode(notice))


def _current(state: ExecutionState, item: JobItem) -> bool:
    job = state.job(item.job_id)
    return job is not None and job.token == item.token and job.status in ("queued", "running")


def _split(items: list[JobItem]) -> list[list[JobItem]]:
    """Items in messages of at most MAX_MESSAGE_BYTES (a bundle of large configs is sent in parts)."""
    parts: list[list[JobItem]] = [[]]
    size = 0
    for item in items:
        n = len(_encode(item))
        if parts[-1] and size + n > MAX_MESSAGE_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += n
    return parts

"""The registry: register, heartbeat, deregister, get, list, summary — and reaping of silent workers.

Every write is to the workers KV bucket; heartbeats use compare-and-set so concurrent writers (a heartbeat
racing the reaper, two registry replicas) never lose an update.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import msgspec
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.commands import Conflict, Endpoint, Invalid, NotFound, add_endpoints
from shared.events import publish_event
from shared.jetstream import (
    ensure_bucket,
    ensure_stream,
    events_stream_config,
    is_wrong_last_sequence,
    kv_config,
    kv_entries,
)
from shared.logging import get_logger
from shared.messages import (
    MAX_METADATA_BYTES,
    DeregisterReply,
    HeartbeatCommand,
    ListWorkers,
    RegisterReply,
    RegisterWorker,
    WorkerEvent,
    WorkerList,
    WorkerRecord,
    WorkerRef,
    WorkerSummary,
    WorkerView,
)
from shared.metrics import RegistryMetrics
from shared.service import ServiceContext
from shared.settings import RegistrySettings, load
from shared.timeutil import now_iso, now_ms

from .roster import Roster
from .status import derive_status, held_by_other, silence_ms, view

__all__ = ["RegistryService"]

log = get_logger(__name__)
VERSION = "0.1.0"
CAS_ATTEMPTS = 8

_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(WorkerRecord).decode


class RegistryService:
    name = "registry"

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or load(RegistrySettings)
        self._kv: KeyValue | None = None
        self._ctx: ServiceContext | None = None
        self._roster: Roster | None = None

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "serve() not called"
        return self._kv

    @property
    def roster(self) -> Roster:
        assert self._roster is not None, "serve() not called"
        return self._roster

    @property
    def ctx(self) -> ServiceContext:
        assert self._ctx is not None, "serve() not called"
        return self._ctx

    async def ensure(self, ctx: ServiceContext) -> None:
        await ensure_stream(ctx.js, events_stream_config(ctx.names, ctx.storage))
        self._kv = await ensure_bucket(
            ctx.js, kv_config(ctx.names.workers_bucket, "jetdag worker records", ctx.storage)
        )

    async def serve(self, ctx: ServiceContext, stack: AsyncExitStack) -> None:
        self._ctx = ctx
        self._roster = Roster(ctx.js, ctx.names.workers_bucket)
        ctx.spawn(self._roster.run(), "roster")
        ctx.reconnect_listeners.append(self._roster.resubscribe)
        svc = await add_endpoints(
            ctx.nc,
            service=ctx.names.registry_service,
            description="jetdag worker registry: register, heartbeat, deregister, list",
            version=VERSION,
            prefix=ctx.names.registry_prefix,
            endpoints={
                "register": Endpoint(RegisterWorker, self.register),
                "heartbeat": Endpoint(HeartbeatCommand, self.heartbeat),
                "deregister": Endpoint(WorkerRef, self.deregister),
                "get": Endpoint(WorkerRef, self.get),
                "list": Endpoint(ListWorkers, self.list_workers),
                "summary": Endpoint(ListWorkers, self.summary),
                # The same, and it may replace a live worker's record: only the gateway's NATS credential may
                # send it, for an admin token (shared/permissions.py).
                "takeover": Endpoint(RegisterWorker, self.takeover),
            },
        )
        stack.push_async_callback(svc.stop)
        ctx.spawn(self._reaper(), "reaper")

    # --- commands ------------------------------------------------------------------------------------

    async def register(self, cmd: RegisterWorker) -> RegisterReply:
        return await self._register(cmd, takeover=False)

    async def takeover(self, cmd: RegisterWorker) -> RegisterReply:
        return await self._register(cmd, takeover=True)

    async def _register(self, cmd: RegisterWorker, *, takeover: bool) -> RegisterReply:
        if len(_encode(cmd.metadata)) > MAX_METADATA_BYTES:
            raise Invalid(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
        if cmd.current_load > cmd.max_concurrency:
            raise Invalid(f"currentLoad ({cmd.current_load}) must not exceed maxConcurrency ({cmd.max_concurrency})")
        now = now_iso()
        record = WorkerRecord(
            worker_id=cmd.worker_id,
            hostname=cmd.hostname,
            pid=cmd.pid,
            capabilities=sorted(set(cmd.capabilities)),
            max_concurrency=cmd.max_concurrency,
            current_load=cmd.current_load,
            metadata=cmd.metadata,
            registered_at=now,
            last_heartbeat=now,
            heartbeat_interval_s=cmd.heartbeat_interval_s or self.settings.rest_heartbeat_interval_s,
        )
        payload = _encode(record)
        for _ in range(CAS_ATTEMPTS):
            try:
                self.roster.wrote(await self.kv.create(cmd.worker_id, payload), record)
                created = True
                break
            except KeyWrongLastSequenceError:
                pass
            # A restarted worker registers again under its id: its new record replaces the old one, unless the
            # id belongs to a live worker on another host (forged registrations must not hijack its record).
            try:
                entry, held = await self._load(cmd.worker_id)
            except NotFound:
                continue  # deregistered meanwhile: create it
            holder = held_by_other(held, record, now_ms())
            if holder is not None and not takeover:
                log.warning("registration refused", workerId=cmd.worker_id, hostname=cmd.hostname, holder=holder)
                raise Conflict(
                    f"worker id {cmd.worker_id} is held by a live worker on {holder}; deregister it first, or "
                    "register with an admin API token"
                )
            try:
                self.roster.wrote(await self.kv.update(cmd.worker_id, payload, last=entry.revision), record)
            except KeyWrongLastSequenceError:
                continue
            if holder is not None:
                log.warning("worker taken over", workerId=cmd.worker_id, hostname=cmd.hostname, holder=holder)
            created = False
            break
        else:
            raise Conflict(f"worker {cmd.worker_id} is being updated concurrently; retry the registration")
        log.info("worker registered", workerId=cmd.worker_id, created=created)
        await self._event(record, "registered")
        return RegisterReply(worker=view(record, now_ms()), created=created)

    async def heartbeat(self, cmd: HeartbeatCommand) -> WorkerView:
        recovered = False
        for _ in range(CAS_ATTEMPTS):
            entry, record = await self._load(cmd.worker_id)
            if cmd.current_load > record.max_concurrency:
                raise Invalid(
                    f"currentLoad ({cmd.current_load}) must not exceed the worker's maxConcurrency "
                    f"({record.max_concurrency})"
                )
            recovered = record.unhealthy_since is not None
            record.current_load = cmd.current_load
            record.problem = cmd.problem
            record.last_heartbeat = now_iso()
            record.unhealthy_since = None
            try:
                self.roster.wrote(await self.kv.update(cmd.worker_id, _encode(record), last=entry.revision), record)
            except KeyWrongLastSequenceError:
                continue
            if recovered:
                await self._event(record, "recovered", status=derive_status(record, now_ms()))
            return view(record, now_ms())
        raise Conflict(f"worker {cmd.worker_id} is being updated concurrently; retry the heartbeat")

    async def deregister(self, cmd: WorkerRef) -> DeregisterReply:
        entry, record = await self._load(cmd.worker_id)
        await self.kv.delete(cmd.worker_id)
        self.roster.deleted(cmd.worker_id, entry.revision or 0)
        log.info("worker deregistered", workerId=cmd.worker_id)
        await self._event(record, "deregistered")
        return DeregisterReply(worker_id=cmd.worker_id)

    async def get(self, cmd: WorkerRef) -> WorkerView:
        _, record = await self._load(cmd.worker_id)
        return view(record, now_ms())

    async def list_workers(self, _: ListWorkers) -> WorkerList:
        now = now_ms()
        views = [view(record, now) for _, record in await self._all()]
        views.sort(key=lambda v: v.worker_id)
        return WorkerList(workers=views)

    async def summary(self, __: ListWorkers) -> WorkerSummary:
        now = now_ms()
        counts = {"idle": 0, "busy": 0, "unhealthy": 0}
        load = capacity = 0
        records = await self._all()
        for _, record in records:
            status = derive_status(record, now)
            counts[status] += 1
            if status != "unhealthy":
                load += record.current_load
                capacity += record.max_concurrency
        return WorkerSummary(
            total=len(records),
            active=counts["idle"] + counts["busy"],
            idle=counts["idle"],
            busy=counts["busy"],
            unhealthy=counts["unhealthy"],
            load=load,
            capacity=capacity,
        )

    async def refresh_metrics(self) -> None:
        """Before each metrics scrape: the fleet as the workers bucket holds it now."""
        s = await self.summary(ListWorkers())
        RegistryMetrics.process().fleet(
            {"idle": s.idle, "busy": s.busy, "unhealthy": s.unhealthy}, busy=s.load, capacity=s.capacity
        )

    # --- internals -----------------------------------------------------------------------------------

    async def _load(self, worker_id: str) -> tuple[KeyValue.Entry, WorkerRecord]:
        try:
            entry = await self.kv.get(worker_id)
        except KeyNotFoundError:
            raise NotFound(f"worker {worker_id} is not registered") from None
        assert entry.value is not None
        return entry, _decode_record(entry.value)

    async def _all(self) -> list[tuple[int, WorkerRecord]]:
        """(revision, record) of every worker: from the roster while it follows the bucket, else read once."""
        if self.roster.current.is_set():
            return self.roster.records()
        out = []
        for entry in await kv_entries(self.ctx.js, self.ctx.names.workers_bucket):
            if entry.value:
                out.append((entry.revision, _decode_record(entry.value)))
        return out

    async def _event(self, record: WorkerRecord, what: str, **extra: object) -> None:
        event = WorkerEvent(event=what, worker_id=record.worker_id, at=now_iso(), **extra)  # type: ignore[arg-type]
        await publish_event(self.ctx.js, self.ctx.names.worker_event(record.worker_id, what), event)

    async def _reaper(self) -> None:
        """Announce workers that went silent, and remove those silent for longer than `reap_after_s`."""
        while True:
            try:
                await self._reap_once()
            except Exception as exc:  # a NATS hiccup must not kill the loop; the next pass retries
                log.warning("reaper pass failed", error=str(exc) or type(exc).__name__)
            await asyncio.sleep(self.settings.reap_check_s)

    async def _reap_once(self) -> None:
        now = now_ms()
        for revision, record in await self._all():
            silent = silence_ms(record, now)
            try:
                if silent > self.settings.reap_after_s * 1000:
                    # CAS delete: only one replica reaps, and never a worker that just heartbeated.
                    await self.kv.delete(record.worker_id, last=revision)
                    self.roster.deleted(record.worker_id, revision)
                    log.info("worker reaped", workerId=record.worker_id, silent_s=silent / 1000)
                    await self._event(record, "reaped", reason=f"no heartbeat for {silent / 1000:.0f} s")
                elif derive_status(record, now) == "unhealthy" and record.unhealthy_since is None:
                    # A copy: the roster's record changes only once the write is stored.
                    marked = msgspec.structs.replace(record, unhealthy_since=now_iso())
                    self.roster.wrote(await self.kv.update(record.worker_id, _encode(marked), last=revision), marked)
                    log.warning("worker unhealthy", workerId=record.worker_id, silent_s=silent / 1000)
                    await self._event(
                        marked,
                        "unhealthy",
                        status="unhealthy",
                        reason=f"no heartbeat for {silent / 1000:.0f} s",
                    )
            except (KeyWrongLastSequenceError, APIError) as exc:
                if not is_wrong_last_sequence(exc):
                    raise
                continue  # changed under us (heartbeat, or another replica got there first)

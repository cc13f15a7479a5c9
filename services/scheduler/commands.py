"""The scheduler's commands. Any replica answers `<ns>.scheduler.<command>` (queue group); a command about one
execution is carried out by the replica owning the execution's shard, so a replica that does not own it sends it
on to `<ns>.scheduler.shard.<n>.<command>`, which only the owner serves. Reads of ended executions are answered
by any replica (every replica's index holds the final records)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from shared.commands import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    CommandError,
    Conflict,
    Endpoint,
    Invalid,
    NotFound,
    Unavailable,
    forward,
)
from shared.ids import check_id, check_idempotency_key, check_name
from shared.jetstream import is_store_full
from shared.keys import execution_key, idempotency_key, kv_subject
from shared.logging import get_logger
from shared.messages import (
    FINAL_EXECUTION_STATES,
    ConsumerSet,
    EnsureConsumer,
    ExecuteCommand,
    ExecuteReply,
    ExecuteRequest,
    ExecutionList,
    ExecutionRecord,
    ExecutionRef,
    ExecutionView,
    IdempotencyRecord,
    JobList,
    JobsQuery,
    JobView,
    ListExecutions,
    QueueControl,
    QueuePause,
    QueuePauseCommand,
    QueuePauseRequest,
    QueuePauses,
    QueueResumeCommand,
    QueueResumeRequest,
    QueueStats,
    QueueStatsReply,
    RateLimitCommand,
    RateLimitList,
    RateLimitRecord,
    RateLimitReply,
    RateLimitView,
)
from shared.pauses import is_global, pause_of
from shared.pipeline import JetStreamError
from shared.subjects import Names
from shared.timeutil import iso_from_ms, now_iso, now_ms

from . import machine
from .dag import Dag, start_at, validate
from .ids import new_execution_id
from .index import ExecutionIndex
from .journal import Fenced
from .lifecycle import Context, Owned
from .queue import JobQueue
from .recovery import create, ended_state, reopen
from .shards import Shard, ShardManager
from .views import job_view, record_view

__all__ = ["Commands"]

log = get_logger(__name__)

T = TypeVar("T", bound=msgspec.Struct)
_encode = msgspec.json.Encoder().encode
_record_decoder = msgspec.json.Decoder(ExecutionRecord)
_idempotency_decoder = msgspec.json.Decoder(IdempotencyRecord)
OWNER_WAIT_S = 5.0
"""How long a command waits for its shard to get an owner (a takeover in progress) before answering 503."""
STATS_CACHE_S = 0.25
MAX_JOBS_PAGE = 5000
PAGE_BYTES = 512 * 1024
"""A page of the job listing stays well inside one NATS reply."""
ADMITTED_UNSEEN_S = 30.0
"""A submission the index has not counted this long after its admission no longer counts against the bounds."""
COMMANDS_AT_ONCE = 64
"""Requests of one read or submit endpoint answered at once (the rest wait in the subscription's queue)."""


@dataclass
class _Admission:
    created: bool = False
    """Set once the execution exists: it then counts until the index does (else it is forgotten at once)."""


@dataclass
class Commands:
    ctx: Context
    manager: ShardManager
    index: ExecutionIndex
    queue: JobQueue
    names: Names
    submissions: ObjectStore
    max_jobs: int
    max_open_jobs: int
    timeout_s: float
    idempotency_ttl_s: float = 24 * 3600.0
    max_types: int = 0
    max_open_per_token: int = 0
    _counts: tuple[float, list[QueuePause]] | None = None
    _admitting: dict[str, tuple[int, str | None, float]] = field(default_factory=dict)
    """Submissions admitted (execution id → jobs, submitter, admitted at): counted against the bounds until the
    index counts them, since submits are answered concurrently and the index learns of a new record from its
    watch a moment after the write."""

    def endpoints(self) -> dict[str, Endpoint]:
        """The queue-grouped endpoints every replica serves."""
        return {
            "execute": Endpoint(ExecuteCommand, self.execute, concurrent=COMMANDS_AT_ONCE),
            "get": Endpoint(ExecutionRef, self.get, concurrent=COMMANDS_AT_ONCE),
            "jobs": Endpoint(JobsQuery, self.jobs, concurrent=COMMANDS_AT_ONCE),
            "list": Endpoint(ListExecutions, self.list_executions, concurrent=COMMANDS_AT_ONCE),
            "cancel": Endpoint(ExecutionRef, self.cancel),
            "retry": Endpoint(ExecutionRef, self.retry),
            "pause-execution": Endpoint(ExecutionRef, self.pause_execution),
            "resume-execution": Endpoint(ExecutionRef, self.resume_execution),
            "queue.stats": Endpoint(ExecutionRef, self.stats, concurrent=COMMANDS_AT_ONCE),
            "queue.pause": Endpoint(QueuePauseCommand, self.pause),
            "queue.resume": Endpoint(QueueResumeCommand, self.resume),
            "queue.pauses": Endpoint(ExecutionRef, self.pauses),
            "consumer": Endpoint(EnsureConsumer, self.consumer),
            "ratelimit.put": Endpoint(RateLimitCommand, self.put_rate_limit),
            "ratelimit.get": Endpoint(RateLimitCommand, self.get_rate_limit),
            "ratelimit.delete": Endpoint(RateLimitCommand, self.delete_rate_limit),
            "ratelimit.list": Endpoint(RateLimitCommand, self.list_rate_limits),
        }

    def owner_endpoints(self) -> dict[str, Endpoint]:
        """What the owner of a shard serves on `<ns>.scheduler.shard.<n>.*`."""
        return {
            "execute": Endpoint(ExecuteCommand, self.execute, concurrent=COMMANDS_AT_ONCE),
            "get": Endpoint(ExecutionRef, self.local_get, concurrent=COMMANDS_AT_ONCE),
            "jobs": Endpoint(JobsQuery, self.local_jobs, concurrent=COMMANDS_AT_ONCE),
            "cancel": Endpoint(ExecutionRef, self.local_cancel),
            "retry": Endpoint(ExecutionRef, self.local_retry),
            "pause-execution": Endpoint(ExecutionRef, self.local_pause_execution),
            "resume-execution": Endpoint(ExecutionRef, self.local_resume_execution),
        }

    # --- routing ----------------------------------------------------------------------------------------------

    async def _routed(self, command: str, payload: msgspec.Struct, execution_id: str, reply: type[T]) -> T:
        """Carry out here if this replica owns the execution's shard, else send it to the owner."""
        shard = self.manager.shard_of(execution_id)
        deadline = time.monotonic() + OWNER_WAIT_S
        while True:
            if shard in self.manager.held:
                local = self.owner_endpoints()[command]
                return await local.handler(payload)  # type: ignore[return-value]
            try:
                msg = await forward(
                    self.ctx.nc,
                    self.names.scheduler_shard(shard, command),
                    _encode(payload),
                    service="scheduler replica",
                    timeout=self.timeout_s,
                )
            except Unavailable:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"no scheduler replica owns execution {execution_id} right now (shard {shard} is being "
                        "taken over); try again"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            headers = msg.headers or {}
            if ERROR_CODE_HEADER in headers:
                raise CommandError(
                    headers.get(ERROR_HEADER) or "the owning scheduler failed", int(headers[ERROR_CODE_HEADER])
                )
            return msgspec.json.decode(msg.data, type=reply)

    def _finished_record(self, execution_id: str) -> ExecutionRecord | None:
        found = self.index.get(execution_id)
        if found is not None and found[0].status in FINAL_EXECUTION_STATES:
            return found[0]
        return None

    async def _record(self, execution_id: str) -> tuple[ExecutionRecord, int] | None:
        """From the index (open executions and the last finished ones), else from the bucket."""
        indexed = self.index.get(execution_id)
        if indexed is not None:
            return indexed
        found = await self.ctx.pipeline.kv_get(self.ctx.bucket, execution_key(execution_id))
        if found is None:
            return None
        record = _record_decoder.decode(found[0])
        if record.status in FINAL_EXECUTION_STATES:
            self.index.remember(record, found[1])
        return record, found[1]

    async def _owned(self, execution_id: str) -> Owned | None:
        """The execution in memory here; an open one being read back is waited for a moment."""
        owned = self.manager.owned.get(execution_id)
        deadline = time.monotonic() + OWNER_WAIT_S
        while owned is None and execution_id in self.manager.reloading and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            owned = self.manager.owned.get(execution_id)
        return owned

    # --- submit -----------------------------------------------------------------------------------------------

    async def execute(self, cmd: ExecuteCommand) -> ExecuteReply:
        request = cmd.request
        if request is None:
            if cmd.staged is None:
                raise Invalid("execute needs a request or a staged submission")
            request = await self._staged(cmd.staged)
        key = cmd.idempotency_key or request.idempotency_key
        if cmd.idempotency_key and request.idempotency_key and cmd.idempotency_key != request.idempotency_key:
            raise Invalid("the Idempotency-Key header and the idempotencyKey field differ; send one of them")
        dag = validate(request, self.max_jobs, self.max_types)
        start_at(request, now_ms())  # runAt / delayS checked before anything is written
        if key is None:
            shard = await self._shard_for_new()
            execution_id = self._new_id(shard)
            with self._admit(execution_id, len(dag.jobs), cmd.submitted_by) as admission:
                view = await self._create(request, dag, shard, execution_id, cmd.submitted_by)
                admission.created = True
                return ExecuteReply(execution=view)
        return await self._idempotent(check_idempotency_key(key), request, dag, cmd.submitted_by)

    @contextlib.contextmanager
    def _admit(self, execution_id: str, jobs: int, submitted_by: str | None) -> Iterator[_Admission]:
        """Backpressure: refuse a submission that would push the open jobs over the bound, or its token's open
        executions over theirs, before anything of it is written. Admitted, it counts against both bounds
        while it is being created and the index does not count it yet, so that submits answered at once
        cannot slip past them together."""
        now = time.monotonic()
        for k, (_, _, at) in list(self._admitting.items()):
            if k in self.index or now - at > ADMITTED_UNSEEN_S:
                del self._admitting[k]
        creating = [(n, by) for n, by, _ in self._admitting.values()]
        if submitted_by is not None and self.max_open_per_token:
            open_executions = self.index.open_for(submitted_by) + sum(1 for _, by in creating if by == submitted_by)
            if open_executions >= self.max_open_per_token:
                raise CommandError(
                    f"token {submitted_by} has {open_executions} open executions (the limit is "
                    f"{self.max_open_per_token}, JETDAG_MAX_OPEN_EXECUTIONS_PER_TOKEN); wait for some to end",
                    429,
                )
        open_jobs = self.index.open_jobs + sum(n for n, _ in creating)
        if open_jobs + jobs > self.max_open_jobs:
            raise Unavailable(
                f"the scheduler is at capacity: {open_jobs} jobs are open and this execution adds {jobs} "
                f"(limit {self.max_open_jobs}); retry later"
            )
        self._admitting[execution_id] = (jobs, submitted_by, now)
        admission = _Admission()
        try:
            yield admission
        finally:
            if not admission.created:
                self._admitting.pop(execution_id, None)  # (already pruned if its record was seen before a failure)

    async def _shard_for_new(self) -> Shard:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.manager.owns_some.wait(), OWNER_WAIT_S)
        shard = self.manager.owned_shard_for_new()
        if shard is None:
            raise Unavailable("this scheduler replica owns no shard yet (starting or rebalancing); try again")
        return shard

    def _new_id(self, shard: Shard) -> str:
        """A fresh execution id of one of this replica's shards: the replica that takes a submission owns it."""
        execution_id = new_execution_id()
        while self.manager.shard_of(execution_id) != shard.n:
            execution_id = new_execution_id()
        return execution_id

    async def _create(
        self, request: ExecuteRequest, dag: Dag, shard: Shard, execution_id: str, submitted_by: str | None
    ) -> ExecutionView:
        run_at = start_at(request, now_ms())
        try:
            owned = await create(
                self.ctx,
                execution_id=execution_id,
                workflow_id=request.workflow_id,
                parallelism=request.parallelism,
                priority=request.priority,
                jobs=list(dag.jobs.values()),
                shard=shard.n,
                epoch=shard.revision,
                submitted_by=submitted_by,
                run_at=None if run_at is None else iso_from_ms(run_at),
            )
        except Exception as exc:
            if not is_store_full(exc):
                raise
            # Refused before its record (the commit point) was stored: it does not exist. What of its journal
            # was stored is an uncommitted draft under a fresh id; drop it, so a full store is not fuller.
            log.warning("execution refused: the store is full", executionId=execution_id, error=str(exc))
            with contextlib.suppress(Exception):
                await self.ctx.journal.purge(execution_id)
            raise Unavailable(
                f"JetStream has no room to store the execution ({exc}); nothing was submitted. Free space in the "
                "store or raise its limit, then retry"
            ) from None
        self.manager.owned[execution_id] = owned
        view = await owned.view()
        await owned.execution_event("created")
        owned.start()
        log.info(
            "execution accepted",
            executionId=execution_id,
            workflowId=request.workflow_id,
            jobs=len(dag.jobs),
            parallelism=request.parallelism,
            shard=shard.n,
            runAt=owned.state.run_at,
        )
        return view

    async def _idempotent(self, key: str, request: ExecuteRequest, dag: Dag, submitted_by: str | None) -> ExecuteReply:
        """The execution this key created (200), or a new one (201) the key then names for its TTL. A retry
        after a 503 or a lost answer is therefore safe: it never creates a second execution."""
        fingerprint = hashlib.sha256(_encode(msgspec.structs.replace(request, idempotency_key=None))).hexdigest()
        record_key = idempotency_key(hashlib.sha256(key.encode()).hexdigest()[:40])
        for _ in range(3):
            found = await self.ctx.pipeline.kv_get(self.ctx.bucket, record_key)
            if found is None:
                shard = await self._shard_for_new()
                execution_id = self._new_id(shard)
                with self._admit(execution_id, len(dag.jobs), submitted_by) as admission:
                    record = IdempotencyRecord(execution_id=execution_id, fingerprint=fingerprint, created_at=now_iso())
                    headers = {
                        "Nats-Expected-Last-Subject-Sequence": "0",
                        "Nats-TTL": f"{int(self.idempotency_ttl_s)}s",
                    }
                    try:
                        await self.ctx.pipeline.publish(
                            kv_subject(self.ctx.bucket, record_key), _encode(record), headers
                        )
                    except JetStreamError as exc:
                        if exc.wrong_last_sequence:
                            continue  # the same key at the same moment elsewhere: read what it wrote
                        raise
                    view = await self._create(request, dag, shard, execution_id, submitted_by)
                    admission.created = True
                    return ExecuteReply(execution=view)
            record = _idempotency_decoder.decode(found[0])
            if record.fingerprint != fingerprint:
                raise Conflict(
                    f"Idempotency-Key {key!r} was already used with a different request "
                    f"(it created execution {record.execution_id})"
                )
            return await self._existing(key, record, request, dag, submitted_by)
        raise Unavailable("the Idempotency-Key is being used by another request right now; try again")

    async def _existing(
        self, key: str, record: IdempotencyRecord, request: ExecuteRequest, dag: Dag, submitted_by: str | None
    ) -> ExecuteReply:
        """What an earlier request with this key created, finishing the creation if its creator died midway."""
        execution_id = record.execution_id
        deadline = time.monotonic() + OWNER_WAIT_S
        while True:
            try:
                return ExecuteReply(execution=await self.get(ExecutionRef(execution_id=execution_id)), created=False)
            except NotFound:
                pass
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)  # its creator may be writing it right now
        # Its creator died between naming it and committing it: create it now, under the same id, in its shard.
        shard = self.manager.held.get(self.manager.shard_of(execution_id))
        if shard is None:
            msg = await forward(
                self.ctx.nc,
                self.names.scheduler_shard(self.manager.shard_of(execution_id), "execute"),
                _encode(ExecuteCommand(request=request, idempotency_key=key, submitted_by=submitted_by)),
                service="scheduler replica",
                timeout=self.timeout_s,
            )
            return _reply(msg, ExecuteReply)
        with contextlib.suppress(Fenced):
            await self.ctx.journal.purge(execution_id)  # a journal without a record: never committed
            return ExecuteReply(execution=await self._create(request, dag, shard, execution_id, submitted_by))
        return ExecuteReply(execution=await self.get(ExecutionRef(execution_id=execution_id)), created=False)

    async def _staged(self, name: str) -> ExecuteRequest:
        try:
            obj = await self.submissions.get(name)
        except (ObjectNotFoundError, NotFoundError):
            raise Invalid(f"staged submission {name} does not exist") from None
        try:
            return msgspec.json.decode(obj.data or b"", type=ExecuteRequest)
        except msgspec.ValidationError as exc:
            raise Invalid(f"invalid request: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await self.submissions.delete(name)

    # --- one execution ----------------------------------------------------------------------------------------

    async def get(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        owned = self.manager.owned.get(execution_id)
        if owned is not None:
            return await owned.view()
        done = self._finished_record(execution_id)
        if done is not None:
            return record_view(done)
        return await self._routed("get", ref, execution_id, ExecutionView)

    async def jobs(self, query: JobsQuery) -> JobList:
        execution_id = check_id("executionId", query.execution_id)
        return await self._routed("jobs", query, execution_id, JobList)

    async def cancel(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        return await self._routed("cancel", ref, execution_id, ExecutionView)

    async def retry(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        return await self._routed("retry", ref, execution_id, ExecutionView)

    async def pause_execution(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        return await self._routed("pause-execution", ref, execution_id, ExecutionView)

    async def resume_execution(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = check_id("executionId", ref.execution_id)
        return await self._routed("resume-execution", ref, execution_id, ExecutionView)

    async def local_get(self, ref: ExecutionRef) -> ExecutionView:
        owned = await self._owned(ref.execution_id)
        if owned is not None:
            return await owned.view()
        found = await self._record(ref.execution_id)
        if found is None:
            raise NotFound(f"execution {ref.execution_id} does not exist")
        return record_view(found[0])

    async def local_jobs(self, query: JobsQuery) -> JobList:
        execution_id = query.execution_id
        limit = max(1, min(query.limit, MAX_JOBS_PAGE))
        owned = await self._owned(execution_id)
        if owned is not None:
            await owned.settled()
            return _page(owned.state, query.offset, limit)
        found = await self._record(execution_id)
        if found is None:
            raise NotFound(f"execution {execution_id} does not exist")
        record = found[0]
        if record.status not in FINAL_EXECUTION_STATES or not record.snapshot:
            raise Unavailable(f"execution {execution_id} is being taken over; try again")
        state = await ended_state(self.ctx, record, record.shard, record.snapshot, record.snapshot_parts)
        for job in state.jobs[query.offset : query.offset + limit]:
            if job.result_ref is not None and job.result is None:
                entry = await self.ctx.pipeline.kv_get(self.ctx.bucket, job.result_ref)
                job.result = None if entry is None else msgspec.json.decode(entry[0])
        return _page(state, query.offset, limit)

    async def local_cancel(self, ref: ExecutionRef) -> ExecutionView:
        owned = await self._owned(ref.execution_id)
        if owned is not None and not owned.gone:
            await owned.command("cancel")
            return await owned.view()  # once its end is written: listings and stats already show it
        found = await self._record(ref.execution_id)
        if found is None:
            raise NotFound(f"execution {ref.execution_id} does not exist")
        record = found[0]
        if record.status in FINAL_EXECUTION_STATES:
            raise Conflict(f"execution {ref.execution_id} already ended ({record.status}); nothing to cancel")
        raise Unavailable(f"execution {ref.execution_id} is being taken over; try again")

    async def local_pause_execution(self, ref: ExecutionRef) -> ExecutionView:
        return await self._hold(ref.execution_id, "pause")

    async def local_resume_execution(self, ref: ExecutionRef) -> ExecutionView:
        return await self._hold(ref.execution_id, "resume")

    async def _hold(self, execution_id: str, kind: str) -> ExecutionView:
        """Pause or resume an open execution (the owner's commit loop answers once it is journalled)."""
        owned = await self._owned(execution_id)
        if owned is not None and not owned.gone:
            return await owned.command(kind)
        found = await self._record(execution_id)
        if found is None:
            raise NotFound(f"execution {execution_id} does not exist")
        record = found[0]
        if record.status in FINAL_EXECUTION_STATES:
            raise Conflict(f"execution {execution_id} already ended ({record.status}); there is nothing to {kind}")
        raise Unavailable(f"execution {execution_id} is being taken over; try again")

    async def local_retry(self, ref: ExecutionRef) -> ExecutionView:
        execution_id = ref.execution_id
        owned = await self._owned(execution_id)
        if owned is not None and not owned.gone:
            if not owned.state.final:
                return await owned.command("retry")  # refused with the reason (still running)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(owned.finished.wait(), OWNER_WAIT_S)
        found = await self.ctx.pipeline.kv_get(self.ctx.bucket, execution_key(execution_id))
        if found is None:
            raise NotFound(f"execution {execution_id} does not exist")
        record = _record_decoder.decode(found[0])
        if record.status not in FINAL_EXECUTION_STATES:
            raise Conflict(
                f"execution {execution_id} is still {record.status}; only a finished execution can be retried"
            )
        if record.status == "completed":
            raise Conflict(f"execution {execution_id} completed; every job already has its result")
        shard = self.manager.held.get(record.shard)
        if shard is None:
            raise Unavailable(f"execution {execution_id} is being taken over; try again")
        owned = await reopen(self.ctx, record, shard.n, shard.revision)
        owned.record_revision = found[1]
        self.manager.owned[execution_id] = owned
        view = await owned.command("retry")
        await owned.write_record()  # reopened for every replica's index before the answer, not a moment after
        log.info("execution retried", executionId=execution_id, round=view.round)
        return view

    # --- listings and the queue -----------------------------------------------------------------------------

    async def list_executions(self, query: ListExecutions) -> ExecutionList:
        ids = self.index.select(
            before=query.cursor, status=query.status, workflow_id=query.workflow_id, limit=query.limit + 1
        )
        more = len(ids) > query.limit
        page = ids[: query.limit]
        found = await asyncio.gather(*(self._record(execution_id) for execution_id in page))
        views: list[ExecutionView] = []
        for execution_id, item in zip(page, found, strict=True):
            if item is None:
                continue  # removed meanwhile (retention)
            owned = self.manager.owned.get(execution_id)
            view = await owned.view() if owned is not None else record_view(item[0])
            if query.status in (None, view.status):
                views.append(view)
        return ExecutionList(executions=views, next_cursor=page[-1] if more else None)

    async def _pauses(self) -> list[QueuePause]:
        """The pauses in effect, shared by the stats requests of a quarter second."""
        now = time.monotonic()
        if self._counts is not None and now - self._counts[0] < STATS_CACHE_S:
            return self._counts[1]
        pauses = await self.queue.pauses()
        self._counts = (now, pauses)
        return pauses

    async def stats(self, _: Any) -> QueueStatsReply:
        # Jobs, not job messages (one message may carry several jobs): counted from the executions' records,
        # which every replica's index follows. A cancelled job is no longer queued there, whatever message
        # of it may still be in flight.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.index.current.wait(), 5)
        pauses = await self._pauses()
        # `paused` counts the jobs held by a pause of everything; a pause of one capability or type is listed
        # in `pauses`, its jobs still count as waiting (the index counts jobs, not jobs per type).
        paused = any(is_global(p) for p in pauses)
        queued = self.index.queued
        stats = QueueStats(
            waiting=0 if paused else queued,
            active=self.index.running,
            completed=self.index.completed,
            failed=self.index.failed,
            delayed=self.index.delayed,
            paused=queued if paused else 0,
            total=0,
        )
        stats.total = stats.waiting + stats.active + stats.completed + stats.failed + stats.delayed + stats.paused
        return QueueStatsReply(stats=stats, is_paused=paused, healthy=True, pauses=pauses, ready=self.index.ready_jobs)

    async def pauses(self, _: Any) -> QueuePauses:
        pauses = await self.queue.pauses()
        return QueuePauses(is_paused=any(is_global(p) for p in pauses), pauses=pauses)

    async def pause(self, cmd: QueuePauseCommand) -> QueueControl:
        pause = pause_of(cmd.pause or QueuePauseRequest(), now_ms())
        after, consumers, changed = await self.queue.pause(pause)
        self._counts = None
        return QueueControl(
            is_paused=any(is_global(p) for p in after), changed=changed, consumers=consumers, pauses=after
        )

    async def resume(self, cmd: QueueResumeCommand) -> QueueControl:
        after, ended, consumers = await self.queue.resume(cmd.resume or QueueResumeRequest())
        self._counts = None
        return QueueControl(
            is_paused=any(is_global(p) for p in after),
            changed=bool(ended),
            consumers=consumers,
            pauses=after,
            ended=ended,
        )

    # --- rate limits (any replica: they live in the schedulers bucket) ----------------------------------------

    async def put_rate_limit(self, cmd: RateLimitCommand) -> RateLimitReply:
        if cmd.setting is None:
            raise Invalid("a rate limit needs limit and periodS")
        record = await self.ctx.gates.put_limit(cmd.key, cmd.setting.limit, cmd.setting.period_s)
        return RateLimitReply(success=True, rate_limit=_limit_view(record))

    async def get_rate_limit(self, cmd: RateLimitCommand) -> RateLimitReply:
        record = await self.ctx.gates.get_limit(cmd.key)
        if record is None:
            raise NotFound(f"no rate limit is configured for {cmd.key!r}")
        return RateLimitReply(success=True, rate_limit=_limit_view(record))

    async def delete_rate_limit(self, cmd: RateLimitCommand) -> RateLimitReply:
        record = await self.ctx.gates.get_limit(cmd.key)
        if record is None or not await self.ctx.gates.delete_limit(cmd.key):
            raise NotFound(f"no rate limit is configured for {cmd.key!r}")
        return RateLimitReply(success=True, rate_limit=_limit_view(record))

    async def list_rate_limits(self, _: RateLimitCommand) -> RateLimitList:
        records = await self.ctx.gates.list_limits()
        return RateLimitList(success=True, rate_limits=[_limit_view(r) for r in records])

    async def consumer(self, cmd: EnsureConsumer) -> ConsumerSet:
        check_name("capability", cmd.capability)
        check_name("type", cmd.type)
        return await self.queue.ensure_consumers(cmd.capability, cmd.type)


def _limit_view(record: RateLimitRecord) -> RateLimitView:
    assert record.limit is not None and record.period_s is not None
    window_start = now_ms() - int(record.period_s * 1000)
    return RateLimitView(
        key=record.key,
        limit=record.limit,
        period_s=record.period_s,
        recent_starts=sum(1 for t in record.starts if t > window_start),
        updated_at=record.updated_at,
    )


def _page(state: machine.ExecutionState, offset: int, limit: int) -> JobList:
    """Jobs from `offset`: at most `limit`, and no more than fit in PAGE_BYTES of JSON."""
    views: list[JobView] = []
    size = 0
    end = min(len(state.jobs), offset + limit)
    index = offset
    while index < end:
        view = job_view(state, state.jobs[index])
        n = len(_encode(view))
        if views and size + n > PAGE_BYTES:
            break
        views.append(view)
        size += n
        index += 1
    return JobList(
        execution_id=state.execution_id,
        jobs=views,
        total=len(state.jobs),
        next_offset=index if index < len(state.jobs) else None,
    )


def _reply(msg: Msg, reply: type[T]) -> T:
    """A forwarded command's answer, or its error as the owner raised it."""
    headers = msg.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise CommandError(headers.get(ERROR_HEADER) or "the owning scheduler failed", int(headers[ERROR_CODE_HEADER]))
    return msgspec.json.decode(msg.data, type=reply)

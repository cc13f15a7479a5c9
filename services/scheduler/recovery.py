"""Taking an execution over: read its journal (and the snapshot it starts from), rebuild the state with
`machine.evolve`, fence the journal with an `adopted` entry, and carry on. Also how an execution is created and
how a finished one is reopened for a retry: both are journal entries that a later takeover replays the same way.
"""

from __future__ import annotations

import asyncio
import zlib

import msgspec

from shared import tracing
from shared.keys import execution_key, snapshot_key
from shared.logging import get_logger
from shared.messages import (
    AnyJournalEntry,
    ExecutionRecord,
    JobConfig,
    JobRecord,
    JournalAdopted,
    JournalCreated,
    JournalReopened,
    JournalStep,
    SnapshotPart,
)
from shared.pipeline import JetStreamError

from . import machine
from .journal import MAX_ENTRY_BYTES, Fenced
from .lifecycle import Context, Owned
from .machine import ExecutionState

__all__ = ["Corrupt", "adopt", "create", "ended_state", "load_snapshot", "reopen", "replay", "shard_of"]

log = get_logger(__name__)

_encode = msgspec.json.Encoder().encode
_part_decoder = msgspec.json.Decoder(SnapshotPart)


class Corrupt(Exception):
    """A journal that does not start with its creation or a reopening."""


def shard_of(execution_id: str, shards: int) -> int:
    """The shard an execution belongs to, from its id alone (any replica computes the same)."""
    return zlib.crc32(execution_id.encode()) % shards


async def load_snapshot(ctx: Context, execution_id: str, generation: int, parts: int) -> list[JobRecord]:
    found = await asyncio.gather(
        *(ctx.pipeline.kv_get(ctx.bucket, snapshot_key(execution_id, generation, n)) for n in range(parts))
    )
    records: list[JobRecord] = []
    for n, entry in enumerate(found):
        if entry is None:
            raise Corrupt(f"snapshot {generation} of {execution_id} lacks part {n}")
        records.extend(_part_decoder.decode(entry[0]).jobs)
    return records


async def replay(
    ctx: Context, execution_id: str, shard: int, entries: list[AnyJournalEntry]
) -> tuple[ExecutionState, str, int]:
    """The state the journal describes; also when the execution started and its snapshot generation."""
    state: ExecutionState | None = None
    started_at = ""
    generation = 0
    created: list[JobConfig] = []
    head: JournalCreated | None = None
    for entry in entries:
        match entry:
            case JournalCreated():
                head = head or entry
                created.extend(entry.jobs)
                if entry.part == entry.parts - 1:
                    state = machine.new_state(
                        execution_id=execution_id,
                        workflow_id=head.workflow_id,
                        shard=shard,
                        parallelism=head.parallelism,
                        created_at=head.at,
                        configs=created,
                        priority=head.priority,
                    )
                    state.submitted_by = head.submitted_by
                    state.traceparent = head.traceparent
                    state.run_at = head.run_at
                    started_at = head.at
            case JournalReopened():
                state = await ended_state(ctx, entry, shard, entry.generation, entry.parts)
                started_at = entry.started_at
                generation = entry.generation
            case JournalAdopted():
                pass
            case JournalStep():
                if state is None:
                    raise Corrupt(f"journal of {execution_id} has a step before its creation")
                for patch in entry.jobs:
                    machine.evolve(state, patch)
                if entry.execution is not None:
                    machine.evolve_execution(state, entry.execution)
    if state is None:
        raise Corrupt(f"journal of {execution_id} does not hold its creation")
    await _load_large_results(ctx, state)
    return state, started_at, generation


async def _load_large_results(ctx: Context, state: ExecutionState) -> None:
    jobs = [j for j in state.jobs if j.result_ref is not None and j.result is None]
    found = await asyncio.gather(*(ctx.pipeline.kv_get(ctx.bucket, j.result_ref or "") for j in jobs))
    for job, entry in zip(jobs, found, strict=True):
        if entry is not None:
            job.result = msgspec.json.decode(entry[0])


async def adopt(ctx: Context, execution_id: str, shard: int, epoch: int) -> Owned | None:
    """Take over an open execution of `shard`; None if there is nothing to take (ended and purged) or another
    replica was faster."""
    entries, last = await ctx.journal.read(execution_id)
    found = await ctx.pipeline.kv_get(ctx.bucket, execution_key(execution_id))
    if found is None:
        return None  # never committed (its creator died before writing the record), or removed
    record = msgspec.json.decode(found[0], type=ExecutionRecord)
    if not entries:
        if record.status not in ("completed", "failed", "cancelled"):
            log.error("open execution without a journal", executionId=execution_id)
        return None
    state, started_at, generation = await replay(ctx, execution_id, shard, entries)
    fence = JournalAdopted(at=ctx.env().now, owner=ctx.replica_id, epoch=epoch)
    try:
        seq = await ctx.journal.append(execution_id, _encode(fence), last=last)
    except Fenced:
        return None
    owned = Owned(
        ctx,
        state,
        journal_seq=seq,
        started_at=started_at or record.started_at,
        record_revision=found[1],
        checkpoint_seq=record.checkpoint_seq,
        checkpoint_id=record.checkpoint_id,
        snapshot=max(generation, record.snapshot),
        snapshot_parts=record.snapshot_parts,
    )
    log.info("execution adopted", executionId=execution_id, status=state.status, journalSeq=seq, epoch=epoch)
    return owned


async def resume(owned: Owned) -> None:
    """Carry on after adopting: publish what was decided but not stored, re-arm timers, fill free slots (or, if
    it had ended, finish the end)."""
    # Same bundles, same message ids: a message the previous owner did store is dropped as a duplicate.
    await owned.republish_unplaced()
    owned.arm_all()
    owned.resume()


async def create(
    ctx: Context,
    *,
    execution_id: str,
    workflow_id: str,
    parallelism: int | None,
    jobs: list[JobConfig],
    shard: int,
    epoch: int,
    submitted_by: str | None = None,
    run_at: str | None = None,
    priority: int | None = None,
) -> Owned:
    """Journal the DAG (its first entry, at expected last sequence 0, fences it as ours), write the record (the
    commit point: from here on it exists). A delayed execution (`run_at`) journals its start time with the DAG:
    whoever owns it later starts it then."""
    now = ctx.env().now
    state = machine.new_state(
        execution_id=execution_id,
        workflow_id=workflow_id,
        shard=shard,
        parallelism=parallelism,
        created_at=now,
        configs=jobs,
        priority=priority,
    )
    state.submitted_by = submitted_by
    state.traceparent = tracing.current_traceparent()
    state.run_at = run_at
    chunks = _chunks(jobs)
    entries = [
        _encode(
            JournalCreated(
                at=now,
                execution_id=execution_id,
                workflow_id=workflow_id,
                parallelism=parallelism,
                part=n,
                parts=len(chunks),
                jobs=chunk,
                submitted_by=submitted_by,
                traceparent=state.traceparent if n == 0 else None,
                run_at=run_at,
                priority=priority,
                owner=ctx.replica_id if n == 0 else None,
                epoch=epoch if n == 0 else None,
            )
        )
        for n, chunk in enumerate(chunks)
    ]
    seq = await ctx.journal.append_all(execution_id, entries, last=0)
    owned = Owned(ctx, state, journal_seq=seq, started_at=now, record_revision=0)
    await owned.write_record()
    return owned


def _chunks(jobs: list[JobConfig]) -> list[list[JobConfig]]:
    chunks: list[list[JobConfig]] = [[]]
    size = 0
    for job in jobs:
        n = len(_encode(job))
        if chunks[-1] and size + n > MAX_ENTRY_BYTES - 4096:
            chunks.append([])
            size = 0
        chunks[-1].append(job)
        size += n
    return chunks


async def ended_state(
    ctx: Context, record: ExecutionRecord | JournalReopened, shard: int, generation: int, parts: int
) -> machine.ExecutionState:
    """An ended execution's state: as its record (or the journal's `reopened` entry) describes it, its jobs
    from snapshot `generation`."""
    records = await load_snapshot(ctx, record.execution_id, generation, parts)
    state = machine.state_from_records(
        execution_id=record.execution_id,
        workflow_id=record.workflow_id,
        shard=shard,
        parallelism=record.parallelism,
        created_at=record.created_at,
        status=record.status,
        round=record.round,
        completed_at=record.completed_at,
        error=record.error,
        records=records,
        priority=record.priority,
    )
    state.submitted_by = record.submitted_by
    return state


async def reopen(ctx: Context, record: ExecutionRecord, shard: int, epoch: int) -> Owned:
    """A finished execution, retried: its snapshot becomes the start of a new journal (the retry step follows)."""
    execution_id = record.execution_id
    if not record.snapshot:
        raise Corrupt(f"execution {execution_id} ended without a snapshot of its jobs")
    state = await ended_state(ctx, record, shard, record.snapshot, record.snapshot_parts)
    await _load_large_results(ctx, state)
    last = await ctx.journal.last_seq(execution_id)
    entries = [
        _encode(
            JournalReopened(
                at=ctx.env().now,
                execution_id=execution_id,
                workflow_id=record.workflow_id,
                parallelism=record.parallelism,
                created_at=record.created_at,
                started_at=record.started_at,
                status=record.status,
                round=record.round,
                completed_at=record.completed_at,
                error=record.error,
                generation=record.snapshot,
                parts=record.snapshot_parts,
                submitted_by=record.submitted_by,
                priority=record.priority,
            )
        ),
        _encode(JournalAdopted(at=ctx.env().now, owner=ctx.replica_id, epoch=epoch)),
    ]
    if last:
        # The previous round's journal was not purged (its owner died right at the end): start afresh.
        await ctx.journal.purge(execution_id)
        last = 0
    try:
        seq = await ctx.journal.append_all(execution_id, entries, last=last)
    except (Fenced, JetStreamError) as exc:
        raise Fenced(f"execution {execution_id} is being reopened elsewhere ({exc})") from None
    return Owned(
        ctx,
        state,
        journal_seq=seq,
        started_at=record.started_at,
        record_revision=0,
        checkpoint_seq=record.checkpoint_seq,
        checkpoint_id=record.checkpoint_id,
        snapshot=record.snapshot,
        snapshot_parts=record.snapshot_parts,
    )

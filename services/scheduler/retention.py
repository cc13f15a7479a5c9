"""Retention: a finished execution is removed `JETDAG_EXECUTION_RETENTION_S` after it ended — its record,
its job records and its checkpoints — while the cumulative counters of GET /queue/stats stay exact.

Those counters are the index's sum over the execution records, plus the `archive` record: what removed
executions counted. Removing an execution and adding its counts to the archive cannot be one write, so a
removal goes through the archive in two compare-and-set steps that any replica can finish after a crash:

1. announce: write the archive with the execution in `removing`, with the revision of its record and its
   counts; then delete its record, compare-and-set on that revision (a retry since makes this a no-op, and
   the removal is dropped);
2. absorb: purge the job records and checkpoints of the announced executions whose record is gone, then
   write the archive with their counts added to the totals and `removing` emptied.

While an execution is announced its counts come from its record if it is still there, else from
`removing` (ExecutionIndex.completed): at no moment is it counted twice or not at all.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js import JetStreamContext

from shared.keys import ARCHIVE_KEY, execution_key, execution_keys, kv_subject
from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, Archive, ExecutionRecord, Removal
from shared.pipeline import JetStreamError, Pipeline
from shared.subjects import Names
from shared.timeutil import ms_from_iso, now_ms

from .index import ExecutionIndex

__all__ = ["Retention"]

log = get_logger(__name__)
BATCH = 200
"""Executions removed per round at most (a round runs every sweep interval)."""
MARKER_TTL_S = 3600
"""Seconds a removed execution's delete marker stays in the bucket (an index following the bucket sees it
within milliseconds; one rebuilt later never needs it)."""

_encode = msgspec.json.Encoder().encode
_archive_decoder = msgspec.json.Decoder(Archive)
_record_decoder = msgspec.json.Decoder(ExecutionRecord)


class Retention:
    def __init__(
        self,
        js: JetStreamContext,
        pipeline: Pipeline,
        index: ExecutionIndex,
        *,
        names: Names,
        retention_s: float,
    ) -> None:
        self.js = js
        self.pipeline = pipeline
        self.index = index
        self.names = names
        self.bucket = names.executions_bucket
        self.checkpoints_bucket = names.checkpoints_bucket
        self.retention_s = retention_s

    async def sweep(self) -> int:
        """One round: finish an interrupted removal, then remove what has expired. Returns how many
        executions this round removed. A lost compare-and-set (another replica's round) ends the round."""
        if self.retention_s <= 0 or not self.index.current.is_set():
            return 0
        cutoff = now_ms() - int(self.retention_s * 1000)
        candidates = self.index.expired(cutoff, BATCH)
        if not candidates and not self.index.removing():
            return 0  # the index follows the archive too: nothing to read from the server this round
        archive, revision = await self._archive()
        if archive.removing:
            archive, revision = await self._absorb(archive, revision)
            if not revision:
                return 0
        if not candidates:
            return 0
        removing = await self._announceable(candidates, cutoff)
        if not removing:
            return 0
        announced = Archive(
            completed=archive.completed, failed=archive.failed, executions=archive.executions, removing=removing
        )
        try:
            revision = await self.pipeline.kv_write(self.bucket, ARCHIVE_KEY, _encode(announced), last=revision)
        except JetStreamError as exc:
            if exc.wrong_last_sequence:
                return 0
            raise
        _, revision = await self._absorb(announced, revision)
        removed = len(removing)
        log.info("expired executions removed", executions=removed, retention_s=self.retention_s)
        return removed

    async def _archive(self) -> tuple[Archive, int]:
        found = await self.pipeline.kv_get(self.bucket, ARCHIVE_KEY)
        if found is None:
            return Archive(), 0
        return _archive_decoder.decode(found[0]), found[1]

    async def _announceable(self, candidates: list[str], cutoff: int) -> dict[str, Removal]:
        """The candidates as they are in the bucket now: still finished before the cutoff (not retried)."""
        found = await asyncio.gather(*(self.pipeline.kv_get(self.bucket, c) for c in candidates))
        out = {}
        for execution_id, entry in zip(candidates, found, strict=True):
            if entry is None:
                continue
            record = _record_decoder.decode(entry[0])
            ended = record.completed_at or record.updated_at
            if record.status in FINAL_EXECUTION_STATES and ms_from_iso(ended) < cutoff:
                out[execution_id] = Removal(
                    revision=entry[1], completed=record.counts.completed, failed=record.counts.failed
                )
        return out

    async def _absorb(self, archive: Archive, revision: int) -> tuple[Archive, int]:
        """Step 2 for every announced execution; returns the new archive and revision (0: lost the race)."""
        gone: list[str] = []
        for execution_id, removal in archive.removing.items():
            if await self._delete_record(execution_id, removal.revision):
                gone.append(execution_id)
                # Before the archive write: once `removing` no longer names it, nothing would purge these.
                await self._purge_rest(execution_id)
        absorbed = Archive(
            completed=archive.completed + sum(archive.removing[g].completed for g in gone),
            failed=archive.failed + sum(archive.removing[g].failed for g in gone),
            executions=archive.executions + len(gone),
        )
        try:
            revision = await self.pipeline.kv_write(self.bucket, ARCHIVE_KEY, _encode(absorbed), last=revision)
        except JetStreamError as exc:
            if exc.wrong_last_sequence:
                return archive, 0
            raise
        return absorbed, revision

    async def _delete_record(self, execution_id: str, revision: int) -> bool:
        """Delete the execution record if it is still at `revision`; True if it is gone (now or before)."""
        found = await self.pipeline.kv_get(self.bucket, execution_key(execution_id))
        if found is None:
            return True
        if found[1] != revision:
            return False  # retried since it was announced: it stays
        headers = {
            "KV-Operation": "DEL",
            "Nats-Expected-Last-Subject-Sequence": str(revision),
            # Every replica's index must see the execution go; after that the marker is dead weight in the
            # bucket and in every index rebuild's replay, so it expires.
            "Nats-TTL": str(MARKER_TTL_S),
        }
        try:
            await self.pipeline.publish(kv_subject(self.bucket, execution_key(execution_id)), b"", headers)
        except JetStreamError as exc:
            if exc.wrong_last_sequence:
                return False
            raise
        return True

    async def _purge_rest(self, execution_id: str) -> None:
        """Job snapshots, large results, checkpoints and any journal left: stream purges, which leave no marker."""
        await self.js.purge_stream(f"KV_{self.bucket}", subject=kv_subject(self.bucket, execution_keys(execution_id)))
        await self.js.purge_stream(
            f"KV_{self.checkpoints_bucket}", subject=kv_subject(self.checkpoints_bucket, execution_key(execution_id))
        )
        await self.js.purge_stream(self.names.journal_stream, subject=self.names.journal(execution_id))

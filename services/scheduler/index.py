"""A live, in-memory view of every execution record, fed by a KV watch on the executions bucket.

Each scheduler replica keeps one. It answers `GET /executions` and the cumulative counters of `GET
/queue/stats` without scanning the bucket, and tells the sweeper which executions are still open. The KV
bucket stays the truth: the watch replays it on start and after every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, Counts, ExecutionRecord

__all__ = ["ExecutionIndex"]

log = get_logger(__name__)


class ExecutionIndex:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.records: dict[str, ExecutionRecord] = {}
        self.ready = asyncio.Event()
        self._decoder = msgspec.json.Decoder(ExecutionRecord)
        self._totals = Counts()

    def _apply(self, key: str, record: ExecutionRecord | None) -> None:
        old = self.records.pop(key, None)
        if old is not None:
            self._add(old.counts, -1)
        if record is not None:
            self.records[key] = record
            self._add(record.counts, 1)

    def _add(self, counts: Counts, sign: int) -> None:
        t = self._totals
        t.completed += sign * counts.completed
        t.failed += sign * counts.failed
        t.delayed += sign * counts.delayed
        t.pending += sign * counts.open  # "pending" of the totals holds every open job

    @property
    def completed(self) -> int:
        return self._totals.completed

    @property
    def failed(self) -> int:
        return self._totals.failed

    @property
    def delayed(self) -> int:
        return self._totals.delayed

    @property
    def open_jobs(self) -> int:
        """Jobs of all executions that have not finished (pending, ready, queued, running, delayed)."""
        return self._totals.pending

    def open_executions(self) -> list[ExecutionRecord]:
        return [r for r in self.records.values() if r.status not in FINAL_EXECUTION_STATES]

    async def run(self) -> None:
        """Follow the bucket forever (execution records are the single-token keys)."""
        while True:
            watcher = await self.kv.watch("*")
            try:
                async for entry in watcher:
                    if entry is None:
                        self.ready.set()
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                        self._apply(entry.key, None)
                        continue
                    try:
                        record = self._decoder.decode(entry.value)
                    except msgspec.DecodeError:
                        log.warning("unreadable execution record", key=entry.key)
                        continue
                    self._apply(entry.key, record)
                    if entry.delta == 0:
                        self.ready.set()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

"""Execution and job records in the executions KV bucket, read and written with compare-and-set.

Keys: `<exec>` (ExecutionRecord), `<exec>.job.<job>` (JobRecord), `<exec>.links.<job>.<kind>.<n>` (overflow
of very wide dependency lists), `control.queue` (QueueState). Every change is `update(key, fn)`: read (from the
local cache when we wrote it last), let `fn` mutate a fresh copy, write with the revision we read; on a lost
race re-read and try again. Several scheduler replicas can therefore work on one execution without locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from shared.jetstream import kv_entries
from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, ExecutionRecord, JobRecord
from shared.pipeline import JetStreamError, Pipeline

__all__ = ["LINK_CHUNK", "CasFailed", "Store", "Versioned"]

log = get_logger(__name__)

# Dependency ids kept inline in a job record; wider fan-in/fan-out spills into link keys so that no value
# comes near the 1 MiB message limit (20,000 ids of 128 characters would be 2.6 MB).
LINK_CHUNK = 2000
CAS_ATTEMPTS = 50

T = TypeVar("T", bound=msgspec.Struct)
_encode = msgspec.json.Encoder().encode


class CasFailed(RuntimeError):
    """Compare-and-set kept losing: another writer changes the key faster than we can."""


@dataclass(slots=True)
class Versioned(Generic[T]):
    value: T
    revision: int
    applied: bool = True
    """False when the change function declined: `value` is then the current, unchanged value."""


class Store:
    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str, pipeline: Pipeline) -> None:
        self.js = js
        self.kv = kv
        self.bucket = bucket
        self.pipeline = pipeline
        self._cache: dict[str, tuple[bytes, int]] = {}
        self.conflicts = 0
        self.writes = 0
        self.last_read_revision = 0
        self._exec_decoder = msgspec.json.Decoder(ExecutionRecord)
        self._job_decoder = msgspec.json.Decoder(JobRecord)

    # --- keys ----------------------------------------------------------------------------------------

    @staticmethod
    def job_key(execution_id: str, job_id: str) -> str:
        return f"{execution_id}.job.{job_id}"

    @staticmethod
    def link_key(execution_id: str, job_id: str, kind: str, n: int) -> str:
        return f"{execution_id}.links.{job_id}.{kind}.{n}"

    # --- raw access ----------------------------------------------------------------------------------

    async def _read(self, key: str, *, fresh: bool = False) -> tuple[bytes, int] | None:
        if not fresh and key in self._cache:
            return self._cache[key]
        found = await self.pipeline.kv_get(self.bucket, key)
        if found is None:
            self._cache.pop(key, None)
            return None
        self._cache[key] = found
        return found

    async def create(self, key: str, value: msgspec.Struct) -> int:
        data = _encode(value)
        revision = await self.pipeline.kv_write(self.bucket, key, data, last=0)
        self._cache[key] = (data, revision)
        self.writes += 1
        return revision

    async def put(self, key: str, value: msgspec.Struct) -> int:
        data = _encode(value)
        revision = await self.pipeline.kv_write(self.bucket, key, data, last=None)
        self._cache[key] = (data, revision)
        self.writes += 1
        return revision

    async def create_many(self, items: Iterable[tuple[str, msgspec.Struct]], window: int = 256) -> None:
        """Write many new keys with at most `window` writes in flight (submit of a large DAG)."""
        sem = asyncio.Semaphore(window)

        async def one(key: str, value: msgspec.Struct) -> None:
            async with sem:
                await self.put(key, value)

        await asyncio.gather(*(one(k, v) for k, v in items))

    def forget(self, prefix: str) -> None:
        """Drop the cached job records of a finished execution. Its own record stays: it is what makes this
        replica's last change (cancel, the end) visible to a status read before the index has it."""
        for key in [k for k in self._cache if k.startswith(prefix + ".")]:
            del self._cache[key]

    # --- typed access --------------------------------------------------------------------------------

    async def get_execution(self, execution_id: str, *, fresh: bool = False) -> Versioned[ExecutionRecord] | None:
        from_server = fresh or execution_id not in self._cache
        raw = await self._read(execution_id, fresh=fresh)
        if raw is None:
            return None
        record = self._exec_decoder.decode(raw[0])
        if from_server and record.status in FINAL_EXECUTION_STATES:
            # Nobody needs a copy of a finished record read from the server: the cache holds what we work on.
            self._cache.pop(execution_id, None)
        return Versioned(record, raw[1])

    def settle(self, execution_id: str, revision: int) -> None:
        """The execution index has the finished record at `revision`: drop our copy unless it is newer (a
        retry this replica just wrote), so the cache holds open executions only."""
        cached = self._cache.get(execution_id)
        if cached is not None and cached[1] <= revision:
            del self._cache[execution_id]

    def cached_execution(self, execution_id: str) -> Versioned[ExecutionRecord] | None:
        """What this replica last read or wrote of an execution record, without asking the server."""
        raw = self._cache.get(execution_id)
        return None if raw is None else Versioned(self._exec_decoder.decode(raw[0]), raw[1])

    async def get_job(self, execution_id: str, job_id: str, *, fresh: bool = False) -> Versioned[JobRecord] | None:
        raw = await self._read(self.job_key(execution_id, job_id), fresh=fresh)
        if raw is None:
            return None
        return Versioned(self._job_decoder.decode(raw[0]), raw[1])

    async def update(
        self,
        key: str,
        decoder: msgspec.json.Decoder[T],
        change: Callable[[T], bool],
        *,
        fresh: bool = False,
    ) -> Versioned[T] | None:
        """Apply `change` to the current value with compare-and-set; `change` returns False to leave it.

        Returns the value written (or the current value when `change` declined); None if the key is missing.
        `last_read_revision` holds the revision `change` is looking at.
        """
        for _ in range(CAS_ATTEMPTS):
            from_cache = not fresh and key in self._cache
            raw = await self._read(key, fresh=fresh)
            if raw is None:
                return None
            self.last_read_revision = raw[1]
            value = decoder.decode(raw[0])
            if not change(value):
                if from_cache:
                    # Declined on our cached copy, which another replica may have moved on: decide again on
                    # the current value before calling it final.
                    fresh = True
                    continue
                return Versioned(value, raw[1], applied=False)
            data = _encode(value)
            try:
                revision = await self.pipeline.kv_write(self.bucket, key, data, last=raw[1])
            except JetStreamError as exc:
                if not exc.wrong_last_sequence:
                    raise
                self.conflicts += 1
                fresh = True
                continue
            self.writes += 1
            self._cache[key] = (data, revision)
            return Versioned(value, revision)
        raise CasFailed(f"could not update {key} after {CAS_ATTEMPTS} attempts")

    async def update_execution(
        self, execution_id: str, change: Callable[[ExecutionRecord], bool], *, fresh: bool = False
    ) -> Versioned[ExecutionRecord] | None:
        return await self.update(execution_id, self._exec_decoder, change, fresh=fresh)

    async def update_job(
        self, execution_id: str, job_id: str, change: Callable[[JobRecord], bool]
    ) -> Versioned[JobRecord] | None:
        return await self.update(self.job_key(execution_id, job_id), self._job_decoder, change)

    async def all_jobs(self, execution_id: str) -> list[JobRecord]:
        """Every job record of an execution (one pass over the bucket; for recovery, cancel and retry)."""
        entries = await kv_entries(self.js, self.bucket, f"{execution_id}.job.*")
        jobs = []
        for entry in entries:
            if entry.value:
                jobs.append(self._job_decoder.decode(entry.value))
        return jobs

    # --- wide dependency lists -----------------------------------------------------------------------

    async def save_links(self, execution_id: str, job_id: str, kind: str, ids: list[str]) -> tuple[list[str], int]:
        """Keep the first LINK_CHUNK ids inline; store the rest in link keys. Returns (inline, chunks)."""
        inline, rest = ids[:LINK_CHUNK], ids[LINK_CHUNK:]
        chunks = [rest[i : i + LINK_CHUNK] for i in range(0, len(rest), LINK_CHUNK)]
        for n, chunk in enumerate(chunks):
            await self.kv.put(self.link_key(execution_id, job_id, kind, n), _encode(chunk))
        return inline, len(chunks)

    async def load_links(self, execution_id: str, job: JobRecord, kind: str) -> list[str]:
        ids = list(job.dependents if kind == "dependents" else job.depends_on)
        chunks = job.dependents_chunks if kind == "dependents" else job.depends_on_chunks
        for n in range(chunks):
            entry = await self.kv.get(self.link_key(execution_id, job.id, kind, n))
            assert entry.value is not None
            ids.extend(msgspec.json.decode(entry.value, type=list[str]))
        return ids

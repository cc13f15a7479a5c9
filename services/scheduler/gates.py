"""The gates a job passes before its dispatch: concurrency-key slots and rate limits, shared by every replica.

The machine (machine.py) sends a job that needs a gate here instead of dispatching it (`Step.gated`); this
module asks the shared records in the schedulers bucket (compare-and-set, rules in gating.py) and answers the
job's owner with an input: cleared (dispatch it now), limited (delayed until the window has room, with the
reason), or waiting for a slot (stays `ready`, with the reason). Jobs waiting for a slot are asked again
whenever their key's record changes (a KV watch: another replica's job ended) and at every confirmation round.

A slot is held from its grant while the job is queued, running or delayed, and given back when it ends or
returns to ready (lifecycle._RELEASING), so the slot count is exact across replicas. Entries are confirmed
every `REFRESH_S` by the replica owning the job; a replica that takes over an execution confirms its jobs'
slots again (`adopt`), and entries no one confirms are dropped after `gating.STALE_MS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.keys import CONCURRENCY_PREFIX, RATE_LIMIT_PREFIX, concurrency_key, rate_limit_key, rate_limit_of_key
from shared.logging import get_logger
from shared.messages import ConcurrencyRecord, RateLimitRecord, Slot
from shared.timeutil import iso_from_ms, now_iso, now_ms

from . import gating

if TYPE_CHECKING:
    from .machine import Job

__all__ = ["TYPE_LIMIT_PREFIX", "GateOwner", "Gates"]

log = get_logger(__name__)

REFRESH_S = gating.STALE_MS / 3000
TYPE_LIMIT_PREFIX = "type:"
"""A rate limit key `type:<jobType>` applies to every job of that type (PUT /rate-limits/type:train)."""
_encode = msgspec.json.encode


class GateOwner(Protocol):
    """What an owned execution offers the gates (lifecycle.Owned)."""

    @property
    def execution_id(self) -> str: ...

    @property
    def gone(self) -> bool: ...

    def cleared(self, job_ids: list[str]) -> None: ...

    def limited(self, job_id: str, until_ms: int, reason: str) -> None: ...

    def waiting(self, reasons: dict[str, str | None]) -> None: ...


class Gates:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.limited_types: frozenset[str] = frozenset()
        """Job types with a configured rate limit: the machine sends their jobs through the gates too."""
        self._limits: dict[str, RateLimitRecord] = {}
        """Configured limits by key, as the watch last saw them."""
        self._waiting: dict[str, dict[tuple[str, str], tuple[GateOwner, Job]]] = {}
        """Jobs of this replica waiting for a slot, by concurrency key."""
        self._held: dict[str, dict[tuple[str, str], GateOwner]] = {}
        """Slots jobs of this replica hold, by concurrency key."""
        self._tasks: list[asyncio.Task[Any]] = []
        self._slot_ops: dict[str, list[_SlotOp]] = {}
        """What to do to each key's record in its next round (asks, slots given back, confirmations)."""
        self._records: dict[str, tuple[ConcurrencyRecord, int]] = {}
        """Each key's record and revision as this replica last wrote or read it: a round tries the update on it
        first and reads the record only when another replica changed it meanwhile."""
        self._windows: dict[str, tuple[RateLimitRecord, int]] = {}
        """The same for rate limit windows."""
        self._rate_asks: dict[str, list[tuple[GateOwner, Job, list[tuple[str, int, float]]]]] = {}
        self._draining: set[tuple[int, str]] = set()
        self._asking: set[tuple[str, str]] = set()
        """Jobs asked for (not yet answered) that are not waiting in line."""
        self._cleared: dict[int, tuple[GateOwner, list[str]]] = {}

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name="gates watch"))
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="gates refresh"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- what owners call -------------------------------------------------------------------------------------

    def ask(self, owner: GateOwner, jobs: list[Job]) -> None:
        """These jobs want to be dispatched: answer each through `owner` (cleared, limited or waiting)."""
        task = asyncio.create_task(self._ask_all(owner, jobs), name=f"gates {owner.execution_id}")
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    def settle(self, owner: GateOwner, jobs: list[Job]) -> None:
        """These jobs ended (or went back to pending for a new round): their slots and places go."""
        by_key: dict[str, set[tuple[str, str]]] = {}
        for job in jobs:
            if job.concurrency_key is None:
                continue
            ident = (owner.execution_id, job.id)
            self._held.get(job.concurrency_key, {}).pop(ident, None)
            self._waiting.get(job.concurrency_key, {}).pop(ident, None)
            by_key.setdefault(job.concurrency_key, set()).add(ident)
        for key, ids in by_key.items():
            self._enqueue(self._slot_ops, key, functools.partial(_drop, ids), self._slots_round)

    def adopt(self, owner: GateOwner, jobs: list[Job]) -> None:
        """A takeover: slots these dispatched jobs of `owner` hold are confirmed by this replica from now on."""
        by_key: dict[str, set[tuple[str, str]]] = {}
        for job in jobs:
            if job.concurrency_key is not None:
                self._held.setdefault(job.concurrency_key, {})[(owner.execution_id, job.id)] = owner
                by_key.setdefault(job.concurrency_key, set()).add((owner.execution_id, job.id))
        for key, ids in by_key.items():
            self._enqueue(self._slot_ops, key, functools.partial(_hold, ids), self._slots_round)

    def forget(self, owner: GateOwner) -> None:
        """`owner` left this replica (moved to another): it confirms nothing here any more."""
        for held in self._held.values():
            for ident in [i for i, o in held.items() if o is owner]:
                del held[ident]
        for waiting in self._waiting.values():
            for ident in [i for i, (o, _) in waiting.items() if o is owner]:
                del waiting[ident]
        self._asking = {ident for ident in self._asking if ident[0] != owner.execution_id}

    # --- slots ------------------------------------------------------------------------------------------------

    async def _ask_all(self, owner: GateOwner, jobs: list[Job]) -> None:
        for job in jobs:
            if job.concurrency_key is not None:
                self._asking.add((owner.execution_id, job.id))
                self._enqueue(self._slot_ops, job.concurrency_key, (owner, job), self._slots_round)
            else:
                self._to_rate_limits(owner, job, self._rate_limits(job))

    def _enqueue(
        self,
        queues: dict[str, list[Any]],
        key: str,
        item: Any,
        round_: Callable[[str, list[Any]], Coroutine[Any, Any, None]],
    ) -> None:
        """Asks for one key are answered together, one compare-and-set per round: the asks of every execution
        this replica owns do not contend with each other for the key's record."""
        queues.setdefault(key, []).append(item)
        token = (id(queues), key)
        if token in self._draining:
            return
        self._draining.add(token)

        async def drain() -> None:
            try:
                while batch := queues.pop(key, None):
                    try:
                        await round_(key, batch)
                    except Exception as exc:  # NATS trouble: ask again soon, never dispatch past a gate
                        log.warning("gate check failed; trying again", key=key, error=repr(exc))
                        await asyncio.sleep(1.0)
                        queues.setdefault(key, [])[:0] = batch
            finally:
                self._draining.discard(token)

        self._spawn(drain())

    async def _slots_round(self, key: str, ops: list[_SlotOp]) -> None:
        """One compare-and-set applies every operation queued for the key: slots given back first (ended
        jobs, whose slots the asks of the same round may take), then held ones confirmed, then the asks."""
        changes = [op for op in ops if not isinstance(op, tuple)]
        batch = [op for op in ops if isinstance(op, tuple) and not op[0].gone]
        outcome: dict[tuple[str, str], tuple[bool, str]] = {}
        asked = now_ms()

        def change(record: ConcurrencyRecord, now: int) -> ConcurrencyRecord:
            outcome.clear()
            for apply in changes:
                record = apply(record, now)
            for owner, job in sorted(batch, key=lambda e: e[1].priority):
                me = Slot(execution_id=owner.execution_id, job_id=job.id, priority=job.priority, since=asked)
                record, granted, why = gating.acquire(record, me, job.max_concurrent or 1, now)
                outcome[(owner.execution_id, job.id)] = (granted, why)
            return record

        await self._update(key, change)
        waiting: dict[int, tuple[GateOwner, dict[str, str | None]]] = {}
        for owner, job in batch:
            ident = (owner.execution_id, job.id)
            granted, why = outcome[ident]
            if granted:
                # Once per ask: a job asked again while an answer was on its way (a retry round) is not
                # passed on twice.
                was_waiting = self._waiting.get(key, {}).pop(ident, None) is not None
                asked_now = was_waiting or ident in self._asking
                self._asking.discard(ident)
                self._held.setdefault(key, {})[ident] = owner
                if asked_now:
                    self._to_rate_limits(owner, job, self._rate_limits(job))
            else:
                self._asking.discard(ident)
                self._waiting.setdefault(key, {})[ident] = (owner, job)
                waiting.setdefault(id(owner), (owner, {}))[1][job.id] = why
        for owner, reasons in waiting.values():
            if not owner.gone:
                owner.waiting(reasons)

    def _to_rate_limits(self, owner: GateOwner, job: Job, limits: list[tuple[str, int, float]]) -> None:
        """The job's next rate limit, or cleared when it passed them all."""
        if not limits:
            self._clear(owner, job)
            return
        self._enqueue(self._rate_asks, limits[0][0], (owner, job, limits), self._rates_round)

    async def _rates_round(self, key: str, batch: list[tuple[GateOwner, Job, list[tuple[str, int, float]]]]) -> None:
        batch = [entry for entry in batch if not entry[0].gone]
        if not batch:
            return
        # One window per key: the numbers of the first ask of the round count for the whole round.
        _, limit, period_s = batch[0][2][0]
        taken, untils = await self._take_starts(key, len(batch), limit, period_s)
        for owner, job, limits in batch[:taken]:
            self._to_rate_limits(owner, job, limits[1:])
        for (owner, job, _), until in zip(batch[taken:], untils, strict=True):
            reason = f"rate limit '{key}': {limit} starts per {period_s:g} s; next start at {iso_from_ms(until)}"
            owner.limited(job.id, until, reason)

    def _clear(self, owner: GateOwner, job: Job) -> None:
        """Cleared jobs of one owner reach it together, at the end of this loop iteration."""
        pending = self._cleared.setdefault(id(owner), (owner, []))
        pending[1].append(job.id)
        if len(pending[1]) == 1:
            asyncio.get_running_loop().call_soon(self._flush_cleared, id(owner))

    def _flush_cleared(self, owner_id: int) -> None:
        owner, job_ids = self._cleared.pop(owner_id, (None, []))
        if owner is not None and job_ids and not owner.gone:
            owner.cleared(job_ids)

    async def _update(
        self, key: str, change: Callable[[ConcurrencyRecord, int], ConcurrencyRecord]
    ) -> ConcurrencyRecord:
        """Compare-and-set loop on one concurrency key's record."""

        def apply(record: ConcurrencyRecord) -> ConcurrencyRecord | None:
            return change(record, now_ms())

        return await _compare_and_set(
            self.kv, concurrency_key(key), ConcurrencyRecord(key=key), apply, cache=self._records, cache_key=key
        )

    # --- rate limits ------------------------------------------------------------------------------------------

    def _rate_limits(self, job: Job) -> list[tuple[str, int, float]]:
        """(key, limit, period) of every rate limit the job is under: a configured limit of its key wins over
        the job's own numbers."""
        out: list[tuple[str, int, float]] = []
        if job.rate_limit is not None:
            configured = self._limits.get(job.rate_limit.key)
            if configured is not None and configured.limit is not None and configured.period_s is not None:
                out.append((job.rate_limit.key, configured.limit, configured.period_s))
            else:
                out.append((job.rate_limit.key, job.rate_limit.limit, job.rate_limit.period_s))
        type_limit = self._limits.get(TYPE_LIMIT_PREFIX + job.type)
        if type_limit is not None and type_limit.limit is not None and type_limit.period_s is not None:
            out.append((type_limit.key, type_limit.limit, type_limit.period_s))
        return out

    async def _take_starts(self, key: str, n: int, limit: int, period_s: float) -> tuple[int, list[int]]:
        outcome: list[tuple[int, list[int]]] = []

        def take(record: RateLimitRecord) -> RateLimitRecord | None:
            updated, taken, untils = gating.take_starts(record, n, limit, period_s, now_ms())
            outcome[:] = [(taken, untils)]
            return updated if taken else None

        await _compare_and_set(
            self.kv, rate_limit_key(key), RateLimitRecord(key=key), take, cache=self._windows, cache_key=key
        )
        return outcome[0]

    async def put_limit(self, key: str, limit: int, period_s: float) -> RateLimitRecord:
        """Configure (or change) the limit of a key; its window of recent starts is kept."""

        def configure(record: RateLimitRecord) -> RateLimitRecord:
            return RateLimitRecord(key=key, limit=limit, period_s=period_s, starts=record.starts, updated_at=now_iso())

        updated = await _compare_and_set(self.kv, rate_limit_key(key), RateLimitRecord(key=key), configure)
        self._saw_limit(updated)
        return updated

    async def get_limit(self, key: str) -> RateLimitRecord | None:
        try:
            entry = await self.kv.get(rate_limit_key(key))
        except KeyNotFoundError:
            return None
        record = msgspec.json.decode(entry.value or b"{}", type=RateLimitRecord)
        return record if record.limit is not None else None

    async def delete_limit(self, key: str) -> bool:
        """Remove a configured limit (jobs that name the key fall back to their own numbers)."""
        record = await self.get_limit(key)
        if record is None:
            return False
        await self.kv.delete(rate_limit_key(key))
        self._limits.pop(key, None)
        self._recount_types()
        return True

    async def list_limits(self) -> list[RateLimitRecord]:
        return sorted((r for r in self._limits.values() if r.limit is not None), key=lambda r: r.key)

    def _saw_limit(self, record: RateLimitRecord) -> None:
        if record.limit is None:
            self._limits.pop(record.key, None)
        else:
            self._limits[record.key] = record
        self._recount_types()

    def _recount_types(self) -> None:
        self.limited_types = frozenset(
            k.removeprefix(TYPE_LIMIT_PREFIX) for k in self._limits if k.startswith(TYPE_LIMIT_PREFIX)
        )

    # --- watching and confirming ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Configured limits (for the machine's `limited_types`), and slots freed by any replica."""
        while True:
            try:
                watcher = await self.kv.watch(f"{CONCURRENCY_PREFIX}>", include_history=False)
                limits = await self.kv.watch(f"{RATE_LIMIT_PREFIX}>", include_history=False)
                await asyncio.gather(self._watch_slots(watcher), self._watch_limits(limits))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("gates watch lost; watching again", error=repr(exc))
                await asyncio.sleep(1.0)

    async def _watch_slots(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            key = entry.key.removeprefix(CONCURRENCY_PREFIX)
            if self._waiting.get(key):
                self._retry(key)

    async def _watch_limits(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            key = rate_limit_of_key(entry.key)
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._limits.pop(key, None)
                self._recount_types()
                continue
            with contextlib.suppress(msgspec.DecodeError):
                self._saw_limit(msgspec.json.decode(entry.value, type=RateLimitRecord))

    def _retry(self, key: str) -> None:
        """Ask again for this key's waiting jobs (joining the round in flight, if any)."""
        for owner, job in list(self._waiting.get(key, {}).values()):
            if not owner.gone:
                self._enqueue(self._slot_ops, key, (owner, job), self._slots_round)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            keys = {k for k, v in self._held.items() if v} | {k for k, v in self._waiting.items() if v}
            for key in keys:
                ids = set(self._held.get(key, {})) | set(self._waiting.get(key, {}))
                self._enqueue(self._slot_ops, key, functools.partial(_refresh, ids), self._slots_round)
                self._retry(key)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)


R = TypeVar("R", ConcurrencyRecord, RateLimitRecord)


async def _compare_and_set(
    kv: KeyValue,
    kv_key: str,
    empty: R,
    change: Callable[[R], R | None],
    *,
    cache: dict[str, tuple[R, int]] | None = None,
    cache_key: str = "",
) -> R:
    """Read, change, write back unless another writer came first (then again). `change` answers None when
    there is nothing to write. With `cache`, the value as this process last wrote it is tried first: a write
    on it fails when another writer changed it meanwhile, and is tried again on what that writer wrote. A
    decision to write nothing can't fail that way, so one made on the cached value is made again on the value
    read now: a replica deciding from its own last write alone would never see that another one gave back the
    slots its jobs wait for."""
    cached = cache.get(cache_key) if cache is not None else None
    kind = type(empty)
    while True:
        from_cache = cached is not None
        if cached is not None:
            record, revision = msgspec.json.decode(_encode(cached[0]), type=kind), cached[1]  # `change` may mutate
        else:
            try:
                entry = await kv.get(kv_key)
                record, revision = msgspec.json.decode(entry.value or b"{}", type=kind), entry.revision or 0
            except KeyNotFoundError:
                record, revision = empty, 0
        before = _encode(record)
        updated = change(record)
        if updated is None or (revision and _encode(updated) == before):
            if from_cache:
                cached = None
                continue
            return record if updated is None else updated
        try:
            if not revision:
                revision = await kv.create(kv_key, _encode(updated))
            else:
                revision = await kv.update(kv_key, _encode(updated), last=revision)
        except Exception as exc:
            if cache is not None:
                cache.pop(cache_key, None)
            if not _conflict(exc):
                raise
            cached = None  # another writer came first: read it and apply the change again
            continue
        if cache is not None:
            cache[cache_key] = (updated, revision)
        return updated


_SlotOp = tuple["GateOwner", "Job"] | Callable[[ConcurrencyRecord, int], ConcurrencyRecord]
"""An ask for a slot, or a change to apply to the key's record."""


def _conflict(exc: Exception) -> bool:
    """The compare-and-set lost: the key changed (or was created) since it was read."""
    return isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc) or "key exists" in str(exc)


def _drop(ids: set[tuple[str, str]], record: ConcurrencyRecord, now: int) -> ConcurrencyRecord:
    return gating.drop(record, ids, now)


def _refresh(ids: set[tuple[str, str]], record: ConcurrencyRecord, now: int) -> ConcurrencyRecord:
    return gating.refresh(record, ids, now)


def _hold(ids: set[tuple[str, str]], record: ConcurrencyRecord, now: int) -> ConcurrencyRecord:
    """These dispatched jobs hold slots (confirmed by their new owner), whatever the count says."""
    present = {(h.execution_id, h.job_id) for h in record.holders}
    refreshed = gating.refresh(record, ids, now)
    for execution_id, job_id in sorted(ids - present):
        refreshed.holders.append(Slot(execution_id=execution_id, job_id=job_id, since=now, seen=now))
    refreshed.waiters = [w for w in refreshed.waiters if (w.execution_id, w.job_id) not in ids]
    return refreshed

"""Concurrency keys and rate limits: the rules over their shared records, pure (no I/O).

A concurrency key's record (`ConcurrencyRecord`, one KV value per key, changed by compare-and-set from every
scheduler replica) lists the jobs holding one of its slots and the jobs waiting for one, the waiters in
priority order, then first-come. A job gets a slot when fewer than its `maxConcurrent` jobs hold one and no more
than the free slots' worth of waiters are ahead of it, so slots go in that order whichever replica asks first.
Every owner re-confirms its entries (`seen`) while they last; an entry nobody confirmed for `STALE_MS` belongs to
an owner that died with no one adopting the job yet, and is dropped, so a crash never leaks a slot for good.

A rate limit's record (`RateLimitRecord`) holds the times of the key's latest starts: a start is allowed while
fewer than `limit` of them lie within the last `periodS` (a sliding window), else the answer is when the next
one will be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from shared.messages import ConcurrencyRecord, RateLimitRecord, Slot

__all__ = [
    "STALE_MS",
    "TemplateError",
    "acquire",
    "drop",
    "refresh",
    "resolve_key",
    "take_starts",
]

STALE_MS = 30_000
"""An entry its owner has not confirmed for this long is dropped (owners confirm every STALE_MS / 3)."""

_FIELD = re.compile(r"\{config\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\}")
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class TemplateError(ValueError):
    """A key template that cannot be resolved for a job (the sentence names the problem)."""


def resolve_key(template: str, config: dict[str, Any]) -> str:
    """`customer-{config.customerId}` → `customer-42`: each `{config.a.b}` is the job's config value at that
    path (a string, a number or a boolean). The result must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'."""

    def value(match: re.Match[str]) -> str:
        node: Any = config
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise TemplateError(f"refers to config.{match.group(1)}, which the job's config does not have")
            node = node[part]
        if isinstance(node, bool):
            return "true" if node else "false"
        if isinstance(node, str | int | float):
            return str(node)
        raise TemplateError(f"refers to config.{match.group(1)}, which is not a string, a number or a boolean")

    if "{" in _FIELD.sub("", template) or "}" in _FIELD.sub("", template):
        raise TemplateError("may only use {config.<field>} placeholders")
    key = _FIELD.sub(value, template)
    if not _KEY.match(key):
        raise TemplateError(f"resolves to {key!r}, which is not 1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
    return key


def _fresh(slots: Iterable[Slot], now_ms: int) -> list[Slot]:
    return [s for s in slots if now_ms - s.seen < STALE_MS]


def _order(slot: Slot) -> tuple[int, int]:
    return (slot.priority, slot.since)


def acquire(record: ConcurrencyRecord, me: Slot, limit: int, now_ms: int) -> tuple[ConcurrencyRecord, bool, str]:
    """Ask for a slot: (the record to write back, granted, why it waits or what it holds). A job asking
    again keeps its place in line."""
    ident = (me.execution_id, me.job_id)
    holders = _fresh(record.holders, now_ms)
    waiters = _fresh(record.waiters, now_ms)
    if any((h.execution_id, h.job_id) == ident for h in holders):
        return ConcurrencyRecord(key=record.key, holders=holders, waiters=waiters), True, "holds a slot"
    # Asking again changes nothing (the owner's confirmation round keeps `seen` fresh): a record that does not
    # change is not written, so waiters asking again on every change of the key cannot feed on each other.
    ahead = next((i for i, w in enumerate(waiters) if (w.execution_id, w.job_id) == ident), None)
    if ahead is None:
        entry = Slot(execution_id=me.execution_id, job_id=me.job_id, priority=me.priority, since=me.since, seen=now_ms)
        # After every waiter that goes before it or ties with it: first come within a priority.
        ahead = next((i for i, w in enumerate(waiters) if _order(w) > _order(entry)), len(waiters))
        waiters.insert(ahead, entry)
    free = limit - len(holders)
    if ahead < free:
        holders.append(waiters.pop(ahead))
        return ConcurrencyRecord(key=record.key, holders=holders, waiters=waiters), True, "holds a slot"
    why = f"waiting for a slot of concurrency key '{record.key}': {len(holders)} of {limit} running"
    if ahead:
        why += f", {ahead} waiting ahead"
    return ConcurrencyRecord(key=record.key, holders=holders, waiters=waiters), False, why


def drop(record: ConcurrencyRecord, ids: set[tuple[str, str]], now_ms: int) -> ConcurrencyRecord:
    """Without these (execution, job) entries, holders or waiters (and without stale ones)."""
    return ConcurrencyRecord(
        key=record.key,
        holders=[h for h in _fresh(record.holders, now_ms) if (h.execution_id, h.job_id) not in ids],
        waiters=[w for w in _fresh(record.waiters, now_ms) if (w.execution_id, w.job_id) not in ids],
    )


def refresh(record: ConcurrencyRecord, ids: set[tuple[str, str]], now_ms: int) -> ConcurrencyRecord:
    """These entries confirmed by their owner now. A new record: the caller compares it with the one it read
    to know whether there is anything to write."""

    def seen(slots: list[Slot]) -> list[Slot]:
        confirmed = [
            msgspec.structs.replace(slot, seen=now_ms) if (slot.execution_id, slot.job_id) in ids else slot
            for slot in slots
        ]
        return _fresh(confirmed, now_ms)

    return ConcurrencyRecord(key=record.key, holders=seen(record.holders), waiters=seen(record.waiters))


def take_starts(
    record: RateLimitRecord, n: int, limit: int, period_s: float, now_ms: int
) -> tuple[RateLimitRecord, int, list[int]]:
    """Up to `n` starts now, as many as the window has room for: (the record to write back, how many were
    taken, when each of the others may start, in epoch ms, in order)."""
    period_ms = int(period_s * 1000)
    starts = [t for t in record.starts if now_ms - t < period_ms]
    taken = max(0, min(n, limit - len(starts)))
    starts.extend([now_ms] * taken)
    starts = starts[-limit:]
    # The i-th job refused starts once the i-th oldest start in the window has left it (a window later for
    # the jobs beyond a full window's worth).
    untils = [starts[i % limit] + period_ms * (1 + i // limit) for i in range(n - taken)]
    return _with_starts(record, starts), taken, untils


def _with_starts(record: RateLimitRecord, starts: list[int]) -> RateLimitRecord:
    return RateLimitRecord(
        key=record.key, limit=record.limit, period_s=record.period_s, starts=starts, updated_at=record.updated_at
    )

"""Concurrency keys and rate limits, the pure rules (services/scheduler/gating.py) and the machine's gate step."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.scheduler import machine
from services.scheduler.gates import _compare_and_set
from services.scheduler.gating import STALE_MS, TemplateError, acquire, drop, refresh, resolve_key, take_starts
from shared.messages import ConcurrencyRecord, JobConfig, RateLimit, RateLimitRecord, Slot


def slot(job: str, priority: int = 3, since: int = 0, execution: str = "exec-a") -> Slot:
    return Slot(execution_id=execution, job_id=job, priority=priority, since=since, seen=0)


def test_templates_take_config_values_and_refuse_what_they_cannot_resolve() -> None:
    assert resolve_key("customer-{config.customerId}", {"customerId": 42}) == "customer-42"
    assert resolve_key("{config.a.b}_{config.on}", {"a": {"b": "x"}, "on": True}) == "x_true"
    assert resolve_key("gpu", {}) == "gpu"
    with pytest.raises(TemplateError, match=r"config\.customerId, which the job's config does not have"):
        resolve_key("customer-{config.customerId}", {})
    with pytest.raises(TemplateError, match="not a string, a number or a boolean"):
        resolve_key("{config.list}", {"list": [1]})
    with pytest.raises(TemplateError, match="resolves to 'a b'"):
        resolve_key("{config.name}", {"name": "a b"})
    with pytest.raises(TemplateError, match="placeholders"):
        resolve_key("{customerId}", {"customerId": 1})


def test_slots_go_to_waiters_by_priority_then_first_come() -> None:
    record = ConcurrencyRecord(key="gpu")
    now = 1_000
    record, granted, _ = acquire(record, slot("a", since=1), 2, now)
    assert granted
    record, granted, _ = acquire(record, slot("b", since=2), 2, now)
    assert granted
    record, granted, why = acquire(record, slot("late-low", priority=5, since=3), 2, now)
    assert not granted and why == "waiting for a slot of concurrency key 'gpu': 2 of 2 running"
    record, granted, why = acquire(record, slot("later-high", priority=1, since=4), 2, now)
    assert not granted
    assert [w.job_id for w in record.waiters] == ["later-high", "late-low"]
    record = drop(record, {("exec-a", "a")}, now)
    # One slot free: the low-priority job asking first does not get it past the high one waiting.
    record, granted, why = acquire(record, slot("late-low", priority=5, since=3), 2, now)
    assert not granted and why.endswith("1 waiting ahead")
    record, granted, _ = acquire(record, slot("later-high", priority=1, since=4), 2, now)
    assert granted and [h.job_id for h in record.holders] == ["b", "later-high"]
    # Asking again is idempotent.
    again, granted, _ = acquire(record, slot("b"), 2, now)
    assert granted and len(again.holders) == 2


def test_waiters_that_tie_keep_their_places_when_they_ask_again() -> None:
    record = ConcurrencyRecord(key="k")
    record, _, _ = acquire(record, slot("holder"), 1, 0)
    for job in ("first", "second"):
        record, granted, _ = acquire(record, slot(job, since=5), 1, 0)
        assert not granted
    record = drop(record, {("exec-a", "holder")}, 0)
    # The second asks again first: it stays behind the first (asking again must not reorder the line).
    record, granted, why = acquire(record, slot("second", since=5), 1, 0)
    assert not granted and why.endswith("1 waiting ahead")
    record, granted, _ = acquire(record, slot("first", since=5), 1, 0)
    assert granted


def test_entries_nobody_confirms_expire() -> None:
    record, granted, _ = acquire(ConcurrencyRecord(key="k"), slot("a"), 1, 0)
    assert granted
    record, granted, _ = acquire(record, slot("b", execution="exec-b"), 1, STALE_MS - 1)
    assert not granted
    record, granted, _ = acquire(record, slot("b", execution="exec-b"), 1, STALE_MS + 1)
    assert granted and [h.job_id for h in record.holders] == ["b"]


def test_a_confirmation_is_a_new_record_and_keeps_what_its_owner_confirms() -> None:
    record, _, _ = acquire(ConcurrencyRecord(key="k"), slot("a"), 1, 0)
    confirmed = refresh(record, {("exec-a", "a")}, STALE_MS + 5)
    # The record read is left as it was: whoever compares the two sees that there is something to write.
    assert record.holders[0].seen == 0 and confirmed.holders[0].seen == STALE_MS + 5
    assert confirmed != record
    assert refresh(record, set(), STALE_MS + 5).holders == []  # not confirmed, and stale: gone


class _KV:
    """Just enough of a KV bucket for a compare-and-set: one key, its value and revision."""

    def __init__(self, value: bytes, revision: int) -> None:
        self.value, self.revision, self.reads = value, revision, 0

    async def get(self, key: str) -> Any:
        self.reads += 1
        return type("Entry", (), {"value": self.value, "revision": self.revision})()

    async def update(self, key: str, value: bytes, last: int) -> int:
        if last != self.revision:
            raise KeyWrongLastSequenceError()
        self.value, self.revision = value, self.revision + 1
        return self.revision


async def test_a_decision_to_write_nothing_is_made_on_the_record_as_it_is_now() -> None:
    """This replica's cache says both slots are taken; another replica has given them back since. Its job
    must get a slot at once, not wait until an entry goes stale (found as a 30 s stall with two replicas)."""
    full, _, _ = acquire(ConcurrencyRecord(key="k"), slot("x", execution="exec-b"), 2, 0)
    full, _, _ = acquire(full, slot("y", execution="exec-b"), 2, 0)
    mine, granted, _ = acquire(full, slot("a", since=1), 2, 0)
    assert not granted
    kv = _KV(msgspec.json.encode(drop(mine, {("exec-b", "x"), ("exec-b", "y")}, 0)), revision=7)
    cache: dict[str, tuple[ConcurrencyRecord, int]] = {"k": (mine, 6)}
    outcome: list[bool] = []

    def ask(record: ConcurrencyRecord) -> ConcurrencyRecord:
        record, granted, _ = acquire(record, slot("a", since=1), 2, 0)
        outcome[:] = [granted]
        return record

    written = await _compare_and_set(
        cast(KeyValue, kv), "concurrency.k", ConcurrencyRecord(key="k"), ask, cache=cache, cache_key="k"
    )
    assert outcome == [True] and [h.job_id for h in written.holders] == ["a"]
    assert kv.reads == 1 and kv.revision == 8 and cache["k"][1] == 8


def test_a_rate_limit_is_a_sliding_window() -> None:
    record = RateLimitRecord(key="api")
    for t in (0, 100):
        record, taken, untils = take_starts(record, 1, 3, 1.0, t)
        assert (taken, untils) == (1, [])
    # Four ask at once with room for one: one starts, the others when the window's oldest starts leave it.
    record, taken, untils = take_starts(record, 4, 3, 1.0, 200)
    assert taken == 1 and untils == [1000, 1100, 1200]
    record, taken, untils = take_starts(record, 1, 3, 1.0, 1000)
    assert taken == 1 and record.starts == [100, 200, 1000]


def env(limited: frozenset[str] = frozenset()) -> machine.Env:
    counter = iter(range(10_000))
    return machine.Env(now_ms=0, token=lambda: f"t{next(counter)}", limited_types=limited)


def state(*configs: JobConfig, parallelism: int | None = None) -> machine.ExecutionState:
    return machine.new_state(
        execution_id="exec-a", workflow_id="wf", shard=0, parallelism=parallelism, created_at="", configs=configs
    )


def test_gated_jobs_wait_for_the_gates_holding_no_parallelism_slot() -> None:
    s = state(
        JobConfig(id="k", name="k", type="noop", concurrency_key="gpu-{config.n}", config={"n": 1}),
        JobConfig(id="free", name="free", type="noop"),
        parallelism=1,
    )
    assert s.jobs[0].concurrency_key == "gpu-1"
    step = machine.on_start(s, env())
    assert step.gated == [0] and step.dispatched == [1]
    assert s.jobs[0].status == "ready" and s.jobs[0].awaiting
    # Cleared while the one parallelism slot is taken: first in line, dispatched once the slot frees.
    assert machine.on_cleared(s, env(), ["k"]).dispatched == []
    s.jobs[1].status = "completed"
    s.counts.queued, s.counts.completed = 0, 1
    step = machine.on_cleared(s, env(), [])
    queued = s.jobs[0]
    assert step.dispatched == [0] and queued.status == "queued" and not queued.cleared


def test_a_rate_limited_job_is_delayed_then_asks_again() -> None:
    s = state(JobConfig(id="a", name="a", type="noop", rate_limit=RateLimit(key="api", limit=1, period_s=1)))
    assert machine.on_start(s, env()).gated == [0]
    step = machine.on_limited(s, env(), "a", 2_000, "rate limit 'api'")
    assert s.jobs[0].status == "delayed" and s.jobs[0].waiting_reason == "rate limit 'api'"
    assert step.jobs[0].retry_at == "1970-01-01T00:00:02.000Z"
    step = machine.on_backoff_over(s, env(), "a")
    again = s.jobs[0]
    assert again.status == "ready" and step.gated == [0] and not step.dispatched


def test_a_configured_type_limit_gates_jobs_that_name_none() -> None:
    s = state(JobConfig(id="a", name="a", type="train"), JobConfig(id="b", name="b", type="noop"))
    step = machine.on_start(s, env(frozenset({"train"})))
    assert step.gated == [0] and step.dispatched == [1]

"""The registry's copy of the workers bucket: which of two sources of a record wins (no NATS)."""

from __future__ import annotations

from typing import Any

from services.registry.roster import Roster, RosterEntry
from shared.messages import WorkerRecord


def record(load: int = 0) -> WorkerRecord:
    at = "2026-12-03T10:00:00.000Z"
    return WorkerRecord(
        worker_id="w1",
        hostname="h",
        capabilities=["cpu"],
        max_concurrency=4,
        current_load=load,
        registered_at=at,
        last_heartbeat=at,
        heartbeat_interval_s=5,
    )


def roster() -> Roster:
    js: Any = None  # _apply and the writes never touch NATS
    return Roster(js, "workers")


def loads(r: Roster) -> list[tuple[int, int]]:
    return [(revision, rec.current_load) for revision, rec in r.records()]


def test_a_later_revision_wins_whoever_brings_it() -> None:
    r = roster()
    r.wrote(5, record(load=1))
    r._apply("w1", RosterEntry(4, record(load=0)))  # the watch, behind this replica's own write
    assert loads(r) == [(5, 1)]
    r._apply("w1", RosterEntry(7, record(load=3)))  # another replica's later heartbeat
    assert loads(r) == [(7, 3)]


def test_a_deleted_worker_is_not_brought_back_by_an_older_message() -> None:
    r = roster()
    r.wrote(5, record())
    r.deleted("w1", after=5)
    assert r.records() == []
    r._apply("w1", RosterEntry(5, record()))  # the watch delivering the write the delete followed
    assert r.records() == []
    r.wrote(9, record(load=2))  # registered again
    assert loads(r) == [(9, 2)]

"""Worker status, derived from heartbeat age at read time (never stored, so it cannot go stale)."""

from __future__ import annotations

from shared.messages import WorkerRecord, WorkerStatus, WorkerView
from shared.timeutil import ms_from_iso

__all__ = ["MISSED_HEARTBEATS", "derive_status", "held_by_other", "silence_ms", "view"]

# A worker is unhealthy after this many heartbeat intervals without a heartbeat.
MISSED_HEARTBEATS = 3


def silence_ms(record: WorkerRecord, now_ms: int) -> int:
    """Milliseconds since the worker's last heartbeat."""
    return max(0, now_ms - ms_from_iso(record.last_heartbeat))


def derive_status(record: WorkerRecord, now_ms: int) -> WorkerStatus:
    if silence_ms(record, now_ms) > MISSED_HEARTBEATS * record.heartbeat_interval_s * 1000:
        return "unhealthy"
    return "busy" if record.current_load > 0 else "idle"


def held_by_other(existing: WorkerRecord, incoming: WorkerRecord, now_ms: int) -> str | None:
    """The host of a live worker that holds the id `incoming` wants, or None when it may be replaced: the same
    host re-registering (a restart), or a holder that stopped heartbeating."""
    if existing.hostname == incoming.hostname or derive_status(existing, now_ms) == "unhealthy":
        return None
    return existing.hostname


def view(record: WorkerRecord, now_ms: int) -> WorkerView:
    return WorkerView(
        worker_id=record.worker_id,
        hostname=record.hostname,
        pid=record.pid,
        capabilities=record.capabilities,
        status=derive_status(record, now_ms),
        current_load=record.current_load,
        max_concurrency=record.max_concurrency,
        utilization=round(min(1.0, record.current_load / record.max_concurrency), 4),
        last_heartbeat=record.last_heartbeat,
        uptime=round(max(0, now_ms - ms_from_iso(record.registered_at)) / 1000, 3),
        registered_at=record.registered_at,
        heartbeat_interval_s=record.heartbeat_interval_s,
        metadata=record.metadata,
        problem=record.problem,
    )

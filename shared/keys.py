"""Every KV key, `$KV` subject and `Nats-Msg-Id` format — the only place they are spelled.

Keys hold user-supplied ids (execution and job ids, checked by `shared.ids` first), so a key never contains
anything but `[A-Za-z0-9_-]` tokens joined by dots. Execution records are the only single-token keys of the
executions bucket besides `archive`: the execution index follows exactly those (`$KV.<bucket>.*`).
"""

from __future__ import annotations

__all__ = [
    "ARCHIVE_KEY",
    "CONCURRENCY_PREFIX",
    "LAYOUT_KEY",
    "QUEUE_KEY",
    "RATE_LIMIT_PREFIX",
    "bundle_msg_id",
    "checkpoint_msg_id",
    "concurrency_key",
    "direct_get_subject",
    "execution_event_msg_id",
    "execution_key",
    "execution_keys",
    "execution_toggle_msg_id",
    "idempotency_key",
    "jobs_event_msg_id",
    "kv_subject",
    "lease_key",
    "queue_event_msg_id",
    "rate_limit_key",
    "rate_limit_of_key",
    "replica_key",
    "report_msg_id",
    "result_key",
    "schedule_key",
    "schedule_run_key",
    "schedule_state_key",
    "snapshot_key",
]

# --- the executions bucket ---------------------------------------------------------------------------------

ARCHIVE_KEY = "archive"
"""What executions removed by retention counted (services/scheduler/retention.py)."""
QUEUE_KEY = "control.queue"
"""The pauses of the job queue (QueueState)."""


def execution_key(execution_id: str) -> str:
    """The ExecutionRecord."""
    return execution_id


def execution_keys(execution_id: str) -> str:
    """Every other key of one execution (snapshots, large results): purged with it."""
    return f"{execution_id}.>"


def snapshot_key(execution_id: str, generation: int, part: int) -> str:
    """One SnapshotPart of an ended execution's jobs."""
    return f"{execution_id}.snapshot.{generation}.{part}"


def result_key(execution_id: str, job_id: str) -> str:
    """A job result too large to travel inside the journal and the job messages of its dependents."""
    return f"{execution_id}.result.{job_id}"


def idempotency_key(digest: str) -> str:
    """The execution an `Idempotency-Key` created (the digest hashes the key, never stored in clear)."""
    return f"idempotency.{digest}"


# --- the schedulers bucket ---------------------------------------------------------------------------------

LAYOUT_KEY = "layout"
"""How many shards executions are spread over (fixed when the namespace is first used)."""


CONCURRENCY_PREFIX = "concurrency."
RATE_LIMIT_PREFIX = "ratelimit."
_TYPE_KEY = "type:"


def concurrency_key(key: str) -> str:
    """The ConcurrencyRecord of a concurrency key."""
    return CONCURRENCY_PREFIX + key


def rate_limit_key(key: str) -> str:
    """The RateLimitRecord of a rate limit key; `type:train` → `ratelimit.type.train` (':' is no KV key
    character)."""
    if key.startswith(_TYPE_KEY):
        return f"{RATE_LIMIT_PREFIX}type.{key.removeprefix(_TYPE_KEY)}"
    return RATE_LIMIT_PREFIX + key


def rate_limit_of_key(kv_key: str) -> str:
    """The rate limit key a `rate_limit_key` names."""
    key = kv_key.removeprefix(RATE_LIMIT_PREFIX)
    return _TYPE_KEY + key.removeprefix("type.") if key.startswith("type.") else key


def lease_key(shard: int) -> str:
    return f"shard.{shard}"


def replica_key(replica_id: str) -> str:
    return f"replica.{replica_id}"


# --- subjects of KV operations -----------------------------------------------------------------------------


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV write of `key` is a publish to."""
    return f"$KV.{bucket}.{key}"


def direct_get_subject(bucket: str, key: str) -> str:
    """Direct get of `key`'s last value (answered by any server holding the bucket)."""
    return f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}"


# --- message ids (JetStream drops a second publish with the same id within the stream's duplicate window) -----


def bundle_msg_id(execution_id: str, round_: int, token: str) -> str:
    """A job message: named after the dispatch token of its first job, so a re-publish after a takeover is a
    duplicate of the original, not a second message."""
    return f"{execution_id}.r{round_}.{token}"


def report_msg_id(worker_id: str, boot: str, seq: int) -> str:
    """One ReportBatch of one worker process (`boot` is random per process start)."""
    return f"{worker_id}.{boot}.{seq}"


def execution_event_msg_id(execution_id: str, what: str, round_: int) -> str:
    return f"{execution_id}.{what}.r{round_}"


def execution_toggle_msg_id(execution_id: str, what: str, journal_seq: int) -> str:
    """An execution event that may happen many times a round (`paused`, `resumed`): one per journal step."""
    return f"{execution_id}.{what}.{journal_seq}"


def jobs_event_msg_id(execution_id: str, journal_seq: int, part: int) -> str:
    """The JobsEvent of one journal step (a step can be announced in several parts when large)."""
    return f"{execution_id}.jobs.{journal_seq}.{part}"


def checkpoint_msg_id(checkpoint_id: str, round_: int) -> str:
    return f"{checkpoint_id}.r{round_}"


def queue_event_msg_id(what: str, capability: str | None, job_type: str | None, at: str) -> str:
    """A queue event: `what` (paused, resumed, expired) of one pause scope at one time (a retried publish is a
    no-op)."""
    return f"queue.{what}.{capability or '*'}.{job_type or '*'}.{at}"


# --- the schedules bucket ----------------------------------------------------------------------------------


def schedule_key(schedule_id: str) -> str:
    """The ScheduleRecord (the definition)."""
    return schedule_id


def schedule_state_key(schedule_id: str) -> str:
    """The ScheduleState (paused, last tick, recent runs)."""
    return f"{schedule_id}.state"


def schedule_run_key(schedule_id: str, created_ms: int, tick_ms: int) -> str:
    """The Idempotency-Key of the execution one tick creates: a tick fired twice (a redelivery, two replicas
    during a handover) creates one execution. `created_ms` tells apart a schedule deleted and made again."""
    return f"schedule:{schedule_id}:{created_ms}:{tick_ms}"

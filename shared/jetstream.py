"""Stream and KV bucket definitions, and idempotent `ensure_*` helpers every service calls at start.

The definitions live here because more than one service ensures the same stream (everyone publishes events);
which service *writes* what is fixed by docs/architecture.md, not by who created it first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from shared.kvfollow import watch_bucket
from shared.logging import get_logger
from shared.pipeline import STORE_FULL_CODES, WRONG_LAST_SEQUENCE_CODES, JetStreamError
from shared.settings import StorageSettings
from shared.subjects import Names

__all__ = [
    "MAX_CONSUMERS_REACHED",
    "KvItem",
    "ensure_bucket",
    "ensure_stream",
    "events_stream_config",
    "is_store_full",
    "is_wrong_last_sequence",
    "jobs_stream_config",
    "journal_stream_config",
    "kv_config",
    "kv_entries",
    "reports_stream_config",
]

log = get_logger(__name__)

STREAM_NAME_IN_USE = 10058
# JSMaximumConsumersLimitErr: the account's (or the stream's) `max_consumers` refuses one more.
MAX_CONSUMERS_REACHED = 10026
MAX_MESSAGE_BYTES = 1024 * 1024


def _storage(storage: StorageSettings) -> StorageType:
    return StorageType.MEMORY if storage.memory else StorageType.FILE


def jobs_stream_config(names: Names, storage: StorageSettings) -> StreamConfig:
    """The work queue: each job message is removed once a worker acks it."""
    return StreamConfig(
        name=names.jobs_stream,
        description="jetdag job messages (bundles of job attempts of one execution); consumed by workers",
        subjects=[names.jobs_all],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=_storage(storage),
        num_replicas=storage.replicas,
        discard=DiscardPolicy.NEW,
        max_msg_size=MAX_MESSAGE_BYTES,
        # Longer than the scheduler's re-publish window (9 min): recovery re-publishes a queued job by its
        # message id without risking a second copy.
        duplicate_window=600.0,
    )


def events_stream_config(names: Names, storage: StorageSettings) -> StreamConfig:
    """Every execution, job and worker event; kept for a while so late subscribers can replay."""
    return StreamConfig(
        name=names.events_stream,
        description="jetdag execution, job and worker events",
        subjects=[names.events_all],
        retention=RetentionPolicy.LIMITS,
        storage=_storage(storage),
        num_replicas=storage.replicas,
        max_age=storage.events_max_age_s,
        max_msg_size=MAX_MESSAGE_BYTES,
        duplicate_window=600.0,
        # The scheduler reads an execution's ready queue (its `ready` events) by subject.
        allow_direct=True,
    )


def journal_stream_config(names: Names, storage: StorageSettings) -> StreamConfig:
    """Each open execution's journal (services/scheduler/journal.py). Limits retention without an age limit:
    a journal is purged by its owner when the execution ends (its jobs are snapshotted first)."""
    return StreamConfig(
        name=names.journal_stream,
        description="jetdag execution journals: each owner's log of its decisions",
        subjects=[names.journal_all],
        retention=RetentionPolicy.LIMITS,
        storage=_storage(storage),
        num_replicas=storage.replicas,
        max_msg_size=MAX_MESSAGE_BYTES,
        allow_direct=True,
    )


def reports_stream_config(names: Names, storage: StorageSettings) -> StreamConfig:
    """Worker reports, one subject per shard of executions; a report is removed once its shard's owner has
    committed it (work queue)."""
    return StreamConfig(
        name=names.reports_stream,
        description="jetdag worker reports (job started, finished, progress, handed back), per shard",
        subjects=[names.reports_all],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=_storage(storage),
        num_replicas=storage.replicas,
        max_msg_size=MAX_MESSAGE_BYTES,
        # A worker re-sends a batch it got no answer for; its message id makes the copy a no-op.
        duplicate_window=600.0,
    )


def kv_config(bucket: str, description: str, storage: StorageSettings) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=bucket,
        description=description,
        history=1,
        direct=True,  # reads of one key go straight to a server holding it (the scheduler's hot path)
        storage=_storage(storage),
        replicas=storage.replicas,
        max_value_size=MAX_MESSAGE_BYTES,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    """Create the stream, or bring an existing one to `config` (idempotent; safe with many replicas)."""
    try:
        return await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    log.info("updating stream configuration", stream=config.name)
    return await js.update_stream(config)


async def ensure_bucket(js: JetStreamContext, config: KeyValueConfig, *, msg_ttl: bool = False) -> KeyValue:
    """Open the KV bucket, creating it on first use. Brings its stream to what we use: direct gets, and
    with `msg_ttl` per-message TTLs (the `Nats-TTL` header; nats-server 2.11+), also on a bucket made before."""
    try:
        kv = await js.key_value(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        try:
            kv = await js.create_key_value(config)
        except BadRequestError as exc:
            # Another replica created it between our look-up and our create.
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            kv = await js.key_value(config.bucket)
    info = await js.stream_info(f"KV_{config.bucket}")
    wanted_direct = bool(config.direct) and not info.config.allow_direct
    wanted_ttl = msg_ttl and not info.config.allow_msg_ttl
    if wanted_direct or wanted_ttl:
        info.config.allow_direct = info.config.allow_direct or bool(config.direct)
        info.config.allow_msg_ttl = info.config.allow_msg_ttl or msg_ttl
        await js.update_stream(info.config)
    return kv


@dataclass(frozen=True, slots=True)
class KvItem:
    key: str
    value: bytes
    revision: int


async def kv_entries(js: JetStreamContext, bucket: str, keys: str = ">", timeout: float = 30.0) -> list[KvItem]:
    """Current value of every live key matching `keys` (deleted keys left out), read in one pass.

    Not nats-py's `watch()`: its "initial values done" marker is decided from consumer info and can come
    before messages the server already sent are processed, which under load cut listings short. Here every
    message says how many are still pending; the one with none pending is the last.
    """
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    found: dict[str, KvItem] = {}
    prefix = f"$KV.{bucket}."

    async def on_msg(msg: Msg) -> None:
        key = msg.subject[len(prefix) :]
        operation = (msg.headers or {}).get("KV-Operation")
        meta = msg.metadata
        if operation in ("DEL", "PURGE"):
            found.pop(key, None)
        else:
            found[key] = KvItem(key=key, value=msg.data, revision=meta.sequence.stream)
        if meta.num_pending == 0 and not done.done():
            done.set_result(None)

    sub, replayed = await watch_bucket(js, bucket, on_msg, keys=keys)
    try:
        if replayed:
            return []  # nothing matches: no message will come to say so
        await asyncio.wait_for(done, timeout)
        return list(found.values())
    finally:
        await sub.unsubscribe()


def is_store_full(exc: BaseException) -> bool:
    """True if JetStream refused a write for want of room (through nats-py or our pipeline alike)."""
    return isinstance(exc, APIError | JetStreamError) and exc.err_code in STORE_FULL_CODES


def is_wrong_last_sequence(exc: BaseException) -> bool:
    """True if `exc` is a lost compare-and-set (an expected outcome under contention, not a failure)."""
    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    return isinstance(exc, APIError) and exc.err_code in WRONG_LAST_SEQUENCE_CODES

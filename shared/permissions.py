"""Who may publish and subscribe to what on NATS: the one permission table of every jetdag role.

Each service connects with its own credential; the server enforces this table, so a leaked worker credential
cannot forge scheduler replies, write KV buckets or delete streams. It is a pure function of `Names`, used both
for the embedded server's config (`jetdag up`) and by `jetdag nats-config` for an operator's own cluster.

JetStream is driven by publishes to its API subjects, so JetStream rights are publish rights too: pulling from a
consumer is a publish to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, an ack one to `$JS.ACK.<stream>.>`,
a KV write one to `$KV.<bucket>.<key>`, a direct get one to `$JS.API.DIRECT.GET.<stream>…`. Replies (JetStream
acks, service answers) land in the caller's inbox, `Names.inbox_prefix(role)`; a role subscribes only there.
Services answer requests through `allow_responses` (a reply to a request they received), never through a
blanket right to publish on other roles' inboxes.

To extend it (a new stream, a new command), add the subjects to the role's list below; the tests in
tests/test_nats_permissions.py prove each role can do its work and cannot do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.subjects import Names

__all__ = ["Permissions", "Role", "permissions"]

JS_API = "$JS.API"


class Role(StrEnum):
    """One NATS credential each; `operator` is the human with the `nats` CLI (full rights)."""

    GATEWAY = "gateway"
    REGISTRY = "registry"
    SCHEDULER = "scheduler"
    WORKER = "worker"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May publish one reply to the reply subject of each request it received (the services)."""

    def __post_init__(self) -> None:
        # The grammar helpers overlap (an owner is also a reader): each subject once, in first-seen order.
        object.__setattr__(self, "publish", tuple(dict.fromkeys(self.publish)))
        object.__setattr__(self, "subscribe", tuple(dict.fromkeys(self.subscribe)))


# --- JetStream API grammar --------------------------------------------------------------------------------


def _stream_owner(stream: str) -> list[str]:
    """Everything the owner of `stream` does to it, except deleting it (only the operator may)."""
    return [
        *(f"{JS_API}.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE", "PURGE")),
        f"{JS_API}.STREAM.MSG.*.{stream}",  # MSG.GET, MSG.DELETE
        *_stream_reader(stream),
        *_consumer_admin(stream),
    ]


def _stream_reader(stream: str) -> list[str]:
    """Read a stream: its info, messages by sequence or subject (direct or through the API)."""
    return [
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    ]


def _ordered_reader(stream: str) -> list[str]:
    """Follow a stream with ordered consumers: ephemeral ones only (the legacy subject without a name
    refuses a durable), their flow control, and their clean-up."""
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def _consumer_admin(stream: str) -> list[str]:
    """Create, inspect, pause, delete and pull the consumers of `stream`, and ack what they deliver."""
    return [
        f"{JS_API}.CONSUMER.*.{stream}",  # CREATE (ephemeral), LIST, NAMES
        f"{JS_API}.CONSUMER.*.{stream}.>",  # CREATE <name> [filter], INFO, DELETE, PAUSE, RESET
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _consumer_puller(stream: str) -> list[str]:
    """Pull from existing consumers of `stream` and ack (ack, nak, in-progress, term) what they deliver."""
    return [f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*", f"$JS.ACK.{stream}.>"]


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


def _kv_owner(bucket: str) -> list[str]:
    return [f"$KV.{bucket}.>", *_stream_owner(_kv(bucket))]


def _object_store(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _micro_service(service: str) -> list[str]:
    """The discovery subjects nats.micro answers on ($SRV.PING|INFO|STATS[.<name>[.<id>]])."""
    return ["$SRV.*", f"$SRV.*.{service}", f"$SRV.*.{service}.*"]


# --- the table --------------------------------------------------------------------------------------------


def permissions(names: Names) -> dict[Role, Permissions]:
    """Publish/subscribe allow lists of every role, for one namespace."""
    jobs, events = names.jobs_stream, names.events_stream
    journal, reports = names.journal_stream, names.reports_stream
    submissions = names.submissions_bucket

    def inbox(role: Role) -> str:
        return f"{names.inbox_prefix(role)}.>"

    # Every service process answers the gateway's metrics scrape (GET /metrics), hence allow_responses for all.
    scrape = names.metrics_scrape

    gateway = Permissions(
        publish=(
            f"{names.registry_prefix}.*",
            f"{names.scheduler_prefix}.*",
            f"{names.scheduler_prefix}.queue.*",
            f"{names.scheduler_prefix}.schedules.*",
            f"{names.scheduler_prefix}.ratelimit.*",
            names.service_ping(names.scheduler_service),
            names.service_ping(names.registry_service),
            scrape,
            # /health looks at the job stream and the buckets.
            f"{JS_API}.STREAM.INFO.{jobs}",
            *(f"{JS_API}.STREAM.INFO.{_kv(b)}" for b in _buckets(names)),
            # Large submissions are staged in the object store (the scheduler reads and deletes them).
            f"$O.{submissions}.>",
            *_stream_reader(_object_store(submissions)),
            # Live events for HTTP clients (SSE): ordered consumers on the event stream.
            f"{JS_API}.STREAM.NAMES",
            *_stream_reader(events),
            *_ordered_reader(events),
        ),
        subscribe=(inbox(Role.GATEWAY), scrape),
        allow_responses=True,
    )
    registry = Permissions(
        publish=(
            f"{names.events_prefix}.worker.*.*",
            *_kv_owner(names.workers_bucket),
            # It creates the event stream if it starts first (the scheduler owns it otherwise).
            *(f"{JS_API}.STREAM.{verb}.{events}" for verb in ("INFO", "CREATE", "UPDATE")),
        ),
        subscribe=(
            inbox(Role.REGISTRY),
            f"{names.registry_prefix}.*",
            *_micro_service(names.registry_service),
            scrape,
        ),
        allow_responses=True,
    )
    scheduler = Permissions(
        publish=(
            f"{names.jobs_prefix}.>",
            f"{names.events_prefix}.execution.>",
            f"{names.events_prefix}.queue.*",
            # Its journals (only it appends: the journal is what fences a former owner), the cancel notices
            # workers obey, the commands it forwards to another replica, the pings that tell a replica gone.
            names.journal_all,
            names.workers_cancel,
            f"{names.scheduler_prefix}.shard.>",
            f"{names.scheduler_prefix}.replica.>",
            # The audit asks the registry which workers live (a job's waitingReason).
            names.registry("list"),
            *_stream_owner(jobs),
            *_stream_owner(events),
            *_stream_owner(journal),
            *_stream_owner(reports),
            *_kv_owner(names.executions_bucket),
            *_kv_owner(names.checkpoints_bucket),
            *_kv_owner(names.schedulers_bucket),
            *_kv_owner(names.schedules_bucket),
            f"$O.{submissions}.>",
            *_stream_owner(_object_store(submissions)),
            # nats-py's object store finds the stream of a subject by asking for stream names.
            f"{JS_API}.STREAM.NAMES",
        ),
        subscribe=(
            inbox(Role.SCHEDULER),
            f"{names.scheduler_prefix}.>",
            *_micro_service(names.scheduler_service),
            scrape,
        ),
        allow_responses=True,
    )
    worker = Permissions(
        publish=(
            # Its reports on the jobs it runs, to the owner of each job's execution (the scheduler accepts a
            # report only with the token of the job's current dispatch).
            f"{names.reports_prefix}.*",
            *(names.registry(command) for command in ("register", "heartbeat", "deregister")),
            names.scheduler("consumer"),
            *_consumer_puller(jobs),
            # Results of a job's parents too large to travel in its job message.
            *_stream_reader(_kv(names.executions_bucket)),
        ),
        subscribe=(inbox(Role.WORKER), names.workers_cancel, names.jobs_pause_advisories, scrape),
        # For the scrape. It also lets a worker answer once to the reply subject of a message it receives, such
        # as a cancellation event's JetStream-ack inbox (docs/security.md: what is not covered yet).
        allow_responses=True,
    )
    operator = Permissions(publish=(">",), subscribe=(">",))
    return {
        Role.GATEWAY: gateway,
        Role.REGISTRY: registry,
        Role.SCHEDULER: scheduler,
        Role.WORKER: worker,
        Role.OPERATOR: operator,
    }


def _buckets(names: Names) -> tuple[str, ...]:
    return (names.workers_bucket, names.executions_bucket, names.checkpoints_bucket, names.schedulers_bucket)

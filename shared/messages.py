"""Wire formats: every NATS payload and KV value, as msgspec Structs (JSON, camelCase).

The REST gateway uses the same Structs as its request types (see `shared.api` for REST-only responses), so a
field is spelled once for REST, NATS and KV. `nats sub`, `nats kv get` and `nats stream view` show these as
plain JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.ids import ID_RE, NAME_RE

__all__ = [
    "ApiRequest",
    "Capability",
    "DeregisterReply",
    "HeartbeatCommand",
    "HeartbeatRequest",
    "ListWorkers",
    "Message",
    "RegisterReply",
    "RegisterWorker",
    "WorkerEvent",
    "WorkerList",
    "WorkerRecord",
    "WorkerRef",
    "WorkerStatus",
    "WorkerSummary",
    "WorkerView",
]

MAX_METADATA_BYTES = 16 * 1024

WorkerId = Annotated[
    str,
    Meta(
        pattern=ID_RE.pattern,
        description="1-128 characters of A-Z, a-z, 0-9, '_' or '-'",
        examples=["worker-1"],
    ),
]
Capability = Annotated[
    str,
    Meta(pattern=NAME_RE.pattern, description="1-64 characters of A-Z, a-z, 0-9, '_' or '-', no '__'"),
]
NonNegInt = Annotated[int, Meta(ge=0, le=1_000_000)]
Hostname = Annotated[str, Meta(min_length=1, max_length=255)]
WorkerStatus = Literal["idle", "busy", "unhealthy"]


class Message(msgspec.Struct, rename="camel", kw_only=True):
    """Base of NATS messages and KV values: unknown fields are ignored so services can be upgraded one at
    a time."""


class ApiRequest(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: an unknown field is a 400 naming it (a typo must not be silently ignored)."""


# --- workers -----------------------------------------------------------------------------------------------


class RegisterWorker(ApiRequest):
    """POST /workers/register body, and the `registry.register` command."""

    worker_id: WorkerId
    hostname: Hostname
    capabilities: Annotated[list[Capability], Meta(max_length=64)]
    max_concurrency: Annotated[int, Meta(ge=1, le=100_000)]
    pid: Annotated[int, Meta(ge=0)] | None = None
    current_load: NonNegInt = 0
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    heartbeat_interval_s: Annotated[float, Meta(gt=0, le=3600)] | None = None
    """How often this worker promises to heartbeat; default 30 s over REST (the registry's setting)."""


class HeartbeatRequest(ApiRequest):
    """POST /workers/{workerId}/heartbeat body."""

    current_load: NonNegInt


class HeartbeatCommand(Message):
    """`registry.heartbeat` command."""

    worker_id: str
    current_load: int


class WorkerRef(Message):
    """`registry.get` and `registry.deregister` command."""

    worker_id: str


class ListWorkers(Message):
    """`registry.list` command (no filters yet)."""


class WorkerRecord(Message):
    """Value of key `<workerId>` in the workers KV bucket (written only by the registry)."""

    worker_id: str
    hostname: str
    capabilities: list[str]
    max_concurrency: int
    current_load: int
    registered_at: str
    last_heartbeat: str
    heartbeat_interval_s: float
    pid: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    source: Literal["rest", "nats"] = "rest"
    unhealthy_since: str | None = None
    """Set by the registry when it announced the worker unhealthy; cleared by the next heartbeat."""


class WorkerView(Message):
    """A worker as clients see it: the record plus the status derived from heartbeat age."""

    worker_id: str
    hostname: str
    pid: int | None
    capabilities: list[str]
    status: WorkerStatus
    current_load: int
    max_concurrency: int
    utilization: float
    last_heartbeat: str
    uptime: float
    registered_at: str
    heartbeat_interval_s: float
    metadata: dict[str, Any]


class RegisterReply(Message):
    worker: WorkerView
    created: bool


class DeregisterReply(Message):
    worker_id: str


class WorkerList(Message):
    workers: list[WorkerView]


class WorkerSummary(Message):
    """`registry.summary` reply: the counts `/health` shows."""

    total: int
    active: int
    idle: int
    busy: int
    unhealthy: int
    load: int
    capacity: int


class WorkerEvent(Message):
    """Payload of `<ns>.events.worker.<workerId>.<event>`."""

    event: Literal["registered", "deregistered", "unhealthy", "recovered", "reaped"]
    worker_id: str
    at: str
    status: WorkerStatus | None = None
    reason: str | None = None

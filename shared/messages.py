"""Wire formats: every NATS payload and KV value, as msgspec Structs (JSON, camelCase).

The REST gateway uses the same Structs as its request types (see `shared.api` for REST-only responses), so a
field is spelled once for REST, NATS and KV. `nats sub`, `nats kv get` and `nats stream view` show these as
plain JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.ids import ID_RE, NAME_RE, WORKFLOW_RE
from shared.timeutil import Timestamp

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
    last_heartbeat: Timestamp
    uptime: float
    registered_at: Timestamp
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


# --- executions ------------------------------------------------------------------------------------------

JobId = Annotated[str, Meta(pattern=ID_RE.pattern, description="1-128 characters of A-Z, a-z, 0-9, '_' or '-'")]
JobType = Annotated[
    str,
    Meta(pattern=NAME_RE.pattern, description="handler name: 1-64 characters of A-Z, a-z, 0-9, '_' or '-', no '__'"),
]
WorkflowId = Annotated[
    str,
    Meta(pattern=WORKFLOW_RE.pattern, description="1-128 characters of A-Z, a-z, 0-9, '_', '-', '.' or ':'"),
]
ExecutionStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
JobStatus = Literal["pending", "ready", "queued", "running", "delayed", "completed", "failed", "skipped", "cancelled"]
FINAL_JOB_STATES: frozenset[str] = frozenset({"completed", "failed", "skipped", "cancelled"})
FINAL_EXECUTION_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ANY_CAPABILITY = "any"
"""Capability token of jobs that any worker may run (every worker consumes it)."""


class JobConfig(ApiRequest):
    """One job of a DAG (POST /execute `jobs[]`)."""

    id: JobId
    name: Annotated[str, Meta(max_length=256)]
    type: JobType
    depends_on: list[JobId] = msgspec.field(default_factory=list)
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    """Extra attempts after a failed one (default 0: one attempt)."""
    backoff_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 1000
    """Base delay before retry k: `backoffMs * 2^(k-1)`, with ±20 % jitter."""
    timeout_s: Annotated[float, Meta(gt=0, le=7 * 24 * 3600)] | None = None
    """An attempt running longer than this fails (and may be retried)."""
    capability: Capability | None = None
    """Only workers that registered this capability receive the job; default: any worker."""


class ExecuteRequest(ApiRequest):
    """POST /execute body."""

    workflow_id: WorkflowId
    jobs: Annotated[list[JobConfig], Meta(min_length=1)]
    parallelism: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


class ExecuteCommand(Message):
    """`scheduler.execute`: the DAG inline, or (when too large for one NATS message) the name of the object
    the gateway staged it under in the submissions object store."""

    request: ExecuteRequest | None = None
    staged: str | None = None


class Progress(Message):
    total: int
    completed: int
    failed: int
    running: int
    queued: int = 0
    pending: int = 0
    delayed: int = 0
    skipped: int = 0
    cancelled: int = 0


class ExecutionView(Message):
    """An execution as clients see it (GET /execute/{id} `execution`)."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    started_at: Timestamp
    completed_at: Timestamp | None
    progress: Progress
    checkpoint_id: str | None
    job_count: int
    parallelism: int | None
    round: int
    error: str | None = None


class JobView(Message):
    """One job of an execution (GET /execute/{id}/jobs)."""

    id: str
    name: str
    type: str
    status: JobStatus
    attempts: int
    worker_id: str | None
    queued_at: Timestamp | None
    started_at: Timestamp | None
    completed_at: Timestamp | None
    error: str | None
    result: Any = None
    depends_on: list[str] = msgspec.field(default_factory=list)
    capability: str | None = None


class ExecutionRef(Message):
    """`scheduler.get`, `.jobs`, `.cancel`, `.retry` command."""

    execution_id: str


class ListExecutions(Message):
    status: ExecutionStatus | None = None
    workflow_id: str | None = None
    limit: int = 50
    cursor: str | None = None


class ExecutionList(Message):
    executions: list[ExecutionView]
    next_cursor: str | None = None


class JobList(Message):
    execution_id: str
    jobs: list[JobView]


class QueueStats(Message):
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int
    paused: int
    total: int


class QueueStatsReply(Message):
    stats: QueueStats
    is_paused: bool
    healthy: bool


class QueueControl(Message):
    """`scheduler.queue.pause` / `.resume` reply."""

    is_paused: bool
    changed: bool
    consumers: int


class EnsureConsumer(Message):
    """`scheduler.consumer`: a worker asks for the durable consumer of (capability, type)."""

    capability: str
    type: str


class ConsumerRef(Message):
    stream: str
    consumer: str
    subject: str
    ack_wait_s: float
    max_deliveries: int = 5
    """A message delivered more often than this without a result fails its job as a poison job."""


# --- the job stream and worker reports ---------------------------------------------------------------------


class JobMessage(Message):
    """Payload of `<ns>.jobs.<capability>.<type>`: one attempt of one job."""

    execution_id: str
    job_id: str
    name: str
    type: str
    attempt: int
    round: int
    config: dict[str, Any]
    dependencies: dict[str, Any] = msgspec.field(default_factory=dict)
    """Results of the jobs this one depends on, by job id (when they fit in the message)."""
    fetch_dependencies: list[str] = msgspec.field(default_factory=list)
    """Dependencies whose results were too large to inline: read them from the executions bucket."""
    timeout_s: float | None = None


class JobStarted(Message):
    """Worker report `<ns>.events.job.<exec>.<job>.started`."""

    execution_id: str
    job_id: str
    attempt: int
    round: int
    worker_id: str
    at: str


class JobResult(Message):
    """Worker report `<ns>.events.job.<exec>.<job>.result`: the outcome of one attempt."""

    execution_id: str
    job_id: str
    attempt: int
    round: int
    worker_id: str
    ok: bool
    at: str
    duration_ms: float
    result: Any = None
    error: str | None = None
    cancelled: bool = False


class JobEvent(Message):
    """Scheduler event `<ns>.events.job.<exec>.<job>.<status>` after a recorded state change."""

    execution_id: str
    job_id: str
    status: JobStatus
    attempt: int
    at: str
    worker_id: str | None = None
    error: str | None = None
    retry_at: str | None = None


class ExecutionEvent(Message):
    """Scheduler event `<ns>.events.execution.<exec>.<status>`."""

    execution_id: str
    workflow_id: str
    status: str
    at: str
    progress: Progress
    checkpoint_id: str | None = None
    error: str | None = None


# --- scheduler state in the executions bucket ---------------------------------------------------------------


class Counts(Message):
    """Jobs of one execution per status; kept in the execution record, updated with each state change."""

    pending: int = 0
    ready: int = 0
    queued: int = 0
    running: int = 0
    delayed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0

    @property
    def in_flight(self) -> int:
        """Jobs holding a parallelism slot: dispatched and not finished (a backoff keeps its slot)."""
        return self.queued + self.running + self.delayed

    @property
    def open(self) -> int:
        """Jobs that can still change: the execution is over when this reaches 0."""
        return self.pending + self.ready + self.queued + self.running + self.delayed


class ExecutionRecord(Message):
    """Value of key `<executionId>` in the executions bucket."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    created_at: str
    started_at: str
    completed_at: str | None
    job_count: int
    parallelism: int | None
    counts: Counts
    updated_at: str
    round: int = 1
    ready_cursor: int = 0
    """Sequence in the event stream of the last `ready` event taken off this execution's ready queue."""
    checkpoint_id: str | None = None
    checkpoint_seq: int = 0
    error: str | None = None


class JobRecord(Message):
    """Value of key `<executionId>.job.<jobId>` in the executions bucket."""

    id: str
    name: str
    type: str
    capability: str
    depends_on: list[str]
    dependents: list[str]
    config: dict[str, Any]
    retries: int
    backoff_ms: int
    timeout_s: float | None
    status: JobStatus
    remaining: int
    """Dependencies not completed yet; the job is ready at 0."""
    index: int = 0
    """Position in the submitted `jobs` list (listings keep the user's order)."""
    attempt: int = 0
    round: int = 1
    depends_on_chunks: int = 0
    dependents_chunks: int = 0
    """Very wide fan-in/fan-out: ids beyond the inline ones live in `<exec>.links.<job>.<kind>.<n>` keys."""
    worker_id: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    retry_at: str | None = None
    error: str | None = None
    result: Any = None
    requested_capability: str | None = None


class Checkpoint(Message):
    """Value of key `<executionId>` in the checkpoints bucket (its history keeps earlier checkpoints)."""

    checkpoint_id: str
    execution_id: str
    seq: int
    round: int
    at: str
    status: ExecutionStatus
    counts: Counts
    completed_jobs: list[str]
    """Jobs completed since the previous checkpoint."""


class Removal(Message):
    """An execution being removed by retention: the revision it was removed at and what it counted."""

    revision: int
    completed: int
    failed: int


class Archive(Message):
    """Value of key `archive` in the executions bucket: what executions removed by retention counted, so the
    cumulative counters of GET /queue/stats stay exact after their records are gone."""

    completed: int = 0
    failed: int = 0
    executions: int = 0
    removing: dict[str, Removal] = {}
    """Executions announced for removal and not yet added to the totals above (see services/scheduler/retention.py)."""


class QueueState(Message):
    """Value of key `control.queue` in the executions bucket: the persisted pause switch."""

    paused: bool
    changed_at: str


# --- observability -----------------------------------------------------------------------------------------


class MetricsExposition(Message):
    """Answer to a request on `<ns>.metrics.scrape`: one process's metrics in the Prometheus text format."""

    service: str
    process: str
    """`<hostname>-<pid>`: the `process` label the gateway gives this process's samples."""
    text: str

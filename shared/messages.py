"""Wire formats: every NATS payload and KV value, as msgspec Structs (JSON, camelCase).

The REST gateway uses the same Structs as its request types (see `shared.api` for REST-only responses), so a
field is spelled once for REST, NATS and KV. `nats sub`, `nats kv get` and `nats stream view` show these as
plain JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.ids import ID_RE, IDEMPOTENCY_KEY_RE, NAME_RE, WORKFLOW_RE
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
MAX_DELAY_S = 366 * 24 * 3600.0
"""How far ahead an execution may be set to start (`runAt`, `delayS`)."""

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
    problem: str | None = None
    """Why the worker cannot take (some) jobs, in one sentence; None: nothing keeps it from working."""


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
    problem: str | None = None
    """What the worker's last heartbeat said keeps it from taking jobs (HeartbeatCommand.problem)."""


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
    problem: str | None = None
    """Why the worker cannot take (some) jobs, as its last heartbeat said (its consumers refused, say)."""


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
PRIORITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Priority bands, highest first: each (capability, type) has one consumer per band, drained in this order."""
DEFAULT_PRIORITY = 3
Priority = Annotated[int, Meta(ge=1, le=5, description="1 (highest) to 5 (lowest); default 3")]


LimitKey = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="1-128 characters of A-Z, a-z, 0-9, '_' or '-'")
]
RateLimitKey = Annotated[
    str,
    Meta(
        pattern=r"^(type:)?[A-Za-z0-9_-]{1,128}$",
        description="a key (1-128 characters of A-Z, a-z, 0-9, '_' or '-'), or type:<jobType> for every job of a type",
    ),
]


class RateLimit(ApiRequest):
    """A job's `rateLimit`: no more than `limit` starts per `periodS` of the jobs naming `key`, cluster-wide."""

    key: LimitKey
    limit: Annotated[int, Meta(ge=1, le=1_000_000)]
    period_s: Annotated[float, Meta(gt=0, le=7 * 24 * 3600)]


class RateLimitSetting(ApiRequest):
    """PUT /rate-limits/{key} body."""

    limit: Annotated[int, Meta(ge=1, le=1_000_000)]
    period_s: Annotated[float, Meta(gt=0, le=7 * 24 * 3600)]


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
    schedule_timeout_s: Annotated[float, Meta(gt=0, le=7 * 24 * 3600)] | None = None
    """A job no worker has started this long after it was queued fails (default: the scheduler's setting)."""
    priority: Priority | None = None
    """When workers are saturated, ready jobs of a higher priority start first (default: the execution's)."""
    concurrency_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    """At most `maxConcurrent` jobs with the same key run at once, across executions and replicas. May use the
    job's config: `customer-{config.customerId}`."""
    max_concurrent: Annotated[int, Meta(ge=1, le=100_000)] | None = None
    """Slots of `concurrencyKey` (default 1)."""
    rate_limit: RateLimit | None = None


IdempotencyKey = Annotated[
    str,
    Meta(pattern=IDEMPOTENCY_KEY_RE.pattern, description="1-255 characters of A-Z, a-z, 0-9, '_', '-', '.' or ':'"),
]


class ExecuteRequest(ApiRequest):
    """POST /execute body."""

    workflow_id: WorkflowId
    jobs: Annotated[list[JobConfig], Meta(min_length=1)]
    parallelism: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    priority: Priority | None = None
    """Priority of the execution's jobs that set none (default 3)."""
    idempotency_key: IdempotencyKey | None = None
    """The same key with the same request returns the execution it created (200), never a second one; with
    another request it is a 409. The `Idempotency-Key` header does the same."""
    run_at: Annotated[datetime, Meta(tz=True)] | None = None
    """Persist the execution now, start it at this time (ISO 8601 with a UTC offset; a time past starts it
    at once). Not with `delayS`."""
    delay_s: Annotated[float, Meta(ge=0, le=MAX_DELAY_S)] | None = None
    """Persist the execution now, start it this many seconds later. Not with `runAt`."""


class ExecuteCommand(Message):
    """`scheduler.execute`: the DAG inline, or (when too large for one NATS message) the name of the object
    the gateway staged it under in the submissions object store."""

    request: ExecuteRequest | None = None
    staged: str | None = None
    idempotency_key: str | None = None
    """From the `Idempotency-Key` header (the request's own field counts too)."""
    submitted_by: str | None = None
    """Name of the API token that submitted it (None: auth off); its open executions are counted."""


class ExecuteReply(Message):
    """`scheduler.execute` answer: the execution, and whether this request created it (201) or an earlier one
    with the same Idempotency-Key did (200)."""

    execution: ExecutionView
    created: bool = True


class IdempotencyRecord(Message):
    """Value of key `idempotency.<digest>` in the executions bucket (with a TTL): what a key created."""

    execution_id: str
    fingerprint: str
    """Hash of the request it came with: the same key with another request is a conflict."""
    created_at: str


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
    run_at: Timestamp | None = None
    """When a delayed execution (`runAt`, `delayS`) starts; it stays `pending` until then."""
    priority: int = DEFAULT_PRIORITY
    paused: bool = False
    """POST /execute/{id}/pause holds its jobs that have not started (its status stays pending or running)."""
    paused_at: Timestamp | None = None


class ErrorInfo(Message):
    """Why an attempt failed: the exception's type and message, and a bounded traceback when there is one."""

    type: str
    message: str
    traceback: str | None = None
    log: list[str] | None = None
    """The attempt's last log lines (its `ctx.log` and the stdlib records that pass the worker's level), oldest
    first: at most 20 of at most 300 characters."""


class Delivery(Message):
    """One run of a job on a worker (a job runs more than once when its worker dies or freezes mid-run)."""

    worker_id: str
    at: str
    attempt: int
    delivery: int = 1
    """JetStream's delivery count of the message that carried it (2+: a redelivery)."""


class JobProgress(Message):
    """What a handler last said about its progress (`ctx.progress`)."""

    fraction: float | None = None
    message: str | None = None
    at: str | None = None


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
    error_info: ErrorInfo | None = None
    deliveries: list[Delivery] = msgspec.field(default_factory=list)
    progress: JobProgress | None = None
    waiting_reason: str | None = None
    retry_at: str | None = None
    priority: int = DEFAULT_PRIORITY
    concurrency_key: str | None = None
    """Its concurrency key, resolved (a job waiting for one of its slots is `ready`, with a waitingReason)."""
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    """The job's config as submitted."""


class ExecutionRef(Message):
    """`scheduler.get`, `.cancel`, `.retry` command."""

    execution_id: str


class JobsQuery(Message):
    """`scheduler.jobs`: one page of an execution's jobs, in submission order."""

    execution_id: str
    offset: int = 0
    limit: int = 1000


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
    total: int = 0
    """Jobs of the execution; a page holds `jobs[offset:offset+limit]` of them."""
    next_offset: int | None = None
    """Where the next page starts (None: this was the last)."""


class QueueStats(Message):
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int
    paused: int
    total: int
    """The sum of the six above; exactly these seven fields (the contract's)."""


class QueueStatsReply(Message):
    stats: QueueStats
    is_paused: bool
    healthy: bool
    pauses: list[QueuePause] = msgspec.field(default_factory=list)
    ready: int = 0
    """Jobs whose parents are done that wait for a slot: their execution's parallelism or their concurrency
    key's maxConcurrent (beside `stats`, whose seven fields are the contract's)."""


class QueueControl(Message):
    """`scheduler.queue.pause` / `.resume` reply."""

    is_paused: bool
    changed: bool
    consumers: int
    pauses: list[QueuePause] = msgspec.field(default_factory=list)
    """The pauses in effect after the command."""
    ended: list[QueuePause] = msgspec.field(default_factory=list)
    """The pauses a resume ended."""


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
    """A message delivered more often than this without a result fails its jobs as poison jobs."""
    priority: int = DEFAULT_PRIORITY
    """The band this consumer takes: a worker pulls the higher bands first."""


class ConsumerSet(Message):
    """`scheduler.consumer` reply: the (capability, type) consumers, one per priority band, highest first."""

    consumers: list[ConsumerRef]


# --- the job stream and worker reports ---------------------------------------------------------------------


class JobItem(Message):
    """One attempt of one job, inside a JobBundle."""

    job_id: str
    name: str
    attempt: int
    token: str
    """Issued by the scheduler for this dispatch: a report counts only with the token of the job's current
    dispatch, so a stale, duplicated or forged report changes nothing."""
    config: dict[str, Any]
    dependencies: dict[str, Any] = msgspec.field(default_factory=dict)
    """Results of the jobs this one depends on, by job id (when they fit in the message)."""
    fetch_dependencies: list[str] = msgspec.field(default_factory=list)
    """Dependencies whose results were too large to inline: read them from the executions bucket."""
    timeout_s: float | None = None


class JobBundle(Message):
    """Payload of `<ns>.jobs.<capability>.<type>.p<priority>.<executionId>`: jobs of one type and priority of one
    execution, dispatched together (one job when they run long; several when they are quick, see
    services/scheduler/dispatch.py)."""

    execution_id: str
    workflow_id: str
    round: int
    type: str
    shard: int
    """Where the worker reports: `<ns>.reports.<shard>`."""
    jobs: list[JobItem]


class JobReport(Message, tag_field="kind", kw_only=True):
    """Base of the worker's reports about one job; `kind` tells which."""

    execution_id: str
    job_id: str
    token: str
    at: str


class JobStartedReport(JobReport, tag="started"):
    """The handler started (sent only for a job still running when the worker's report window closes)."""

    attempt: int
    delivery: int = 1


class JobFinishedReport(JobReport, tag="finished"):
    """The outcome of one attempt."""

    attempt: int
    ok: bool
    started_at: str
    duration_ms: float
    result: Any = None
    error: ErrorInfo | None = None
    retryable: bool = True
    """False when the handler raised NonRetryable: the job fails without using up its retries."""
    cancelled: bool = False
    delivery: int = 1
    traceparent: str | None = None
    """W3C trace context of the worker's span of the job (when tracing is on)."""


class JobProgressReport(JobReport, tag="progress"):
    progress: JobProgress


class JobReturnedReport(JobReport, tag="returned"):
    """The worker hands a job back unrun: its bundle came back after a worker died (it is split so that one
    poison job cannot fail its neighbours), or the worker is stopping."""

    reason: str
    delivery: int = 1


AnyJobReport = JobStartedReport | JobFinishedReport | JobProgressReport | JobReturnedReport


class ReportBatch(Message):
    """Payload of `<ns>.reports.<shard>`: what one worker reports within its report window, in order."""

    worker_id: str
    reports: list[AnyJobReport]


class JobChange(Message, omit_defaults=True):
    """One job's state change as subscribers see it (inside JobsEvent)."""

    job_id: str
    status: JobStatus
    attempt: int
    at: str
    worker_id: str | None = None
    error: str | None = None
    retry_at: str | None = None
    progress: JobProgress | None = None
    waiting_reason: str | None = None


class JobsEvent(Message):
    """Scheduler event `<ns>.events.execution.<exec>.jobs`: the job changes one step of the scheduler recorded."""

    execution_id: str
    round: int
    at: str
    jobs: list[JobChange]
    progress: Progress


class ExecutionEvent(Message):
    """Scheduler event `<ns>.events.execution.<exec>.<status>`."""

    execution_id: str
    workflow_id: str
    status: str
    at: str
    progress: Progress
    checkpoint_id: str | None = None
    error: str | None = None
    round: int = 1
    paused: bool = False


# --- scheduler state: the journal, records and snapshots ---------------------------------------------------


class Counts(Message):
    """Jobs of one execution per status."""

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


class JobPatch(Message, omit_defaults=True):
    """What one scheduler step changed about one job: the fields present are set (UNSET ones keep their value).
    Replaying an execution's patches in order rebuilds its jobs exactly."""

    job: str
    status: JobStatus | msgspec.UnsetType = msgspec.UNSET
    round: int | msgspec.UnsetType = msgspec.UNSET
    attempt: int | msgspec.UnsetType = msgspec.UNSET
    """The retry-policy attempt the current dispatch runs (1 first); it has started once `startedAt` is set."""
    token: str | msgspec.UnsetType | None = msgspec.UNSET
    bundle: str | msgspec.UnsetType | None = msgspec.UNSET
    """Message id of the job message that carries this dispatch."""
    placed: bool | msgspec.UnsetType = msgspec.UNSET
    """The job stream stored that message (a takeover publishes again only what was not)."""
    solo: bool | msgspec.UnsetType = msgspec.UNSET
    worker_id: str | msgspec.UnsetType | None = msgspec.UNSET
    queued_at: str | msgspec.UnsetType | None = msgspec.UNSET
    started_at: str | msgspec.UnsetType | None = msgspec.UNSET
    completed_at: str | msgspec.UnsetType | None = msgspec.UNSET
    retry_at: str | msgspec.UnsetType | None = msgspec.UNSET
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    error_info: ErrorInfo | msgspec.UnsetType | None = msgspec.UNSET
    result: Any | msgspec.UnsetType = msgspec.UNSET
    result_ref: str | msgspec.UnsetType | None = msgspec.UNSET
    """KV key holding a result too large to keep in the journal (the result field is then left out)."""
    progress: JobProgress | msgspec.UnsetType | None = msgspec.UNSET
    waiting_reason: str | msgspec.UnsetType | None = msgspec.UNSET
    delivery: Delivery | msgspec.UnsetType = msgspec.UNSET
    """A run to add to the job's deliveries."""


class ExecutionPatch(Message, omit_defaults=True):
    status: ExecutionStatus | msgspec.UnsetType = msgspec.UNSET
    round: int | msgspec.UnsetType = msgspec.UNSET
    completed_at: str | msgspec.UnsetType | None = msgspec.UNSET
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    paused: bool | msgspec.UnsetType = msgspec.UNSET
    paused_at: str | msgspec.UnsetType | None = msgspec.UNSET


class JournalEntry(Message, tag_field="kind", kw_only=True):
    """Base of the entries of `<ns>.journal.<executionId>`, the owner's log of its decisions. Every append is
    fenced by the subject's last sequence, so only the current owner's appends land."""

    at: str


class JournalCreated(JournalEntry, tag="created"):
    """The submitted DAG (in parts when large: `part` of `parts`)."""

    execution_id: str
    workflow_id: str
    parallelism: int | None
    part: int
    parts: int
    jobs: list[JobConfig]
    submitted_by: str | None = None
    traceparent: str | None = None
    """W3C trace context of the submit (when tracing is on): the execution's dispatches continue that trace."""
    priority: int | None = None
    """The execution's priority (its jobs that set none take it)."""
    run_at: str | None = None
    """A delayed execution's start: the owner (or whoever takes it over) starts it then."""
    owner: str | None = None
    """The replica that created it, its first owner (in part 0). The creation is its own fence: it is appended
    at expected last sequence 0, so no `adopted` entry follows it."""
    epoch: int | None = None
    """The lease epoch of the shard when it was created (in part 0)."""


class JournalAdopted(JournalEntry, tag="adopted"):
    """A scheduler replica took the execution over: later appends of earlier owners fail."""

    owner: str
    epoch: int


class JournalStep(JournalEntry, tag="step"):
    """One step of the owner: every job change it decided, in order, and the execution's own change."""

    jobs: list[JobPatch] = msgspec.field(default_factory=list)
    execution: ExecutionPatch | None = None


class JournalReopened(JournalEntry, tag="reopened"):
    """A finished execution was retried: its state is the snapshot `generation` (as it ended, described here),
    then the steps that follow (the first one starts the new round)."""

    execution_id: str
    workflow_id: str
    parallelism: int | None
    created_at: str
    started_at: str
    status: ExecutionStatus
    round: int
    completed_at: str | None
    error: str | None
    generation: int
    parts: int
    submitted_by: str | None = None
    priority: int = DEFAULT_PRIORITY


AnyJournalEntry = JournalCreated | JournalAdopted | JournalStep | JournalReopened


class ExecutionRecord(Message):
    """Value of key `<executionId>` in the executions bucket: the execution as of its last status change (and at
    most a second old while it runs). Listings, retention and the stats counters follow these."""

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
    shard: int = 0
    journal_seq: int = 0
    """The owner's last journal append when this was written: a write with an older one is a stale owner's."""
    checkpoint_id: str | None = None
    checkpoint_seq: int = 0
    error: str | None = None
    snapshot: int = 0
    """Generation of the job snapshot written when the execution last ended (0: none yet)."""
    submitted_by: str | None = None
    """Name of the API token that submitted it."""
    snapshot_parts: int = 0
    run_at: str | None = None
    """When a delayed execution starts (None: at once)."""
    priority: int = DEFAULT_PRIORITY
    paused: bool = False
    paused_at: str | None = None


class JobRecord(Message):
    """One job inside a snapshot: everything needed to show it and to run it again."""

    id: str
    name: str
    type: str
    capability: str | None
    depends_on: list[str]
    config: dict[str, Any]
    retries: int
    backoff_ms: int
    timeout_s: float | None
    status: JobStatus
    schedule_timeout_s: float | None = None
    round: int = 1
    attempt: int = 0
    worker_id: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    retry_at: str | None = None
    error: str | None = None
    error_info: ErrorInfo | None = None
    result: Any = None
    result_ref: str | None = None
    deliveries: list[Delivery] = msgspec.field(default_factory=list)
    progress: JobProgress | None = None
    priority: int = DEFAULT_PRIORITY
    """Its priority in effect (its own, else its execution's)."""
    concurrency_key: str | None = None
    """Resolved (the template's config values filled in)."""
    max_concurrent: int | None = None
    rate_limit: RateLimit | None = None


class SnapshotPart(Message):
    """Value of key `<executionId>.snapshot.<generation>.<part>`: jobs of an ended execution, in order."""

    execution_id: str
    generation: int
    part: int
    parts: int
    jobs: list[JobRecord]


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
    """Value of key `control.queue` in the executions bucket: the pauses of the job queue."""

    paused: bool
    """A pause of everything is in effect (what a reader from before scoped pauses understands)."""
    changed_at: str
    pauses: list[QueuePause] = msgspec.field(default_factory=list)
    """Every pause (some may have ended by their `until` since): see shared/pauses.py."""


# --- scheduler replicas -------------------------------------------------------------------------------------


class ShardLease(Message):
    """Value of key `shard.<n>` in the schedulers bucket: the replica that owns the shard's executions. The key
    has a TTL its owner renews; its revision when taken is the owner's epoch."""

    owner: str
    since: str


class ReplicaPresence(Message):
    """Value of key `replica.<id>` in the schedulers bucket (with a TTL): a live scheduler replica."""

    replica_id: str
    hostname: str
    pid: int
    started_at: str
    shards: list[int] = msgspec.field(default_factory=list)


class SchedulerLayout(Message):
    """Value of key `layout` in the schedulers bucket: fixed when the namespace is first used."""

    shards: int


class CancelNotice(Message):
    """Core NATS `<ns>.workers.cancel`: workers stop these jobs' handlers (the scheduler withdrew their queued
    messages from the job stream already)."""

    execution_id: str
    round: int
    """Handlers of this round (and earlier ones) stop; a retry's later round is not affected."""


# --- concurrency keys and rate limits (values of the schedulers bucket) ----------------------------------------


class Slot(Message):
    """A job holding or waiting for a slot of a concurrency key."""

    execution_id: str
    job_id: str
    priority: int = DEFAULT_PRIORITY
    since: int = 0
    """When it first asked (epoch ms): first-come within a priority."""
    seen: int = 0
    """When its owner last confirmed it (epoch ms); unconfirmed entries expire."""


class ConcurrencyRecord(Message):
    """Key `concurrency.<key>`: who holds the key's slots and who waits, in the order they will get them."""

    key: str
    holders: list[Slot] = msgspec.field(default_factory=list)
    waiters: list[Slot] = msgspec.field(default_factory=list)


class RateLimitRecord(Message):
    """Key `ratelimit.<key>` (`ratelimit.type.<jobType>` for `type:<jobType>`): the configured limit, if any,
    and the latest starts under the key."""

    key: str
    limit: int | None = None
    """Configured with PUT /rate-limits/{key} (None: only jobs' own numbers)."""
    period_s: float | None = None
    starts: list[int] = msgspec.field(default_factory=list)
    """Epoch ms of the latest starts, oldest first."""
    updated_at: str | None = None


class RateLimitView(Message):
    key: str
    limit: int
    period_s: float
    recent_starts: int
    """Starts within the last period."""
    updated_at: str | None = None


class RateLimitReply(Message):
    success: bool
    rate_limit: RateLimitView


class RateLimitList(Message):
    success: bool
    rate_limits: list[RateLimitView]


class RateLimitCommand(Message):
    """`scheduler.ratelimit.put|get|delete|list`."""

    key: str = ""
    setting: RateLimitSetting | None = None


class ConsumerPauseAdvisory(msgspec.Struct, kw_only=True):
    """JetStream's `$JS.EVENT.ADVISORY.CONSUMER.PAUSE.<stream>.<consumer>` (the server's format, snake_case)."""

    stream: str
    consumer: str
    paused: bool


# --- observability -----------------------------------------------------------------------------------------


class MetricsExposition(Message):
    """Answer to a request on `<ns>.metrics.scrape`: one process's metrics in the Prometheus text format."""

    service: str
    process: str
    """`<hostname>-<pid>`: the `process` label the gateway gives this process's samples."""
    text: str


# --- schedules (services/scheduler/schedules.py) -------------------------------------------------------------

ScheduleId = Annotated[
    str, Meta(pattern=ID_RE.pattern, description="1-128 characters of A-Z, a-z, 0-9, '_' or '-'", examples=["nightly"])
]
Overlap = Literal["skip", "allow", "cancel-previous"]
RunTrigger = Literal["tick", "catch-up", "manual", "missed"]
MAX_SCHEDULE_RUNS = 100
"""Runs a schedule keeps in its state (the most recent ones): GET /schedules/{id}/runs lists them."""


class ScheduleRequest(ApiRequest):
    """POST /schedules body, and the `scheduler.schedules.create` command."""

    schedule_id: ScheduleId
    workflow: ExecuteRequest
    """The POST /execute body each run submits (without runAt, delayS or idempotencyKey)."""
    cron: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    """A 5-field cron expression (`minute hour day-of-month month day-of-week`, or `@hourly`, `@daily`, …)."""
    every_s: Annotated[float, Meta(ge=1, le=MAX_DELAY_S)] | None = None
    """Instead of `cron`: a run every this many seconds, counted from the schedule's creation."""
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    """IANA time zone the cron expression is read in (default UTC)."""
    overlap: Overlap = "skip"
    """What a tick does while the previous run is still open: skip it, allow a second one, or cancel the
    previous run first."""
    paused: bool = False
    catch_up: bool = True
    """A tick missed while no scheduler ran (later than JETDAG_SCHEDULE_MISFIRE_GRACE_S) is fired once when one
    runs again (true) or skipped (false)."""


class ScheduleRecord(Message):
    """Value of key `<scheduleId>` in the schedules bucket: the definition, written once."""

    spec: ScheduleRequest
    created_at: str
    fingerprint: str
    """Hash of the definition: creating it again with the same one is a no-op (200), with another a 409."""


class ScheduleRun(Message):
    """One tick of a schedule (or a trigger) and what came of it."""

    tick: str
    """The time the run is for (for a manual trigger, the time of the call)."""
    at: str
    """When it fired."""
    trigger: RunTrigger
    execution_id: str | None = None
    skipped: str | None = None
    """Why no execution was created (the previous run still open with overlap skip, a missed tick, an error)."""


class ScheduleState(Message):
    """Value of key `<scheduleId>.state`: paused or not, the last tick handled and the recent runs."""

    paused: bool
    since: str
    """When it was created or last resumed: ticks before this are never fired."""
    last_tick: str | None = None
    runs: list[ScheduleRun] = msgspec.field(default_factory=list)
    """The most recent runs, oldest first, at most MAX_SCHEDULE_RUNS."""
    fired: int = 0
    skipped: int = 0


class ScheduleView(Message):
    """A schedule as clients see it."""

    schedule_id: str
    cron: str | None
    every_s: float | None
    timezone: str | None
    overlap: Overlap
    catch_up: bool
    paused: bool
    created_at: Timestamp
    workflow_id: str
    job_count: int
    next_runs: list[Timestamp]
    """The next ticks (up to 5; none while paused)."""
    last_tick: Timestamp | None
    last_run: ScheduleRun | None
    fired: int
    """Executions it created."""
    skipped: int
    """Ticks that created none (see each run's `skipped`)."""
    workflow: ExecuteRequest | None = None
    """The body each run submits (GET /schedules/{id} only)."""


class ScheduleRef(Message):
    """`scheduler.schedules.get|delete|pause|resume|trigger|runs`."""

    schedule_id: str
    limit: int = 50


class ScheduleReply(Message):
    schedule: ScheduleView
    created: bool = True


class ScheduleList(Message):
    schedules: list[ScheduleView]


class ScheduleRunView(ScheduleRun):
    status: ExecutionStatus | None = None
    """The execution's status now (None: no execution, or removed by retention)."""


class ScheduleRuns(Message):
    schedule_id: str
    runs: list[ScheduleRunView]
    """Newest first."""


# --- queue pauses (shared/pauses.py, services/scheduler/queue.py) --------------------------------------------


class QueuePauseRequest(ApiRequest):
    """POST /queue/pause body (optional: no body pauses everything until resumed), `scheduler.queue.pause`."""

    until: Annotated[datetime, Meta(tz=True)] | None = None
    """End the pause by itself at this time (ISO 8601 with a UTC offset). Not with `durationS`."""
    duration_s: Annotated[float, Meta(gt=0, le=MAX_DELAY_S)] | None = None
    """End the pause by itself this many seconds from now. Not with `until`."""
    capability: Capability | None = None
    """Pause only the jobs needing this capability (with `type`: only that pair)."""
    type: JobType | None = None
    """Pause only the jobs of this type (of every capability, unless `capability` is given too)."""
    reason: Annotated[str, Meta(max_length=500)] | None = None
    """Why, shown by GET /queue/stats, /health and the queue events."""


class QueueResumeRequest(ApiRequest):
    """POST /queue/resume body (optional: no body ends every pause), `scheduler.queue.resume`."""

    capability: Capability | None = None
    type: JobType | None = None
    """With `capability` and/or `type`: end only the pause of exactly that scope."""


class QueuePauseCommand(Message):
    """`scheduler.queue.pause` (no `pause`: everything, until resumed)."""

    pause: QueuePauseRequest | None = None


class QueueResumeCommand(Message):
    """`scheduler.queue.resume` (no `resume`: every pause ends)."""

    resume: QueueResumeRequest | None = None


class QueuePause(Message):
    """One pause in effect: of everything (no capability, no type), a capability, a job type, or a pair."""

    capability: str | None = None
    type: str | None = None
    until: Timestamp | None = None
    """When it ends by itself (None: when resumed)."""
    reason: str | None = None
    paused_at: Timestamp = ""


class QueuePauses(Message):
    """`scheduler.queue.pauses` reply: the pauses in effect now."""

    is_paused: bool
    """A pause of everything is in effect."""
    pauses: list[QueuePause]


class QueueEvent(Message):
    """`<ns>.events.queue.paused|resumed`: a pause began or ended (by a resume, or by itself at its `until`)."""

    event: Literal["paused", "resumed"]
    at: Timestamp
    capability: str | None = None
    type: str | None = None
    until: Timestamp | None = None
    reason: str | None = None
    expired: bool = False
    """A timed pause that ended by itself."""

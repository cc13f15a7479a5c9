"""REST response bodies of the gateway (API.md). Request bodies are the command Structs in
`shared.messages`, so REST and NATS share one definition of each field."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from shared.messages import (
    ExecutionStatus,
    ExecutionView,
    JobView,
    QueuePause,
    QueueStats,
    RateLimitView,
    ScheduleRunView,
    ScheduleView,
    WorkerStatus,
    WorkerView,
)
from shared.timeutil import Timestamp

__all__ = [
    "ComponentHealth",
    "DeregisterResponse",
    "ErrorResponse",
    "HealthResponse",
    "HealthWorkers",
    "HeartbeatResponse",
    "RegisterResponse",
    "WorkerListResponse",
    "WorkerResponse",
]


class Response(msgspec.Struct, rename="camel", kw_only=True):
    success: bool = True


class ErrorResponse(Response, kw_only=True):
    """Every failed request: `success: false` and one readable sentence."""

    success: bool = False
    error: str


class RegisterResponse(Response):
    worker_id: str
    registered_at: Timestamp


class HeartbeatResponse(Response):
    worker_id: str
    status: WorkerStatus
    current_load: int
    last_heartbeat: Timestamp


class DeregisterResponse(Response):
    worker_id: str
    message: str


class WorkerListResponse(Response):
    count: int
    workers: list[WorkerView]


class WorkerResponse(Response):
    worker: WorkerView


class ComponentHealth(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    healthy: bool
    latency_ms: Annotated[float, Meta(ge=0)]
    error: str | None = None


class HealthComponents(msgspec.Struct, rename="camel", kw_only=True):
    queue: ComponentHealth
    worker_manager: ComponentHealth
    state_store: ComponentHealth
    scheduler: ComponentHealth
    """Extra component: the scheduler service answers its ping (no executions progress without it)."""


class HealthWorkers(msgspec.Struct, rename="camel", kw_only=True):
    total: int
    active: int
    idle: int
    busy: int
    unhealthy: int
    utilization_percent: float


class HealthResponse(Response):
    healthy: bool
    components: HealthComponents
    workers: HealthWorkers
    checked_at: Timestamp
    error: str | None = None
    """Present when unhealthy: which components failed."""
    pauses: list[QueuePause] | None = None
    """The pauses of the job queue in effect (as in GET /queue/stats); absent when the scheduler does not
    answer."""


class ExecuteResponse(Response):
    """POST /execute (201) — also the body of cancel and retry."""

    execution_id: str
    status: ExecutionStatus
    started_at: Timestamp
    completed_at: Timestamp | None
    job_count: int


class ExecutionResponse(Response):
    execution: ExecutionView


class ExecutionListResponse(Response):
    count: int
    executions: list[ExecutionView]
    next_cursor: str | None


class JobListResponse(Response):
    execution_id: str
    count: int
    jobs: list[JobView]


class MessageResponse(Response):
    message: str
    is_paused: bool


class QueueStatsResponse(Response):
    healthy: bool
    stats: QueueStats
    is_paused: bool
    """A pause of everything is in effect (`stats.paused` counts the jobs it holds)."""
    pauses: list[QueuePause] = msgspec.field(default_factory=list)
    """Every pause in effect: what it covers (no capability and no type: everything), until when, why."""
    ready: int = 0
    """Jobs whose parents are done that wait for a slot: their execution's `parallelism` or their concurrency
    key's `maxConcurrent`."""


class QueueControlResponse(MessageResponse):
    """POST /queue/pause and /queue/resume."""

    pauses: list[QueuePause] = msgspec.field(default_factory=list)
    """The pauses in effect after the call."""


# --- server-sent events (GET /execute/{id}/events, GET /events) ------------------------------------------------

SSE_END = "end"
"""SSE event the gateway sends after an execution's final event: the stream is over (do not reconnect)."""
SSE_DROPPED = "dropped"
"""SSE event the gateway sends before closing a stream whose client read too slowly: reconnect with
Last-Event-ID to resume where it stopped."""


class StreamEnd(msgspec.Struct, rename="camel", kw_only=True):
    """Data of the `end` event."""

    execution_id: str
    status: str


class StreamDropped(msgspec.Struct, rename="camel", kw_only=True):
    """Data of the `dropped` event."""

    error: str
    last_event_id: int | None


# --- the dashboard (GET /overview, GET /overview/events) ---------------------------------------------------------

OVERVIEW_EVENT = "overview"
"""SSE event of GET /overview/events: its data is a whole Overview."""


class Overview(Response):
    """What the dashboard's overview shows, computed in the gateway: every part the backing services answered;
    a part that failed is null and `errors` says why (`{"queue": "the scheduler service is not running ..."}`)."""

    at: str
    health: HealthResponse | None
    workers: list[WorkerView] | None
    queue: QueueStatsResponse | None
    executions: list[ExecutionView] | None
    """The most recent executions, newest first."""
    errors: dict[str, str] = msgspec.field(default_factory=dict)


# --- rate limits -----------------------------------------------------------------------------------------------


class RateLimitResponse(Response):
    """PUT, GET and DELETE /rate-limits/{key}."""

    rate_limit: RateLimitView


class RateLimitListResponse(Response):
    count: int
    rate_limits: list[RateLimitView]


# --- schedules -------------------------------------------------------------------------------------------------


class ScheduleResponse(Response):
    """POST /schedules (201, or 200 when the same schedule existed), GET /schedules/{id}, pause, resume."""

    schedule: ScheduleView


class ScheduleListResponse(Response):
    count: int
    schedules: list[ScheduleView]


class ScheduleRunsResponse(Response):
    schedule_id: str
    count: int
    runs: list[ScheduleRunView]


class ScheduleDeletedResponse(Response):
    schedule_id: str
    message: str

"""What each call of the client sends and how its answer is read, shared by Client and AsyncClient. Pure."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import msgspec

from jetdag.client.errors import Invalid, ServerError
from jetdag.workflow import WorkflowError, load_workflow, workflow_from_mapping
from shared.api import (
    ExecuteResponse,
    ExecutionListResponse,
    ExecutionResponse,
    HealthResponse,
    JobListResponse,
    QueueControlResponse,
    QueueStatsResponse,
    RateLimitListResponse,
    RateLimitResponse,
    ScheduleDeletedResponse,
    ScheduleListResponse,
    ScheduleResponse,
    ScheduleRunsResponse,
    WorkerListResponse,
)
from shared.commands import CommandError
from shared.messages import (
    ExecuteRequest,
    ExecutionStatus,
    ExecutionView,
    JobConfig,
    JobView,
    Overlap,
    QueuePauseRequest,
    QueueResumeRequest,
    RateLimitSetting,
    RateLimitView,
    ScheduleRequest,
    ScheduleRunView,
    ScheduleView,
    WorkerView,
)
from shared.schedules import cadence_of, check_workflow
from shared.timeutil import now_ms

__all__ = [
    "API_PREFIX",
    "Call",
    "Workflow",
    "api_url",
    "retry_delay",
    "submission",
]

API_PREFIX = "/api/distributed"
T = TypeVar("T")
R = TypeVar("R")

Workflow = ExecuteRequest | Mapping[str, Any] | str | os.PathLike[str] | Sequence[JobConfig | Mapping[str, Any]]
"""What `submit` takes: a request, a workflow as data (the file's shape), a file path, or a list of jobs."""


def api_url(url: str) -> str:
    """The API base for a gateway URL: `http://host:8000` and `http://host:8000/api/distributed` both work."""
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def _seg(value: str) -> str:
    # An id is one path segment whatever it holds; the gateway then answers 400 for a malformed one.
    return quote(value, safe="")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    decode: Callable[[bytes], T]
    params: Mapping[str, str | int] | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True
    """Safe to send again after a 503 or a lost connection (reads, pause/resume, a submit with a key)."""
    accept: frozenset[int] = frozenset({200})
    """Statuses whose body is the answer (health answers 503 with the same body)."""

    def read(self, body: bytes) -> T:
        try:
            return self.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ServerError(f"unexpected answer to {self.method} {self.path}: {exc}") from None


def _reader(kind: type[R], pick: Callable[[R], T]) -> Callable[[bytes], T]:
    decoder = msgspec.json.Decoder(kind)
    return lambda body: pick(decoder.decode(body))


def _same(value: T) -> T:
    return value


_encoder = msgspec.json.Encoder()


def submission(
    workflow: Workflow,
    *,
    workflow_id: str | None,
    parallelism: int | None,
    run_at: datetime | None = None,
    delay_s: float | None = None,
    priority: int | None = None,
) -> ExecuteRequest:
    """The request `submit` sends, checked locally (a file or data gets the file format's checks)."""
    if isinstance(workflow, ExecuteRequest):
        request = workflow
    elif isinstance(workflow, str | os.PathLike):
        request = load_workflow(Path(workflow))
    elif isinstance(workflow, Mapping):
        request = workflow_from_mapping(workflow)
    else:
        jobs = [msgspec.to_builtins(j) if isinstance(j, JobConfig) else dict(j) for j in workflow]
        request = workflow_from_mapping({"workflowId": workflow_id or "adhoc", "jobs": jobs})
    changes: dict[str, Any] = {}
    if workflow_id is not None and workflow_id != request.workflow_id:
        changes["workflow_id"] = workflow_id
    if parallelism is not None:
        changes["parallelism"] = parallelism
    if run_at is not None or delay_s is not None:
        changes.update(run_at=run_at, delay_s=delay_s)
    if priority is not None:
        changes["priority"] = priority
    if changes:
        request = msgspec.structs.replace(request, **changes)
        # Re-check what changed the same strict way the gateway will.
        try:
            request = msgspec.convert(msgspec.to_builtins(request), ExecuteRequest)
        except msgspec.ValidationError as exc:
            raise WorkflowError([f"submit options: {exc}"]) from None
    return request


def submit(request: ExecuteRequest, idempotency_key: str | None) -> Call[ExecuteResponse]:
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return Call(
        "POST",
        "/execute",
        _reader(ExecuteResponse, _same),
        body=_encoder.encode(request),
        headers=headers,
        idempotent=idempotency_key is not None,
        # 200: an earlier submit with the same key already created it (issue 10 item 4).
        accept=frozenset({200, 201}),
    )


def get(execution_id: str) -> Call[ExecutionView]:
    return Call("GET", f"/execute/{_seg(execution_id)}", _reader(ExecutionResponse, lambda r: r.execution))


def jobs(execution_id: str) -> Call[list[JobView]]:
    return Call("GET", f"/execute/{_seg(execution_id)}/jobs", _reader(JobListResponse, lambda r: r.jobs))


def executions_page(
    status: ExecutionStatus | None, workflow_id: str | None, limit: int, cursor: str | None
) -> Call[ExecutionListResponse]:
    params: dict[str, str | int] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if workflow_id is not None:
        params["workflowId"] = workflow_id
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/executions", _reader(ExecutionListResponse, _same), params=params)


def cancel(execution_id: str) -> Call[ExecuteResponse]:
    # Not retried: a cancel that took effect before its answer was lost would come back as a 409.
    return Call("POST", f"/execute/{_seg(execution_id)}/cancel", _reader(ExecuteResponse, _same), idempotent=False)


def retry(execution_id: str) -> Call[ExecuteResponse]:
    return Call("POST", f"/execute/{_seg(execution_id)}/retry", _reader(ExecuteResponse, _same), idempotent=False)


def execution_hold(execution_id: str, action: str) -> Call[ExecutionView]:
    """`pause` or `resume` one execution: idempotent (a second pause answers 200 with it paused)."""
    return Call("POST", f"/execute/{_seg(execution_id)}/{action}", _reader(ExecutionResponse, lambda r: r.execution))


def workers() -> Call[list[WorkerView]]:
    return Call("GET", "/workers", _reader(WorkerListResponse, lambda r: r.workers))


def queue_stats() -> Call[QueueStatsResponse]:
    return Call("GET", "/queue/stats", _reader(QueueStatsResponse, _same))


def pause(
    *,
    until: datetime | None = None,
    duration_s: float | None = None,
    capability: str | None = None,
    job_type: str | None = None,
    reason: str | None = None,
) -> Call[QueueControlResponse]:
    """No argument: everything, until resumed (sent without a body, as before pauses had options)."""
    fields = {
        "until": until,
        "durationS": duration_s,
        "capability": capability,
        "type": job_type,
        "reason": reason,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return Call("POST", "/queue/pause", _reader(QueueControlResponse, _same))
    if until is not None and until.tzinfo is None:
        raise Invalid("until must carry a time zone (a naive datetime is ambiguous)")
    try:
        request = msgspec.convert(given, QueuePauseRequest, from_attributes=False)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid pause: {exc}") from None
    return Call(
        "POST",
        "/queue/pause",
        _reader(QueueControlResponse, _same),
        body=_encoder.encode(request),
        headers={"Content-Type": "application/json"},
        # Sent again, a pause for a duration would end later than asked.
        idempotent=duration_s is None,
    )


def resume(*, capability: str | None = None, job_type: str | None = None) -> Call[QueueControlResponse]:
    """No argument: every pause ends; with a capability and/or a type, the pause of exactly that scope."""
    if capability is None and job_type is None:
        return Call("POST", "/queue/resume", _reader(QueueControlResponse, _same))
    request = QueueResumeRequest(capability=capability, type=job_type)
    return Call(
        "POST",
        "/queue/resume",
        _reader(QueueControlResponse, _same),
        body=_encoder.encode(request),
        headers={"Content-Type": "application/json"},
    )


def schedule_request(
    schedule_id: str,
    workflow: Workflow,
    *,
    cron: str | None,
    every_s: float | None,
    timezone: str | None,
    overlap: Overlap,
    paused: bool,
    catch_up: bool,
) -> ScheduleRequest:
    """The body of POST /schedules, checked locally as the scheduler will (cron, time zone, the workflow);
    Invalid names what is wrong before anything is sent."""
    fields = {
        "scheduleId": schedule_id,
        "workflow": msgspec.to_builtins(submission(workflow, workflow_id=None, parallelism=None)),
        "cron": cron,
        "everyS": every_s,
        "timezone": timezone,
        "overlap": overlap,
        "paused": paused,
        "catchUp": catch_up,
    }
    try:
        spec = msgspec.convert({k: v for k, v in fields.items() if v is not None}, ScheduleRequest)
        cadence_of(spec, now_ms())
        check_workflow(spec)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid schedule: {exc}") from None
    except CommandError as exc:
        raise Invalid(exc.message) from None
    return spec


def create_schedule(spec: ScheduleRequest) -> Call[ScheduleView]:
    # Safe to send again: the same definition answers 200 with the schedule it created.
    return Call(
        "POST",
        "/schedules",
        _reader(ScheduleResponse, lambda r: r.schedule),
        body=_encoder.encode(spec),
        headers={"Content-Type": "application/json"},
        accept=frozenset({200, 201}),
    )


def schedules() -> Call[list[ScheduleView]]:
    return Call("GET", "/schedules", _reader(ScheduleListResponse, lambda r: r.schedules))


def schedule(schedule_id: str) -> Call[ScheduleView]:
    return Call("GET", f"/schedules/{_seg(schedule_id)}", _reader(ScheduleResponse, lambda r: r.schedule))


def delete_schedule(schedule_id: str) -> Call[ScheduleDeletedResponse]:
    return Call("DELETE", f"/schedules/{_seg(schedule_id)}", _reader(ScheduleDeletedResponse, _same), idempotent=False)


def schedule_action(schedule_id: str, action: str) -> Call[ScheduleView]:
    """`pause` or `resume` (both idempotent)."""
    return Call("POST", f"/schedules/{_seg(schedule_id)}/{action}", _reader(ScheduleResponse, lambda r: r.schedule))


def trigger_schedule(schedule_id: str) -> Call[ExecuteResponse]:
    # Not retried: a trigger that took effect before its answer was lost would run twice.
    path = f"/schedules/{_seg(schedule_id)}/trigger"
    return Call("POST", path, _reader(ExecuteResponse, _same), idempotent=False, accept=frozenset({201}))


def schedule_runs(schedule_id: str, limit: int) -> Call[list[ScheduleRunView]]:
    path = f"/schedules/{_seg(schedule_id)}/runs"
    return Call("GET", path, _reader(ScheduleRunsResponse, lambda r: r.runs), params={"limit": limit})


def set_rate_limit(key: str, limit: int, period_s: float) -> Call[RateLimitView]:
    body = _encoder.encode(RateLimitSetting(limit=limit, period_s=period_s))
    headers = {"Content-Type": "application/json"}
    path = f"/rate-limits/{_seg(key)}"
    return Call("PUT", path, _reader(RateLimitResponse, lambda r: r.rate_limit), body=body, headers=headers)


def rate_limits() -> Call[list[RateLimitView]]:
    return Call("GET", "/rate-limits", _reader(RateLimitListResponse, lambda r: r.rate_limits))


def rate_limit(key: str) -> Call[RateLimitView]:
    return Call("GET", f"/rate-limits/{_seg(key)}", _reader(RateLimitResponse, lambda r: r.rate_limit))


def delete_rate_limit(key: str) -> Call[RateLimitView]:
    return Call("DELETE", f"/rate-limits/{_seg(key)}", _reader(RateLimitResponse, lambda r: r.rate_limit))


def health() -> Call[HealthResponse]:
    return Call("GET", "/health", _reader(HealthResponse, _same), accept=frozenset({200, 503}))


def events_path(execution_id: str | None) -> str:
    return f"/execute/{_seg(execution_id)}/events" if execution_id is not None else "/events"


def events_params(kinds: Sequence[str] | None) -> dict[str, str]:
    return {"kinds": ",".join(kinds)} if kinds else {}


def retry_delay(attempt: int, retry_after: str | None = None, *, base: float = 0.25, cap: float = 5.0) -> float:
    """Seconds before attempt `attempt + 1`: the server's Retry-After when it gives one, else exponential
    backoff with ±20 % jitter (so clients that failed together do not come back together)."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), cap * 6)
        except ValueError:
            pass
    delay = min(cap, base * 2**attempt)
    return float(delay * random.uniform(0.8, 1.2))

"""What the gateway asks of NATS: typed commands to the registry and scheduler, and health probes.

The gateway holds no state; this is a thin typed client over `shared.commands.request`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared.api import ComponentHealth
from shared.commands import CommandError, Unavailable, request
from shared.messages import (
    DeregisterReply,
    ExecuteCommand,
    ExecuteReply,
    ExecuteRequest,
    ExecutionList,
    ExecutionRef,
    ExecutionView,
    HeartbeatCommand,
    JobList,
    JobsQuery,
    JobView,
    ListExecutions,
    ListWorkers,
    MetricsExposition,
    QueueControl,
    QueuePauseCommand,
    QueuePauseRequest,
    QueuePauses,
    QueueResumeCommand,
    QueueResumeRequest,
    QueueStatsReply,
    RateLimitCommand,
    RateLimitList,
    RateLimitReply,
    RegisterReply,
    RegisterWorker,
    ScheduleList,
    ScheduleRef,
    ScheduleReply,
    ScheduleRequest,
    ScheduleRuns,
    WorkerList,
    WorkerRef,
    WorkerSummary,
    WorkerView,
)
from shared.metrics import gather, process_name
from shared.subjects import Names

__all__ = ["Backend"]

HEADROOM_BYTES = 8 * 1024
"""Room left in a NATS message beside the command itself: subject, reply inbox, headers."""

Out = TypeVar("Out", bound=msgspec.Struct)
_encoder = msgspec.json.Encoder()
T = TypeVar("T")


class Backend:
    def __init__(
        self,
        nc: Client,
        names: Names,
        *,
        timeout: float,
        health_timeout: float,
        metrics_window: float = 0.5,
        command_timeout: float = 60.0,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=health_timeout)
        self.names = names
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.metrics_window = metrics_window
        self.command_timeout = command_timeout

    async def _registry(self, command: str, payload: msgspec.Struct, reply: type[Out]) -> Out:
        return await request(
            self.nc,
            self.names.registry(command),
            payload,
            reply,
            service="registry",
            timeout=self.timeout,
        )

    async def _scheduler(
        self, command: str, payload: msgspec.Struct | bytes, reply: type[Out], *, slow: bool = False
    ) -> Out:
        return await request(
            self.nc,
            self.names.scheduler(command),
            payload,
            reply,
            service="scheduler",
            # A command that changes state is waited for as long as it can take: answering 503 for one that
            # then succeeds would tell the client "not done" about something done.
            timeout=max(self.timeout, self.command_timeout) if slow else self.timeout,
        )

    # --- workers -------------------------------------------------------------------------------------

    async def register_worker(self, cmd: RegisterWorker, *, takeover: bool = False) -> RegisterReply:
        """`takeover`: may replace the record of a live worker on another host (the registry's `takeover`
        command, which only the gateway's NATS credential may send)."""
        return await self._registry("takeover" if takeover else "register", cmd, RegisterReply)

    async def heartbeat(self, worker_id: str, current_load: int) -> WorkerView:
        cmd = HeartbeatCommand(worker_id=worker_id, current_load=current_load)
        return await self._registry("heartbeat", cmd, WorkerView)

    async def deregister(self, worker_id: str) -> DeregisterReply:
        return await self._registry("deregister", WorkerRef(worker_id=worker_id), DeregisterReply)

    async def get_worker(self, worker_id: str) -> WorkerView:
        return await self._registry("get", WorkerRef(worker_id=worker_id), WorkerView)

    async def list_workers(self) -> WorkerList:
        return await self._registry("list", ListWorkers(), WorkerList)

    # --- executions and queue ------------------------------------------------------------------------

    async def execute(
        self, request: ExecuteRequest, idempotency_key: str | None = None, submitted_by: str | None = None
    ) -> ExecuteReply:
        # One NATS message carries at most the server's max_payload (1 MiB by default): a DAG whose command
        # is larger is staged in the object store and the command names it (the scheduler reads and deletes
        # it). The decision is on the command as encoded, defaults filled in, which can be more than twice
        # the size of the body a client sent.
        inline = _encoder.encode(
            ExecuteCommand(request=request, idempotency_key=idempotency_key, submitted_by=submitted_by)
        )
        if len(inline) <= self.nc.max_payload - HEADROOM_BYTES:
            return await self._scheduler("execute", inline, ExecuteReply, slow=True)
        try:
            store = await self.js.object_store(self.names.submissions_bucket)
            name = f"submission-{secrets.token_hex(12)}"
            await asyncio.wait_for(store.put(name, msgspec.json.encode(request)), self.timeout * 4)
        except Exception as exc:
            raise Unavailable(f"could not stage the submission in NATS ({_describe(exc)})") from None
        command = ExecuteCommand(staged=name, idempotency_key=idempotency_key, submitted_by=submitted_by)
        return await self._scheduler("execute", command, ExecuteReply, slow=True)

    async def get_execution(self, execution_id: str) -> ExecutionView:
        return await self._scheduler("get", ExecutionRef(execution_id=execution_id), ExecutionView)

    async def execution_jobs(self, execution_id: str) -> JobList:
        """Every job, read in pages (one NATS reply holds at most 1 MiB; a large DAG's listing is more)."""
        jobs: list[JobView] = []
        offset: int | None = 0
        while offset is not None:
            page = await self._scheduler("jobs", JobsQuery(execution_id=execution_id, offset=offset), JobList)
            jobs.extend(page.jobs)
            offset = page.next_offset
        return JobList(execution_id=execution_id, jobs=jobs, total=len(jobs))

    async def cancel(self, execution_id: str) -> ExecutionView:
        return await self._scheduler("cancel", ExecutionRef(execution_id=execution_id), ExecutionView, slow=True)

    async def pause_execution(self, execution_id: str) -> ExecutionView:
        ref = ExecutionRef(execution_id=execution_id)
        return await self._scheduler("pause-execution", ref, ExecutionView, slow=True)

    async def resume_execution(self, execution_id: str) -> ExecutionView:
        ref = ExecutionRef(execution_id=execution_id)
        return await self._scheduler("resume-execution", ref, ExecutionView, slow=True)

    async def retry(self, execution_id: str) -> ExecutionView:
        return await self._scheduler("retry", ExecutionRef(execution_id=execution_id), ExecutionView, slow=True)

    async def list_executions(self, query: ListExecutions) -> ExecutionList:
        return await self._scheduler("list", query, ExecutionList)

    # --- rate limits -----------------------------------------------------------------------------------

    async def rate_limit(self, command: str, cmd: RateLimitCommand) -> RateLimitReply:
        """`put`, `get` or `delete` of one configured rate limit."""
        return await self._scheduler(f"ratelimit.{command}", cmd, RateLimitReply, slow=command != "get")

    async def rate_limits(self) -> RateLimitList:
        return await self._scheduler("ratelimit.list", RateLimitCommand(), RateLimitList)

    # --- schedules -------------------------------------------------------------------------------------

    async def create_schedule(self, spec: ScheduleRequest) -> ScheduleReply:
        return await self._scheduler("schedules.create", spec, ScheduleReply, slow=True)

    async def list_schedules(self) -> ScheduleList:
        return await self._scheduler("schedules.list", ScheduleRef(schedule_id=""), ScheduleList)

    async def schedule(self, command: str, schedule_id: str, limit: int = 50) -> ScheduleReply:
        """`get`, `delete`, `pause` or `resume` of one schedule."""
        slow = command != "get"
        ref = ScheduleRef(schedule_id=schedule_id, limit=limit)
        return await self._scheduler(f"schedules.{command}", ref, ScheduleReply, slow=slow)

    async def trigger_schedule(self, schedule_id: str) -> ExecuteReply:
        ref = ScheduleRef(schedule_id=schedule_id)
        return await self._scheduler("schedules.trigger", ref, ExecuteReply, slow=True)

    async def schedule_runs(self, schedule_id: str, limit: int) -> ScheduleRuns:
        return await self._scheduler("schedules.runs", ScheduleRef(schedule_id=schedule_id, limit=limit), ScheduleRuns)

    async def queue_stats(self) -> QueueStatsReply:
        return await self._scheduler("queue.stats", ExecutionRef(execution_id=""), QueueStatsReply)

    async def pause(self, request: QueuePauseRequest | None) -> QueueControl:
        return await self._scheduler("queue.pause", QueuePauseCommand(pause=request), QueueControl, slow=True)

    async def resume(self, request: QueueResumeRequest | None) -> QueueControl:
        return await self._scheduler("queue.resume", QueueResumeCommand(resume=request), QueueControl, slow=True)

    async def pauses(self) -> QueuePauses:
        return await self._scheduler("queue.pauses", ExecutionRef(execution_id=""), QueuePauses)

    # --- metrics -------------------------------------------------------------------------------------

    async def metrics_answers(self) -> list[MetricsExposition]:
        """Every other process's metrics (none while NATS is down: the gateway still serves its own)."""
        if not self.nc.is_connected:
            return []
        return await gather(
            self.nc, self.names.metrics_scrape, window_s=self.metrics_window, skip_process=process_name()
        )

    # --- health --------------------------------------------------------------------------------------

    async def _probe(self, check: Callable[[], Awaitable[T]]) -> tuple[ComponentHealth, T | None]:
        """Run one health check with a deadline, timing it; failures become an `error` sentence.

        `check` is called only when there is a connection to check with (a coroutine made and then skipped
        would warn "never awaited")."""
        start = time.perf_counter()
        error: str | None = None
        value: T | None = None
        if not self.nc.is_connected:
            return ComponentHealth(healthy=False, latency_ms=0.0, error="NATS is not reachable"), None
        try:
            value = await asyncio.wait_for(check(), self.health_timeout)
        except CommandError as exc:
            error = exc.message
        except TimeoutError:
            error = f"no answer within {self.health_timeout:g} s"
        except Exception as exc:
            error = _describe(exc)
        latency = round((time.perf_counter() - start) * 1000, 2)
        return ComponentHealth(healthy=error is None, latency_ms=latency, error=error), value

    async def _check_queue(self) -> None:
        try:
            info = await self.js.stream_info(self.names.jobs_stream)
        except Exception as exc:
            raise Unavailable(
                f"job stream {self.names.jobs_stream} does not answer ({_describe(exc)}); the scheduler creates it"
            ) from None
        if info.config.subjects != [self.names.jobs_all]:
            raise Unavailable(f"job stream {self.names.jobs_stream} has unexpected subjects")

    async def _check_state(self) -> None:
        buckets = [
            self.names.workers_bucket,
            self.names.executions_bucket,
            self.names.checkpoints_bucket,
        ]
        results = await asyncio.gather(*(self.js.stream_info(f"KV_{b}") for b in buckets), return_exceptions=True)
        missing = [b for b, r in zip(buckets, results, strict=True) if isinstance(r, BaseException)]
        if missing:
            raise Unavailable(f"KV bucket(s) {', '.join(missing)} do not answer")

    async def _check_scheduler(self) -> None:
        subject = self.names.service_ping(self.names.scheduler_service)
        try:
            await self.nc.request(subject, b"", timeout=self.health_timeout)
        except Exception:
            raise Unavailable(f"the scheduler service does not answer its ping ({subject})") from None

    async def health(
        self,
    ) -> tuple[ComponentHealth, ComponentHealth, ComponentHealth, ComponentHealth, WorkerSummary | None]:
        (queue, _), (registry, summary), (state, _), (scheduler, _) = await asyncio.gather(
            self._probe(self._check_queue),
            self._probe(lambda: self._registry("summary", ListWorkers(), WorkerSummary)),
            self._probe(self._check_state),
            self._probe(self._check_scheduler),
        )
        return queue, registry, state, scheduler, summary


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__

"""`AsyncClient`: the asyncio client of the REST API, method for method the same as `Client`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import httpx
from httpx_sse import aconnect_sse

from jetdag.client import calls
from jetdag.client.base import Settings, describe, end_of_wait, stream_failure, wait_interval
from jetdag.client.errors import JetdagError, Unavailable, error_for
from jetdag.client.events import Event, read_sse
from shared.api import (
    ExecuteResponse,
    HealthResponse,
    QueueControlResponse,
    QueueStatsResponse,
    ScheduleDeletedResponse,
    StreamDropped,
    StreamEnd,
)
from shared.messages import (
    FINAL_EXECUTION_STATES,
    ExecutionStatus,
    ExecutionView,
    JobView,
    Overlap,
    RateLimitView,
    ScheduleRunView,
    ScheduleView,
    WorkerView,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")
# `list` is a method of the client: the annotations below name the builtin through these.
JobList = list[JobView]
WorkerList = list[WorkerView]
ScheduleViews = list[ScheduleView]
RateLimitViews = list[RateLimitView]
ScheduleRunViews = list[ScheduleRunView]


class AsyncClient:
    """A jetdag gateway. `url` and `token` default to JETDAG_URL and JETDAG_TOKEN.

    Reads (and pause/resume, and a submit that carries an idempotency key) are retried on a 503 or a lost
    connection with backoff, `retries` times; everything else raises the first error."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        stream_timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = Settings.make(url, token, timeout, retries, stream_timeout)
        self.url = self._settings.url
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._settings.headers, timeout=self._settings.timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        attempt = 0
        while True:
            retry_after = None
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, content=call.body, headers=call.headers
                )
            except httpx.TransportError as exc:
                error: JetdagError = Unavailable(f"cannot reach the gateway at {self.url}: {describe(exc)}")
            else:
                if response.status_code in call.accept:
                    return call.read(response.content)
                error = error_for(response.status_code, response.content)
                retry_after = response.headers.get("Retry-After")
            if not (call.idempotent and isinstance(error, Unavailable) and attempt < self._settings.retries):
                raise error
            await asyncio.sleep(calls.retry_delay(attempt, retry_after))
            attempt += 1

    # --- executions ------------------------------------------------------------------------------------

    async def submit(
        self,
        workflow: calls.Workflow,
        *,
        workflow_id: str | None = None,
        parallelism: int | None = None,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        delay_s: float | None = None,
        priority: int | None = None,
    ) -> ExecuteResponse:
        """Start an execution of a workflow (a file path, the file's shape as data, an ExecuteRequest, or a
        list of jobs), checked locally first (WorkflowError). With `idempotency_key`, a 503 or a lost
        connection is retried with the same key, which never creates a second execution. `run_at` (an aware
        datetime) or `delay_s` persist it now and start it later. `priority` (1 highest … 5) is the execution's,
        for its jobs that set none."""
        request = calls.submission(
            workflow,
            workflow_id=workflow_id,
            parallelism=parallelism,
            run_at=run_at,
            delay_s=delay_s,
            priority=priority,
        )
        return await self._send(calls.submit(request, idempotency_key))

    async def get(self, execution_id: str) -> ExecutionView:
        return await self._send(calls.get(execution_id))

    async def jobs(self, execution_id: str) -> JobList:
        return await self._send(calls.jobs(execution_id))

    async def list(
        self, *, status: ExecutionStatus | None = None, workflow_id: str | None = None, page_size: int = 100
    ) -> AsyncIterator[ExecutionView]:
        """Every execution, newest first, following the listing's cursor page by page."""
        cursor = None
        while True:
            page = await self._send(calls.executions_page(status, workflow_id, page_size, cursor))
            for execution in page.executions:
                yield execution
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, execution_id: str) -> ExecuteResponse:
        return await self._send(calls.cancel(execution_id))

    async def pause_execution(self, execution_id: str) -> ExecutionView:
        """Hold the execution's jobs that have not started (running ones finish); Conflict once it ended."""
        return await self._send(calls.execution_hold(execution_id, "pause"))

    async def resume_execution(self, execution_id: str) -> ExecutionView:
        """Dispatch what a pause held; Conflict once it ended."""
        return await self._send(calls.execution_hold(execution_id, "resume"))

    async def retry(self, execution_id: str) -> ExecuteResponse:
        return await self._send(calls.retry(execution_id))

    async def wait(self, execution_id: str, *, timeout: float | None = None) -> ExecutionView:
        """The execution once it is completed, failed or cancelled; WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polls = 0
        while True:
            execution = await self.get(execution_id)
            if execution.status in FINAL_EXECUTION_STATES:
                return execution
            pause = end_of_wait(execution_id, deadline, wait_interval(polls))
            await asyncio.sleep(pause)
            polls += 1

    async def events(
        self,
        execution_id: str | None = None,
        *,
        kinds: Sequence[str] | None = None,
        last_event_id: int | None = None,
    ) -> AsyncIterator[Event]:
        """Live events over SSE: of one execution from its first (ends after its final event), or of every
        execution from now. A dropped connection is resumed after the last event seen, with no gap and no
        duplicate; `last_event_id` starts after that event."""
        path, params = calls.events_path(execution_id), calls.events_params(kinds)
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            received = False
            try:
                async with aconnect_sse(
                    self._http, "GET", path, params=params, headers=headers, timeout=self._settings.stream
                ) as source:
                    response = source.response
                    if response.status_code != 200:
                        raise error_for(response.status_code, await response.aread())
                    async for sse in source.aiter_sse():
                        item = read_sse(sse.event, sse.id, sse.data)
                        if isinstance(item, StreamEnd):
                            return
                        if isinstance(item, StreamDropped):
                            break
                        if item is not None:
                            received = True
                            last = item.id
                            yield item
            except httpx.TransportError as exc:
                failure: JetdagError | None = Unavailable(f"event stream from {self.url} lost: {describe(exc)}")
            except Unavailable as exc:
                failure = exc
            else:
                failure = None
            failures = 0 if received else failures + 1
            delay = stream_failure(failure, failures, self._settings.retries)
            await asyncio.sleep(delay)

    # --- schedules -------------------------------------------------------------------------------------

    async def create_schedule(
        self,
        schedule_id: str,
        workflow: calls.Workflow,
        *,
        cron: str | None = None,
        every_s: float | None = None,
        timezone: str | None = None,
        overlap: Overlap = "skip",
        paused: bool = False,
        catch_up: bool = True,
    ) -> ScheduleView:
        """A schedule running `workflow` (anything `submit` takes) on `cron` (5 fields, in `timezone`) or every
        `every_s` seconds, checked locally first. Creating the same schedule again returns it (Conflict for
        another definition under the same id)."""
        spec = calls.schedule_request(
            schedule_id,
            workflow,
            cron=cron,
            every_s=every_s,
            timezone=timezone,
            overlap=overlap,
            paused=paused,
            catch_up=catch_up,
        )
        return await self._send(calls.create_schedule(spec))

    async def schedules(self) -> ScheduleViews:
        return await self._send(calls.schedules())

    async def schedule(self, schedule_id: str) -> ScheduleView:
        """One schedule with its workflow, next runs and last run."""
        return await self._send(calls.schedule(schedule_id))

    async def delete_schedule(self, schedule_id: str) -> ScheduleDeletedResponse:
        return await self._send(calls.delete_schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> ScheduleView:
        return await self._send(calls.schedule_action(schedule_id, "pause"))

    async def resume_schedule(self, schedule_id: str) -> ScheduleView:
        return await self._send(calls.schedule_action(schedule_id, "resume"))

    async def trigger_schedule(self, schedule_id: str) -> ExecuteResponse:
        """Run the schedule's workflow now (Conflict while its previous run is open and overlap is skip)."""
        return await self._send(calls.trigger_schedule(schedule_id))

    async def schedule_runs(self, schedule_id: str, *, limit: int = 50) -> ScheduleRunViews:
        """The runs of a schedule, newest first, with their executions' status now."""
        return await self._send(calls.schedule_runs(schedule_id, limit))

    # --- rate limits ----------------------------------------------------------------------------------

    async def set_rate_limit(self, key: str, limit: int, period_s: float) -> RateLimitView:
        """At most `limit` job starts per `period_s` under `key` (`type:<jobType>`: every job of that type),
        cluster-wide, from the next dispatch on (needs the admin scope)."""
        return await self._send(calls.set_rate_limit(key, limit, period_s))

    async def rate_limits(self) -> RateLimitViews:
        return await self._send(calls.rate_limits())

    async def rate_limit(self, key: str) -> RateLimitView:
        """A configured limit and the starts its window holds now (NotFound: none is configured)."""
        return await self._send(calls.rate_limit(key))

    async def delete_rate_limit(self, key: str) -> RateLimitView:
        return await self._send(calls.delete_rate_limit(key))

    # --- workers, queue, health ------------------------------------------------------------------------

    async def workers(self) -> WorkerList:
        return await self._send(calls.workers())

    async def queue_stats(self) -> QueueStatsResponse:
        return await self._send(calls.queue_stats())

    async def pause(
        self,
        *,
        until: datetime | None = None,
        duration_s: float | None = None,
        capability: str | None = None,
        job_type: str | None = None,
        reason: str | None = None,
    ) -> QueueControlResponse:
        """Pause delivery: everything (no argument), or one capability's and/or job type's jobs; until resumed, or
        until `until` / for `duration_s` seconds (it ends by itself). A new pause of the same scope replaces it."""
        call = calls.pause(until=until, duration_s=duration_s, capability=capability, job_type=job_type, reason=reason)
        return await self._send(call)

    async def resume(self, *, capability: str | None = None, job_type: str | None = None) -> QueueControlResponse:
        """End every pause (no argument), or the pause of exactly that capability and/or job type."""
        return await self._send(calls.resume(capability=capability, job_type=job_type))

    async def health(self) -> HealthResponse:
        """The gateway's health report, healthy or not (it answers 503 with the same body when unhealthy)."""
        return await self._send(calls.health())

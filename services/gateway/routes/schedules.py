"""`/schedules`: executions on a cron expression or every N seconds; pause, resume, trigger, their runs."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from shared.api import (
    ExecuteResponse,
    ScheduleDeletedResponse,
    ScheduleListResponse,
    ScheduleResponse,
    ScheduleRunsResponse,
)
from shared.messages import MAX_SCHEDULE_RUNS, ScheduleRequest

from ..backend import Backend
from ..body import strict_body
from ..openapi import PathId, errors
from .executions import summary


class ScheduleController(Controller):
    path = "/schedules"
    tags = ["schedules"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Create a schedule: an execution of `workflow` on a cron expression or every N seconds",
        description="`cron` (5 fields, in `timezone`, default UTC) or `everyS`; `overlap` says what a tick does "
        "while the previous run is open (skip, allow, cancel-previous); `catchUp` whether a tick missed while no "
        "scheduler ran is fired once when one runs again. Each tick fires exactly once, also with several "
        "scheduler replicas. The same definition again answers 200; another one under the same id 409.",
        responses={
            200: ResponseSpec(ScheduleResponse, description="The same schedule existed already: it, unchanged"),
            **errors(400, 409, 413, 415),
        },
        before_request=strict_body(
            ScheduleRequest,
            lambda body: ((f"workflow.jobs[{i}].config", job.config) for i, job in enumerate(body.workflow.jobs)),
        ),
    )
    async def create(self, data: ScheduleRequest, backend: Backend) -> Response[ScheduleResponse]:
        reply = await backend.create_schedule(data)
        return Response(
            ScheduleResponse(schedule=reply.schedule), status_code=HTTP_201_CREATED if reply.created else HTTP_200_OK
        )

    @get("/", summary="Every schedule, by id", description="Without their workflows.", responses=errors())
    async def list_all(self, backend: Backend) -> ScheduleListResponse:
        reply = await backend.list_schedules()
        return ScheduleListResponse(count=len(reply.schedules), schedules=reply.schedules)

    @get(
        "/{scheduleId:str}",
        summary="One schedule: its definition, next runs and last run",
        description="`nextRuns` lists the next 5 ticks (none while paused).",
        responses=errors(400, 404),
    )
    async def get_one(self, scheduleId: PathId, backend: Backend) -> ScheduleResponse:
        return ScheduleResponse(schedule=(await backend.schedule("get", scheduleId)).schedule)

    @delete(
        "/{scheduleId:str}",
        status_code=HTTP_200_OK,
        summary="Delete a schedule (the executions it created stay)",
        description="No tick fires after the answer.",
        responses=errors(400, 404),
    )
    async def remove(self, scheduleId: PathId, backend: Backend) -> ScheduleDeletedResponse:
        await backend.schedule("delete", scheduleId)
        return ScheduleDeletedResponse(schedule_id=scheduleId, message=f"schedule {scheduleId} deleted")

    @post(
        "/{scheduleId:str}/pause",
        status_code=HTTP_200_OK,
        summary="Pause a schedule: no tick fires until it is resumed (idempotent)",
        description="Ticks that fall while it is paused are never caught up.",
        responses=errors(400, 404, 415),
    )
    async def pause(self, scheduleId: PathId, backend: Backend) -> ScheduleResponse:
        return ScheduleResponse(schedule=(await backend.schedule("pause", scheduleId)).schedule)

    @post(
        "/{scheduleId:str}/resume",
        status_code=HTTP_200_OK,
        summary="Resume a paused schedule from its next tick (idempotent)",
        description="The first run is the next tick after now.",
        responses=errors(400, 404, 415),
    )
    async def resume(self, scheduleId: PathId, backend: Backend) -> ScheduleResponse:
        return ScheduleResponse(schedule=(await backend.schedule("resume", scheduleId)).schedule)

    @post(
        "/{scheduleId:str}/trigger",
        status_code=HTTP_201_CREATED,
        summary="Run a schedule's workflow now, whatever its cadence (also while paused)",
        description="The overlap rule holds: with `skip`, a run while the previous one is open is a 409 naming it.",
        responses=errors(400, 404, 409, 415),
    )
    async def trigger(self, scheduleId: PathId, backend: Backend) -> ExecuteResponse:
        return summary((await backend.trigger_schedule(scheduleId)).execution)

    @get(
        "/{scheduleId:str}/runs",
        summary="The executions a schedule created, newest first, with their status now",
        description=f"The last {MAX_SCHEDULE_RUNS} ticks and triggers, also those that created none (`skipped` "
        "says why).",
        responses=errors(400, 404),
    )
    async def runs(
        self,
        scheduleId: PathId,
        backend: Backend,
        limit: Annotated[int, Parameter(ge=1, le=MAX_SCHEDULE_RUNS)] = 50,
    ) -> ScheduleRunsResponse:
        reply = await backend.schedule_runs(scheduleId, limit)
        return ScheduleRunsResponse(schedule_id=reply.schedule_id, count=len(reply.runs), runs=reply.runs)

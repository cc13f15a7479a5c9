"""`/execute` and `/executions`: submit a DAG, follow it, list, cancel, pause, resume, retry."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from shared.api import ExecuteResponse, ExecutionListResponse, ExecutionResponse, JobListResponse
from shared.ids import ID_RE, IDEMPOTENCY_KEY_RE, WORKFLOW_RE, check_idempotency_key
from shared.messages import ExecuteRequest, ExecutionStatus, ExecutionView, ListExecutions

from ..backend import Backend
from ..body import strict_body
from ..guard import TOKEN_STATE
from ..openapi import PathId, errors


def summary(view: ExecutionView) -> ExecuteResponse:
    return ExecuteResponse(
        execution_id=view.execution_id,
        status=view.status,
        started_at=view.started_at,
        completed_at=view.completed_at,
        job_count=view.job_count,
    )


class ExecutionController(Controller):
    path = "/execute"
    tags = ["executions"]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        summary="Start an execution of a DAG; 201 means it is persisted",
        description="Validates the DAG (ids, dependencies, cycles, limits: a 400 names the problem), persists "
        "it and queues every job without dependencies. A status query right after the 201 finds it, and it "
        "survives any restart. 503 while the open jobs of all executions would exceed `JETDAG_MAX_OPEN_JOBS`.",
        responses={
            200: ResponseSpec(
                ExecuteResponse, description="The Idempotency-Key was used before with this body: its execution"
            ),
            **errors(400, 409, 413, 415, 429),
        },
        before_request=strict_body(
            ExecuteRequest, lambda body: ((f"jobs[{i}].config", job.config) for i, job in enumerate(body.jobs))
        ),
    )
    async def execute(
        self,
        data: ExecuteRequest,
        request: Request[Any, Any, Any],
        backend: Backend,
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header="Idempotency-Key",
                pattern=IDEMPOTENCY_KEY_RE.pattern,
                description="Makes retrying this POST safe: the same key with the same body returns the execution "
                "it created (200) instead of creating another; with another body it is a 409. Kept 24 h.",
            ),
        ] = None,
    ) -> Response[ExecuteResponse]:
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        token = request.state.get(TOKEN_STATE)
        reply = await backend.execute(data, idempotency_key, token.name if token is not None else None)
        return Response(summary(reply.execution), status_code=HTTP_201_CREATED if reply.created else HTTP_200_OK)

    @get(
        "/{executionId:str}",
        summary="Status and progress of an execution",
        description="`status` is pending, running, completed, failed or cancelled; the last three are final.",
        responses=errors(400, 404),
    )
    async def status(self, executionId: PathId, backend: Backend) -> ExecutionResponse:
        return ExecutionResponse(execution=await backend.get_execution(executionId))

    @get(
        "/{executionId:str}/jobs",
        summary="Every job of an execution",
        description="Each job's status, attempts, worker, times, error and result.",
        responses=errors(400, 404),
    )
    async def jobs(self, executionId: PathId, backend: Backend) -> JobListResponse:
        reply = await backend.execution_jobs(executionId)
        return JobListResponse(execution_id=reply.execution_id, count=len(reply.jobs), jobs=reply.jobs)

    @post(
        "/{executionId:str}/cancel",
        status_code=HTTP_200_OK,
        summary="Cancel a running execution (409 if it already ended)",
        description="Jobs not yet finished end `cancelled`; running handlers see `ctx.cancelled`.",
        responses=errors(400, 404, 409, 415),
    )
    async def cancel(self, executionId: PathId, backend: Backend) -> ExecuteResponse:
        return summary(await backend.cancel(executionId))

    @post(
        "/{executionId:str}/pause",
        status_code=HTTP_200_OK,
        summary="Hold an open execution's jobs that have not started (409 if it already ended)",
        description="No job of it is dispatched until it is resumed: queued jobs no worker has started go back "
        "to `ready`, running ones finish (their dependents become ready and wait), retries whose backoff ends "
        "meanwhile wait too. Its status stays pending or running; `paused` and `pausedAt` show the hold. "
        "Pausing a paused execution changes nothing (200).",
        responses=errors(400, 404, 409, 415),
    )
    async def pause(self, executionId: PathId, backend: Backend) -> ExecutionResponse:
        return ExecutionResponse(execution=await backend.pause_execution(executionId))

    @post(
        "/{executionId:str}/resume",
        status_code=HTTP_200_OK,
        summary="Release a paused execution (409 if it already ended)",
        description="Everything held is dispatched again, within the execution's `parallelism`. Resuming an "
        "execution that is not paused changes nothing (200).",
        responses=errors(400, 404, 409, 415),
    )
    async def resume(self, executionId: PathId, backend: Backend) -> ExecutionResponse:
        return ExecutionResponse(execution=await backend.resume_execution(executionId))

    @post(
        "/{executionId:str}/retry",
        status_code=HTTP_200_OK,
        summary="Re-run, from the latest checkpoint, every job of a finished execution that did not complete",
        description="Completed jobs keep their results; failed, skipped and cancelled ones run again in a new "
        "round. 409 while the execution is still open.",
        responses=errors(400, 404, 409, 415),
    )
    async def retry(self, executionId: PathId, backend: Backend) -> ExecuteResponse:
        return summary(await backend.retry(executionId))


@get(
    "/executions",
    tags=["executions"],
    summary="Executions, newest first",
    description="Filtered by `status` and `workflowId`, `limit` per page; `nextCursor` fetches the next page.",
    responses=errors(400),
)
async def list_executions(
    backend: Backend,
    status: ExecutionStatus | None = None,
    workflow_id: Annotated[
        str | None, Parameter(query="workflowId", pattern=WORKFLOW_RE.pattern, description="only this workflow")
    ] = None,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Parameter(pattern=ID_RE.pattern, description="`nextCursor` of the previous page")
    ] = None,
) -> Response[ExecutionListResponse]:
    reply = await backend.list_executions(
        ListExecutions(status=status, workflow_id=workflow_id, limit=limit, cursor=cursor)
    )
    body = ExecutionListResponse(
        count=len(reply.executions), executions=reply.executions, next_cursor=reply.next_cursor
    )
    return Response(body)

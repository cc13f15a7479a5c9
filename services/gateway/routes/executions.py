"""`/execute` and `/executions`: submit a DAG, follow it, list, cancel, retry."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from shared.api import ExecuteResponse, ExecutionListResponse, ExecutionResponse, JobListResponse
from shared.ids import check_id, check_workflow_id
from shared.messages import ExecuteRequest, ExecutionStatus, ExecutionView, ListExecutions

from ..backend import Backend
from ..body import strict_body
from ..openapi import errors


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
        responses=errors(400, 413),
        before_request=strict_body(
            ExecuteRequest, lambda body: ((f"jobs[{i}].config", job.config) for i, job in enumerate(body.jobs))
        ),
    )
    async def execute(self, data: ExecuteRequest, backend: Backend) -> ExecuteResponse:
        return summary(await backend.execute(data))

    @get("/{execution_id:str}", summary="Status and progress of an execution", responses=errors(400, 404))
    async def status(self, execution_id: str, backend: Backend) -> ExecutionResponse:
        return ExecutionResponse(execution=await backend.get_execution(check_id("executionId", execution_id)))

    @get("/{execution_id:str}/jobs", summary="Every job of an execution", responses=errors(400, 404))
    async def jobs(self, execution_id: str, backend: Backend) -> JobListResponse:
        reply = await backend.execution_jobs(check_id("executionId", execution_id))
        return JobListResponse(execution_id=reply.execution_id, count=len(reply.jobs), jobs=reply.jobs)

    @post(
        "/{execution_id:str}/cancel",
        status_code=HTTP_200_OK,
        summary="Cancel a running execution (409 if it already ended)",
        responses=errors(400, 404, 409),
    )
    async def cancel(self, execution_id: str, backend: Backend) -> ExecuteResponse:
        return summary(await backend.cancel(check_id("executionId", execution_id)))

    @post(
        "/{execution_id:str}/retry",
        status_code=HTTP_200_OK,
        summary="Re-run, from the latest checkpoint, every job of a finished execution that did not complete",
        responses=errors(400, 404, 409),
    )
    async def retry(self, execution_id: str, backend: Backend) -> ExecuteResponse:
        return summary(await backend.retry(check_id("executionId", execution_id)))


@get("/executions", tags=["executions"], summary="Executions, newest first", responses=errors(400))
async def list_executions(
    backend: Backend,
    status: ExecutionStatus | None = None,
    workflow_id: Annotated[str | None, Parameter(query="workflowId")] = None,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response[ExecutionListResponse]:
    if workflow_id is not None:
        check_workflow_id(workflow_id)
    if cursor is not None:
        check_id("cursor", cursor)
    reply = await backend.list_executions(
        ListExecutions(status=status, workflow_id=workflow_id, limit=limit, cursor=cursor)
    )
    body = ExecutionListResponse(
        count=len(reply.executions), executions=reply.executions, next_cursor=reply.next_cursor
    )
    return Response(body)

"""`/workers`: register, list, get, heartbeat, deregister."""

from __future__ import annotations

from litestar import Controller, Response, delete, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from shared.api import (
    DeregisterResponse,
    HeartbeatResponse,
    RegisterResponse,
    WorkerListResponse,
    WorkerResponse,
)
from shared.ids import check_id
from shared.messages import HeartbeatRequest, RegisterWorker

from ..backend import Backend
from ..body import strict_body
from ..openapi import errors


class WorkerController(Controller):
    path = "/workers"
    tags = ["workers"]

    @post(
        "/register",
        status_code=HTTP_201_CREATED,
        summary="Register a worker (201), or replace the record of a known id (200)",
        responses=errors(400, 413),
        before_request=strict_body(RegisterWorker, lambda body: [("metadata", body.metadata)]),
    )
    async def register(self, data: RegisterWorker, backend: Backend) -> Response[RegisterResponse]:
        reply = await backend.register_worker(data)
        body = RegisterResponse(worker_id=reply.worker.worker_id, registered_at=reply.worker.registered_at)
        return Response(body, status_code=HTTP_201_CREATED if reply.created else HTTP_200_OK)

    @get("/", summary="List every registered worker with its derived status", responses=errors())
    async def list_workers(self, backend: Backend) -> WorkerListResponse:
        reply = await backend.list_workers()
        return WorkerListResponse(count=len(reply.workers), workers=reply.workers)

    @get("/{worker_id:str}", summary="One worker", responses=errors(400, 404))
    async def get_worker(self, worker_id: str, backend: Backend) -> WorkerResponse:
        return WorkerResponse(worker=await backend.get_worker(check_id("workerId", worker_id)))

    @post(
        "/{worker_id:str}/heartbeat",
        status_code=HTTP_200_OK,
        summary="Heartbeat with the current load",
        responses=errors(400, 404, 413),
        before_request=strict_body(HeartbeatRequest),
    )
    async def heartbeat(self, worker_id: str, data: HeartbeatRequest, backend: Backend) -> HeartbeatResponse:
        worker = await backend.heartbeat(check_id("workerId", worker_id), data.current_load)
        return HeartbeatResponse(
            worker_id=worker.worker_id,
            status=worker.status,
            current_load=worker.current_load,
            last_heartbeat=worker.last_heartbeat,
        )

    @delete("/{worker_id:str}", status_code=HTTP_200_OK, summary="Deregister a worker", responses=errors(400, 404))
    async def deregister(self, worker_id: str, backend: Backend) -> DeregisterResponse:
        reply = await backend.deregister(check_id("workerId", worker_id))
        return DeregisterResponse(worker_id=reply.worker_id, message=f"worker {reply.worker_id} deregistered")

"""`/workers`: register, list, get, heartbeat, deregister."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from shared.api import (
    DeregisterResponse,
    HeartbeatResponse,
    RegisterResponse,
    WorkerListResponse,
    WorkerResponse,
)
from shared.messages import HeartbeatRequest, RegisterWorker

from ..auth import Scope
from ..backend import Backend
from ..body import strict_body
from ..guard import TOKEN_STATE
from ..openapi import PathId, errors


class WorkerController(Controller):
    path = "/workers"
    tags = ["workers"]

    @post(
        "/register",
        status_code=HTTP_201_CREATED,
        summary="Register a worker (201), or replace the record of a known id (200)",
        description="A worker announces its capabilities and capacity. Registering an id that exists again "
        "replaces its record (a restarted worker re-registers) and answers 200; an id a live worker on another "
        "host holds answers 409 unless the token is admin (auth on). Needs admin. It is `unhealthy` after three "
        "missed heartbeat intervals and removed after `JETDAG_WORKER_REAP_AFTER_S` of silence.",
        responses={
            200: ResponseSpec(RegisterResponse, description="The id was known: its record was replaced"),
            **errors(400, 409, 413, 415),
        },
        before_request=strict_body(RegisterWorker, lambda body: [("metadata", body.metadata)]),
        opt={"scope": Scope.ADMIN},
    )
    async def register(
        self, data: RegisterWorker, request: Request[Any, Any, Any], backend: Backend
    ) -> Response[RegisterResponse]:
        # Only an admin token may take over an id a live worker holds; without tokens nobody may (deregister it
        # first). The route needs admin already, so a token here is an admin's.
        reply = await backend.register_worker(data, takeover=TOKEN_STATE in request.state)
        body = RegisterResponse(worker_id=reply.worker.worker_id, registered_at=reply.worker.registered_at)
        return Response(body, status_code=HTTP_201_CREATED if reply.created else HTTP_200_OK)

    @get(
        "/",
        summary="List every registered worker with its derived status",
        description="Every worker in the registry, with `status` derived from its heartbeat age and load.",
        responses=errors(),
    )
    async def list_workers(self, backend: Backend) -> WorkerListResponse:
        reply = await backend.list_workers()
        return WorkerListResponse(count=len(reply.workers), workers=reply.workers)

    @get(
        "/{workerId:str}",
        summary="One worker",
        description="The registry's record of one worker, with its derived status.",
        responses=errors(400, 404),
    )
    async def get_worker(self, workerId: PathId, backend: Backend) -> WorkerResponse:
        return WorkerResponse(worker=await backend.get_worker(workerId))

    @post(
        "/{workerId:str}/heartbeat",
        status_code=HTTP_200_OK,
        summary="Heartbeat with the current load (admin)",
        description="Keeps a registered worker healthy and updates its `currentLoad` (at most its `maxConcurrency`).",
        responses=errors(400, 404, 413, 415),
        before_request=strict_body(HeartbeatRequest),
        opt={"scope": Scope.ADMIN},
    )
    async def heartbeat(self, workerId: PathId, data: HeartbeatRequest, backend: Backend) -> HeartbeatResponse:
        worker = await backend.heartbeat(workerId, data.current_load)
        return HeartbeatResponse(
            worker_id=worker.worker_id,
            status=worker.status,
            current_load=worker.current_load,
            last_heartbeat=worker.last_heartbeat,
        )

    @delete(
        "/{workerId:str}",
        status_code=HTTP_200_OK,
        summary="Deregister a worker (admin)",
        description="Removes the worker from the registry; it disappears from every listing at once.",
        responses=errors(400, 404, 415),
        opt={"scope": Scope.ADMIN},
    )
    async def deregister(self, workerId: PathId, backend: Backend) -> DeregisterResponse:
        reply = await backend.deregister(workerId)
        return DeregisterResponse(worker_id=reply.worker_id, message=f"worker {reply.worker_id} deregistered")

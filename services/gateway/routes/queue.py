"""`/queue`: statistics, pause and resume (JetStream consumer pause, persisted)."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.status_codes import HTTP_200_OK

from shared.api import MessageResponse, QueueStatsResponse

from ..auth import Scope
from ..backend import Backend
from ..openapi import errors


class QueueController(Controller):
    path = "/queue"
    tags = ["queue"]

    @get(
        "/stats",
        summary="Job counts: waiting, active, completed, failed, delayed, paused",
        description="`completed` and `failed` count every job that finished, once, across restarts.",
        responses=errors(),
    )
    async def stats(self, backend: Backend) -> QueueStatsResponse:
        reply = await backend.queue_stats()
        return QueueStatsResponse(healthy=reply.healthy, stats=reply.stats, is_paused=reply.is_paused)

    @post(
        "/pause",
        status_code=HTTP_200_OK,
        summary="Stop delivering jobs to workers (idempotent; admin)",
        description="Suspends the JetStream consumers that feed workers; running jobs finish. Survives restarts.",
        responses=errors(415),
        opt={"scope": Scope.ADMIN},
    )
    async def pause(self, backend: Backend) -> MessageResponse:
        reply = await backend.pause()
        message = "queue paused" if reply.changed else "queue was already paused"
        return MessageResponse(message=f"{message} ({reply.consumers} consumers)", is_paused=True)

    @post(
        "/resume",
        status_code=HTTP_200_OK,
        summary="Deliver jobs again (idempotent; admin)",
        description="Resumes every consumer paused by `POST /queue/pause`.",
        responses=errors(415),
        opt={"scope": Scope.ADMIN},
    )
    async def resume(self, backend: Backend) -> MessageResponse:
        reply = await backend.resume()
        message = "queue resumed" if reply.changed else "queue was not paused"
        return MessageResponse(message=f"{message} ({reply.consumers} consumers)", is_paused=False)

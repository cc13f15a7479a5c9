"""`/queue`: statistics, pause and resume (JetStream consumer pause, persisted): of everything or of one
capability or job type, until resumed or until a time."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.status_codes import HTTP_200_OK

from shared.api import QueueControlResponse, QueueStatsResponse
from shared.messages import QueuePause, QueuePauseRequest, QueueResumeRequest
from shared.pauses import describe

from ..auth import Scope
from ..backend import Backend
from ..openapi import OptionalBody, errors


def _until(pause: QueuePause) -> str:
    return f" until {pause.until}" if pause.until else ""


class QueueController(Controller):
    path = "/queue"
    tags = ["queue"]

    @get(
        "/stats",
        summary="Job counts: waiting, active, completed, failed, delayed, paused; the pauses in effect",
        description="`completed` and `failed` count every job that finished, once, across restarts. `pauses` "
        "lists every pause in effect: what it covers, until when, and why.",
        responses=errors(),
    )
    async def stats(self, backend: Backend) -> QueueStatsResponse:
        reply = await backend.queue_stats()
        return QueueStatsResponse(
            healthy=reply.healthy, stats=reply.stats, is_paused=reply.is_paused, pauses=reply.pauses, ready=reply.ready
        )

    @post(
        "/pause",
        status_code=HTTP_200_OK,
        summary="Stop delivering jobs to workers: all of them, or one capability's or job type's (admin)",
        description="Suspends the JetStream consumers that feed workers; running jobs finish. Survives restarts. "
        "No body: everything, until `POST /queue/resume`. `until` or `durationS`: the pause ends by itself then "
        "(JetStream's `pause_until`). `capability` and/or `type`: only the consumers of those jobs; a consumer "
        "created later starts paused. A new pause of the same scope replaces the earlier one; the same pause "
        "again changes nothing.",
        responses=errors(400, 415),
        opt={"scope": Scope.ADMIN},
        operation_class=OptionalBody,
    )
    async def pause(self, backend: Backend, data: QueuePauseRequest | None = None) -> QueueControlResponse:
        reply = await backend.pause(data)
        scope = (data.capability, data.type) if data is not None else (None, None)
        # None: so short a pause that it ended before the reply.
        pause = next((p for p in reply.pauses if (p.capability, p.type) == scope), None)
        was = "paused" if reply.changed else "was already paused"
        shown = pause or QueuePause(capability=scope[0], type=scope[1])
        message = f"queue {was}: {describe(shown)}{_until(shown)}"
        return QueueControlResponse(
            message=f"{message} ({reply.consumers} consumers)", is_paused=reply.is_paused, pauses=reply.pauses
        )

    @post(
        "/resume",
        status_code=HTTP_200_OK,
        summary="Deliver jobs again: end every pause, or one capability's or job type's (admin)",
        description="No body: ends every pause. `capability` and/or `type`: ends the pause of exactly that scope "
        "(a consumer another pause covers stays paused).",
        responses=errors(400, 415),
        opt={"scope": Scope.ADMIN},
        operation_class=OptionalBody,
    )
    async def resume(self, backend: Backend, data: QueueResumeRequest | None = None) -> QueueControlResponse:
        reply = await backend.resume(data)
        if reply.changed:
            message = "queue resumed: " + ", ".join(describe(p) for p in reply.ended)
        else:
            message = "queue was not paused" if data is None else "no pause of that scope was in effect"
        return QueueControlResponse(
            message=f"{message} ({reply.consumers} consumers)", is_paused=reply.is_paused, pauses=reply.pauses
        )

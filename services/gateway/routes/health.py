"""`/health`: real checks of the job stream, the registry, the KV buckets and the scheduler."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from shared.api import HealthComponents, HealthResponse, HealthWorkers
from shared.messages import QueuePause
from shared.timeutil import now_iso

from ..backend import Backend


@get(
    "/health",
    tags=["health"],
    summary="200 when every component answers, 503 (same body) when one does not",
    description="Checks the job stream, the registry, the KV buckets and the scheduler for real, each within "
    "`JETDAG_HEALTH_TIMEOUT_S`, counts the workers, and lists the queue's pauses in effect (`pauses`).",
    responses={503: ResponseSpec(HealthResponse, description="A component failed: same body, `healthy: false`")},
    # Open to load balancers and probes: counts and component errors only, no ids or payloads.
    opt={"public": True},
    security=[{}],
)
async def health(backend: Backend) -> Response[HealthResponse]:
    body = await check_health(backend)
    return Response(body, status_code=HTTP_200_OK if body.healthy else HTTP_503_SERVICE_UNAVAILABLE)


async def check_health(backend: Backend) -> HealthResponse:
    """Every component checked now, and the workers' counts (the body of GET /health and of the overview)."""
    (queue, registry, state, scheduler, summary), pauses = await asyncio.gather(backend.health(), _pauses(backend))
    if summary is not None:
        capacity = summary.capacity
        workers = HealthWorkers(
            total=summary.total,
            active=summary.active,
            idle=summary.idle,
            busy=summary.busy,
            unhealthy=summary.unhealthy,
            utilization_percent=round(summary.load / capacity * 100, 2) if capacity else 0.0,
        )
    else:
        workers = HealthWorkers(total=0, active=0, idle=0, busy=0, unhealthy=0, utilization_percent=0.0)
    components = HealthComponents(queue=queue, worker_manager=registry, state_store=state, scheduler=scheduler)
    failed = [
        f"{name}: {c.error}"
        for name, c in (
            ("queue", queue),
            ("workerManager", registry),
            ("stateStore", state),
            ("scheduler", scheduler),
        )
        if not c.healthy
    ]
    healthy = not failed
    return HealthResponse(
        success=healthy,
        healthy=healthy,
        components=components,
        workers=workers,
        checked_at=now_iso(),
        error="; ".join(failed) if failed else None,
        pauses=pauses,
    )


async def _pauses(backend: Backend) -> list[QueuePause] | None:
    """The queue's pauses in effect; None when the scheduler does not answer (its component says why)."""
    try:
        return (await asyncio.wait_for(backend.pauses(), backend.health_timeout)).pauses
    except Exception:
        return None

"""`GET /metrics`: every jetdag process's Prometheus metrics, one scrape target (docs/observability.md)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec

from shared.metrics import render

from ..backend import Backend
from ..openapi import errors


@get(
    "/metrics",
    tags=["observability"],
    summary="Prometheus metrics of the gateway and every service process",
    description="One scrape target for the whole stack: every process's metrics, labelled with its service and "
    "process. Prometheus text format; OpenMetrics when the Accept header asks for it.",
    media_type="text/plain",
    responses={200: ResponseSpec(str, media_type="text/plain", description="Prometheus text exposition"), **errors()},
)
async def metrics(request: Request[Any, Any, Any], backend: Backend) -> Response[bytes]:
    answers = await backend.metrics_answers()
    body, content_type = render("gateway", answers, request.headers.get("accept", ""))
    return Response(body, media_type=content_type)

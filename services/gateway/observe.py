"""Request metrics of the gateway: one count and one latency per route template (bounded label values)."""

from __future__ import annotations

import time

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import HttpMetrics

__all__ = ["RequestMetrics"]

STREAM_OPT = "stream"
"""Route handler opt (`opt={"stream": True}`) of a live stream: counted as open, not timed as a request."""


class RequestMetrics(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: HttpMetrics | None = None) -> None:
        self.metrics = metrics or HttpMetrics.process()

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        # After routing: the template (`/api/distributed/execute/{executionId:str}`), never the raw path.
        route = scope.get("path_template") or "unmatched"
        method = str(scope.get("method", "GET"))
        stream = bool(scope["route_handler"].opt.get(STREAM_OPT)) if "route_handler" in scope else False
        status = 500
        started = time.perf_counter()

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if stream:
                with self.metrics.stream(route):
                    await next_app(scope, receive, observe)
            else:
                await next_app(scope, receive, observe)
        finally:
            self.metrics.request(method, route, status, None if stream else time.perf_counter() - started)

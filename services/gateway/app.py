"""`create_app()`: the Litestar application of the gateway."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.config.app import AppConfig
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT

from shared import tracing
from shared.settings import GatewaySettings

from .auth import AuthPolicy
from .backend import Backend
from .errors import exception_handlers
from .guard import api_guard
from .observe import RequestMetrics
from .openapi import StrictStructSchemaPlugin, explorer, explorer_assets
from .overview import OverviewHub
from .routes.events import all_events, execution_events
from .routes.executions import ExecutionController, list_executions
from .routes.health import health
from .routes.metrics import metrics
from .routes.overview import OverviewController
from .routes.queue import QueueController
from .routes.ratelimits import RateLimitController
from .routes.schedules import ScheduleController
from .routes.ui import assets, page
from .routes.workers import WorkerController
from .streams import EventStreams

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/distributed"


def cors(settings: GatewaySettings) -> CORSConfig | None:
    """CORS for browser pages on other origins (JETDAG_CORS_ORIGINS); off when empty. Tokens travel in the
    Authorization header, never cookies, so credentials stay off."""
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        max_age=600,
    )


def _tracing_plugins() -> list[Any]:
    """The server span of every request (W3C traceparent of the caller honoured), when tracing is on."""
    if not tracing.enabled():
        return []
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

    # The dashboard's files and the scrapes would drown the spans that matter.
    config = OpenTelemetryConfig(exclude=["/ui/assets", "/metrics"], exclude_spans=["receive", "send"])
    return [OpenTelemetryPlugin(config)]


SECURITY_SCHEME = "bearerToken"


def create_app(backend: Backend, settings: GatewaySettings, policy: AuthPolicy | None = None) -> Litestar:
    streams = EventStreams(backend, settings)
    policy = policy or AuthPolicy.from_settings(settings)
    guard = api_guard(policy)
    hub = OverviewHub(backend, settings.dashboard_interval_s, settings.sse_heartbeat_s)

    async def provide_backend() -> Backend:
        return backend

    async def provide_streams() -> EventStreams:
        return streams

    async def provide_hub() -> OverviewHub:
        return hub

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            WorkerController,
            ExecutionController,
            list_executions,
            QueueController,
            ScheduleController,
            RateLimitController,
            health,
            execution_events,
            all_events,
            OverviewController,
        ],
        guards=[guard],
    )
    allowed: dict[str, str] = {}

    async def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
        # Litestar's own OPTIONS answer lists the methods of the first handler registered on a path only
        # (`OPTIONS /workers/{workerId}` said DELETE, not GET): answer it from the app's merged routes.
        if request.method != "OPTIONS":
            return None
        methods = allowed.get(request.scope.get("path_template", ""))
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": methods} if methods else None)

    config = AppConfig(
        # The dashboard's page and files load without a token (the page asks for one); its API calls do not.
        route_handlers=[
            api,
            Router(path="/", route_handlers=[metrics], guards=[guard]),
            page,
            assets,
            explorer_assets(),
        ],
        middleware=[RequestMetrics()],
        dependencies={
            "backend": Provide(provide_backend, use_cache=True),
            "streams": Provide(provide_streams, use_cache=True),
            "overview_hub": Provide(provide_hub, use_cache=True),
        },
        cors_config=cors(settings),
        plugins=[StrictStructSchemaPlugin(), *_tracing_plugins()],
        exception_handlers=exception_handlers,
        before_request=answer_options,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="jetdag",
            version="0.1.0",
            description="REST API of jetdag, distributed DAG execution on NATS JetStream. With API tokens "
            "configured, every route but /health needs `Authorization: Bearer <token>`: `read` for GETs, `write` "
            "to submit, cancel and retry, `admin` for the queue and worker registration (docs/security.md).",
            components=Components(
                security_schemes={
                    SECURITY_SCHEME: SecurityScheme(
                        type="http", scheme="bearer", description="A jetdag API token (scopes read, write, admin)."
                    )
                }
            ),
            security=[{SECURITY_SCHEME: []}],
            path="/schema",
            render_plugins=[explorer()],
        ),
        debug=False,
    )
    app = Litestar.from_config(config)
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            allowed[route.path_format] = ", ".join(sorted(route.methods))
    app.state.max_body_bytes = settings.max_body_bytes
    app.state.overview = hub
    return app

"""`create_app()`: the Litestar application of the gateway."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from shared.settings import GatewaySettings

from .backend import Backend
from .errors import exception_handlers
from .observe import RequestMetrics
from .routes.executions import ExecutionController, list_executions
from .routes.health import health
from .routes.metrics import metrics
from .routes.queue import QueueController
from .routes.workers import WorkerController

__all__ = ["API_PREFIX", "create_app"]

API_PREFIX = "/api/distributed"


def create_app(backend: Backend, settings: GatewaySettings) -> Litestar:
    async def provide_backend() -> Backend:
        return backend

    api = Router(
        path=API_PREFIX,
        route_handlers=[WorkerController, ExecutionController, list_executions, QueueController, health],
    )
    config = AppConfig(
        route_handlers=[api, metrics],
        middleware=[RequestMetrics()],
        dependencies={"backend": Provide(provide_backend, use_cache=True)},
        exception_handlers=exception_handlers,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="jetdag",
            version="0.1.0",
            description="REST API of jetdag, distributed DAG execution on NATS JetStream.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
        ),
        debug=False,
    )
    app = Litestar.from_config(config)
    app.state.max_body_bytes = settings.max_body_bytes
    return app

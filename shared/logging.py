"""structlog setup: a readable console on a terminal, one JSON object per line otherwise.

Context (`service`, `workerId`, `executionId`, `jobId`) is bound with `structlog.contextvars` or
`log.bind(...)`, never formatted into the message.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from shared.settings import LoggingSettings, load

__all__ = ["configure_logging", "get_logger"]


def configure_logging(service: str, *, level: str | None = None, json: bool | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    settings = load(LoggingSettings)
    level_name = (level or settings.level).upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    if json is None:
        forced = settings.format.lower()
        json = forced == "json" or (forced != "console" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    # Tracebacks without local variables: structlog shows them by default, and a request handler's locals
    # hold the request body (client data, a 17 KB traceback per hostile request) which must never be logged.
    if json:
        shared.append(structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (nats, uvicorn, litestar) log through the stdlib: route them to the same stream and level.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(name)s: %(message)s")
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger; bind context on it with `.bind(...)`."""
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return log

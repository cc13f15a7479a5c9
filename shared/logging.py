"""structlog setup: a readable console on a terminal, one JSON object per line otherwise.

Context (`service`, `workerId`, `executionId`, `jobId`) is bound with `structlog.contextvars` or
`log.bind(...)`, never formatted into the message. While a job runs, `capture_lines` also keeps its last few
lines in memory, so a failed attempt's record can carry what the job said before it failed.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections import deque
from collections.abc import Iterable, Iterator

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from shared.settings import LoggingSettings, load

__all__ = ["CAPTURED_LINES", "CAPTURED_LINE_CHARS", "capture_lines", "configure_logging", "get_logger"]


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
        _capture,
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
    root = logging.getLogger()
    if not any(isinstance(h, _CaptureHandler) for h in root.handlers):
        root.addHandler(_CaptureHandler())
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.typing.FilteringBoundLogger:
    """A structlog logger; bind context on it with `.bind(...)`."""
    log: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return log


# --- an attempt's own log lines ------------------------------------------------------------------------------

# Lines kept per attempt, and characters per line: a failed attempt's record carries them (the journal, the job
# listing, the `failed` event), so they are few and short; the full log stays on the worker.
CAPTURED_LINES = 20
CAPTURED_LINE_CHARS = 300
# Bound by the logger that runs the code (or added by structlog), not part of what the code said.
_NOT_SAID = frozenset(
    {"service", "workerId", "executionId", "jobId", "attempt", "timestamp", "level", "event", "exc_info"}
)

_captured: contextvars.ContextVar[deque[str] | None] = contextvars.ContextVar("jetdag_captured_lines", default=None)


@contextlib.contextmanager
def capture_lines() -> Iterator[deque[str]]:
    """Keep the last lines logged in this context (structlog, and the stdlib records that pass its level), in
    this task and in what it runs with a copy of its context, until the block ends."""
    lines: deque[str] = deque(maxlen=CAPTURED_LINES)
    token = _captured.set(lines)
    try:
        yield lines
    finally:
        _captured.reset(token)


def _line(level: str, event: object, fields: Iterable[tuple[str, object]]) -> str:
    text = " ".join([level.upper(), str(event), *(f"{k}={v}" for k, v in fields)])
    return text if len(text) <= CAPTURED_LINE_CHARS else text[: CAPTURED_LINE_CHARS - 1] + "…"


def _capture(_logger: object, method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    lines = _captured.get()
    if lines is not None:
        fields = ((k, v) for k, v in event_dict.items() if k not in _NOT_SAID)
        lines.append(_line(event_dict.get("level", method), event_dict.get("event", ""), fields))
    return event_dict


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines = _captured.get()
        if lines is not None:
            lines.append(_line(record.levelname, f"{record.name}: {record.getMessage()}", ()))

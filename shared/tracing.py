"""Traces: OpenTelemetry when it is installed (`pip install -e '.[otel]'`) and configured, nothing otherwise.

Off unless the standard variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
or `OTEL_TRACES_EXPORTER` (`otlp`, `console`); `OTEL_SDK_DISABLED=true` turns it off again. The SDK reads every
other `OTEL_*` variable itself (sampler, headers, batch delays, resource attributes).

The trace context crosses processes as a W3C `traceparent` in NATS message headers. The helpers below are
what every hop uses, and cost nothing when tracing is off (they return at once, no OpenTelemetry import):

- `inject(headers)`: the current span's context into the headers of a message about to be sent;
- `span(name, headers=msg.headers)`: a span for handling a message, child of the sender's;
- `span(name, parent=traceparent)`: a child of a context kept earlier (`current_traceparent()`), for work that
  continues an execution long after its request (dispatches, results).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from shared.logging import get_logger

__all__ = ["current_traceparent", "enabled", "inject", "setup", "span"]

log = get_logger(__name__)

Kind = Literal["internal", "server", "client", "producer", "consumer"]
TRACEPARENT = "traceparent"

_state: dict[str, Any] = {"enabled": False, "tracer": None}


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for traces (regardless of the SDK being installed)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return bool(_state["enabled"])


def setup(service: str) -> bool:
    """Configure tracing for this process once (`service` is its `service.name` unless OTEL_SERVICE_NAME says
    otherwise). True when spans will be exported."""
    if _state["enabled"] or not configured():
        return bool(_state["enabled"])
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* asks for traces but OpenTelemetry is not installed: pip install 'jetdag[otel]'")
        return False
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if e.strip()]
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or f"jetdag-{service}"})
    provider = TracerProvider(resource=resource)
    for name in exporters:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER entry ignored", exporter=name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # The provider flushes what its processors still hold when the process exits.
    trace.set_tracer_provider(provider)
    _state.update(enabled=True, tracer=trace.get_tracer("jetdag"))
    log.info("tracing on", exporters=exporters)
    return True


def inject(headers: dict[str, str] | None = None) -> dict[str, str] | None:
    """`headers` with the current span's `traceparent` added (None stays None when there is nothing to add)."""
    if not _state["enabled"]:
        return headers
    from opentelemetry.propagate import inject as otel_inject

    carrier: dict[str, str] = dict(headers or {})
    otel_inject(carrier)
    return carrier or headers


def current_traceparent() -> str | None:
    """The current span's context as a W3C traceparent, to keep (on an execution) and continue later."""
    carrier = inject({})
    return carrier.get(TRACEPARENT) if carrier else None


@contextlib.contextmanager
def span(
    name: str,
    *,
    headers: Mapping[str, str] | None = None,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Any]:
    """A span for the block: a child of the context in `headers` (a received message), or of `parent` (a kept
    traceparent), or of the current span. Yields the span (None when tracing is off)."""
    if not _state["enabled"]:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    context = None
    if headers and TRACEPARENT in headers:
        context = extract(dict(headers))
    elif parent:
        context = extract({TRACEPARENT: parent})
    with _state["tracer"].start_as_current_span(
        name, context=context, kind=SpanKind[kind.upper()], attributes=dict(attributes or {})
    ) as current:
        yield current

"""Traces: off unless OTEL_* asks, no-ops without OpenTelemetry, and one trace across processes (the caller's
span, the gateway's request span, its NATS request, the scheduler's command span) linked by W3C traceparent."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.tracing import configured
from tests.api import job
from tests.conftest import Stack
from tests.helpers import ROOT, wait_for


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_off_unless_the_standard_variables_ask(env: dict[str, str], on: bool) -> None:
    assert configured(env) is on


HIDE_OTEL = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
from shared import tracing
assert tracing.setup("gateway") is False
assert tracing.inject(None) is None and tracing.inject({"a": "b"}) == {"a": "b"}
assert tracing.current_traceparent() is None
with tracing.span("x", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as s:
    assert s is None
print("noop")
"""


def test_the_helpers_are_noops_without_opentelemetry() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-c", HIDE_OTEL]
    done = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "noop"
    assert "OpenTelemetry is not installed" in done.stdout + done.stderr


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Collector:
    """An OTLP/HTTP trace receiver: the services export to it exactly as they would to a real collector."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        collector.spans.extend(
                            Received(
                                attrs.get("service.name", ""),
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                            )
                            for s in scope.spans
                        )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


async def test_one_trace_from_the_caller_through_the_gateway_to_the_scheduler(
    stack: Stack, http: httpx.AsyncClient, collector: Collector
) -> None:
    await stack.up(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    # The caller's own span, kept by the in-memory exporter of this process.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("test").start_as_current_span("client submits") as root:
        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers, context=set_span_in_context(root))
        r = await http.post(f"{stack.url}/execute", json={"workflowId": "traced", "jobs": [job("a")]}, headers=headers)
    assert r.status_code == 201, r.text
    (mine,) = exporter.get_finished_spans()
    trace_id = f"{mine.context.trace_id:032x}"
    root_id = f"{mine.context.span_id:016x}"

    def chain() -> tuple[Received, Received, Received] | None:
        ours = [s for s in collector.spans if s.trace_id == trace_id]
        http_span = next((s for s in ours if s.service == "jetdag-gateway" and s.parent_id == root_id), None)
        client = next(
            (s for s in ours if s.name.endswith(".scheduler.execute") and s.service == "jetdag-gateway"), None
        )
        command = next((s for s in ours if s.service == "jetdag-scheduler" and s.name.endswith(" execute")), None)
        return (http_span, client, command) if http_span and client and command else None

    http_span, client, command = await wait_for(chain, timeout=30, message="the spans of both services")
    assert "POST" in http_span.name
    assert client.parent_id == http_span.span_id, "the NATS request is a child of the HTTP request"
    assert command.parent_id == client.span_id, "the scheduler's command span continues the gateway's request"


async def test_an_executions_jobs_are_spans_of_its_submit(
    stack: Stack, http: httpx.AsyncClient, collector: Collector
) -> None:
    """The submit's trace goes on: the scheduler's dispatch of each job, the worker's span of the job (in another
    process), the scheduler's verdict on its result — parent to child across three processes."""
    await stack.up(
        workers=1,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    r = await http.post(
        f"{stack.url}/execute", json={"workflowId": "traced", "jobs": [job("a"), job("b", "noop", ["a"])]}
    )
    assert r.status_code == 201, r.text

    def chain() -> tuple[Received, list[tuple[Received, Received, Received]]] | None:
        command = next(
            (s for s in collector.spans if s.service == "jetdag-scheduler" and s.name.endswith(" execute")), None
        )
        if command is None:
            return None
        ours = [s for s in collector.spans if s.trace_id == command.trace_id]
        found = []
        for dispatch in (s for s in ours if s.name == "dispatch noop" and s.service == "jetdag-scheduler"):
            run = next((s for s in ours if s.service == "jetdag-worker" and s.parent_id == dispatch.span_id), None)
            verdict = run and next((s for s in ours if s.name == "result" and s.parent_id == run.span_id), None)
            if run and verdict:
                found.append((dispatch, run, verdict))
        return (command, found) if len(found) == 2 else None

    command, links = await wait_for(chain, timeout=30, message="both jobs' spans in the submit's trace")
    for dispatch, run, verdict in links:
        assert dispatch.parent_id == command.span_id  # the execution keeps its submit's context
        assert run.name == "job noop" and verdict.service == "jetdag-scheduler"
        assert dispatch.trace_id == run.trace_id == verdict.trace_id

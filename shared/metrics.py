"""Prometheus metrics: every metric of every jetdag service is defined here, once.

Each service process registers the groups it uses on its process registry (prometheus_client's default one, which
also carries the `process_*` and `python_*` metrics) and answers a request on `Names.metrics_scrape` with its
exposition text. The gateway's `GET /metrics` gathers the answers of every process in the namespace, adds the
labels `service` and `process` to each sample and serves them as one scrape target (docs/observability.md).

The groups are small typed APIs over the metric objects, so a service calls `metrics.job_finished(...)` instead of
spelling label names: a metric's name, labels and buckets live only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import ClassVar, Self, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shared.logging import get_logger
from shared.messages import MetricsExposition

__all__ = [
    "HttpMetrics",
    "NatsMetrics",
    "RegistryMetrics",
    "SchedulerMetrics",
    "exposition",
    "gather",
    "merge",
    "process_name",
    "render",
    "serve_scrapes",
]

log = get_logger(__name__)

# `_created` series double the output and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

JOB_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
"""Job durations and queue waits: from a noop (milliseconds) to a training run (hours)."""
HTTP_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
COMMIT_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class _Group:
    """A set of metrics one kind of service owns. `process()` is the one instance on the process registry;
    tests build their own on a fresh `CollectorRegistry`."""

    _instances: ClassVar[dict[type[_Group], _Group]] = {}

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    @classmethod
    def process(cls) -> Self:
        instance = _Group._instances.get(cls)
        if instance is None:
            instance = _Group._instances[cls] = cls(REGISTRY)
        assert isinstance(instance, cls)
        return instance


class NatsMetrics(_Group):
    """Every service: its connection to NATS."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.reconnects = Counter(
            "jetdag_nats_reconnects", "Times this process re-established its NATS connection.", registry=registry
        )

    def reconnected(self) -> None:
        self.reconnects.inc()


class HttpMetrics(_Group):
    """The gateway: its REST routes and live streams."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.requests = Counter(
            "jetdag_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "jetdag_http_request_duration_seconds",
            "Time to answer an HTTP request (live streams excluded), by method and route template.",
            ["method", "route"],
            buckets=HTTP_SECONDS,
            registry=registry,
        )
        self.streams = Gauge(
            "jetdag_http_streams_open", "Server-sent event streams open now, by route template.", ["route"],
            registry=registry,
        )  # fmt: skip

    def request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """One answered request; `seconds` None for a live stream (its length says nothing about latency)."""
        self.requests.labels(method, route, str(status)).inc()
        if seconds is not None:
            self.duration.labels(method, route).observe(seconds)

    @contextlib.contextmanager
    def stream(self, route: str) -> Iterator[None]:
        """Count a live stream as open for the duration of the block."""
        gauge = self.streams.labels(route)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()


class RegistryMetrics(_Group):
    """The registry: the fleet of workers as it sees it. Every registry replica reports the same fleet, so
    aggregate these with `max`, not `sum` (docs/observability.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.workers = Gauge("jetdag_workers", "Registered workers by status.", ["status"], registry=registry)
        self.slots_busy = Gauge(
            "jetdag_worker_slots_busy", "Jobs running on live (idle or busy) workers: the sum of currentLoad.",
            registry=registry,
        )  # fmt: skip
        self.slots_capacity = Gauge(
            "jetdag_worker_slots_capacity", "Job slots of live workers: the sum of maxConcurrency.",
            registry=registry,
        )  # fmt: skip

    def fleet(self, by_status: Mapping[str, int], *, busy: int, capacity: int) -> None:
        for status in ("idle", "busy", "unhealthy"):
            self.workers.labels(status).set(by_status.get(status, 0))
        self.slots_busy.set(busy)
        self.slots_capacity.set(capacity)


_Metric = TypeVar("_Metric", Counter, Histogram)


def _labelled(cache: dict[tuple[str, ...], _Metric], metric: _Metric, *values: str) -> _Metric:
    """`metric.labels(*values)`, kept in `cache` after the first call."""
    child = cache.get(values)
    if child is None:
        child = cache[values] = metric.labels(*values)
    return child


class SchedulerMetrics(_Group):
    """The scheduler: jobs, executions, the job queue and its own write path.

    Where to call what (the scheduler core owns the call sites):
    - `job_finished(state, type, duration_s)` once per job reaching a final state (`completed`, `failed`,
      `skipped`, `cancelled`); `duration_s` is its last attempt's run time, None when it never ran;
    - `queue_wait(type, seconds)` when a worker's start is recorded: from the dispatch (queuedAt) to the start;
    - `execution_finished(status)` once per execution reaching a final status;
    - `open_executions(n)` whenever the number of open (not final) executions the replica owns changes;
    - `queue_depths({(capability, type): n})` and `consumers_paused(n)` on every queue-stats pass;
    - `batch(size, commit_seconds)` after each write of a batch of decisions (the journal append).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.jobs = Counter(
            "jetdag_jobs", "Jobs that reached a final state, by state and type.", ["state", "type"], registry=registry
        )
        self.job_duration = Histogram(
            "jetdag_job_duration_seconds",
            "Run time of a job's last attempt, by type (jobs that ran).",
            ["type"],
            buckets=JOB_SECONDS,
            registry=registry,
        )
        self.job_queue_wait = Histogram(
            "jetdag_job_queue_wait_seconds",
            "Time from a job's dispatch to the job stream until a worker started it, by type.",
            ["type"],
            buckets=JOB_SECONDS,
            registry=registry,
        )
        self.executions = Counter(
            "jetdag_executions", "Executions that reached a final status.", ["status"], registry=registry
        )
        self.executions_open = Gauge(
            "jetdag_executions_open", "Executions not in a final status, owned by this scheduler replica.",
            registry=registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "jetdag_queue_depth",
            "Jobs in the job stream that no worker has taken yet, by capability and type.",
            ["capability", "type"],
            registry=registry,
        )
        self.paused = Gauge("jetdag_consumers_paused", "Job consumers paused (POST /queue/pause).", registry=registry)
        self.batch_size = Histogram(
            "jetdag_scheduler_batch_size",
            "Decisions the scheduler wrote in one batch.",
            buckets=BATCH_SIZES,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "jetdag_scheduler_commit_seconds",
            "Time to persist one batch of scheduler decisions.",
            buckets=COMMIT_SECONDS,
            registry=registry,
        )
        self._depth_keys: set[tuple[str, str]] = set()
        # The labelled children of the per-job series, by label values: `labels()` takes a lock and builds a
        # key on every call, a few microseconds on each of thousands of jobs a second. The metrics hold a child
        # per label set anyway: these only keep references to the same children.
        self._finished: dict[tuple[str, ...], Counter] = {}
        self._durations: dict[tuple[str, ...], Histogram] = {}
        self._waits: dict[tuple[str, ...], Histogram] = {}

    def job_finished(self, state: str, job_type: str, duration_s: float | None = None) -> None:
        _labelled(self._finished, self.jobs, state, job_type).inc()
        if duration_s is not None:
            _labelled(self._durations, self.job_duration, job_type).observe(duration_s)

    def queue_wait(self, job_type: str, seconds: float) -> None:
        _labelled(self._waits, self.job_queue_wait, job_type).observe(max(0.0, seconds))

    def execution_finished(self, status: str) -> None:
        self.executions.labels(status).inc()

    def open_executions(self, n: int) -> None:
        self.executions_open.set(n)

    def queue_depths(self, depths: Mapping[tuple[str, str], int]) -> None:
        """The depth of every (capability, type) pool there is now; pools gone since the last call disappear."""
        for key in self._depth_keys - depths.keys():
            with contextlib.suppress(KeyError):
                self.queue_depth.remove(*key)
        for (capability, job_type), n in depths.items():
            self.queue_depth.labels(capability, job_type).set(n)
        self._depth_keys = set(depths)

    def consumers_paused(self, n: int) -> None:
        self.paused.set(n)

    def batch(self, size: int, commit_seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(commit_seconds)


# --- one scrape target for every process ----------------------------------------------------------------------


def process_name() -> str:
    """The `process` label of this process's samples."""
    return f"{socket.gethostname()}-{os.getpid()}"


def exposition(registry: CollectorRegistry = REGISTRY) -> str:
    """This process's metrics in the Prometheus text format."""
    return generate_latest(registry).decode()


async def serve_scrapes(
    nc: Client,
    subject: str,
    service: str,
    *,
    registry: CollectorRegistry = REGISTRY,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> Subscription:
    """Answer every scrape request on `subject` with this process's exposition. No queue group: each process
    answers, so one request reaches the whole namespace. `refresh` updates gauges that are read, not counted."""
    encoder = msgspec.json.Encoder()
    name = process_name()

    async def on_scrape(msg: Msg) -> None:
        if not msg.reply:
            return
        if refresh is not None:
            try:
                await refresh()
            except Exception as exc:  # stale gauges beat no answer: the scrape still gets the counters
                log.warning("metrics refresh failed", error=str(exc) or type(exc).__name__)
        reply = MetricsExposition(service=service, process=name, text=exposition(registry))
        await nc.publish(msg.reply, encoder.encode(reply))

    return await nc.subscribe(subject, cb=on_scrape)


async def gather(
    nc: Client, subject: str, *, window_s: float, skip_process: str | None = None
) -> list[MetricsExposition]:
    """Ask every process on `subject` for its exposition and collect the answers that arrive within `window_s`
    (how many processes there are is not known in advance: workers come and go)."""
    decoder = msgspec.json.Decoder(MetricsExposition)
    answers: list[MetricsExposition] = []
    inbox = nc.new_inbox()

    async def on_answer(msg: Msg) -> None:
        try:
            answer = decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("malformed metrics answer", subject=msg.subject)
            return
        if answer.process != skip_process:
            answers.append(answer)

    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(window_s)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return answers


class _Families:
    """A Collector over families already built (prometheus_client's encoders take any Collector)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge(sources: Iterable[tuple[Mapping[str, str], Iterable[Metric]]]) -> Collector:
    """One family per metric name holding every source's samples, each with that source's labels added (the
    text format allows a name's HELP/TYPE only once). A family whose type disagrees with the first one seen
    (two versions of a service during an upgrade) keeps the first."""
    families: dict[str, Metric] = {}
    for labels, metrics in sources:
        for metric in metrics:
            family = families.get(metric.name)
            if family is None:
                family = families[metric.name] = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            elif family.type != metric.type:
                log.warning("metric type mismatch", metric=metric.name, first=family.type, other=metric.type)
                continue
            family.samples.extend(s._replace(labels={**s.labels, **labels}) for s in metric.samples)
    return _Families(families.values())


def render(own_service: str, answers: Iterable[MetricsExposition], accept: str = "") -> tuple[bytes, str]:
    """The gateway's GET /metrics body and content type: this process's metrics and every answer, merged."""
    started = time.perf_counter()
    sources: list[tuple[Mapping[str, str], Iterable[Metric]]] = [
        ({"service": own_service, "process": process_name()}, REGISTRY.collect())
    ]
    for answer in answers:
        try:
            parsed = list(text_string_to_metric_families(answer.text))
        except ValueError as exc:
            log.warning("unparsable metrics answer", service=answer.service, process=answer.process, error=str(exc))
            continue
        sources.append(({"service": answer.service, "process": answer.process}, parsed))
    encoder, content_type = choose_encoder(accept)
    body = encoder(merge(sources))
    log.debug("metrics rendered", sources=len(sources), ms=round((time.perf_counter() - started) * 1000, 1))
    return body, content_type

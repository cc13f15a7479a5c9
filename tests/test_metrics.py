"""Metrics: each group's exposition parses with the Prometheus text parser, and GET /metrics gathers every
service process of the namespace into one scrape target."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared.messages import MetricsExposition
from shared.metrics import HttpMetrics, NatsMetrics, RegistryMetrics, SchedulerMetrics, merge, render
from tests.api import job, submit, wait_final
from tests.conftest import Stack, start_nats
from tests.helpers import ROOT, wait_for


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: Iterable[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert matching, f"no sample {name}{labels}"
    return sum(matching)


def test_scheduler_api_exposition_parses() -> None:
    """The calls the scheduler makes, on a registry of their own: names, labels and values as documented."""
    registry = CollectorRegistry()
    m = SchedulerMetrics(registry)
    m.job_finished("completed", "train", 12.5)
    m.job_finished("completed", "train", 0.2)
    m.job_finished("skipped", "train")
    m.queue_wait("train", 0.03)
    m.execution_finished("failed")
    m.open_executions(3)
    m.queue_depths({("gpu", "train"): 7, ("any", "noop"): 1})
    m.queue_depths({("gpu", "train"): 2})
    m.consumers_paused(2)
    m.batch(120, 0.004)
    text = generate_latest(registry).decode()
    found = samples(text)
    assert value(found, "jetdag_jobs_total", state="completed", type="train") == 2
    assert value(found, "jetdag_jobs_total", state="skipped", type="train") == 1
    assert value(found, "jetdag_job_duration_seconds_count", type="train") == 2
    assert value(found, "jetdag_job_duration_seconds_sum", type="train") == pytest.approx(12.7)
    assert value(found, "jetdag_job_duration_seconds_bucket", type="train", le="1.0") == 1
    assert value(found, "jetdag_job_queue_wait_seconds_count", type="train") == 1
    assert value(found, "jetdag_executions_total", status="failed") == 1
    assert value(found, "jetdag_executions_open") == 3
    assert value(found, "jetdag_queue_depth", capability="gpu", type="train") == 2
    assert not [s for s in found if s.name == "jetdag_queue_depth" and s.labels.get("type") == "noop"]
    assert value(found, "jetdag_consumers_paused") == 2
    assert value(found, "jetdag_scheduler_batch_size_sum") == 120
    assert value(found, "jetdag_scheduler_commit_seconds_bucket", le="0.005") == 1
    assert "_created" not in text


def test_merge_labels_every_source_and_keeps_one_family_per_name() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    RegistryMetrics(a).fleet({"idle": 2, "busy": 1}, busy=3, capacity=12)
    RegistryMetrics(b).fleet({"idle": 2, "busy": 1}, busy=3, capacity=12)
    HttpMetrics(b).request("GET", "/api/distributed/health", 200, 0.01)
    merged = generate_latest(
        merge(
            [
                (
                    {"service": "registry", "process": "h-1"},
                    text_string_to_metric_families(generate_latest(a).decode()),
                ),
                ({"service": "registry", "process": "h-2"}, b.collect()),
            ]
        )
    ).decode()
    assert merged.count("# TYPE jetdag_workers gauge") == 1
    found = samples(merged)
    assert {s.labels["process"] for s in found if s.name == "jetdag_workers"} == {"h-1", "h-2"}
    assert value(found, "jetdag_worker_slots_capacity", process="h-2") == 12
    assert value(found, "jetdag_http_requests_total", route="/api/distributed/health", status="200") == 1


def test_render_skips_an_unparsable_answer() -> None:
    body, content_type = render("gateway", [MetricsExposition(service="worker", process="w", text="not { metrics")])
    assert content_type.startswith("text/plain")
    assert "process_start_time_seconds" in body.decode() or "python_info" in body.decode()
    assert 'service="worker"' not in body.decode()


async def test_one_scrape_target_for_every_service(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1)
    base = stack.url.removesuffix("/api/distributed")
    assert (await http.get(f"{stack.url}/execute/exec-missing")).status_code == 404
    assert (await http.get(f"{stack.url}/health")).status_code == 200

    async def scrape() -> list[Sample] | None:
        r = await http.get(f"{base}/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        found = samples(r.text)
        services = {s.labels.get("service") for s in found if s.name == "process_start_time_seconds"}
        return found if services >= {"gateway", "registry", "scheduler", "worker"} else None

    found = await wait_for(scrape, timeout=30, message="every service in the scrape")
    # The template, never the raw path (the parameter's name is the route's business).
    route = next(
        s.labels["route"]
        for s in found
        if s.name == "jetdag_http_requests_total"
        and re.fullmatch(r"/api/distributed/execute/\{\w+\}", s.labels["route"])
    )
    assert value(found, "jetdag_http_requests_total", service="gateway", route=route, status="404") == 1
    assert value(found, "jetdag_http_request_duration_seconds_count", route=route, method="GET") == 1
    assert value(found, "jetdag_workers", service="registry", status="idle") == 1
    assert value(found, "jetdag_worker_slots_capacity", service="registry") == 4
    assert value(found, "jetdag_worker_slots_busy", service="registry") == 0
    for service in ("gateway", "registry", "scheduler", "worker"):
        assert value(found, "jetdag_nats_reconnects_total", service=service) == 0


async def test_the_scheduler_counts_jobs_executions_and_its_writes(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.up(workers=1, JETDAG_SWEEP_INTERVAL_S="0.2")
    base = stack.url.removesuffix("/api/distributed")
    dag = [job("a", "sleep", config={"seconds": 0.2}), job("b", "noop", ["a"]), job("c", "fail", ["a"])]
    dag.append(job("d", "noop", ["c"]))
    eid = await submit(http, stack.url, dag)
    assert (await wait_final(http, stack.url, eid))["status"] == "failed"

    async def counted() -> list[Sample] | None:
        found = samples((await http.get(f"{base}/metrics")).text)
        ended = value(found, "jetdag_executions_total", service="scheduler", status="failed") == 1
        # The open-executions gauge is measured by the audit every few sweeps: it follows the end a moment later.
        return found if ended and value(found, "jetdag_executions_open", service="scheduler") == 0 else None

    found = await wait_for(counted, timeout=20, message="the execution counted and no longer open")
    assert value(found, "jetdag_jobs_total", state="completed", type="sleep") == 1
    assert value(found, "jetdag_jobs_total", state="completed", type="noop") == 1
    assert value(found, "jetdag_jobs_total", state="failed", type="fail") == 1
    assert value(found, "jetdag_jobs_total", state="skipped", type="noop") == 1
    assert value(found, "jetdag_job_duration_seconds_count", type="sleep") == 1
    assert value(found, "jetdag_job_duration_seconds_sum", type="sleep") >= 0.1
    assert value(found, "jetdag_job_queue_wait_seconds_count", type="noop") == 1  # b started; d never did
    assert value(found, "jetdag_scheduler_batch_size_count", service="scheduler") >= 3
    assert value(found, "jetdag_scheduler_commit_seconds_count", service="scheduler") >= 3
    assert value(found, "jetdag_executions_open", service="scheduler") == 0


def defined_series() -> set[str]:
    """Every series name jetdag's metric groups can emit (with the histogram and counter suffixes)."""
    registry = CollectorRegistry()
    groups = [NatsMetrics(registry), HttpMetrics(registry), RegistryMetrics(registry), SchedulerMetrics(registry)]
    assert groups
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_dashboard_and_alerts_name_only_defined_metrics() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load("groups:" + doc.split("```yaml\ngroups:", 1)[1].split("```", 1)[0])
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) > 20
    defined = defined_series()
    for expr in exprs:
        for name in re.findall(r"\bjetdag_[a-z_]+", expr):
            assert name in defined, f"{name} in {expr!r} is not a jetdag metric"
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"JetdagStuckExecutions", "JetdagNoLiveWorkers", "JetdagQueueGrowing"} <= alerts


async def test_nats_reconnects_are_counted(tmp_path: Path, namespace: str, http: httpx.AsyncClient) -> None:
    server = start_nats(tmp_path, "flaky")
    stack = Stack(server.url, namespace, tmp_path / "logs")
    try:
        await stack.up()
        base = stack.url.removesuffix("/api/distributed")
        server.kill()
        server.start()
        server.wait_ready()

        async def counted() -> list[Sample] | None:
            r = await http.get(f"{base}/metrics")
            if r.status_code != 200:
                return None
            found = samples(r.text)
            reconnects = {s.labels["service"]: s.value for s in found if s.name == "jetdag_nats_reconnects_total"}
            done = all(reconnects.get(name, 0) >= 1 for name in ("gateway", "registry", "scheduler"))
            return found if done else None

        await wait_for(counted, timeout=60, message="one reconnect counted by every service")
    finally:
        stack.stop_all()
        server.stop()

"""`just bench`: jetdag's throughput and latency on its own embedded stack, next to the raw JetStream floor.

`python -m jetdag.bench [--repeats 3] [--workloads W1,W2,W3,W4] [--quick]` starts a private stack (nats-server
on free ports with a fresh store in a temp dir, registry, scheduler, gateway, 2 workers x 32 concurrency),
submits every workload through the REST API with `noop` jobs, and prints Markdown tables on stdout (progress goes
to stderr) ready to paste into docs/performance.md:

- W1: a chain of 200 jobs; also the per-hop latency (a child's `startedAt` - its parent's `completedAt`).
- W2: fan-out 1 → 1,000 → 1.
- W3: 10 layers x 500; every job of layer k ≥ 1 depends on 2 jobs of layer k - 1 drawn by one
  `random.Random(42)` with `sample(range(500), 2)`, in order over layers then jobs.
- W4: 200 concurrent executions of a 25-job diamond 1-5-13-5-1 (see `diamond`), submitted 16 POSTs at a time.

Wall time runs from the first POST /execute to the moment the last execution's final event (`completed`,
`failed` or `cancelled`, docs/events.md) reaches the bench over NATS, the way a subscriber learns of it; the
bench also polls (W1-W3 GET /execute/{id} every 20 ms, W4 GET /executions?workflowId= every 50 ms) to check
that every execution completed with every job, but the poll's interval is not in the wall time. jobs/s = jobs /
wall. Each
workload runs once as a discarded warm-up and then `--repeats` times; the table shows medians (of the hop
percentiles too: the median over runs of each run's p50 / p99). For each workload the same run measures the raw
JetStream floor for the same message count (jetdag.bench_floor) and the ratio jobs/s ÷ floor msgs/s. Then 50
concurrent clients, each with its own keep-alive connection, load `GET /execute/{id}` (a completed execution)
and `GET /queue/stats`, and last the peak RSS (VmHWM) of every process of the stack is read.

`--quick` is the CI smoke version: W1 as a chain of 20, W2 as 1 → 50 → 1, one run, no warm-up, 1 s of gateway
load.

For docs/tuning.md and docs/scaling.md: `--set VAR=VALUE` (repeatable) gives every service a setting (the bench
otherwise runs the defaults); `--nodes 3` runs a local 3-node nats-server cluster with every stream at R3 (the
floor too); `--recovery` kills -9 the worker running a long job and reports how long until another worker runs
it and until the registry shows the dead one unhealthy. Every run also reports the CPU each kind of process spent
per job (from /proc: what a core of each buys) and what the streams and buckets hold per job run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import nats
from nats.aio.client import Client

from jetdag.bench_floor import FloorRun, die_with_parent, measure_floor
from jetdag.natsserver import NatsServer, NatsServerConfig, free_port
from shared.settings import all_settings_classes
from shared.subjects import Names

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
FINAL = ("completed", "failed", "cancelled")
# How often a single execution is polled: often enough that polling adds little to a wall time of seconds,
# rarely enough that the polling itself is not a load on the gateway.
POLL_S = 0.02
# W4 polls the listing of its 200 executions (one request) instead of each execution.
POLL_MANY_S = 0.05
SUBMITTERS = 16  # concurrent POST /execute of W4
# GET /execute/{id}/jobs sometimes lists no job at all for a completed execution (seen ~1 request in 15 with
# 200 jobs; the scheduler reads the jobs through a KV watch, and nats-py's watch can signal "initial values
# done" before the first one: nats-io/nats.py#842). The bench asks again rather than report a bogus latency.
JOB_LIST_ATTEMPTS = 5
EXECUTION_TIMEOUT_S = 900.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0  # workers get their grace (30 s by default) to hand back work

JobSpec = dict[str, Any]

_t0 = time.monotonic()


class BenchError(RuntimeError):
    """The bench cannot produce honest numbers (a service died, an execution did not complete, …)."""


def say(message: str) -> None:
    """Progress on stderr, so stdout carries only the tables."""
    print(f"[bench {time.monotonic() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- workloads ---------------------------------------------------------------------------------------------


def _job(job_id: str, deps: Sequence[str] = ()) -> JobSpec:
    return {"id": job_id, "name": job_id, "type": "noop", "dependsOn": list(deps), "config": {}}


def chain(n: int) -> list[JobSpec]:
    """c0 → c1 → … → c(n-1)."""
    return [_job(f"c{i}", [f"c{i - 1}"] if i else []) for i in range(n)]


def fan(width: int) -> list[JobSpec]:
    """src → f0 … f(width-1) → sink."""
    middle = [_job(f"f{i}", ["src"]) for i in range(width)]
    return [_job("src"), *middle, _job("sink", [j["id"] for j in middle])]


def layered(layers: int = 10, width: int = 500, parents: int = 2, seed: int = 42) -> list[JobSpec]:
    """`layers` x `width`; job i of layer k ≥ 1 depends on `parents` jobs of layer k - 1 drawn by ONE
    Random(seed), in order layer 1 job 0, layer 1 job 1, …, so every run and every machine gets the same DAG."""
    rng = random.Random(seed)
    jobs = [_job(f"l0-{i}") for i in range(width)]
    for k in range(1, layers):
        for i in range(width):
            picks = rng.sample(range(width), parents)
            jobs.append(_job(f"l{k}-{i}", [f"l{k - 1}-{p}" for p in picks]))
    return jobs


def diamond(widths: Sequence[int] = (1, 5, 13, 5, 1)) -> list[JobSpec]:
    """A layered diamond (default 1-5-13-5-1 = 25 jobs). Job i of a widening layer depends on job
    i mod w of the layer above (w its width); job i of a narrowing layer on every job p above with
    p mod (its own width) = i. So every job but the sink has a child and every job but the source a parent."""
    jobs = [_job(f"d0-{i}") for i in range(widths[0])]
    for k in range(1, len(widths)):
        above, width = widths[k - 1], widths[k]
        for i in range(width):
            if width >= above:
                deps = [f"d{k - 1}-{i % above}"]
            else:
                deps = [f"d{k - 1}-{p}" for p in range(above) if p % width == i]
            jobs.append(_job(f"d{k}-{i}", deps))
    return jobs


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    dag: list[JobSpec]
    copies: int = 1  # concurrent executions of `dag`
    hops: bool = False  # report per-hop latency (meaningful for the chain)
    optional: bool = False  # only when asked for by name (W5 takes minutes)

    @property
    def jobs(self) -> int:
        return len(self.dag) * self.copies


def workloads(quick: bool) -> list[Workload]:
    if quick:
        return [
            Workload("W1", "W1 chain 20", chain(20), hops=True),
            Workload("W2", "W2 fan-out 1→50→1", fan(50)),
        ]
    return [
        Workload("W1", "W1 chain 200", chain(200), hops=True),
        Workload("W2", "W2 fan-out 1→1,000→1", fan(1000)),
        Workload("W3", "W3 layered 10x500", layered()),
        Workload("W4", "W4 200 x diamond 1-5-13-5-1", diamond(), copies=200),
        Workload("W5", "W5 layered 100x1,000", layered(layers=100, width=1000), optional=True),
    ]


# --- the stack -----------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


class BenchStack:
    """nats-server + registry, scheduler, gateway and workers as child processes, like tests/conftest.py's
    Stack, but private to the bench: own ports, own store, own namespace."""

    def __init__(
        self,
        root: Path,
        *,
        workers: int,
        concurrency: int,
        max_jobs: int,
        schedulers: int = 1,
        durable: bool = False,
        nodes: int = 1,
        sets: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.schedulers = schedulers
        self.workers = workers
        self.concurrency = concurrency
        self.max_jobs = max_jobs
        self.sets = dict(sets or {})
        self.port = free_port()
        names = ["bench"] if nodes == 1 else [f"n{i}" for i in range(1, nodes + 1)]
        cluster_ports = [free_port() for _ in names] if nodes > 1 else []
        self.nodes = [
            NatsServer(
                NatsServerConfig(
                    store_dir=root / "nats" / name / "store",
                    port=free_port(),
                    monitor_port=free_port(),
                    server_name=name,
                    sync_interval="always" if durable else None,
                    cluster_name="bench" if nodes > 1 else None,
                    cluster_port=cluster_ports[i] if nodes > 1 else None,
                    routes=[f"nats-route://127.0.0.1:{port}" for port in cluster_ports],
                ),
                config_path=root / "nats" / name / "nats.conf",
            )
            for i, name in enumerate(names)
        ]
        self.nats = self.nodes[0]
        self.replicas = int(self.sets.get("JETDAG_REPLICAS", str(nodes)))
        self.procs: list[Proc] = []

    @property
    def nats_url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/distributed"

    def env(self) -> dict[str, str]:
        # Nothing of the caller's jetdag or NATS configuration leaks in: the bench always measures the defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
        env.update(
            NATS_URL=self.nats_url,
            JETDAG_REPLICAS=str(self.replicas),
            JETDAG_NAMESPACE=NAMESPACE,
            JETDAG_PORT=str(self.port),
            JETDAG_LOG_LEVEL="warning",
            JETDAG_LOG_FORMAT="json",
            JETDAG_MAX_JOBS=str(max(self.max_jobs, 20_000)),
            JETDAG_MAX_BODY_BYTES=str(64 * 1024 * 1024),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.sets)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        log_path = self.root / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Own session (a Ctrl-C of the bench reaches only the bench, which then stops them in order) and
            # SIGTERM on the bench's death, so nothing outlives it. No threads exist yet: preexec_fn is safe.
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )
        self.procs.append(Proc(name, popen, log_path))
        return popen

    def start(self) -> None:
        for node in self.nodes:
            node.write_config()
            suffix = "" if len(self.nodes) == 1 else f"-{node.config.server_name}"
            node.proc = self._spawn(f"nats-server{suffix}", node.argv(), None)
        for node in self.nodes:
            node.wait_ready(timeout=30)
        if len(self.nodes) > 1:
            wait_meta_leader(self.nodes)
        say(f"nats-server ready on {self.nats_url} (store {self.nats.config.store_dir}, R{self.replicas})")
        env = self.env()
        py = sys.executable
        for service in ("registry", "scheduler", "gateway"):
            self._spawn(service, [py, "-m", f"services.{service}"], env)
        for n in range(2, self.schedulers + 1):
            self._spawn(f"scheduler-{n}", [py, "-m", "services.scheduler"], env)
        for i in range(1, self.workers + 1):
            self._spawn(f"worker-{i}", self.worker_argv(i), env)
        self.wait_ready()

    def worker_argv(self, i: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "services.worker",
            "--id",
            f"bench-worker-{i}",
            "--concurrency",
            str(self.concurrency),
        ]

    def respawn(self, name: str) -> None:
        """Start again a process the bench killed (the recovery measurement), with the same command."""
        proc = next(p for p in self.procs if p.name == name)
        self.procs.remove(proc)
        self._spawn(name, list(proc.popen.args), self.env())  # type: ignore[arg-type]

    def cpu_ms(self) -> dict[str, float]:
        """CPU time (user + system) every process has used so far, by process name."""
        return {p.name: cpu_ms(p.popen.pid) for p in self.procs}

    def wait_ready(self) -> None:
        """The gateway answers /health with 200 and lists every worker as live."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(timeout=5) as client:
            while True:
                self.assert_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        body = client.get(f"{self.url}/workers").json()
                        live = [w for w in body.get("workers", []) if w.get("status") in ("idle", "busy")]
                        if len(live) == self.workers:
                            say(f"stack ready: {self.url}, {self.workers} workers x {self.concurrency}")
                            return
                if time.monotonic() > deadline:
                    raise BenchError(f"the stack was not ready within {READY_TIMEOUT_S:g} s")
                time.sleep(0.1)

    def assert_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise BenchError(f"{proc.name} exited with code {code}")

    def peak_rss(self) -> dict[str, int | None]:
        """VmHWM (peak resident set, KiB) of every process, read while they still run."""
        return {proc.name: peak_rss_kib(proc.popen.pid) for proc in self.procs}

    def rss(self, name: str) -> int | None:
        """VmRSS (resident set now, KiB) of the named process."""
        return next((rss_kib(p.popen.pid, "VmRSS:") for p in self.procs if p.name == name), None)

    def tails(self, lines: int = 15) -> str:
        out = []
        for proc in self.procs:
            if proc.log_path.exists():
                text = proc.log_path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    out.append(f"--- {proc.name} ({proc.log_path})\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM in `jetdag up`'s order: workers (they hand back work and deregister), gateway, scheduler,
        registry, nats-server last. SIGKILL only for a process that ignores SIGTERM."""
        order = ["worker-", "gateway", "scheduler", "registry", "nats-server"]
        for prefix in order:
            group = [p for p in self.procs if p.name.startswith(prefix)]
            for proc in group:
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.popen.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    say(f"{proc.name} did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM; killing it")
                    proc.popen.kill()
                    proc.popen.wait()


def wait_meta_leader(nodes: Sequence[NatsServer], timeout: float = 30.0) -> None:
    """Every node of a cluster sees a JetStream meta leader (before that, stream commands fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = []
        for node in nodes:
            try:
                with urllib.request.urlopen(f"{node.monitor_url}/jsz", timeout=1) as r:
                    leaders.append(((json.loads(r.read()) or {}).get("meta_cluster") or {}).get("leader"))
            except (OSError, ValueError):
                leaders.append(None)
        if all(leaders):
            return
        time.sleep(0.1)
    raise BenchError(f"no JetStream meta leader within {timeout:g} s")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of a running process, in ms (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def kind_of(name: str) -> str:
    """The kind of a bench process: `worker-2` → worker, `scheduler-3` → scheduler, `nats-server-n1` → nats-server."""
    for kind in ("nats-server", "scheduler", "worker", "gateway", "registry"):
        if name.startswith(kind):
            return kind
    return name


def peak_rss_kib(pid: int) -> int | None:
    return rss_kib(pid, "VmHWM:")


def rss_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- one workload run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    wall_s: float
    jobs: int
    execution_id: str
    hops_ms: tuple[float, ...] = ()
    polled_s: float = 0.0
    """When the poll saw the last execution final: what the wall time was until 2026-12-03."""

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def submit(client: httpx.AsyncClient, url: str, workflow_id: str, dag: list[JobSpec]) -> str:
    r = await client.post(f"{url}/execute", json={"workflowId": workflow_id, "jobs": dag})
    if r.status_code != 201:
        raise BenchError(f"POST /execute ({workflow_id}) answered {r.status_code}: {r.text[:300]}")
    return str(r.json()["executionId"])


def check_completed(execution: dict[str, Any], jobs: int) -> None:
    progress = execution.get("progress", {})
    if execution["status"] != "completed" or progress.get("completed") != jobs:
        raise BenchError(
            f"execution {execution['executionId']} ended {execution['status']} with progress {progress}"
            f" (error: {execution.get('error')})"
        )


async def wait_final(client: httpx.AsyncClient, url: str, execution_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + EXECUTION_TIMEOUT_S
    while True:
        r = await client.get(f"{url}/execute/{execution_id}")
        if r.status_code != 200:
            raise BenchError(f"GET /execute/{execution_id} answered {r.status_code}: {r.text[:300]}")
        execution: dict[str, Any] = r.json()["execution"]
        if execution["status"] in FINAL:
            return execution
        if time.monotonic() > deadline:
            raise BenchError(f"execution {execution_id} not final after {EXECUTION_TIMEOUT_S:g} s: {execution}")
        await asyncio.sleep(POLL_S)


async def wait_all_final(
    client: httpx.AsyncClient, url: str, workflow_id: str, ids: Sequence[str]
) -> list[dict[str, Any]]:
    """Every execution of `workflow_id` final. One listing request per poll instead of one per execution:
    200 pollers would load the 2-core box more than the workload does."""
    deadline = time.monotonic() + EXECUTION_TIMEOUT_S
    wanted = set(ids)
    while True:
        r = await client.get(f"{url}/executions", params={"workflowId": workflow_id, "limit": 500})
        if r.status_code != 200:
            raise BenchError(f"GET /executions answered {r.status_code}: {r.text[:300]}")
        final = [e for e in r.json()["executions"] if e["executionId"] in wanted and e["status"] in FINAL]
        if len(final) == len(wanted):
            return final
        if time.monotonic() > deadline:
            raise BenchError(f"{len(wanted) - len(final)} executions of {workflow_id} not final after timeout")
        await asyncio.sleep(POLL_MANY_S)


async def job_list(client: httpx.AsyncClient, url: str, execution_id: str, expected: int) -> list[dict[str, Any]]:
    """GET /execute/{id}/jobs, asked again (and said so) when it lists fewer jobs than the execution has: the
    listing has been seen to come back empty now and then for a completed execution (see JOB_LIST_ATTEMPTS)."""
    for attempt in range(1, JOB_LIST_ATTEMPTS + 1):
        r = await client.get(f"{url}/execute/{execution_id}/jobs")
        if r.status_code != 200:
            raise BenchError(f"GET /execute/{execution_id}/jobs answered {r.status_code}: {r.text[:300]}")
        jobs: list[dict[str, Any]] = r.json()["jobs"]
        if len(jobs) == expected:
            return jobs
        say(f"GET /execute/{execution_id}/jobs listed {len(jobs)} of {expected} jobs (attempt {attempt}); asking again")
        await asyncio.sleep(0.1)
    raise BenchError(f"GET /execute/{execution_id}/jobs never listed all {expected} jobs")


async def hop_latencies(client: httpx.AsyncClient, url: str, execution_id: str, expected: int) -> tuple[float, ...]:
    """For every dependency edge: child startedAt - parent completedAt, in ms (the timestamps have ms resolution)."""
    jobs = {j["id"]: j for j in await job_list(client, url, execution_id, expected)}
    hops = []
    for job in jobs.values():
        for parent in job["dependsOn"]:
            gap = parse_ts(job["startedAt"]) - parse_ts(jobs[parent]["completedAt"])
            hops.append(gap.total_seconds() * 1000)
    return tuple(hops)


class FinalEvents:
    """When each execution's final event reached the bench (perf_counter), from a core NATS subscription to
    the final events of every execution of the namespace."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self._changed = asyncio.Event()

    async def subscribe(self, nc: Client) -> None:
        names = Names(NAMESPACE)
        for what in FINAL:
            await nc.subscribe(names.execution_event("*", what), cb=self._on_msg)
        await nc.flush()  # the server has the subscriptions before the first submit

    async def _on_msg(self, msg: Any) -> None:
        # <prefix>.execution.<executionId>.<what>
        self.seen.setdefault(msg.subject.split(".")[-2], time.perf_counter())
        self._changed.set()

    async def last_of(self, ids: Sequence[str], timeout: float) -> float:
        """When the last of `ids` ended (waiting for its event, at most `timeout`)."""
        deadline = time.monotonic() + timeout
        while any(i not in self.seen for i in ids):
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [i for i in ids if i not in self.seen]
                raise BenchError(f"no final event for {len(missing)} executions, e.g. {missing[0]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return max(self.seen[i] for i in ids)


async def run_once(
    client: httpx.AsyncClient, url: str, workload: Workload, workflow_id: str, ends: FinalEvents
) -> RunResult:
    """Submit, wait until final, check it completed; wall time from the first submit to the last final event."""
    started = time.perf_counter()
    if workload.copies == 1:
        execution_id = await submit(client, url, workflow_id, workload.dag)
        finals = [await wait_final(client, url, execution_id)]
    else:
        # At most SUBMITTERS POSTs in flight: every execution still runs concurrently with the others, and
        # the client stays cheap (200 requests in one httpx pool at once cost ~1 s of client CPU here).
        gate = asyncio.Semaphore(SUBMITTERS)

        async def one() -> str:
            async with gate:
                return await submit(client, url, workflow_id, workload.dag)

        ids = await asyncio.gather(*(one() for _ in range(workload.copies)))
        finals = await wait_all_final(client, url, workflow_id, ids)
    # The poll above saw them final; the wall time ends at the last final event (a moment before the poll).
    polled = time.perf_counter() - started
    wall = await ends.last_of([e["executionId"] for e in finals], timeout=10) - started
    for execution in finals:
        check_completed(execution, len(workload.dag))
    execution_id = finals[-1]["executionId"]
    hops = await hop_latencies(client, url, execution_id, len(workload.dag)) if workload.hops else ()
    return RunResult(wall_s=wall, jobs=workload.jobs, execution_id=execution_id, hops_ms=hops, polled_s=polled)


# --- gateway load --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    endpoint: str
    clients: int
    elapsed_s: float
    latencies_ms: tuple[float, ...]
    errors: int

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.elapsed_s


class KeepAliveGet:
    """One keep-alive HTTP/1.1 connection sending GETs and reading each answer by its Content-Length: the load
    generator. httpx costs ~0.45 ms of client CPU per request; at 2,000 req/s that is a core of this 2-core
    machine, and the bench measured itself (the gateway was at 0.43 of a core when it stopped growing)."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        assert parsed.scheme == "http" and parsed.hostname is not None and parsed.port is not None, url
        self.host, self.port, self.prefix = parsed.hostname, parsed.port, parsed.path.rstrip("/")
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> int:
        """The answer's status; raises ValueError when there is no complete answer (and reconnects next time)."""
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self._streams
            writer.write(f"GET {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ValueError(f"an answer without Content-Length: {head[:200]!r}")
            await reader.readexactly(length)
            return int(head[9:12])
        except (OSError, ValueError, asyncio.IncompleteReadError):
            await self.close()  # the next request opens a new connection
            raise ValueError("no complete answer") from None

    async def close(self) -> None:
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def gateway_load(url: str, path: str, label: str, *, clients: int, seconds: float) -> LoadResult:
    """`clients` concurrent loops of GET `path` for `seconds`, each on its own keep-alive connection; every
    answer but a 200 counts as an error."""
    latencies: list[float] = []
    errors = 0
    pool = [KeepAliveGet(url) for _ in range(clients)]
    try:
        # Open every connection before the clock starts: connection setup is not what this measures.
        await asyncio.gather(*(client.get(path) for client in pool))
        started = time.perf_counter()
        deadline = started + seconds

        async def loop(client: KeepAliveGet) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    ok = await client.get(path) == 200
                except ValueError:
                    ok = False
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += not ok

        await asyncio.gather(*(loop(client) for client in pool))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.close() for client in pool))
    return LoadResult(label, clients, elapsed, tuple(latencies), errors)


# --- the whole bench -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSummary:
    workload: Workload
    runs: list[RunResult]
    floors: list[FloorRun]
    scheduler_rss_kib: list[int | None] = field(default_factory=list)
    """The scheduler's resident set after each measured run (does memory grow from run to run?)."""
    cpu_ms: list[dict[str, float]] = field(default_factory=list)
    """CPU ms each kind of process spent in each measured run (summed over its processes)."""

    def cpu_ms_per_job(self, kind: str) -> float | None:
        per_run = [run[kind] / self.workload.jobs for run in self.cpu_ms if kind in run]
        return statistics.median(per_run) if per_run else None

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def jobs_per_s(self) -> float:
        return statistics.median(r.jobs_per_s for r in self.runs)

    @property
    def floor_msgs_per_s(self) -> float:
        return statistics.median(f.msgs_per_s for f in self.floors)

    @property
    def ratio(self) -> float:
        return self.jobs_per_s / self.floor_msgs_per_s

    @property
    def e2e_hop_ms(self) -> float | None:
        """Wall time per hop of the chain, end to end: every hop's whole result path, not just the gap
        between a parent's completedAt and its child's startedAt."""
        if not self.workload.hops:
            return None
        return statistics.median(r.wall_s * 1000 / (len(self.workload.dag) - 1) for r in self.runs)

    def hop_ms(self, q: float) -> float | None:
        """Median over the runs of each run's q-th percentile hop latency."""
        per_run = [percentile(r.hops_ms, q) for r in self.runs if r.hops_ms]
        return statistics.median(per_run) if self.workload.hops and per_run else None


@dataclass
class Options:
    workloads: list[Workload]
    repeats: int
    warmup: int
    gateway_seconds: float
    gateway_clients: int
    workers: int
    concurrency: int
    keep: bool
    schedulers: int = 1
    durable: bool = False
    nodes: int = 1
    sets: dict[str, str] = field(default_factory=dict)
    recovery: bool = False
    job_options: dict[str, Any] = field(default_factory=dict)
    """Fields added to every job (the cost of a feature: a concurrency key, a rate limit)."""


@dataclass
class Report:
    options: Options
    summaries: list[WorkloadSummary] = field(default_factory=list)
    loads: list[LoadResult] = field(default_factory=list)
    rss_kib: dict[str, int | None] = field(default_factory=dict)
    recovery: dict[str, float] = field(default_factory=dict)
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Stream → (messages, bytes) it holds at the end."""
    jobs_run: int = 0


async def bench_workload(
    stack: BenchStack, client: httpx.AsyncClient, workload: Workload, opts: Options
) -> WorkloadSummary:
    nc = await nats.connect([node.url for node in stack.nodes])
    ends = FinalEvents()
    await ends.subscribe(nc)
    try:
        return await _bench_runs(stack, client, workload, opts, ends)
    finally:
        await nc.close()


async def _bench_runs(
    stack: BenchStack, client: httpx.AsyncClient, workload: Workload, opts: Options, ends: FinalEvents
) -> WorkloadSummary:
    runs: list[RunResult] = []
    rss: list[int | None] = []
    floors: list[FloorRun] = []
    total = opts.warmup + opts.repeats
    # Each run is followed by a floor run of the same size: both see the machine as it is at that moment.
    cpu: list[dict[str, float]] = []
    for i in range(total):
        kind = "warm-up" if i < opts.warmup else f"run {i - opts.warmup + 1}/{opts.repeats}"
        before = stack.cpu_ms()
        result = await run_once(client, stack.url, workload, f"bench-{workload.key}-{i}", ends)
        after = stack.cpu_ms()
        stack.assert_alive()
        say(
            f"{workload.title} {kind}: {result.wall_s:.3f} s, {result.jobs_per_s:,.0f} jobs/s "
            f"(the poll saw it end at {result.polled_s:.3f} s)"
        )
        floor = await measure_floor(stack.nats.url, workload.jobs, f"{workload.key}_{i}", replicas=stack.replicas)
        say(f"{workload.title} floor {kind}: {floor.messages} msgs in {floor.elapsed_s:.3f} s")
        if i >= opts.warmup:
            runs.append(result)
            rss.append(stack.rss("scheduler"))
            floors.append(floor)
            spent: dict[str, float] = {}
            for name, ms in after.items():
                spent[kind_of(name)] = spent.get(kind_of(name), 0.0) + ms - before.get(name, 0.0)
            cpu.append(spent)
    return WorkloadSummary(workload, runs, floors, rss, cpu)


async def measure_recovery(stack: BenchStack, client: httpx.AsyncClient) -> dict[str, float]:
    """kill -9 the worker running a long job: how long until another worker runs it (its lease,
    JETDAG_JOB_ACK_WAIT_S) and until the registry shows the dead one unhealthy (3 heartbeat intervals)."""
    if stack.workers < 2:
        raise BenchError("--recovery needs at least 2 workers (one to kill, one to take over)")
    dag = [{"id": "long", "name": "long", "type": "sleep", "dependsOn": [], "config": {"seconds": 600}}]
    execution_id = await submit(client, stack.url, "bench-recovery", dag)
    deadline = time.monotonic() + 60

    async def the_job() -> dict[str, Any]:
        return (await job_list(client, stack.url, execution_id, 1))[0]

    job = await the_job()
    while job["status"] != "running" or not job.get("workerId"):
        if time.monotonic() > deadline:
            raise BenchError(f"the recovery job never started: {job}")
        await asyncio.sleep(0.05)
        job = await the_job()
    victim = job["workerId"]
    name = f"worker-{victim.rsplit('-', 1)[1]}"
    proc = next(p for p in stack.procs if p.name == name)
    proc.popen.kill()
    proc.popen.wait()
    killed = time.monotonic()
    say(f"recovery: killed {name} ({victim}) running job 'long'")
    out: dict[str, float] = {}
    while "redelivered" not in out or "unhealthy" not in out:
        if time.monotonic() - killed > 180:
            raise BenchError(f"recovery not seen within 180 s: {out}")
        if "redelivered" not in out:
            job = await the_job()
            if len(job.get("deliveries") or []) >= 2 and job.get("workerId") != victim:
                out["redelivered"] = time.monotonic() - killed
        if "unhealthy" not in out:
            workers = (await client.get(f"{stack.url}/workers")).json()["workers"]
            if any(w["workerId"] == victim and w["status"] == "unhealthy" for w in workers):
                out["unhealthy"] = time.monotonic() - killed
        await asyncio.sleep(0.05)
    await client.post(f"{stack.url}/execute/{execution_id}/cancel")
    stack.respawn(name)
    await asyncio.to_thread(stack.wait_ready)
    say(f"recovery: redelivered after {out['redelivered']:.2f} s, shown unhealthy after {out['unhealthy']:.2f} s")
    return out


async def stored(stack: BenchStack) -> dict[str, tuple[int, int]]:
    """What every stream of the bench's namespace holds now: (messages, bytes)."""
    nc = await nats.connect([node.url for node in stack.nodes])
    try:
        js = nc.jetstream()
        out = {}
        for info in await js.streams_info():
            name = info.config.name or ""
            if NAMESPACE in name.lower():
                out[name] = (info.state.messages, info.state.bytes)
        return out
    finally:
        await nc.close()


async def run_bench(stack: BenchStack, opts: Options) -> Report:
    report = Report(opts)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for workload in opts.workloads:
            report.summaries.append(await bench_workload(stack, client, workload, opts))
        report.jobs_run = sum(s.workload.jobs * (opts.warmup + opts.repeats) for s in report.summaries)
        report.stored = await stored(stack)
        if opts.recovery:
            report.recovery = await measure_recovery(stack, client)
    execution_id = report.summaries[-1].runs[-1].execution_id
    for path, label in ((f"/execute/{execution_id}", "GET /execute/{id}"), ("/queue/stats", "GET /queue/stats")):
        load = await gateway_load(stack.url, path, label, clients=opts.gateway_clients, seconds=opts.gateway_seconds)
        stack.assert_alive()
        say(f"{label}: {load.req_per_s:,.0f} req/s, {load.errors} errors")
        report.loads.append(load)
    report.rss_kib = stack.peak_rss()
    return report


# --- output --------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(report: Report) -> str:
    opts = report.options
    runs = f"median of {opts.repeats}" + (f" after {opts.warmup} warm-up" if opts.warmup else "")
    lines = [
        "## jetdag bench",
        "",
        f"{opts.workers} workers x {opts.concurrency} concurrency, {opts.schedulers} scheduler replica(s), `noop` "
        f"jobs submitted over REST, {runs}; {os.cpu_count()} CPUs; JetStream fsync "
        f"{'always' if opts.durable else 'default (2 min)'}; {opts.nodes} nats-server node(s), R"
        f"{opts.sets.get('JETDAG_REPLICAS', opts.nodes)}"
        + (f"; settings {' '.join(f'{k}={v}' for k, v in sorted(opts.sets.items()))}" if opts.sets else "")
        + ". Floor: raw JetStream from Python, same message count, same nats-server, measured right after each run."
        + (f" Every job also has `{json.dumps(opts.job_options)}`." if opts.job_options else ""),
        "",
        "| workload | jobs | wall s | jobs/s | floor msgs/s | ratio | hop e2e ms | hop p50 ms | hop p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report.summaries:
        e2e = "-" if s.e2e_hop_ms is None else f"{s.e2e_hop_ms:.2f}"
        lines.append(
            f"| {s.workload.title} | {s.workload.jobs:,} | {s.wall_s:.2f} | {s.jobs_per_s:,.0f} "
            f"| {s.floor_msgs_per_s:,.0f} | {s.ratio:.3f} | {e2e} | {_ms(s.hop_ms(50))} | {_ms(s.hop_ms(99))} |"
        )
    lines += [
        "",
        "| gateway endpoint | clients | requests | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for load in report.loads:
        p50 = percentile(load.latencies_ms, 50) if load.latencies_ms else None
        p99 = percentile(load.latencies_ms, 99) if load.latencies_ms else None
        lines.append(
            f"| {load.endpoint} | {load.clients} | {load.requests:,} | {load.req_per_s:,.0f} "
            f"| {_ms(p50)} | {_ms(p99)} | {load.errors} |"
        )
    lines += ["", "| workload | scheduler RSS MiB after each measured run |", "| --- | --- |"]
    for s in report.summaries:
        after = " → ".join("?" if kib is None else f"{kib / 1024:.1f}" for kib in s.scheduler_rss_kib)
        lines.append(f"| {s.workload.title} | {after} |")
    lines += ["", "| process | peak RSS MiB |", "| --- | ---: |"]
    for name, kib in report.rss_kib.items():
        lines.append(f"| {name} | {'?' if kib is None else f'{kib / 1024:.0f}'} |")
    kinds = ["scheduler", "worker", "nats-server", "gateway", "registry"]
    lines += [
        "",
        "| workload | CPU ms per job: " + " | ".join(kinds) + " |",
        "| --- | " + " | ".join("---:" for _ in kinds) + " |",
    ]
    for s in report.summaries:
        cells = ["-" if (v := s.cpu_ms_per_job(k)) is None else f"{v:.3f}" for k in kinds]
        lines.append(f"| {s.workload.title} | " + " | ".join(cells) + " |")
    if report.stored:
        lines += ["", f"| stream | messages | bytes | bytes per job run ({report.jobs_run:,} jobs) |"]
        lines.append("| --- | ---: | ---: | ---: |")
        for name, (messages, size) in sorted(report.stored.items()):
            per_job = size / report.jobs_run if report.jobs_run else 0.0
            lines.append(f"| {name} | {messages:,} | {size:,} | {per_job:,.0f} |")
    if report.recovery:
        lines += ["", "| recovery (worker kill -9) | seconds |", "| --- | ---: |"]
        lines.append(f"| the job runs on another worker | {report.recovery['redelivered']:.2f} |")
        lines.append(f"| the dead worker shown unhealthy | {report.recovery['unhealthy']:.2f} |")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m jetdag.bench", description=__doc__.split("\n")[0] if __doc__ else ""
    )
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per workload (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded runs before them (default: %(default)s)")
    parser.add_argument("--workloads", default="", help="comma-separated subset, e.g. W1,W3 (default: all)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: small W1 and W2, 1 run, no warm-up")
    parser.add_argument("--gateway-seconds", type=float, default=5.0, help="load per endpoint (default: %(default)s)")
    parser.add_argument("--gateway-clients", type=int, default=50, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="jobs per worker at once (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (store and service logs)")
    parser.add_argument("--schedulers", type=int, default=1, help="scheduler replicas (default: %(default)s)")
    parser.add_argument(
        "--durable", action="store_true", help="production durability: JetStream fsyncs every write (sync: always)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="a setting for every service (repeatable), e.g. --set JETDAG_JOB_ACK_WAIT_S=2",
    )
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="nats-server nodes (3: a cluster, R3)")
    parser.add_argument("--recovery", action="store_true", help="also measure recovery from a worker kill -9")
    parser.add_argument(
        "--job-options",
        type=json.loads,
        default={},
        help='JSON fields added to every job, e.g. \'{"concurrencyKey": "bench", "maxConcurrent": 64}\'',
    )
    args = parser.parse_args(argv)
    known = {f.metadata["env"] for cls in all_settings_classes() for f in dataclasses.fields(cls)}
    sets: dict[str, str] = {}
    for item in args.set:
        var, eq, value = item.partition("=")
        if not eq or var not in known:
            parser.error(f"--set {item!r}: expected VAR=VALUE with VAR one of jetdag's settings (jetdag settings)")
        sets[var] = value
    if not isinstance(args.job_options, dict):
        parser.error("--job-options must be a JSON object")
    available = [
        dataclasses.replace(w, dag=[{**job, **args.job_options} for job in w.dag]) for w in workloads(args.quick)
    ]
    wanted = [w.strip().upper() for w in args.workloads.split(",") if w.strip()] or [
        w.key for w in available if not w.optional
    ]
    unknown = set(wanted) - {w.key for w in available}
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; available: {[w.key for w in available]}")
    if min(args.repeats, args.gateway_clients, args.workers, args.concurrency, args.schedulers) < 1 or args.warmup < 0:
        parser.error("--repeats, --gateway-clients, --workers, --concurrency, --schedulers must be ≥ 1, --warmup ≥ 0")
    quick = args.quick
    return Options(
        workloads=[w for w in available if w.key in wanted],
        repeats=1 if quick else args.repeats,
        warmup=0 if quick else args.warmup,
        gateway_seconds=1.0 if quick else args.gateway_seconds,
        gateway_clients=args.gateway_clients,
        workers=args.workers,
        concurrency=args.concurrency,
        keep=args.keep,
        schedulers=args.schedulers,
        durable=args.durable,
        nodes=args.nodes,
        sets=sets,
        recovery=args.recovery,
        job_options=args.job_options,
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the stack.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="jetdag-bench-"))
    max_jobs = max(len(w.dag) for w in opts.workloads)
    stack = BenchStack(
        root,
        workers=opts.workers,
        concurrency=opts.concurrency,
        max_jobs=max_jobs,
        schedulers=opts.schedulers,
        durable=opts.durable,
        nodes=opts.nodes,
        sets=opts.sets,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        report = asyncio.run(run_bench(stack, opts))
    except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:  # BenchError is a RuntimeError
        say(f"failed: {exc!r}" if not isinstance(exc, BenchError) else f"failed: {exc}")
        print(stack.tails(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("stopping the stack")
        stack.stop()
        if opts.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

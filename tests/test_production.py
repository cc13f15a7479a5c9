"""docs/production.md's configuration, run: the three node configs of deploy/cluster/ (routes, JetStream with
`sync_interval: always`, TLS for clients and routes, the generated authorization) started as they are, with only
what a machine would differ in swapped for this one's (free ports, temp paths, a test CA); the services started
with what deploy/systemd/'s units and deploy/jetdag.env give them (two gateways, two scheduler replicas, a worker
fleet of a handler module); an execution through it; the commands of production.md and of troubleshooting.md's
"a node lost" entry, run with the nats CLI against that cluster.

The units themselves are checked against the code: every command they start exists, every variable they set
is one of jetdag's settings."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetdag.cli import cli
from jetdag.natsserver import ROUTE_PING_INTERVAL, ROUTE_PING_MAX, find_nats_server, free_port
from shared.settings import all_settings_classes
from tests.api import job
from tests.docs import Shell, assert_shows, blocks, console_commands
from tests.helpers import ROOT, ServiceProcess, wait_for, wait_for_sync
from tests.pki import Ca
from tests.test_troubleshooting import DOC_MONITOR, shell_env

pytestmark = [pytest.mark.slow, pytest.mark.cli]

DOC = ROOT / "docs" / "production.md"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
NODES = ("n1", "n2", "n3")
SETTINGS = {f.metadata["env"] for cls in all_settings_classes() for f in fields(cls)}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    # Environment= may repeat: read each line on its own.
    text = (UNITS / name).read_text()
    parser.read_string(text)
    return parser


def unit_environment(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


JETDAG_UNITS = [
    "jetdag-gateway.service",
    "jetdag-registry.service",
    "jetdag-scheduler.service",
    "jetdag-worker@.service",
]


def test_units_start_commands_that_exist_with_settings_jetdag_has() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted([*JETDAG_UNITS, "nats-server.service"])
    for name in JETDAG_UNITS:
        service = unit(name)["Service"]
        assert service["EnvironmentFile"] == "/etc/jetdag/jetdag.env", name
        argv = shlex.split(service["ExecStart"])
        assert argv[0] == "/opt/jetdag/venv/bin/jetdag" and argv[1] in cli.commands, name
        unknown = set(unit_environment(name)) - SETTINGS
        assert not unknown, f"{name} sets variables jetdag does not read: {unknown}"
        role = name.removeprefix("jetdag-").split("@")[0].split(".")[0]
        assert unit_environment(name)["NATS_NKEY"] == f"/etc/jetdag/credentials/{role}.nk", name
        # systemd must wait longer than the service's own grace before it kills it.
        grace = float(unit_environment(name).get("JETDAG_WORKER_GRACE_S", "0"))
        assert float(service["TimeoutStopSec"]) > grace, name
    assert not set(env_file(DEPLOY / "jetdag.env")) - SETTINGS
    nats = unit("nats-server.service")["Service"]
    assert nats["ExecStart"].endswith("-c /etc/nats/nats-server.conf") and nats["KillSignal"] == "SIGUSR2"


def test_the_node_configs_drop_a_silent_peer_as_the_tested_cluster_does() -> None:
    """deploy/cluster/*.conf close their routes to a frozen node with the settings the cluster tests run with."""
    for name in NODES:
        text = (DEPLOY / "cluster" / f"{name}.conf").read_text()
        block = text[text.index("\ncluster {") :]
        block = block[: block.index("\n}\n")]
        assert f'ping_interval: "{ROUTE_PING_INTERVAL}"' in block, name
        assert f"ping_max: {ROUTE_PING_MAX}" in block, name


def test_every_command_of_production_md_is_run() -> None:
    marked = {c for b in blocks(DOC).values() for c in b.commands}
    assert set(console_commands(DOC)) <= {c.split("\\")[0] for c in marked} | marked
    assert set(blocks(DOC)) == {"nats-config", "ownership", "backup"}


@dataclass
class Cluster:
    root: Path
    nodes: dict[str, subprocess.Popen[bytes]]
    client_ports: dict[str, int]
    monitor_ports: dict[str, int]
    ca: Path
    credentials: Path

    @property
    def url(self) -> str:
        return ",".join(f"tls://127.0.0.1:{port}" for port in self.client_ports.values())

    def monitor(self, name: str, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_ports[name]}{path}", timeout=1) as r:
                body: dict[str, Any] = json.loads(r.read())
                return body
        except (OSError, ValueError):
            return None


def node_config(name: str, cluster_ports: dict[str, int], *, client: int, monitor: int, tmp: Path, tls: Path) -> str:
    """deploy/cluster/<name>.conf with this machine's ports and paths: nothing else changes."""
    text = (DEPLOY / "cluster" / f"{name}.conf").read_text()
    swap = {
        "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{client}",
        "http: 127.0.0.1:8222": f"http: 127.0.0.1:{monitor}",
        "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{cluster_ports[name]}",
        "/var/lib/nats/jetstream": str(tmp / name / "jetstream"),
        "/etc/nats/tls/": f"{tls}/",
        **{f"nats-route://{n}.jetdag.internal:6222": f"nats-route://127.0.0.1:{p}" for n, p in cluster_ports.items()},
    }
    for old, new in swap.items():
        assert old in text, f"{name}.conf no longer has {old!r}: update the test's swap"
        text = text.replace(old, new)
    return text


@pytest.fixture
def cluster(tmp_path: Path, nats_cli: str) -> Iterator[Cluster]:
    root = tmp_path / "nats"
    root.mkdir()
    ca = Ca(tmp_path / "tls")
    for name in NODES:
        ca.issue(name, server=True, client=True, hosts=(f"{name}.jetdag.internal",))
    # The documented command makes the authorization the configs include (and the role seeds).
    [make_auth] = blocks(DOC)["nats-config"].commands
    shell = Shell(
        shell_env(tmp_path / "home", nats_cli),
        tmp_path,
        {
            "/etc/jetdag/credentials": str(tmp_path / "credentials"),
            "/etc/nats/jetdag-auth.conf": str(root / "jetdag-auth.conf"),
        },
    )
    rc, out = shell.run(make_auth)
    assert rc == 0 and (root / "jetdag-auth.conf").exists(), out
    cluster_ports = {name: free_port() for name in NODES}
    client_ports = {name: free_port() for name in NODES}
    monitor_ports = {name: free_port() for name in NODES}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in NODES:
            conf = root / f"{name}.conf"
            conf.write_text(
                node_config(
                    name,
                    cluster_ports,
                    client=client_ports[name],
                    monitor=monitor_ports[name],
                    tmp=root,
                    tls=ca.directory,
                )
            )
            with open(root / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    [find_nats_server(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
                )
        c = Cluster(root, procs, client_ports, monitor_ports, ca.path, tmp_path / "credentials")
        wait_for_sync(
            lambda: all(((c.monitor(n, "/jsz") or {}).get("meta_cluster") or {}).get("leader") for n in NODES),
            timeout=40,
            message="a JetStream meta leader seen by every node",
        )
        yield c
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


MY_JOBS = """
from jetdag.worker import JobContext, handler


@handler("greet")
async def greet(ctx: JobContext) -> dict:
    return {"hello": ctx.config["who"], "from": sorted(ctx.dependencies)}
"""


@dataclass
class Services:
    procs: list[ServiceProcess]
    gateways: list[str]


def unit_argv(name: str, instance: str = "") -> list[str]:
    """The unit's ExecStart as this machine runs it: the venv's `jetdag` is `python -m jetdag`."""
    argv = shlex.split(unit(name)["Service"]["ExecStart"].replace("%i", instance).replace("%H", "host1"))
    assert argv[0] == "/opt/jetdag/venv/bin/jetdag"
    return [sys.executable, "-m", "jetdag", *argv[1:]]


@pytest.fixture
async def services(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Services]:
    common = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    common.update(env_file(DEPLOY / "jetdag.env"))
    assert common["NATS_URL"].count("tls://") == 3
    common.update(NATS_URL=cluster.url, NATS_CA=str(cluster.ca), PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    procs: list[ServiceProcess] = []
    gateways: list[str] = []
    app = tmp_path / "app"
    app.mkdir()
    (app / "my_jobs.py").write_text(MY_JOBS)

    def start(name: str, unit_name: str, instance: str = "", cwd: Path = ROOT, **extra: str) -> ServiceProcess:
        env = {**common, **unit_environment(unit_name), **extra}
        env["NATS_NKEY"] = env["NATS_NKEY"].replace("/etc/jetdag/credentials", str(cluster.credentials))
        env = {k: v.replace("%H", "host1") for k, v in env.items()}
        env.pop("JETDAG_API_TOKENS_FILE", None)  # the tokens file is the operator's; loopback here
        proc = ServiceProcess(name, unit_argv(unit_name, instance), env, tmp_path / "logs", cwd=cwd)
        procs.append(proc.start())
        return proc

    try:
        ready = [start("registry", "jetdag-registry.service")]
        ready += [start(f"scheduler-{i}", "jetdag-scheduler.service", JETDAG_SCHEDULER_ID=f"sched-{i}") for i in (1, 2)]
        for i in (1, 2):
            port = free_port()
            ready.append(
                start(f"gateway-{i}", "jetdag-gateway.service", JETDAG_HOST="127.0.0.1", JETDAG_PORT=str(port))
            )
            gateways.append(f"http://127.0.0.1:{port}/api/distributed")
        ready.append(start("worker-cpu", "jetdag-worker@.service", "cpu", cwd=app, JETDAG_WORKER_GRACE_S="2"))
        for proc in ready:
            await proc.wait_ready(timeout=60)
        yield Services(procs, gateways)
    finally:
        for proc in sorted(procs, key=lambda p: 0 if p.name.startswith("worker") else 1):
            proc.terminate()


@pytest.mark.timeout(300)
async def test_the_documented_cluster_runs_an_execution_and_survives_a_node(
    cluster: Cluster, services: Services, tmp_path: Path, nats_cli: str
) -> None:
    dag = [job("a", config={}), job("b", "greet", ["a"], config={"who": "prod"}, capability="cpu")]
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{services.gateways[0]}/execute", json={"workflowId": "prod", "jobs": dag})
        assert r.status_code == 201, r.text
        execution_id = r.json()["executionId"]

        async def completed(gateway: str, eid: str) -> dict[str, Any] | None:
            body = (await http.get(f"{gateway}/execute/{eid}")).json()
            return body if body["execution"]["status"] == "completed" else None

        # Any gateway answers for any execution: they keep nothing of their own.
        done = await wait_for(lambda: completed(services.gateways[1], execution_id), timeout=60, message="done")
        jobs = {
            j["id"]: j for j in (await http.get(f"{services.gateways[1]}/execute/{execution_id}/jobs")).json()["jobs"]
        }
        assert jobs["b"]["result"] == {"hello": "prod", "from": ["a"]} and jobs["b"]["workerId"] == "host1-cpu"
        assert done["execution"]["jobCount"] == 2

        # Every stream and bucket is R3 on the three nodes.
        env = shell_env(
            tmp_path / "home",
            nats_cli,
            NATS_URL=cluster.url,
            NATS_CA=str(cluster.ca),
            NATS_NKEY=str(cluster.credentials / "operator.nk"),
        )
        shell = Shell(
            env,
            tmp_path,
            {
                "/var/backups/jetdag/nightly": str(tmp_path / "backup"),
                DOC_MONITOR: f"127.0.0.1:{cluster.monitor_ports['n1']}",
            },
        )
        rc, out = shell.run("nats stream info JETDAG_JOBS --json")
        info = json.loads(out)
        assert rc == 0 and info["config"]["num_replicas"] == 3 and len(info["cluster"]["replicas"]) == 2, out

        # The two scheduler replicas share the shards, half each.
        owners = await wait_for(lambda: _shard_owners(shell), timeout=40, message="shards spread over both replicas")
        assert sorted(owners.values()).count("sched-1") == len(owners) // 2, owners
        await run_block_of(DOC, shell, "ownership")

        await run_block_of(DOC, shell, "backup")
        assert {"JETDAG_EVENTS", "KV_jetdag_executions"} <= {p.name for p in (tmp_path / "backup").iterdir()}

        # A node lost: the streams keep a quorum, the troubleshooting commands show it, executions still complete.
        cluster.nodes["n3"].kill()
        cluster.nodes["n3"].wait()
        await wait_for(lambda: _offline_replica(shell), timeout=30, message="the job stream to see n3 outdated")
        # Every stream and consumer with a replica on n1 has a leader again (elections take a moment).
        await wait_for(lambda: cluster.monitor("n1", "/healthz") == {"status": "ok"}, timeout=30, message="n1 ok")
        await run_block_of(TROUBLESHOOTING, shell, "node-lost")
        r = await http.post(f"{services.gateways[1]}/execute", json={"workflowId": "prod", "jobs": dag})
        assert r.status_code == 201, r.text
        await wait_for(lambda: completed(services.gateways[0], r.json()["executionId"]), timeout=60, message="done")


def _shard_owners(shell: Shell) -> dict[str, str] | None:
    owners: dict[str, str] = {}
    for n in range(8):
        rc, out = shell.run(f"nats kv get jetdag_schedulers shard.{n} --raw")
        if rc != 0:
            return None
        owners[f"shard.{n}"] = json.loads(out)["owner"]
    return (
        owners
        if set(owners.values()) == {"sched-1", "sched-2"} and sorted(owners.values()).count("sched-1") == 4
        else None
    )


def _offline_replica(shell: Shell) -> bool:
    rc, out = shell.run("nats stream info JETDAG_JOBS --json")
    if rc != 0:
        return False
    replicas = json.loads(out).get("cluster", {}).get("replicas") or []
    return any(r.get("name") == "n3" and not r.get("current") for r in replicas)


async def run_block_of(doc: Path, shell: Shell, name: str) -> None:
    block = blocks(doc)[name]
    for command in block.commands:
        rc, out = await asyncio.to_thread(shell.run, command)
        assert rc == 0, f"{doc.name} {name}: `{command}` exited {rc}:\n{out}"
        assert_shows(block, command, out)

"""Fixtures: a real nats-server per test session (free ports, temp store, JetStream on), a fresh namespace
per test so tests cannot see each other, and factories for real service processes and an HTTP client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client

from jetdag.natsauth import RoleKey, authorization_block, ensure_credentials
from jetdag.natsserver import NatsServer, NatsServerConfig, free_port
from shared.permissions import Role
from shared.subjects import Names
from tests.chromium import Browser, require_browser
from tests.helpers import ServiceProcess, service_argv, wait_for


def start_nats(tmp: Path, name: str = "test", **config: Any) -> NatsServer:
    server = NatsServer(
        NatsServerConfig(
            store_dir=tmp / name / "store",
            port=free_port(),
            monitor_port=free_port(),
            server_name=name,
            **config,
        ),
        config_path=tmp / name / "nats.conf",
    )
    server.start()
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


class SecureNats:
    """A nats-server with jetdag's authorization for one namespace, and the credential of every role."""

    def __init__(self, server: NatsServer, keys: dict[Role, RoleKey], names: Names) -> None:
        self.server = server
        self.keys = keys
        self.names = names

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def log_path(self) -> Path:
        return self.server.config_path.with_suffix(".log")

    def seed(self, role: Role) -> str:
        return str(self.keys[role].seed_file)

    async def connect(self, role: Role, **options: Any) -> Client:
        """A connection with `role`'s credential and inbox, as that role's services make it."""
        return await nats.connect(
            self.url, nkeys_seed=self.seed(role), inbox_prefix=self.names.inbox_prefix(role), **options
        )

    def violations(self) -> list[str]:
        """The server's log lines about refused publishes and subscriptions."""
        return [line for line in self.log_path.read_text().splitlines() if "Violation" in line]


def start_secure_nats(tmp: Path, names: Names, **config: Any) -> SecureNats:
    keys = ensure_credentials(tmp / "credentials")
    block = authorization_block(names, {role: key.public_key for role, key in keys.items()})
    server = NatsServer(
        NatsServerConfig(
            store_dir=tmp / "secure" / "store",
            port=free_port(),
            monitor_port=free_port(),
            server_name="secure",
            authorization=block,
            **config,
        ),
        config_path=tmp / "secure" / "nats.conf",
    )
    server.config_path.parent.mkdir(parents=True, exist_ok=True)
    with open(server.config_path.with_suffix(".log"), "wb") as log:
        server.start(stdout=log)
    server.wait_ready()
    return SecureNats(server, keys, names)


@pytest.fixture
def secure_nats(tmp_path: Path, names: Names) -> Iterator[SecureNats]:
    """A server of its own per test: its permissions are written for this test's namespace."""
    secure = start_secure_nats(tmp_path, names)
    yield secure
    secure.server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def names(namespace: str) -> Names:
    return Names(namespace)


def base_env(nats_url: str, namespace: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JETDAG_", "NATS_"))}
    env.update(
        NATS_URL=nats_url,
        JETDAG_NAMESPACE=namespace,
        JETDAG_LOG_FORMAT="json",
        JETDAG_LOG_LEVEL="debug" if os.environ.get("JETDAG_TEST_DEBUG") else "info",
        PYTHONUNBUFFERED="1",
        JETDAG_REQUEST_TIMEOUT_S="5",
    )
    env.update(extra)
    return env


class Stack:
    """Service processes of one test, all in one namespace on one NATS server. Stopped at teardown."""

    def __init__(
        self, nats_url: str, namespace: str, log_dir: Path, credentials: dict[Role, RoleKey] | None = None
    ) -> None:
        self.nats_url = nats_url
        self.credentials = credentials
        self.namespace = namespace
        self.names = Names(namespace)
        self.log_dir = log_dir
        self.procs: list[ServiceProcess] = []
        self.env_overrides: dict[str, str] = {}
        self.gateway_port: int | None = None
        self._counter = 0

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(self.nats_url, self.namespace, **{**self.env_overrides, **extra})

    def process(self, name: str, module: str, *args: str, **env: str) -> ServiceProcess:
        self._counter += 1
        if self.credentials is not None:
            # Each service connects with its own role's credential, as `jetdag up` starts them.
            env = {"NATS_NKEY": str(self.credentials[Role(module.rsplit(".", 1)[1])].seed_file), **env}
        proc = ServiceProcess(name, service_argv(module, *args), self.env(**env), self.log_dir)
        self.procs.append(proc)
        return proc

    async def registry(self, **env: str) -> ServiceProcess:
        return await self.process("registry", "services.registry", **env).start().wait_ready()

    async def scheduler(self, name: str = "scheduler", **env: str) -> ServiceProcess:
        return await self.process(name, "services.scheduler", **env).start().wait_ready()

    async def gateway(self, **env: str) -> ServiceProcess:
        if self.gateway_port is None:
            self.gateway_port = free_port()
        proc = self.process("gateway", "services.gateway", JETDAG_PORT=str(self.gateway_port), **env)
        return await proc.start().wait_ready()

    async def worker(self, worker_id: str, *args: str, **env: str) -> ServiceProcess:
        proc = self.process(worker_id, "services.worker", "--id", worker_id, *args, **env)
        return await proc.start().wait_ready()

    async def up(self, workers: int = 0, **env: str) -> Stack:
        """Registry, scheduler, gateway (and `workers` workers); `env` applies to every later process too."""
        self.env_overrides.update(env)
        await self.registry()
        await self.scheduler()
        gateway = await self.gateway()
        # The gateway answers (503) before its NATS connection is up; a stack is up when it can serve.
        await wait_for(lambda: gateway.has_logged("nats connected"), timeout=30, message="the gateway's NATS")
        for i in range(workers):
            await self.worker(f"w{i + 1}")
        return self

    @property
    def url(self) -> str:
        assert self.gateway_port is not None, "gateway not started"
        return f"http://127.0.0.1:{self.gateway_port}/api/distributed"

    def stop_all(self) -> None:
        errors = []
        # Workers first (they deregister through the registry), then the rest: the order `jetdag up` uses.
        for proc in sorted(self.procs, key=lambda p: 0 if p.argv[2] == "services.worker" else 1):
            try:
                proc.terminate()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            raise AssertionError("; ".join(errors))


SECURE_SUITE = os.environ.get("JETDAG_TEST_NATS_AUTH") == "1"
"""Run every `stack` test on an authorized server with per-role credentials, failing on any refusal the server
logs (DEVELOPERS.md: how to check the permission table after changing subjects)."""


@pytest.fixture
async def stack(nats_server: NatsServer, namespace: str, tmp_path: Path, request: Any) -> AsyncIterator[Stack]:
    secure: SecureNats | None = request.getfixturevalue("secure_nats") if SECURE_SUITE else None
    if secure is None:
        s = Stack(nats_server.url, namespace, tmp_path / "logs")
    else:
        s = Stack(secure.url, namespace, tmp_path / "logs", credentials=secure.keys)
    try:
        yield s
    finally:
        s.stop_all()
        if secure is not None:
            assert secure.violations() == [], "the permission table refused what a service needed"


@pytest.fixture
async def secure_stack(secure_nats: SecureNats, namespace: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack on `secure_nats`, every service with its role's credential."""
    s = Stack(secure_nats.url, namespace, tmp_path / "logs", credentials=secure_nats.keys)
    try:
        yield s
    finally:
        s.stop_all()


@pytest.fixture
async def nc(nats_server: NatsServer, request: Any) -> AsyncIterator[Client]:
    if SECURE_SUITE:
        client = await request.getfixturevalue("secure_nats").connect(Role.OPERATOR)
    else:
        client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture
def nats_cli() -> str:
    """The real `nats` CLI; skipped without it, unless JETDAG_REQUIRE_NATS_CLI=1 (CI)."""
    from tests.test_nats_cli import find_nats_cli

    path = find_nats_cli()
    if path is None:
        message = "the nats CLI is not installed: go install github.com/nats-io/natscli/nats@v0.5.0"
        if os.environ.get("JETDAG_REQUIRE_NATS_CLI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15.0) as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium with a fresh profile; the test fails if the page logged an error."""
    require_browser()
    b = await Browser.start()
    try:
        yield b
        assert await b.errors() == [], "the page logged errors"
    finally:
        await b.close()

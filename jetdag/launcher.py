"""`jetdag up`: the whole stack in the foreground, with prefixed logs.

Starts an embedded nats-server (unless NATS_URL is set), then the registry, the scheduler, the gateway and
the workers as child processes, each in its own session so Ctrl-C reaches only this launcher, which then
stops them in order: workers first (they hand back jobs and deregister), then the gateway, the scheduler and
the registry, and nats-server last. A service that dies after startup is restarted with backoff, like
`restart: unless-stopped` in compose.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jetdag.datalock import DataDirInUse, DataDirLock
from jetdag.natsauth import RoleKey, authorization_block, ensure_credentials
from jetdag.natsserver import NatsServer, NatsServerConfig, find_nats_server, port_in_use
from services.gateway.auth import AuthConfigError, AuthPolicy
from shared.permissions import Role
from shared.settings import GatewaySettings, NatsSettings, SettingsError, StackSettings, load
from shared.subjects import Names

__all__ = ["ChildSpec", "Launcher", "main", "stack_specs"]

COLORS = ["36", "35", "33", "32", "34", "31", "96", "95"]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: children get SIGTERM if the launcher itself is killed, so nothing is left behind."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    restart: bool = True
    env: dict[str, str] = field(default_factory=dict)
    role: Role | None = None
    """The NATS credential it connects with (on the embedded server)."""


@dataclass
class Child:
    spec: ChildSpec
    color: str
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_file: Path | None = None
    """Every line of the child's output is appended here too."""
    hidden: re.Pattern[bytes] | None = None
    """Output lines matching this go to `log_file` only, not to the console."""


NATS_CHATTER = re.compile(rb"^\[\d+\] \S+ \S+ \[(INF|DBG|TRC)\] ")
"""nats-server's informational lines (its 26-line banner at every start); its warnings and errors still show."""


def stack_specs(workers: int) -> list[ChildSpec]:
    """The services `jetdag up` runs, in start order (compose.yaml mirrors this list)."""
    py = sys.executable
    specs = [
        ChildSpec("registry", [py, "-m", "services.registry"], role=Role.REGISTRY),
        ChildSpec("scheduler", [py, "-m", "services.scheduler"], role=Role.SCHEDULER),
        ChildSpec("gateway", [py, "-m", "services.gateway"], role=Role.GATEWAY),
    ]
    for i in range(1, workers + 1):
        argv = [py, "-m", "services.worker", "--id", f"local-worker-{i}"]
        specs.append(ChildSpec(f"worker-{i}", argv, role=Role.WORKER))
    return specs


class Launcher:
    def __init__(
        self,
        stack: StackSettings,
        nats: NatsSettings,
        gateway: GatewaySettings,
        *,
        embedded: bool,
        out: asyncio.StreamWriter | None = None,
    ) -> None:
        self.stack = stack
        self.nats = nats
        self.gateway = gateway
        self.embedded = embedded
        self.children: list[Child] = []
        self.server: Child | None = None
        self.credentials: dict[Role, RoleKey] | None = None
        self.stopping = asyncio.Event()
        self.ready = False
        self.failed: str | None = None
        self.tty = sys.stdout.isatty()
        self.width = 10

    # --- output --------------------------------------------------------------------------------------

    def say(self, name: str, line: str, color: str = "1") -> None:
        prefix = f"{name:<{self.width}}|"
        if self.tty:
            prefix = f"\x1b[{color}m{prefix}\x1b[0m"
        sys.stdout.write(f"{prefix} {line}\n")
        sys.stdout.flush()

    async def _pump(self, child: Child) -> None:
        assert child.proc is not None and child.proc.stdout is not None
        with contextlib.ExitStack() as files:
            log = None
            if child.log_file is not None:
                # Blocking appends of one line each: cheap, and nats-server writes little after its start.
                log = files.enter_context(open(child.log_file, "ab", buffering=0))  # noqa: ASYNC230
            while True:
                raw = await child.proc.stdout.readline()
                if not raw:
                    return
                if log is not None:
                    log.write(raw)
                if child.hidden is None or not child.hidden.match(raw):
                    self.say(child.spec.name, raw.decode(errors="replace").rstrip("\n"), child.color)

    # --- processes -----------------------------------------------------------------------------------

    def _env(self, spec: ChildSpec) -> dict[str, str]:
        env = dict(os.environ)
        env["NATS_URL"] = self.nats.url
        if self.credentials is not None and spec.role is not None:
            # The embedded server knows only jetdag's roles: each child gets its own, whatever the caller set.
            for var in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"):
                env.pop(var, None)
            env["NATS_NKEY"] = str(self.credentials[spec.role].seed_file)
        env.setdefault("JETDAG_LOG_FORMAT", "console" if self.tty else "json")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(spec.env)
        return env

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env(child.spec),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()
        child.pump = asyncio.create_task(self._pump(child))

    async def _watch(self, child: Child) -> None:
        """Restart a service that dies after startup; a death during startup stops the stack."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if child.pump is not None:
                with contextlib.suppress(Exception):
                    await child.pump
            if self.stopping.is_set():
                return
            if not self.ready or not child.spec.restart:
                self.failed = f"{child.spec.name} exited with code {code}"
                self.say("jetdag", f"{self.failed}; stopping the stack", "1;31")
                self.stopping.set()
                return
            child.restarts += 1
            delay = min(0.5 * 2 ** min(child.restarts, 5), 10.0)
            self.say("jetdag", f"{child.spec.name} exited with code {code}; restarting in {delay:g} s", "1;33")
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            await self._spawn(child)

    async def _stop_child(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.stack.shutdown_grace_s)
        except TimeoutError:
            self.say("jetdag", f"{child.spec.name} did not stop within {self.stack.shutdown_grace_s:g} s; killing")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if child.pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.pump, 2)

    # --- lifecycle -----------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Every port we would listen on must be free: say which one is not, in one line."""
        checks = [(self.gateway.host, self.gateway.port, "JETDAG_PORT", "gateway")]
        if self.embedded:
            checks = [
                (self.stack.nats_host, self.stack.nats_port, "JETDAG_NATS_PORT", "nats-server"),
                (
                    self.stack.nats_host,
                    self.stack.nats_monitor_port,
                    "JETDAG_NATS_MONITOR_PORT",
                    "nats monitor",
                ),
                *checks,
            ]
        for host, port, var, what in checks:
            if port_in_use(host, port):
                raise SystemExit(
                    f"jetdag: port {host}:{port} ({what}) is already in use; stop what holds it or set {var}"
                )

    async def _start_nats(self) -> None:
        data = Path(os.path.abspath(self.stack.data_dir))  # noqa: ASYNC240 (no I/O: string work)
        # Authorization is always on: one credential per role, generated on the first start and reused.
        self.credentials = ensure_credentials(data / "credentials")
        names = Names(self.nats.namespace)
        authorization = authorization_block(names, {role: key.public_key for role, key in self.credentials.items()})
        server = NatsServer(
            NatsServerConfig(
                store_dir=data / "nats",
                host=self.stack.nats_host,
                port=self.stack.nats_port,
                monitor_port=self.stack.nats_monitor_port,
                server_name="jetdag",
                sync_interval=self.stack.nats_sync_interval or None,
                authorization=authorization,
            ),
            config_path=data / "nats-server.conf",
        )
        server.write_config()
        child = Child(
            ChildSpec("nats", [find_nats_server(), "-c", str(server.config_path)], restart=False),
            "90",
            log_file=data / "nats-server.log",
            hidden=NATS_CHATTER,
        )
        self.server = child
        await self._spawn(child)
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(server.healthy):
            if child.proc is not None and child.proc.returncode is not None:
                raise SystemExit(f"jetdag: nats-server exited with code {child.proc.returncode} at startup")
            if time.monotonic() > deadline:
                raise SystemExit("jetdag: nats-server did not become ready within 30 s")
            await asyncio.sleep(0.05)
        self.say("jetdag", f"nats-server ready on {server.url} (store {data / 'nats'}, log {child.log_file})", "1")
        operator = self.credentials[Role.OPERATOR].seed_file
        self.say("jetdag", f"NATS authorization on; the nats CLI connects with: nats --nkey {operator} ...", "1")

    async def _wait_gateway(self) -> bool:
        url = f"http://{self.gateway.host}:{self.gateway.port}/api/distributed/health"

        def probe() -> int | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)
            except (urllib.error.URLError, OSError):
                return None

        deadline = time.monotonic() + 60
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if await asyncio.to_thread(probe) == 200:
                return True
            await asyncio.sleep(0.1)
        return False

    async def run(self, specs: Sequence[ChildSpec]) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        self.width = max(10, *(len(s.name) + 1 for s in specs))
        watchers: list[asyncio.Task[None]] = []
        try:
            if self.embedded:
                await self._start_nats()
                assert self.server is not None
                watchers.append(asyncio.create_task(self._watch(self.server)))
            for i, spec in enumerate(specs):
                child = Child(spec, COLORS[i % len(COLORS)])
                self.children.append(child)
                await self._spawn(child)
                watchers.append(asyncio.create_task(self._watch(child)))
            if await self._wait_gateway():
                self.ready = True
                self.say(
                    "jetdag",
                    f"ready: REST http://{self.gateway.host}:{self.gateway.port}/api/distributed "
                    f"(OpenAPI at /schema), dashboard http://{self.gateway.host}:{self.gateway.port}/, "
                    f"NATS {self.nats.url}. Ctrl-C stops everything.",
                    "1;32",
                )
            elif not self.stopping.is_set():
                self.failed = "the gateway did not report healthy within 60 s"
                self.say("jetdag", self.failed, "1;31")
                self.stopping.set()
            await self.stopping.wait()
        finally:
            self.stopping.set()
            self.say("jetdag", "stopping", "1")
            order = sorted(self.children, key=lambda c: 0 if c.spec.name.startswith("worker") else 1)
            workers = [c for c in order if c.spec.name.startswith("worker")]
            await asyncio.gather(*(self._stop_child(c) for c in workers))
            for name in ("gateway", "scheduler", "registry"):
                for child in order:
                    if child.spec.name == name:
                        await self._stop_child(child)
            if self.server is not None:
                await self._stop_child(self.server)
            for task in watchers:
                task.cancel()
            self.say("jetdag", "stopped", "1")
        return 1 if self.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        stack = load(StackSettings)
        gateway = load(GatewaySettings)
        embedded = not os.environ.get("NATS_URL")
        nats = load(NatsSettings)
        # The gateway would refuse to start in a moment; say why before anything starts.
        AuthPolicy.from_settings(gateway)
    except (SettingsError, AuthConfigError) as exc:
        print(f"jetdag: {exc}", file=sys.stderr)
        return 2
    if embedded:
        nats = dataclasses.replace(nats, url=f"nats://{stack.nats_host}:{stack.nats_port}")
    launcher = Launcher(stack, nats, gateway, embedded=embedded)
    # Only the embedded nats-server uses the data dir; it is locked before anything else is checked or started.
    lock = DataDirLock(Path(os.path.abspath(stack.data_dir))) if embedded else None
    try:
        if lock is not None:
            lock.acquire()
        launcher.preflight()
        return asyncio.run(launcher.run(stack_specs(stack.workers)))
    except (SystemExit, DataDirInUse) as exc:
        print(exc, file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"jetdag: {exc}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()

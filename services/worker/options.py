"""Command-line options of a worker process (`jetdag worker` / `python -m services.worker`)."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from shared.ids import IdError, check_id, check_name
from shared.settings import RegistrySettings, WorkerSettings, load

__all__ = ["WorkerOptions", "parse_args"]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    worker_id: str
    hostname: str
    capabilities: tuple[str, ...]
    concurrency: int
    handler_modules: tuple[str, ...]
    heartbeat_interval_s: float
    grace_s: float


def default_worker_id(hostname: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in hostname)[:100] or "worker"
    return f"{safe}-{os.getpid()}"


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    settings = load(WorkerSettings)
    registry = load(RegistrySettings)
    parser = argparse.ArgumentParser(
        prog="jetdag worker",
        description="Run jobs from the jetdag job stream with the handlers of the given modules.",
    )
    parser.add_argument("handler_modules", nargs="*", help="modules whose @handler functions to load")
    parser.add_argument("--id", dest="worker_id", default=settings.worker_id, help="worker id")
    parser.add_argument(
        "--capabilities",
        default=settings.capabilities,
        help="comma-separated capabilities (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=settings.concurrency,
        help="jobs run at once (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=settings.shutdown_grace_s,
        help="seconds running jobs get to finish after SIGTERM before they are handed back (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    hostname = socket.gethostname()
    worker_id = args.worker_id or default_worker_id(hostname)
    try:
        check_id("--id", worker_id)
        caps = tuple(sorted({check_name("capability", c.strip()) for c in args.capabilities.split(",") if c.strip()}))
    except IdError as exc:
        parser.error(str(exc))
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return WorkerOptions(
        worker_id=worker_id,
        hostname=hostname,
        capabilities=caps,
        concurrency=args.concurrency,
        handler_modules=tuple(args.handler_modules),
        heartbeat_interval_s=registry.heartbeat_interval_s,
        grace_s=args.grace,
    )

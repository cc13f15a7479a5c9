"""Job handlers: user code registered per job `type`, plus the built-ins every worker has.

    from jetdag.worker import JobContext, handler

    @handler("train")
    async def train(ctx: JobContext) -> dict:
        data = ctx.dependencies["preprocess"]     # the result of a job this one depends on
        ...
        return {"accuracy": 0.93}                  # any JSON value (at most 256 KiB encoded)

A plain `def` handler runs in a thread of the worker's own pool (one thread per slot). Python cannot stop a
thread, so a sync handler that times out or whose execution is cancelled keeps its slot until it returns: poll
`ctx.cancelled.is_set()` in long loops. An async handler is cancelled at its next `await`.

Raising any exception fails the attempt with its type, message and traceback; the job is retried if it has
`retries` left — unless the exception is `NonRetryable`, which fails the job at once. `ctx.progress(0.4, "…")`
reports progress (shown in the job listing, the events and `jetdag watch`). Functions decorated with
`@on_startup` / `@on_shutdown` run once when the worker starts (before it takes any job: load a model there) and
once when it stops (after its last job).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from shared.ids import IdError, check_name

__all__ = [
    "HandlerModuleError",
    "HandlerRegistry",
    "JobContext",
    "JobFailed",
    "NonRetryable",
    "default_registry",
    "handler",
    "load_modules",
    "on_shutdown",
    "on_startup",
]


class JobFailed(Exception):
    """Raise to fail the attempt with exactly this message."""


class NonRetryable(JobFailed):
    """Raise to fail the job for good, whatever retries it has left (bad input will not get better)."""


@dataclass
class JobContext:
    execution_id: str
    job_id: str
    name: str
    type: str
    attempt: int
    config: dict[str, Any]
    dependencies: dict[str, Any]
    """Results of the jobs this one depends on, by job id."""
    worker_id: str
    log: structlog.typing.FilteringBoundLogger
    workflow_id: str = ""
    round: int = 1
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    on_progress: Callable[[float | None, str | None], None] | None = field(default=None, repr=False)

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report how far the job is (`fraction` 0-1) and what it does now; cheap to call often (the worker
        sends the latest with its next report)."""
        if fraction is not None and not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
        if self.on_progress is not None:
            self.on_progress(fraction, message)


Handler = Callable[[JobContext], Awaitable[Any] | Any]
Hook = Callable[[], Awaitable[None] | None]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.startup: list[Hook] = []
        self.shutdown: list[Hook] = []

    def register(self, job_type: str, fn: Handler) -> Handler:
        try:
            check_name("job type", job_type)
        except IdError as exc:
            raise ValueError(str(exc)) from None
        if job_type in self._handlers and self._handlers[job_type] is not fn:
            raise ValueError(f"a handler for job type {job_type!r} is already registered")
        self._handlers[job_type] = fn
        return fn

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def types(self) -> list[str]:
        return sorted(self._handlers)

    async def run_hooks(self, hooks: list[Hook]) -> None:
        for hook in hooks:
            result = hook()
            if inspect.isawaitable(result):
                await result


default_registry = HandlerRegistry()


def handler(job_type: str, registry: HandlerRegistry | None = None) -> Callable[[Handler], Handler]:
    """Decorator: register the function as the handler of jobs of `job_type`."""

    def register(fn: Handler) -> Handler:
        return (registry or default_registry).register(job_type, fn)

    return register


def on_startup(fn: Hook) -> Hook:
    """Decorator: run `fn` once when the worker starts, before it takes any job."""
    default_registry.startup.append(fn)
    return fn


def on_shutdown(fn: Hook) -> Hook:
    """Decorator: run `fn` once when the worker stops, after its last job."""
    default_registry.shutdown.append(fn)
    return fn


class HandlerModuleError(Exception):
    """A handler module could not be loaded; the message is one line for the user."""


def load_modules(modules: Sequence[str]) -> None:
    """Import handler modules so their @handler decorators run.

    Each is a module name, found on sys.path or in the current directory (where users keep `my_jobs.py`), or
    the path of a `.py` file. Loading twice is a no-op. Any failure is a HandlerModuleError of one line.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        # `python -m` puts the current directory first on sys.path; the `jetdag` console script does not.
        sys.path.insert(0, cwd)
    for spec in modules:
        if spec.endswith(".py") or os.sep in spec:
            _load_file(spec)
        else:
            _load_module(spec)


def _load_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise HandlerModuleError(
                f"no module named {name!r} in {os.getcwd()} or on the Python path "
                f"(a file works too: jetdag worker ./{name.replace('.', '/')}.py)"
            ) from None
        raise HandlerModuleError(f"importing {name} failed: {_describe(exc)}") from None
    except Exception as exc:
        raise HandlerModuleError(f"importing {name} failed: {_describe(exc)}") from None


def _load_file(path: str) -> None:
    file = Path(path).resolve()
    if not file.is_file():
        raise HandlerModuleError(f"no such file: {path}")
    name = file.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(file):
        return
    if loaded is not None:
        raise HandlerModuleError(f"{path}: a module named {name!r} is already loaded from elsewhere; rename the file")
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise HandlerModuleError(f"{path} is not a Python module")
    # Its directory goes on sys.path, as `python my_jobs.py` would do, so it can import its neighbours.
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise HandlerModuleError(f"importing {path} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """`Type: message (file.py line N)`, the innermost frame of user code: the one line a user needs."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({Path(exc.filename).name} line {exc.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
        if frames:
            where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return f"{type(exc).__name__}: {text}{where}"


# --- built-ins ------------------------------------------------------------------------------------------


@handler("noop")
async def noop(ctx: JobContext) -> Any:
    """Returns its config."""
    return ctx.config


@handler("sleep")
async def sleep(ctx: JobContext) -> Any:
    """Sleeps `config.seconds` (default 1), then returns `{"slept": seconds}`."""
    seconds = ctx.config.get("seconds", 1)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise JobFailed(f"config.seconds must be a non-negative number, got {seconds!r}")
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@handler("fail")
async def fail(ctx: JobContext) -> Any:
    """Fails with `config.message`: the first `config.times` attempts, or every attempt if absent."""
    message = str(ctx.config.get("message", "failed on purpose"))
    times = ctx.config.get("times")
    if times is None or ctx.attempt <= int(times):
        raise JobFailed(message)
    return {"succeededOnAttempt": ctx.attempt}

"""Job handlers: user code registered per job `type`, plus the built-ins every worker has.

    from jetdag.worker import JobContext, handler

    @handler("train")
    async def train(ctx: JobContext) -> dict:
        data = ctx.dependencies["preprocess"]     # the result of a job this one depends on
        ...
        return {"accuracy": 0.93}                  # any JSON value (at most 256 KiB encoded)

A plain `def` handler runs in a thread. Raising any exception fails the attempt with its message; the job is
retried if it has `retries` left. `ctx.cancelled` is set when the execution is cancelled or the attempt timed
out; an async handler is also cancelled at its next `await`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from shared.ids import IdError, check_name

__all__ = ["HandlerRegistry", "JobContext", "JobFailed", "default_registry", "handler", "load_modules"]


class JobFailed(Exception):
    """Raise to fail the attempt with exactly this message."""


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
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


Handler = Callable[[JobContext], Awaitable[Any] | Any]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

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

    async def call(self, fn: Handler, ctx: JobContext) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(ctx)
        result = await asyncio.to_thread(fn, ctx)
        if inspect.isawaitable(result):
            return await result
        return result


default_registry = HandlerRegistry()


def handler(job_type: str, registry: HandlerRegistry | None = None) -> Callable[[Handler], Handler]:
    """Decorator: register the function as the handler of jobs of `job_type`."""

    def register(fn: Handler) -> Handler:
        return (registry or default_registry).register(job_type, fn)

    return register


def load_modules(modules: list[str] | tuple[str, ...]) -> None:
    """Import handler modules so their @handler decorators run."""
    for name in modules:
        importlib.import_module(name)


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

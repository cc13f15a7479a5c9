"""DAG validation: every way a submitted graph can be wrong, each with a sentence naming the jobs involved."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from shared.commands import Invalid
from shared.messages import MAX_DELAY_S, ExecuteRequest, JobConfig

from .gating import TemplateError, resolve_key

__all__ = ["MAX_CONFIG_BYTES", "Dag", "start_at", "validate"]

MAX_CONFIG_BYTES = 256 * 1024
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Dag:
    jobs: dict[str, JobConfig]
    dependents: dict[str, list[str]]
    roots: list[str]


def _find_cycle(jobs: dict[str, JobConfig], stuck: set[str]) -> list[str]:
    """One cycle among `stuck` (jobs Kahn's algorithm could not order), as a path a → b → … → a."""
    start = min(stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    node = start
    # Every stuck job has a stuck dependency, so walking dependencies must revisit a node.
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(d for d in sorted(jobs[node].depends_on) if d in stuck)
    cycle = path[seen[node] :]
    cycle.reverse()  # dependencies point backwards; show the order in which they would run
    first = cycle.index(min(cycle))  # start at the smallest id so the message is stable
    cycle = cycle[first:] + cycle[:first]
    return [*cycle, cycle[0]]


def validate(request: ExecuteRequest, max_jobs: int, max_pools: int = 0) -> Dag:
    """Check `request` and return its graph; raise Invalid (400) naming the first problem. `max_pools` bounds
    the distinct (capability, type) pairs one execution may use (0: no bound)."""
    jobs: Sequence[JobConfig] = request.jobs
    if not jobs:
        raise Invalid("jobs must not be empty: an execution needs at least one job")
    if len(jobs) > max_jobs:
        raise Invalid(f"too many jobs: {len(jobs)} (the limit is {max_jobs})")
    if max_pools:
        pools = {(job.capability, job.type) for job in jobs}
        if len(pools) > max_pools:
            raise Invalid(
                f"the jobs use {len(pools)} distinct (capability, type) pairs; the limit is {max_pools} "
                "(JETDAG_MAX_TYPES_PER_EXECUTION)"
            )
    by_id: dict[str, JobConfig] = {}
    for index, job in enumerate(jobs):
        if job.id in by_id:
            raise Invalid(f"duplicate job id {job.id!r} (jobs[{index}])")
        by_id[job.id] = job
        if len(_encode(job.config)) > MAX_CONFIG_BYTES:
            raise Invalid(f"job {job.id!r}: config must encode to at most {MAX_CONFIG_BYTES} bytes of JSON")
        if job.concurrency_key is not None:
            try:
                resolve_key(job.concurrency_key, job.config)
            except TemplateError as exc:
                raise Invalid(f"job {job.id!r}: concurrencyKey {job.concurrency_key!r} {exc}") from None
        elif job.max_concurrent is not None:
            raise Invalid(f"job {job.id!r}: maxConcurrent needs a concurrencyKey (the jobs it counts)")
    dependents: dict[str, list[str]] = {job_id: [] for job_id in by_id}
    for job in jobs:
        seen: set[str] = set()
        for dep in job.depends_on:
            if dep == job.id:
                raise Invalid(f"job {job.id!r} depends on itself")
            if dep not in by_id:
                raise Invalid(f"job {job.id!r} depends on {dep!r}, which is not a job of this execution")
            if dep in seen:
                raise Invalid(f"job {job.id!r} lists dependency {dep!r} twice")
            seen.add(dep)
            dependents[dep].append(job.id)
    # Kahn's algorithm: whatever cannot be ordered lies on (or behind) a cycle.
    remaining = {job.id: len(job.depends_on) for job in jobs}
    roots = [job.id for job in jobs if not job.depends_on]
    queue = deque(roots)
    ordered = 0
    while queue:
        node = queue.popleft()
        ordered += 1
        for child in dependents[node]:
            remaining[child] -= 1
            if remaining[child] == 0:
                queue.append(child)
    if ordered < len(jobs):
        stuck = {job_id for job_id, left in remaining.items() if left > 0}
        cycle = _find_cycle(by_id, stuck)
        raise Invalid("the jobs form a cycle: " + " -> ".join(cycle))
    return Dag(jobs=by_id, dependents=dependents, roots=roots)


def start_at(request: ExecuteRequest, now_ms: int) -> int | None:
    """When a delayed execution starts (epoch ms), from `runAt` or `delayS`; None: at once."""
    if request.run_at is not None and request.delay_s is not None:
        raise Invalid("runAt and delayS are both given; send one of them")
    if request.delay_s is not None:
        return now_ms + round(request.delay_s * 1000) if request.delay_s > 0 else None
    if request.run_at is None:
        return None
    at = round(request.run_at.timestamp() * 1000)
    if at > now_ms + MAX_DELAY_S * 1000:
        raise Invalid(f"runAt must be at most {MAX_DELAY_S / 86400:g} days ahead, got {request.run_at.isoformat()}")
    return at if at > now_ms else None

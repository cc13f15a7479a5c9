"""The audit: what keeps an open execution from hanging silently.

Every sweep interval, for the executions this replica owns:
- a job queued for longer than the stall time and not started gets a `waitingReason` ("no live worker has
  capability 'tpu' and a handler for 'preprocessing'"), from what the registry knows of live workers and their
  handlers; it shows in the job listing and the job events, and is logged once as a warning;
- such a job whose message is no longer in the job stream (lost with a node, purged by hand) is dispatched again
  (seen missing twice in a row, so a message acked a moment ago whose result is on its way is not);
- a job running for longer than the stall time whose message is gone from the job stream (a worker acks it
  only once its report is stored) while its shard's reports consumer holds no report at all, delivered or not,
  will never be reported on: the report was lost with data the reports stream lost (a purge, a node's unsynced
  writes). Seen so at two looks in a row under the same token, it is dispatched again under a new token;
- an open execution of a shard this replica owns that is not in memory (its adoption failed) is adopted again;
- every STALE_CONSUMERS_EVERY rounds, job consumers of pools no live worker serves that hold nothing are removed
  once they have been so for the stale time (queue.remove_stale).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field

from shared.commands import CommandError, request
from shared.logging import get_logger
from shared.messages import ANY_CAPABILITY, ListWorkers, WorkerList, WorkerView
from shared.metrics import SchedulerMetrics
from shared.pauses import held_by
from shared.timeutil import ms_from_iso, now_ms

from .lifecycle import Context, Owned
from .machine import Job
from .queue import JobQueue
from .shards import ShardManager

__all__ = ["Audit", "pools_served", "waiting_reason"]

log = get_logger(__name__)
METRICS = SchedulerMetrics.process()
METRICS_EVERY = 5
"""Rounds between two measurements of the gauges (they walk every owned job)."""
LOST_RUNS_EVERY = 10
"""Rounds between two looks for running jobs nothing will report on (a query of the reports consumer per shard
and of the job stream per execution holding such a job, so not at every round)."""
STALE_CONSUMERS_EVERY = 10
"""Rounds between two looks for stale job consumers (one listing of the job stream's consumers)."""


def pools_served(workers: list[WorkerView]) -> set[tuple[str, str]]:
    """The (capability, type) pools live workers serve: each of their handlers under each of their
    capabilities, and under `any` (pure)."""
    served: set[tuple[str, str]] = set()
    for w in workers:
        handlers = w.metadata.get("handlers")
        if w.status not in ("idle", "busy") or not isinstance(handlers, list):
            continue
        for job_type in handlers:
            served.update((cap, str(job_type)) for cap in (ANY_CAPABILITY, *w.capabilities))
    return served


def waiting_reason(job_type: str, capability: str | None, workers: list[WorkerView], paused: str | None) -> str:
    """Why a queued job is not picked up, in one sentence (pure: tested without NATS); `paused`: the sentence of
    the pauses holding it (shared.pauses.held_by), if any."""
    if paused is not None:
        return paused
    live = [w for w in workers if w.status in ("idle", "busy") and isinstance(w.metadata.get("handlers"), list)]
    if not live:
        return "no live worker is connected"
    able = [w for w in live if capability is None or capability in w.capabilities]
    handlers = [w for w in able if job_type in w.metadata["handlers"]]
    if not able and not any(job_type in w.metadata["handlers"] for w in live):
        return f"no live worker has capability {capability!r} and a handler for {job_type!r}"
    if not able:
        return f"no live worker has capability {capability!r}"
    if not handlers:
        where = f" with capability {capability!r}" if capability else ""
        return f"no live worker{where} has a handler for {job_type!r}"
    busy = sum(min(w.current_load, w.max_concurrency) for w in handlers)
    slots = sum(w.max_concurrency for w in handlers)
    if busy >= slots:
        return f"every worker able to run it is busy ({busy} of {slots} slots)"
    return f"waiting for one of {len(handlers)} able workers to take it"


@dataclass
class Audit:
    ctx: Context
    manager: ShardManager
    queue: JobQueue
    stall_after_s: float
    stale_consumer_s: float = 0.0
    """0: job consumers are never removed."""
    _missing: dict[tuple[str, str], str] = field(default_factory=dict)
    """(execution, job) → the token seen without a message at the previous audit."""
    _warned: dict[tuple[str, str], str] = field(default_factory=dict)
    _unreported: dict[tuple[str, str], str] = field(default_factory=dict)
    """(execution, job) → the token of a run seen with no message and no report at the previous look."""

    async def run(self, interval_s: float) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.once()
                if rounds % LOST_RUNS_EVERY == 0:
                    await self.lost_runs()
                if rounds % METRICS_EVERY == 0:
                    await self.measure()
                if self.stale_consumer_s > 0 and rounds % STALE_CONSUMERS_EVERY == 0:
                    await self.stale_consumers()
            except Exception as exc:
                log.warning("audit failed; retrying", error=repr(exc))
            rounds += 1

    async def measure(self) -> None:
        """The gauges: open executions this replica owns, jobs queued per (capability, type), paused consumers."""
        owned = [o for o in self.manager.owned.values() if not o.gone and not o.state.final]
        METRICS.open_executions(len(owned))
        depths: Counter[tuple[str, str]] = Counter()
        for o in owned:
            if o.state.counts.queued:
                depths.update((j.capability, j.type) for j in o.state.jobs if j.status == "queued")
        METRICS.queue_depths(depths)
        METRICS.consumers_paused(await self.queue.paused_consumers())

    async def once(self) -> None:
        await self._stragglers()
        stalled: list[tuple[Owned, list[Job]]] = []
        cutoff = now_ms() - int(self.stall_after_s * 1000)
        for owned in list(self.manager.owned.values()):
            if owned.gone or owned.state.final:
                continue
            jobs = [
                j
                for j in owned.state.jobs
                if j.status == "queued" and j.queued_at is not None and ms_from_iso(j.queued_at) < cutoff
            ]
            if jobs:
                stalled.append((owned, jobs))
        if not stalled:
            self._missing.clear()
            return
        workers = await self._workers() or []
        pauses = await self.queue.pauses()
        for owned, jobs in stalled:
            reasons: dict[str, str | None] = {}
            holding = {j.id: held_by(pauses, j.capability, j.type) for j in jobs}
            held = {job_id for job_id, why in holding.items() if why is not None}
            for job in jobs:
                reason = waiting_reason(job.type, job.requested_capability, workers, holding[job.id])
                key = (owned.execution_id, job.id)
                if self._warned.get(key) != reason:
                    self._warned[key] = reason
                    owned.log.warning("job waiting", jobId=job.id, type=job.type, reason=reason)
                if job.waiting_reason != reason:
                    reasons[job.id] = reason
            if reasons:
                owned.waiting(reasons)
            if any(not j.placed for j in jobs):
                owned.republish_soon()
            lost = await self._lost_messages(owned, [j for j in jobs if j.placed and j.id not in held])
            if lost:
                owned.log.warning(
                    "job messages missing from the job stream; dispatched again", jobs=[j.id for j in lost]
                )
                owned.requeue([j.id for j in lost])
        live = {(o.execution_id, j.id) for o, js in stalled for j in js}
        self._missing = {k: v for k, v in self._missing.items() if k in live}
        self._warned = {k: v for k, v in self._warned.items() if k in live}

    async def stale_consumers(self) -> list[str]:
        """Remove the job consumers no live worker serves that hold nothing (see queue.remove_stale)."""
        workers = await self._workers()
        if workers is None:
            return []  # who is live is not known now: remove nothing
        served = pools_served(workers)
        return await self.queue.remove_stale(lambda cap, job_type: (cap, job_type) in served, self.stale_consumer_s)

    async def _workers(self) -> list[WorkerView] | None:
        """The registry's workers; None when it does not answer."""
        try:
            reply = await request(
                self.ctx.nc,
                self.ctx.names.registry("list"),
                ListWorkers(),
                WorkerList,
                service="registry",
                timeout=2.0,
            )
        except CommandError:
            return None
        return reply.workers

    async def _lost_messages(self, owned: Owned, jobs: list[Job]) -> list[Job]:
        """Jobs seen twice in a row queued under the same token while their execution has no message of their
        (capability, type, band) left in the job stream."""
        if not jobs:
            return []
        names = self.ctx.names
        info = await self.ctx.js.stream_info(
            names.jobs_stream, subjects_filter=names.jobs_of_execution(owned.execution_id)
        )
        present = set((info.state.subjects or {}).keys())
        lost = []
        for job in jobs:
            key = (owned.execution_id, job.id)
            if names.jobs(job.capability, job.type, job.priority, owned.execution_id) in present:
                self._missing.pop(key, None)
                continue
            if self._missing.get(key) == job.token:
                lost.append(job)
                self._missing.pop(key, None)
            elif job.token is not None:
                self._missing[key] = job.token
        return lost

    async def lost_runs(self) -> None:
        """Dispatch again the running jobs nothing will ever report on (see the module's docstring)."""
        cutoff = now_ms() - int(self.stall_after_s * 1000)
        names = self.ctx.names
        quiet: dict[int, bool] = {}
        looked: set[tuple[str, str]] = set()
        for owned in list(self.manager.owned.values()):
            if owned.gone or owned.state.final or not owned.state.counts.running:
                continue
            jobs = [
                j
                for j in owned.state.jobs
                if j.status == "running"
                and j.token is not None
                and j.started_at is not None
                and ms_from_iso(j.started_at) < cutoff
            ]
            if not jobs:
                continue
            shard = owned.state.shard
            if shard not in quiet:
                # A report stored and not yet committed is pending or awaiting its ack here: then wait.
                info = await self.ctx.js.consumer_info(names.reports_stream, names.reports_consumer(shard))
                quiet[shard] = not info.num_pending and not info.num_ack_pending
            if not quiet[shard]:
                continue
            stream = await self.ctx.js.stream_info(
                names.jobs_stream, subjects_filter=names.jobs_of_execution(owned.execution_id)
            )
            present = set((stream.state.subjects or {}).keys())
            lost: list[Job] = []
            for job in jobs:
                key = (owned.execution_id, job.id)
                looked.add(key)
                if names.jobs(job.capability, job.type, job.priority, owned.execution_id) in present:
                    self._unreported.pop(key, None)
                elif self._unreported.get(key) == job.token:
                    lost.append(job)
                    self._unreported.pop(key, None)
                else:
                    self._unreported[key] = job.token or ""
            if lost:
                owned.log.warning(
                    "running jobs with no job message and no report left; dispatched again",
                    jobs=[j.id for j in lost],
                )
                owned.requeue([j.id for j in lost])
        self._unreported = {k: v for k, v in self._unreported.items() if k in looked}

    async def _stragglers(self) -> None:
        cutoff = now_ms() - int(self.stall_after_s * 1000)
        for record in self.manager.index.open_executions():
            shard = self.manager.held.get(record.shard)
            if shard is None or shard.adopting:
                continue
            execution_id = record.execution_id
            if execution_id in self.manager.owned or execution_id in self.manager.reloading:
                continue
            if ms_from_iso(record.updated_at) > cutoff:
                continue  # just written: its creator is registering it
            log.warning("open execution not in memory; adopting it", executionId=execution_id)
            with contextlib.suppress(Exception):
                await self.manager.adopt_straggler(execution_id, shard)

"""The worker's reports to the scheduler, batched: what finishes (or starts, or progresses) within a short window
goes out as one message per shard, and right away when the worker has nothing else running — so a lone job's
result does not wait, and a thousand quick ones cost a handful of messages.

A report is durable once the reports stream stored its batch; only then are the job messages it concerns acked
(the callback each report carries), so a worker that dies before that leaves its jobs to be delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from shared.keys import report_msg_id
from shared.logging import get_logger
from shared.messages import AnyJobReport, JobProgressReport, ReportBatch
from shared.pipeline import Pipeline
from shared.subjects import Names

__all__ = ["Reporter"]

log = get_logger(__name__)

WINDOW_S = 0.002
MAX_REPORTS = 256
MAX_BYTES = 512 * 1024
RETRY_S = 1.0

_encode = msgspec.json.Encoder().encode


@dataclass
class _Pending:
    reports: list[AnyJobReport] = field(default_factory=list)
    stored: list[Callable[[], None]] = field(default_factory=list)
    size: int = 0


class Reporter:
    def __init__(
        self,
        pipeline: Pipeline,
        names: Names,
        worker_id: str,
        *,
        idle: Callable[[], bool],
        after_stored: Callable[[], Awaitable[None]],
    ) -> None:
        self.pipeline = pipeline
        self.after_stored = after_stored
        self.names = names
        self.worker_id = worker_id
        self.idle = idle
        self._boot = secrets.token_hex(4)
        self._seq = 0
        self._pending: dict[int, _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self.sent = 0

    def add(self, shard: int, report: AnyJobReport, stored: Callable[[], None] | None = None, size: int = 256) -> None:
        """Queue a report for `shard`'s owner; `stored` runs once the batch holding it is durable."""
        pending = self._pending.setdefault(shard, _Pending())
        if isinstance(report, JobProgressReport):
            # Only the latest progress of a job matters: replace one still waiting to go.
            for i, queued in enumerate(pending.reports):
                if isinstance(queued, JobProgressReport) and queued.token == report.token:
                    pending.reports[i] = report
                    return
        pending.reports.append(report)
        pending.size += size
        if stored is not None:
            pending.stored.append(stored)
        self._schedule(now=self.idle() or len(pending.reports) >= MAX_REPORTS or pending.size >= MAX_BYTES)

    def _schedule(self, *, now: bool) -> None:
        loop = asyncio.get_running_loop()
        if now:
            # Nothing else is running (or the batch is full): what is pending goes out at once.
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(WINDOW_S, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        pending, self._pending = self._pending, {}
        for shard, batch in pending.items():
            if batch.reports:
                task = asyncio.get_running_loop().create_task(self._send(shard, batch))
                self._flushing.add(task)
                task.add_done_callback(self._flushing.discard)

    async def _send(self, shard: int, batch: _Pending) -> None:
        self._seq += 1
        msg_id = report_msg_id(self.worker_id, self._boot, self._seq)
        data = _encode(ReportBatch(worker_id=self.worker_id, reports=batch.reports))
        while True:
            try:
                await self.pipeline.publish_all([(self.names.reports(shard), data, msg_id)], attempts=4)
                break
            except Exception as exc:
                # NATS is away: keep the batch (the job messages stay unacked and alive meanwhile) and try again
                # with the same id, so a copy that was stored after all is dropped.
                log.warning(
                    "report not delivered yet; retrying", shard=shard, reports=len(batch.reports), error=repr(exc)
                )
                await asyncio.sleep(RETRY_S)
        self.sent += len(batch.reports)
        for callback in batch.stored:
            callback()
        await self.after_stored()

    async def drain(self, timeout: float) -> None:
        """Send what waits and wait (at most `timeout`) for every batch in flight to be stored."""
        self._flush()
        if self._flushing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._flushing, return_exceptions=True), timeout)

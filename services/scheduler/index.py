"""A live, in-memory view of every execution record, fed by an ordered consumer on the executions bucket.

Each scheduler replica keeps one. It answers `GET /executions` and the cumulative counters of `GET
/queue/stats` without scanning the bucket, and tells the sweeper which executions are still open. The KV
bucket stays the truth: the view is rebuilt from it on start, and again whenever its consumer is found gone
(an ordered consumer lives on one server; when that node dies the client does not always notice).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, Counts, ExecutionRecord

__all__ = ["ExecutionIndex"]

log = get_logger(__name__)
CHECK_EVERY_S = 5.0


class _View:
    """Execution records and running totals of their counts."""

    def __init__(self) -> None:
        self.records: dict[str, ExecutionRecord] = {}
        self.revisions: dict[str, int] = {}
        self.totals = Counts()

    def apply(self, key: str, record: ExecutionRecord | None, revision: int) -> None:
        old = self.records.pop(key, None)
        self.revisions.pop(key, None)
        if old is not None:
            self._add(old.counts, -1)
        if record is not None:
            self.records[key] = record
            self.revisions[key] = revision
            self._add(record.counts, 1)

    def _add(self, counts: Counts, sign: int) -> None:
        t = self.totals
        t.completed += sign * counts.completed
        t.failed += sign * counts.failed
        t.delayed += sign * counts.delayed
        t.pending += sign * counts.open  # "pending" of the totals holds every open job


class ExecutionIndex:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.ready = asyncio.Event()
        self.current = asyncio.Event()
        """Set while the view follows the bucket; cleared from a reconnect until the replay is done."""
        self._rebuild = asyncio.Event()
        self._decoder = msgspec.json.Decoder(ExecutionRecord)
        # Queries read `_view`; a (re)subscription fills `_target` and swaps it in once it has replayed the
        # bucket, so a rebuild never shows a half-filled view.
        self._view = _View()
        self._target = self._view

    @property
    def records(self) -> dict[str, ExecutionRecord]:
        return self._view.records

    @property
    def completed(self) -> int:
        return self._view.totals.completed

    @property
    def failed(self) -> int:
        return self._view.totals.failed

    @property
    def delayed(self) -> int:
        return self._view.totals.delayed

    @property
    def open_jobs(self) -> int:
        """Jobs of all executions that have not finished (pending, ready, queued, running, delayed)."""
        return self._view.totals.pending

    def get(self, execution_id: str) -> tuple[ExecutionRecord, int] | None:
        record = self._view.records.get(execution_id)
        if record is None or not self.current.is_set():
            return None
        return record, self._view.revisions[execution_id]

    def open_executions(self) -> list[ExecutionRecord]:
        return [r for r in self._view.records.values() if r.status not in FINAL_EXECUTION_STATES]

    def _caught_up(self) -> None:
        self._view = self._target
        self.ready.set()
        self.current.set()

    def resubscribe(self) -> None:
        """After a reconnect the server may have lost our consumer: replay the bucket into a new view."""
        self.current.clear()
        self._rebuild.set()

    async def _on_entry(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        revision = msg.metadata.sequence.stream
        operation = (msg.headers or {}).get("KV-Operation")
        if operation in ("DEL", "PURGE") or not msg.data:
            self._target.apply(key, None, revision)
        else:
            try:
                self._target.apply(key, self._decoder.decode(msg.data), revision)
            except msgspec.DecodeError:
                log.warning("unreadable execution record", key=key)
        if msg.metadata.num_pending == 0 and self._view is not self._target:
            self._caught_up()

    async def _subscribe(self) -> Any:
        self._target = _View()
        # Execution records are the single-token keys: `$KV.<bucket>.*` leaves job records out.
        sub = await self.js.subscribe(
            f"$KV.{self.bucket}.*",
            stream=self.stream,
            cb=self._on_entry,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            # Nothing matched and nothing was delivered: there is no last message whose arrival would say so.
            self._caught_up()
        return sub

    async def run(self) -> None:
        """Follow the bucket forever; start over from the bucket if the consumer disappears."""
        while True:
            try:
                sub = await self._subscribe()
            except Exception as exc:
                log.warning("execution index: subscribing failed; retrying", error=repr(exc))
                await asyncio.sleep(1)
                continue
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._rebuild.wait(), CHECK_EVERY_S)
                    if self._rebuild.is_set():
                        self._rebuild.clear()
                        log.info("execution index: reconnected; rebuilding from the bucket")
                        break
                    try:
                        await sub.consumer_info()
                    except Exception as exc:
                        log.warning("execution index: consumer lost; rebuilding from the bucket", error=repr(exc))
                        self.current.clear()
                        break
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

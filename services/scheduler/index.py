"""A live, in-memory view of the execution records, fed by an ordered consumer on the executions bucket.

Each scheduler replica keeps one. It answers `GET /executions` and the cumulative counters of `GET
/queue/stats` without scanning the bucket, and tells the sweeper which executions are still open. Open
executions are held in full; finished ones as a small summary (status, workflow, counts), plus the last
few in full for status reads, so memory follows the open executions rather than the history. The KV
bucket stays the truth: the view is rebuilt from it on start, and again whenever its consumer is found gone
(an ordered consumer lives on one server; when that node dies the client does not always notice).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.keys import ARCHIVE_KEY
from shared.kvfollow import follow, watch_bucket
from shared.logging import get_logger
from shared.messages import FINAL_EXECUTION_STATES, Archive, Counts, ExecutionRecord
from shared.timeutil import ms_from_iso

from .ids import execution_id_floor

__all__ = ["ExecutionIndex"]

log = get_logger(__name__)
CHECK_EVERY_S = 5.0
RECENT_FINISHED = 256


class _Finished(msgspec.Struct, array_like=True, gc=False):
    """What the view keeps of a finished execution: enough to list, filter and count it (~170 bytes, against
    ~800 for the whole record), so memory follows the open executions, not the history."""

    revision: int
    status: str
    workflow_id: str
    completed: int
    failed: int
    completed_ms: int


class _View:
    """Open execution records in full, finished ones as summaries, every id in order, and running totals."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[ExecutionRecord, int]] = {}
        self.finished: dict[str, _Finished] = {}
        self.ids: list[str] = []
        """Every execution id, ascending: ids sort by creation time, so listings page through it backwards."""
        self.totals = Counts()
        self.archive = Archive()
        """What executions removed by retention counted (services/scheduler/retention.py)."""
        self.open_by_submitter: dict[str, int] = {}
        self._workflows: dict[str, str] = {}

    def removed_uncounted(self) -> tuple[int, int]:
        """(completed, failed) of executions already deleted whose counts the archive has not absorbed yet:
        between the two steps of a removal they are counted from the announcement, so totals never dip."""
        completed = failed = 0
        for execution_id, removal in self.archive.removing.items():
            if execution_id not in self.open and execution_id not in self.finished:
                completed += removal.completed
                failed += removal.failed
        return completed, failed

    def apply(self, key: str, record: ExecutionRecord | None, revision: int) -> _Finished | None:
        """Take a new value (None: deleted) of an execution record; returns its summary if it is finished."""
        old = self.open.pop(key, None)
        done = self.finished.pop(key, None)
        if old is not None:
            self._add(old[0].counts, -1)
            self._count_open(old[0].submitted_by, -1)
        elif done is not None:
            self.totals.completed -= done.completed
            self.totals.failed -= done.failed
        elif record is not None:
            insort(self.ids, key)
        if record is None:
            if old is not None or done is not None:
                del self.ids[bisect_left(self.ids, key)]
            return None
        if record.status in FINAL_EXECUTION_STATES:
            workflow = self._workflows.setdefault(record.workflow_id, record.workflow_id)
            done = _Finished(
                revision,
                record.status,
                workflow,
                record.counts.completed,
                record.counts.failed,
                ms_from_iso(record.completed_at or record.updated_at),
            )
            self.finished[key] = done
            self.totals.completed += done.completed
            self.totals.failed += done.failed
            return done
        self.open[key] = (record, revision)
        self._add(record.counts, 1)
        self._count_open(record.submitted_by, 1)
        return None

    def _count_open(self, submitter: str | None, delta: int) -> None:
        if submitter is not None:
            n = self.open_by_submitter.get(submitter, 0) + delta
            if n > 0:
                self.open_by_submitter[submitter] = n
            else:
                self.open_by_submitter.pop(submitter, None)

    def _add(self, counts: Counts, sign: int) -> None:
        t = self.totals
        t.completed += sign * counts.completed
        t.failed += sign * counts.failed
        t.delayed += sign * counts.delayed
        t.queued += sign * counts.queued
        t.ready += sign * counts.ready
        t.running += sign * counts.running
        t.pending += sign * counts.open  # "pending" of the totals holds every open job


class ExecutionIndex:
    def __init__(
        self, js: JetStreamContext, bucket: str, on_finished: Callable[[str, int], None] | None = None
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.on_finished = on_finished
        """Told (id, revision) when a finished record arrives: whoever cached it can let go of it now."""
        self.ready = asyncio.Event()
        self.current = asyncio.Event()
        """Set while the view follows the bucket; cleared from a reconnect until the replay is done."""
        self._rebuild = asyncio.Event()
        self._decoder = msgspec.json.Decoder(ExecutionRecord)
        self._archive_decoder = msgspec.json.Decoder(Archive)
        # Queries read `_view`; a (re)subscription fills `_target` and swaps it in once it has replayed the
        # bucket, so a rebuild never shows a half-filled view.
        self._view = _View()
        self._target = self._view
        # The last finished records seen in full (status reads of a just-finished execution are the common
        # case); older ones are read from the bucket.
        self._recent: OrderedDict[str, tuple[ExecutionRecord, int]] = OrderedDict()

    @property
    def completed(self) -> int:
        view = self._view
        return view.totals.completed + view.archive.completed + view.removed_uncounted()[0]

    @property
    def failed(self) -> int:
        view = self._view
        return view.totals.failed + view.archive.failed + view.removed_uncounted()[1]

    @property
    def delayed(self) -> int:
        return self._view.totals.delayed

    @property
    def queued(self) -> int:
        """Jobs dispatched and not started yet, over all open executions (as of their records)."""
        return self._view.totals.queued

    @property
    def running(self) -> int:
        return self._view.totals.running

    @property
    def ready_jobs(self) -> int:
        """Jobs ready to start and held by a slot (parallelism, a concurrency key), over all open executions."""
        return self._view.totals.ready

    def open_for(self, submitter: str) -> int:
        """Open executions the API token `submitter` submitted."""
        return self._view.open_by_submitter.get(submitter, 0)

    @property
    def open_jobs(self) -> int:
        """Jobs of all executions that have not finished (pending, ready, queued, running, delayed)."""
        return self._view.totals.pending

    def __len__(self) -> int:
        return len(self._view.ids)

    def __contains__(self, execution_id: object) -> bool:
        """Whether the view has seen the execution's record (and counts it)."""
        view = self._view
        return execution_id in view.open or execution_id in view.finished

    def get(self, execution_id: str) -> tuple[ExecutionRecord, int] | None:
        """The record and revision, if the view follows the bucket and holds it in full; None: read the bucket."""
        if not self.current.is_set():
            return None
        view = self._view
        found = view.open.get(execution_id)
        if found is not None:
            return found
        done = view.finished.get(execution_id)
        recent = self._recent.get(execution_id)
        if done is not None and recent is not None and recent[1] == done.revision:
            self._recent.move_to_end(execution_id)
            return recent
        return None

    def _revision(self, view: _View, key: str) -> int:
        found = view.open.get(key)
        if found is not None:
            return found[1]
        done = view.finished.get(key)
        return done.revision if done is not None else 0

    def observe(self, record: ExecutionRecord, revision: int) -> None:
        """A record this replica just wrote, seen at once (read-your-writes) rather than when the watch brings
        it a moment later."""
        view = self._view
        if self._revision(view, record.execution_id) >= revision:
            return
        if view.apply(record.execution_id, record, revision) is not None:
            self._keep_recent(record, revision)
        else:
            self._recent.pop(record.execution_id, None)

    def remember(self, record: ExecutionRecord, revision: int) -> None:
        """A finished record read from the bucket: keep it among the recent ones if it is the current one."""
        done = self._view.finished.get(record.execution_id)
        if done is not None and done.revision == revision:
            self._keep_recent(record, revision)

    def _keep_recent(self, record: ExecutionRecord, revision: int) -> None:
        self._recent[record.execution_id] = (record, revision)
        self._recent.move_to_end(record.execution_id)
        while len(self._recent) > RECENT_FINISHED:
            self._recent.popitem(last=False)

    def open_executions(self) -> list[ExecutionRecord]:
        return [record for record, _ in self._view.open.values()]

    def open_record(self, execution_id: str) -> ExecutionRecord | None:
        found = self._view.open.get(execution_id)
        return None if found is None else found[0]

    def removing(self) -> bool:
        """Whether the archive, as last seen, announces removals not finished yet."""
        return bool(self._view.archive.removing)

    def expired(self, cutoff_ms: int, limit: int) -> list[str]:
        """Up to `limit` finished executions, oldest first, that finished before `cutoff_ms`. Only executions
        created before the cutoff can qualify, and ids sort by creation time: the scan stops there."""
        view = self._view
        out: list[str] = []
        end = bisect_left(view.ids, execution_id_floor(cutoff_ms))
        for execution_id in islice(view.ids, end):
            done = view.finished.get(execution_id)
            if done is not None and done.completed_ms < cutoff_ms:
                out.append(execution_id)
                if len(out) >= limit:
                    break
        return out

    def select(self, *, before: str | None, status: str | None, workflow_id: str | None, limit: int) -> list[str]:
        """Up to `limit` ids, newest first, older than `before`, with that status and workflow."""
        view = self._view
        out: list[str] = []
        i = len(view.ids) if before is None else bisect_left(view.ids, before)
        while i > 0 and len(out) < limit:
            i -= 1
            execution_id = view.ids[i]
            found = view.open.get(execution_id)
            if found is not None:
                record = found[0]
                match = (status is None or record.status == status) and (
                    workflow_id is None or record.workflow_id == workflow_id
                )
            else:
                done = view.finished[execution_id]
                match = (status is None or done.status == status) and (
                    workflow_id is None or done.workflow_id == workflow_id
                )
            if match:
                out.append(execution_id)
        return out

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
        if key == ARCHIVE_KEY:
            try:
                deleted = operation in ("DEL", "PURGE") or not msg.data
                self._target.archive = Archive() if deleted else self._archive_decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("unreadable archive record")
            self._check_caught_up(msg)
            return
        if self._target is self._view and 0 < revision < self._revision(self._view, key):
            self._check_caught_up(msg)
            return  # older than what this replica wrote and already applied (observe)
        if operation in ("DEL", "PURGE") or not msg.data:
            self._target.apply(key, None, revision)
            self._recent.pop(key, None)
        else:
            try:
                record = self._decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("unreadable execution record", key=key)
            else:
                if self._target.apply(key, record, revision) is not None:
                    self._keep_recent(record, revision)
                    if self.on_finished is not None:
                        self.on_finished(key, revision)
                else:
                    self._recent.pop(key, None)
        self._check_caught_up(msg)

    def _check_caught_up(self, msg: Msg) -> None:
        if msg.metadata.num_pending == 0 and self._view is not self._target:
            self._caught_up()

    async def _subscribe(self) -> Any:
        self._target = _View()
        # Execution records are the single-token keys: `$KV.<bucket>.*` leaves job records out.
        sub, replayed = await watch_bucket(self.js, self.bucket, self._on_entry, keys="*")
        if replayed:
            self._caught_up()
        return sub

    async def run(self) -> None:
        """Follow the bucket forever; start over from the bucket if the consumer disappears."""
        await follow(self._subscribe, self._rebuild, self.current, name="execution index", check_every_s=CHECK_EVERY_S)

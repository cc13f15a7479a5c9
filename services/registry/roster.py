"""The registry's copy of the workers bucket, followed by one watch: listing the fleet reads memory.

A listing used to read the bucket each time through an ephemeral consumer on its stream: the fleet view, the
health summary, the dashboard and the scheduler's audit each cost one, and in an account with `max_consumers`
polled listings ran into the limit (500s). Now one ordered consumer per registry process follows the bucket.

The registry applies its own writes at once (the revision the write returned), so a listing after a register
or a deregister through this replica shows it; other replicas' writes arrive through the watch. A record is
replaced only by a later revision, so a watch message older than a write already applied changes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.kvfollow import follow, watch_bucket
from shared.logging import get_logger
from shared.messages import WorkerRecord

__all__ = ["Roster", "RosterEntry"]

log = get_logger(__name__)

CHECK_EVERY_S = 5.0
"""How often the watch's consumer is checked (a reconnect or a lost consumer starts a replay)."""


@dataclass(frozen=True, slots=True)
class RosterEntry:
    revision: int
    record: WorkerRecord | None
    """None: deleted at `revision` (kept so an older message cannot bring the worker back)."""


class Roster:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.current = asyncio.Event()
        """Set while the copy follows the bucket; cleared from a reconnect until the replay is done."""
        self._view: dict[str, RosterEntry] = {}
        self._target = self._view
        self._rebuild = asyncio.Event()
        self._decoder = msgspec.json.Decoder(WorkerRecord)
        self._prefix = f"$KV.{bucket}."

    def records(self) -> list[tuple[int, WorkerRecord]]:
        """(revision, record) of every registered worker."""
        return [(e.revision, e.record) for e in self._view.values() if e.record is not None]

    def wrote(self, revision: int, record: WorkerRecord) -> None:
        """This replica stored `record` at `revision`."""
        self._apply(record.worker_id, RosterEntry(revision, record))

    def deleted(self, worker_id: str, after: int) -> None:
        """This replica deleted the worker whose record was at revision `after`."""
        self._apply(worker_id, RosterEntry(after, None), keep_revision=True)

    def resubscribe(self) -> None:
        """After a reconnect the server may have lost the consumer: replay the bucket into a new copy."""
        self.current.clear()
        self._rebuild.set()

    def _apply(self, key: str, entry: RosterEntry, *, keep_revision: bool = False) -> None:
        # Both copies while a replay fills the next one: what this replica wrote must be in the one swapped in.
        for view in (self._view,) if self._target is self._view else (self._view, self._target):
            known = view.get(key)
            newer = known is None or known.revision < entry.revision
            if newer or (keep_revision and known is not None and known.revision == entry.revision):
                view[key] = entry

    async def _on_entry(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix) :]
        meta = msg.metadata
        operation = (msg.headers or {}).get("KV-Operation")
        if operation in ("DEL", "PURGE") or not msg.data:
            self._apply(key, RosterEntry(meta.sequence.stream, None))
        else:
            try:
                record = self._decoder.decode(msg.data)
            except msgspec.DecodeError:
                log.warning("unreadable worker record", workerId=key)
            else:
                self._apply(key, RosterEntry(meta.sequence.stream, record))
        if meta.num_pending == 0 and self._target is not self._view:
            self._caught_up()

    def _caught_up(self) -> None:
        self._view = self._target
        self.current.set()

    async def _subscribe(self) -> Any:
        self._target = {}
        sub, replayed = await watch_bucket(self.js, self.bucket, self._on_entry)
        if replayed:
            self._caught_up()  # an empty bucket
        return sub

    async def run(self) -> None:
        """Follow the bucket forever; start over from the bucket if the consumer disappears."""
        await follow(self._subscribe, self._rebuild, self.current, name="worker roster", check_every_s=CHECK_EVERY_S)

"""Each execution's journal: the owner's decisions, one append per step, on `<ns>.journal.<executionId>`.

An append names the sequence of the journal's last entry it knows (`Nats-Expected-Last-Subject-Sequence`):
JetStream stores it only if nothing was appended since. A replica that takes an execution over appends an
`adopted` entry first, so from then on every append of an earlier owner fails: the journal is its own fence, and
no lease, clock or lock has to be right for two owners never to both write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.messages import AnyJournalEntry, JobPatch, JournalStep
from shared.pipeline import JetStreamError, Pipeline
from shared.subjects import Names

__all__ = ["MAX_ENTRY_BYTES", "Fenced", "Journal", "split_step"]

MAX_ENTRY_BYTES = 768 * 1024
"""An entry stays well under the 1 MiB message limit; a larger step is appended in parts, each one consistent
(patches apply one after the other, so any prefix of a step is a state the machine could have been in)."""
READ_TIMEOUT_S = 60.0

_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(AnyJournalEntry)


class Fenced(Exception):
    """The journal moved on without us: another replica owns the execution now."""


def split_step(step: JournalStep, encoded: bytes) -> list[bytes]:
    """The step as one or more encoded entries, each at most MAX_ENTRY_BYTES (a single patch larger than that
    cannot happen: results that large are kept out of the journal, see lifecycle.INLINE_RESULT_BYTES)."""
    if len(encoded) <= MAX_ENTRY_BYTES:
        return [encoded]
    parts: list[bytes] = []
    chunk: list[JobPatch] = []
    size = 0
    for patch in step.jobs:
        n = len(_encode(patch))
        if chunk and size + n > MAX_ENTRY_BYTES - 1024:
            parts.append(_encode(JournalStep(at=step.at, jobs=chunk)))
            chunk, size = [], 0
        chunk.append(patch)
        size += n
    parts.append(_encode(JournalStep(at=step.at, jobs=chunk, execution=step.execution)))
    return parts


class Journal:
    def __init__(self, js: JetStreamContext, pipeline: Pipeline, names: Names) -> None:
        self.js = js
        self.pipeline = pipeline
        self.names = names
        self.appends = 0

    async def append(self, execution_id: str, data: bytes, *, last: int) -> int:
        """Append one encoded entry after sequence `last` (0: the journal is empty); returns its sequence.
        Raises Fenced when another append came first."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            seq = await self.pipeline.publish(self.names.journal(execution_id), data, headers)
        except JetStreamError as exc:
            if exc.wrong_last_sequence:
                raise Fenced(f"journal of {execution_id} moved past {last}") from None
            raise
        self.appends += 1
        return seq

    async def append_all(self, execution_id: str, entries: Iterable[bytes], *, last: int) -> int:
        for data in entries:
            last = await self.append(execution_id, data, last=last)
        return last

    async def read(self, execution_id: str) -> tuple[list[AnyJournalEntry], int]:
        """Every entry, in order, and the sequence of the last one (0: empty)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        messages: list[Msg] = []

        async def on_msg(msg: Msg) -> None:
            messages.append(msg)
            if msg.metadata.num_pending == 0 and not done.done():
                done.set_result(None)

        sub = await self.js.subscribe(
            self.names.journal(execution_id),
            stream=self.names.journal_stream,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            info = await sub.consumer_info()
            if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
                return [], 0
            await asyncio.wait_for(done, READ_TIMEOUT_S)
        finally:
            await sub.unsubscribe()
        entries = [_decoder.decode(m.data) for m in messages]
        return entries, messages[-1].metadata.sequence.stream

    async def last_seq(self, execution_id: str) -> int:
        """Sequence of the journal's last entry (0: empty)."""
        found = await self.pipeline.last_of_subject(self.names.journal_stream, self.names.journal(execution_id))
        return 0 if found is None else found

    async def purge(self, execution_id: str) -> None:
        await self.js.purge_stream(self.names.journal_stream, subject=self.names.journal(execution_id))

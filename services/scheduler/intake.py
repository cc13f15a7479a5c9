"""Report intake: one shard's worker reports, pulled in batches, decoded once, handed to the executions they
are about. A report message is acked only when every report in it is committed by its execution (AckRef)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.consume import PullConsumer
from shared.logging import get_logger
from shared.messages import ReportBatch
from shared.subjects import Names

from .lifecycle import AckRef, Owned

__all__ = ["LATER", "Intake"]

log = get_logger(__name__)

LATER: Literal["later"] = "later"
"""The execution is open but not in memory right now (being taken over or read back): report again later."""
CREDIT = 512
RETRY_LATER_S = 0.5

Route = Callable[[str], Owned | Literal["later"] | None]


class Intake:
    def __init__(self, nc: Client, names: Names, shard: int, route: Route, *, ack_wait_s: float) -> None:
        self.shard = shard
        self.route = route
        self.decoder = msgspec.json.Decoder(ReportBatch)
        self.consumer = PullConsumer(
            nc,
            stream=names.reports_stream,
            consumer=names.reports_consumer(shard),
            handle=self._handle,
            credit=lambda: CREDIT,
            heartbeat_s=min(2.0, ack_wait_s / 2),
        )
        self.reports = 0
        self.log = log.bind(shard=shard)

    async def _handle(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                batch = self.decoder.decode(msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.log.warning("unreadable report dropped", error=str(exc), subject=msg.subject)
                await msg.term()
                continue
            targets = [(report, self.route(report.execution_id)) for report in batch.reports]
            if any(target == LATER for _, target in targets):
                await msg.nak(delay=RETRY_LATER_S)
                continue
            live = [(report, target) for report, target in targets if isinstance(target, Owned)]
            if not live:
                # About executions that ended (or never were): nothing can change, so nothing to keep.
                await msg.ack()
                continue
            self.reports += len(live)
            ref = AckRef(msg, len(live))
            for report, owned in live:
                owned.report(report, batch.worker_id, ref)

"""Publishing events on the event stream (`<ns>.events.>`), durably and idempotently."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from shared.logging import get_logger

__all__ = ["publish_event"]

log = get_logger(__name__)
_encoder = msgspec.json.Encoder()


async def publish_event(
    js: JetStreamContext, subject: str, event: msgspec.Struct, *, msg_id: str | None = None
) -> bool:
    """Publish one event and wait for the stream's ack. `msg_id` makes a retried publish a no-op.

    Returns False (and logs) when the event could not be stored: events describe state that is already
    persisted elsewhere, so a lost event must not undo or fail the state change itself.
    """
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    try:
        await js.publish(subject, _encoder.encode(event), headers=headers)
    except Exception as exc:
        log.warning("event not published", subject=subject, error=str(exc) or type(exc).__name__)
        return False
    return True

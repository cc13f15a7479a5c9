"""Keeping a watch of a KV bucket alive: the loop the scheduler's execution index and the registry's roster share.

Each keeps an in-memory copy of a bucket, filled by an ordered consumer. A reconnect may cost the server the
consumer without telling, and an ordered consumer can be lost with a node: so the loop checks the consumer now
and then, and starts over (the owner's `subscribe` replays the bucket into a fresh copy) when it is gone or when
the owner asks, after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.logging import get_logger

__all__ = ["follow", "watch_bucket"]

log = get_logger(__name__)


async def watch_bucket(
    js: JetStreamContext, bucket: str, cb: Callable[[Msg], Awaitable[None]], *, keys: str = ">"
) -> tuple[Any, bool]:
    """An ordered consumer giving `cb` the last value of every key of `bucket` matching `keys`, then every change.
    Returns it, and whether the replay is already over: nothing matched and nothing was delivered, so no last
    message (one with nothing pending) will ever say so."""
    sub = await js.subscribe(
        f"$KV.{bucket}.{keys}",
        stream=f"KV_{bucket}",
        cb=cb,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    try:
        info = await sub.consumer_info()
    except BaseException:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        raise
    return sub, not info.num_pending and not (info.delivered and info.delivered.consumer_seq)


async def follow(
    subscribe: Callable[[], Awaitable[Any]],
    rebuild: asyncio.Event,
    current: asyncio.Event,
    *,
    name: str,
    check_every_s: float,
) -> None:
    """Forever: `subscribe` (it returns the subscription), then watch it; when `rebuild` is set (cleared here) or
    the consumer no longer answers (then `current` is cleared), unsubscribe and subscribe again."""
    while True:
        try:
            sub = await subscribe()
        except Exception as exc:
            log.warning(f"{name}: subscribing failed; retrying", error=repr(exc))
            await asyncio.sleep(1)
            continue
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rebuild.wait(), check_every_s)
                if rebuild.is_set():
                    rebuild.clear()
                    log.info(f"{name}: reconnected; rebuilding from the bucket")
                    break
                try:
                    await sub.consumer_info()
                except Exception as exc:
                    log.warning(f"{name}: consumer lost; rebuilding from the bucket", error=repr(exc))
                    current.clear()
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

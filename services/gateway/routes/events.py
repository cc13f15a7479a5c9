"""Server-sent events: one execution's events (`/execute/{id}/events`) and everyone's (`/events`)."""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get
from litestar.background_tasks import BackgroundTask
from litestar.params import Parameter
from litestar.response import Stream

from ..observe import STREAM_OPT
from ..openapi import SSE_RESPONSE, PathId, errors
from ..sse import HEADERS, parse_kinds, parse_last_id
from ..streams import EventStreams, Feed

__all__ = ["all_events", "execution_events"]


def _stream(feed: Feed, body: object) -> Stream:
    # The background task runs after the response ended, also when the client went away mid-stream: the
    # consumer is freed whichever way the stream stops.
    return Stream(
        body,  # type: ignore[arg-type]
        media_type="text/event-stream",
        headers=HEADERS,
        background=BackgroundTask(feed.close),
    )


@get(
    "/execute/{executionId:str}/events",
    tags=["events"],
    summary="Live events of one execution (text/event-stream), from its first; ends after its final event",
    description="Every event of the execution from its first (or after `Last-Event-ID` / `lastEventId`), "
    "then live; the stream ends after the execution's final event.",
    media_type="text/event-stream",
    responses={**SSE_RESPONSE, **errors(400, 404)},
    opt={STREAM_OPT: True},
)
async def execution_events(
    request: Request,  # type: ignore[type-arg]
    executionId: PathId,
    streams: EventStreams,
    last_event_id: Annotated[str | None, Parameter(query="lastEventId")] = None,
) -> Stream:
    after = parse_last_id(request.headers.get("last-event-id"), last_event_id)
    feed, body = await streams.execution(executionId, after)
    return _stream(feed, body)


@get(
    "/events",
    tags=["events"],
    summary="Live events of every execution and worker (text/event-stream), from now; `kinds` filters",
    description="Every event from now (or after `Last-Event-ID` / `lastEventId`), live, until the client "
    "disconnects; `kinds` (comma-separated) keeps only those kinds.",
    media_type="text/event-stream",
    responses={**SSE_RESPONSE, **errors(400)},
    opt={STREAM_OPT: True},
)
async def all_events(
    request: Request,  # type: ignore[type-arg]
    streams: EventStreams,
    kinds: str | None = None,
    last_event_id: Annotated[str | None, Parameter(query="lastEventId")] = None,
) -> Stream:
    after = parse_last_id(request.headers.get("last-event-id"), last_event_id)
    feed, body = await streams.everything(parse_kinds(kinds), after)
    return _stream(feed, body)

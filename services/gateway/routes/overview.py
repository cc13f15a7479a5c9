"""`/overview`: what the dashboard's overview shows, as one JSON body or as a live stream of them."""

from __future__ import annotations

from litestar import Controller, get
from litestar.response import Stream

from shared.api import Overview

from ..observe import STREAM_OPT
from ..openapi import SSE_RESPONSE, errors
from ..overview import OverviewHub
from ..sse import HEADERS


class OverviewController(Controller):
    path = "/overview"
    tags = ["dashboard"]

    @get(
        "/",
        summary="Health, workers, queue statistics and the most recent executions, in one body",
        description="What the dashboard's overview shows, gathered in one call.",
        responses=errors(),
    )
    async def overview(self, overview_hub: OverviewHub) -> Overview:
        return await overview_hub.snapshot()

    @get(
        "/events",
        summary="The overview as server-sent events: `event: overview` at once and whenever it changes",
        description="`data` is the body of `GET /overview`, sent at once and then whenever it changes.",
        media_type="text/event-stream",
        responses={**SSE_RESPONSE, **errors()},
        opt={STREAM_OPT: True},
    )
    async def overview_events(self, overview_hub: OverviewHub) -> Stream:
        return Stream(overview_hub.watch(), media_type="text/event-stream", headers=HEADERS)

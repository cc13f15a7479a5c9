"""`/rate-limits`: configured limits on job starts per key, or per job type (`type:<jobType>`)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, put
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from shared.api import RateLimitListResponse, RateLimitResponse
from shared.messages import RateLimitCommand, RateLimitSetting

from ..auth import Scope
from ..backend import Backend
from ..body import strict_body
from ..openapi import errors

LimitKeyPath = Annotated[
    str,
    Parameter(
        pattern=r"^(type:)?[A-Za-z0-9_-]{1,128}$",
        description="a key jobs name in `rateLimit.key`, or `type:<jobType>` for every job of that type",
    ),
]


class RateLimitController(Controller):
    path = "/rate-limits"
    tags = ["rate limits"]

    @put(
        "/{key:str}",
        status_code=HTTP_200_OK,
        summary="Configure a rate limit: at most `limit` job starts per `periodS` under the key (admin)",
        description="`type:<jobType>` limits every job of that type, with no change to the jobs. A configured "
        "limit of a key wins over the numbers in the jobs' own `rateLimit`. Applies cluster-wide, from the next "
        "dispatch on.",
        responses=errors(400, 415),
        opt={"scope": Scope.ADMIN},
        before_request=strict_body(RateLimitSetting),
    )
    async def put_one(self, key: LimitKeyPath, data: RateLimitSetting, backend: Backend) -> RateLimitResponse:
        reply = await backend.rate_limit("put", RateLimitCommand(key=key, setting=data))
        return RateLimitResponse(rate_limit=reply.rate_limit)

    @get(
        "/",
        summary="Every configured rate limit",
        description="With how many starts each one's window holds now. Jobs' own `rateLimit` keys are not listed.",
        responses=errors(),
    )
    async def list_all(self, backend: Backend) -> RateLimitListResponse:
        reply = await backend.rate_limits()
        return RateLimitListResponse(count=len(reply.rate_limits), rate_limits=reply.rate_limits)

    @get(
        "/{key:str}",
        summary="One configured rate limit and how many starts its window holds now",
        description="404 when the key has no configured limit (jobs may still name it with their own numbers).",
        responses=errors(400, 404),
    )
    async def get_one(self, key: LimitKeyPath, backend: Backend) -> RateLimitResponse:
        return RateLimitResponse(rate_limit=(await backend.rate_limit("get", RateLimitCommand(key=key))).rate_limit)

    @delete(
        "/{key:str}",
        status_code=HTTP_200_OK,
        summary="Remove a configured rate limit (admin)",
        description="Jobs naming the key fall back to their own `rateLimit` numbers.",
        responses=errors(400, 404),
        opt={"scope": Scope.ADMIN},
    )
    async def remove(self, key: LimitKeyPath, backend: Backend) -> RateLimitResponse:
        return RateLimitResponse(rate_limit=(await backend.rate_limit("delete", RateLimitCommand(key=key))).rate_limit)

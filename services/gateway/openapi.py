"""OpenAPI helpers: document our error body for the statuses a route can answer."""

from __future__ import annotations

from litestar.openapi import ResponseSpec

from shared.api import ErrorResponse

__all__ = ["errors"]

_DESCRIPTIONS = {
    400: "Malformed or invalid request; `error` names the field",
    404: "The worker or execution does not exist",
    409: "The request conflicts with the resource's state",
    413: "The body is larger than the configured limit",
    503: "A backing service (NATS, the registry, the scheduler) did not answer in time",
}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` for a route: each status with the `{success: false, error}` body."""
    return {
        s: ResponseSpec(ErrorResponse, description=_DESCRIPTIONS[s], generate_examples=False) for s in (*statuses, 503)
    }

"""The guard every API route passes: the browser rules, then the bearer token and its scope (auth.py decides)."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from shared.logging import get_logger

from .auth import AuthPolicy, Denied, check_content_type, needed_scope

__all__ = ["TOKEN_STATE", "api_guard"]

TOKEN_STATE = "api_token"
"""`request.state` key of the Token the request came with (absent when auth is off)."""

log = get_logger(__name__)


def api_guard(policy: AuthPolicy) -> Guard:
    """Routes declare what they need in `opt`: `public=True` (no token), or `scope=Scope.ADMIN`."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if connection.scope["type"] != ScopeType.HTTP:
            return
        method = connection.scope["method"]
        headers = connection.headers
        try:
            policy.check_host(headers.get("host"))
            policy.check_origin(headers.get("origin"), headers.get("host"))
            if not handler.opt.get("public"):
                token = policy.authenticate(
                    headers.get("authorization"), needed_scope(method, handler.opt.get("scope"))
                )
                if token is not None:
                    connection.state[TOKEN_STATE] = token
            has_body = bool(headers.get("transfer-encoding")) or headers.get("content-length", "0") not in ("", "0")
            check_content_type(method, headers.get("content-type"), has_body)
        except Denied as denied:
            log.warning(
                "request refused",
                status=denied.status,
                reason=denied.message,
                method=method,
                path=connection.url.path,
                client=connection.client.host if connection.client else None,
            )
            extra = {"WWW-Authenticate": denied.challenge} if denied.challenge else None
            raise HTTPException(status_code=denied.status, detail=denied.message, headers=extra) from None

    return guard

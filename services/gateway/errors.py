"""Every failure becomes `{"success": false, "error": "<one sentence>"}` with the API.md status.

The client never sees a traceback: unexpected exceptions are logged with theirs and answered with a 500.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from shared.api import ErrorResponse
from shared.commands import CommandError
from shared.logging import get_logger

from .body import humanize

__all__ = ["exception_handlers"]

log = get_logger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    return Response(ErrorResponse(error=message), status_code=status, headers=headers)


_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_WRONG_TYPE = re.compile(r"^Expected `(?P<type>\w+)(?: \| null)?`, got `\w+`$")
_BOUND = re.compile(r"^Expected `\w+(?: \| null)?` (?P<op>>=|<=|>|<) (?P<bound>\S+)$")
_BOUND_WORDS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than"}
_FORM = re.compile(r"^Expected `str` (?P<form>of .*)$")


def _literal_values(annotation: Any) -> list[str]:
    """The allowed values of a `Literal[...]` parameter (also inside `X | None` and type aliases)."""
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    for arg in typing.get_args(annotation):
        values = _literal_values(arg)
        if values:
            return values
    return []


def _parameter_message(request: Request[Any, Any, Any], key: str, source: str, message: str) -> str:
    """`query parameter status must be one of pending, running (got 'bogus')`: the public name of the
    parameter, what it must be, and what it was."""
    field = request.route_handler.parsed_fn_signature.parameters.get(key)
    public = key
    if field is not None and field.kwarg_definition is not None:
        definition = field.kwarg_definition
        public = getattr(definition, "query", None) or getattr(definition, "header", None) or key
    values = _literal_values(field.annotation) if field is not None else []
    if values and message.startswith("Invalid enum value"):
        rule = f"must be one of {', '.join(values)}"
    elif match := _WRONG_TYPE.match(message):
        rule = f"must be {_TYPES.get(match['type'], match['type'])}"
    elif match := _BOUND.match(message):
        rule = f"must be {_BOUND_WORDS[match['op']]} {match['bound']}"
    elif match := _FORM.match(message):
        rule = f"must be {match['form'].removeprefix('of ')}"
    else:
        rule = f"is invalid: {message}"
    if source == "path":
        given = request.path_params.get(key)
    elif source == "header":
        given = request.headers.get(public)
    else:
        given = request.query_params.get(public)
    return f"{source} parameter {public} {rule}" + (f" (got {given!r})" if given is not None else "")


def _validation_message(request: Request[Any, Any, Any], exc: ValidationException) -> str:
    """Turn Litestar's validation detail into one sentence that names the field."""
    extra = exc.extra
    items: list[Any] = extra if isinstance(extra, list) else [extra] if extra else []
    parts = []
    for item in items:
        if not isinstance(item, dict):
            continue
        message = humanize(str(item.get("message", "")).strip())
        key = item.get("key")
        raw_source = item.get("source")
        source = getattr(raw_source, "value", raw_source)  # a ParamType (str enum) for parameters
        if key == "data" and source == "body":
            # An empty body reaches us as a KeyError on the parameter name.
            parts.append("the body is empty; a JSON object is required" if message == "'data'" else message)
        elif key and source == "body":
            parts.append(f"{key}: {message}")
        elif key and source in ("path", "query", "header") and message:
            parts.append(_parameter_message(request, str(key), str(source), message))
        elif message:
            parts.append(message)
    if not parts:
        # Litestar puts msgspec's decode error (malformed JSON) in the detail.
        detail = exc.detail or "the request is invalid"
        if detail.startswith("Validation failed"):
            return "invalid request"
        return f"malformed JSON body: {detail}"
    return "invalid request: " + "; ".join(parts)


def _on_command_error(_: Request[Any, Any, Any], exc: CommandError) -> Response[ErrorResponse]:
    return _error(exc.status, exc.message)


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorResponse]:
    return _error(400, _validation_message(request, exc))


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    if status == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    elif status == 413:
        limit = request.app.state.get("max_body_bytes")
        message = "the request body is too large" + (f" (limit {limit} bytes)" if limit else "")
    elif status >= 500:
        log.error("http error", status=status, detail=exc.detail, path=request.url.path)
        message = "internal error in the gateway; see its log"
    elif status == 400 and exc.detail:
        # msgspec's decode errors ("Input data was truncated", "invalid character") arrive here.
        message = f"malformed JSON body: {exc.detail}"
    else:
        message = exc.detail or "bad request"
    # A 405 carries the methods the path allows (`Allow`), as HTTP requires: sorted, as OPTIONS lists them.
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    if "allow" in headers:
        headers["allow"] = ", ".join(sorted(m.strip() for m in headers["allow"].split(",")))
    return _error(status, message, headers=headers or None)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    log.exception("unhandled error", path=request.url.path, method=request.method, exc_info=exc)
    return _error(HTTP_500_INTERNAL_SERVER_ERROR, "internal error in the gateway; see its log")


exception_handlers: dict[type[Exception] | int, Any] = {
    CommandError: _on_command_error,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Exception: _on_unexpected,
}

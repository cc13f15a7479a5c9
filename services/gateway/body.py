"""Strict request bodies.

Litestar converts bodies with `strict=False`, which would accept `"4"` for an integer. Clients must get a 400
for a wrong type, so every route with a body first decodes it strictly with the same msgspec Struct (a
`before_request` hook); Litestar's own conversion then only sees bodies that already passed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec
from litestar import Request

from shared.commands import Invalid
from shared.ids import ID_RE, IDEMPOTENCY_KEY_RE, NAME_RE, WORKFLOW_RE
from shared.nesting import MAX_NESTING, nesting_exceeds

S = TypeVar("S", bound=msgspec.Struct)
TOO_DEEP = f"the body nests too deeply: config and metadata may nest at most {MAX_NESTING} levels"

__all__ = ["humanize", "strict_body"]

_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>.*)`$")
_PATTERNS = {
    f"matching regex '{ID_RE.pattern}'": "of 1-128 characters of A-Z, a-z, 0-9, '_' or '-'",
    f"matching regex '{NAME_RE.pattern}'": "of 1-64 characters of A-Z, a-z, 0-9, '_' or '-' without '__'",
    f"matching regex '{WORKFLOW_RE.pattern}'": "of 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.' or ':'",
    f"matching regex '{IDEMPOTENCY_KEY_RE.pattern}'": "of 1-255 characters of A-Z, a-z, 0-9, '_', '-', '.' or ':'",
}


def humanize(message: str) -> str:
    """msgspec's `Expected ... - at `$.a[0].b`` → `a[0].b: Expected ...`, regexes replaced by their meaning."""
    for raw, nice in _PATTERNS.items():
        message = message.replace(raw, nice)
    message = message.replace("Expected `array` of length >= 1", "must not be empty")
    match = _AT.match(message)
    if match:
        path = match["path"].lstrip(".")
        return f"{path}: {match['msg']}" if path else match["msg"]
    return message


def strict_body(struct_type: type[S], free_form: Callable[[S], Iterable[tuple[str, Any]]] | None = None) -> Any:
    """A `before_request` hook: the body must decode strictly as `struct_type`, and each free-form value
    `free_form` names (field path, value) may nest at most MAX_NESTING levels."""
    decoder: msgspec.json.Decoder[S] = msgspec.json.Decoder(struct_type)

    async def check(request: Request[Any, Any, Any]) -> None:
        raw = await request.body()
        if not raw.strip():
            raise Invalid("the body is empty; a JSON object is required")
        try:
            body = decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise Invalid(f"invalid request: {humanize(str(exc))}") from None
        except msgspec.DecodeError as exc:
            raise Invalid(f"malformed JSON body: {exc}") from None
        except RecursionError:
            raise Invalid(TOO_DEEP) from None
        for path, value in free_form(body) if free_form is not None else ():
            if nesting_exceeds(value):
                raise Invalid(f"invalid request: {path} nests deeper than {MAX_NESTING} levels")

    return check

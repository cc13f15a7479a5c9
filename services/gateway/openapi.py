"""OpenAPI: our error body per status, the request-Struct rules Litestar does not carry into the schema, and
the API explorer served from a pip-installed Swagger UI (no CDN: it works offline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Router
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Operation, RequestBody, Schema
from litestar.params import Parameter
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from shared.api import ErrorResponse
from shared.ids import ID_RE

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.typing import FieldDefinition

__all__ = [
    "ASSETS_PATH",
    "SSE_RESPONSE",
    "OptionalBody",
    "PathId",
    "ServerSentEvent",
    "StrictStructSchemaPlugin",
    "errors",
    "explorer",
    "explorer_assets",
]

ASSETS_PATH = "/schema/assets"


@dataclass
class OptionalBody(Operation):
    """`operation_class=` of a route whose body may be left out (`data: X | None = None`): Litestar documents
    every request body as required."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


PathId = Annotated[str, Parameter(pattern=ID_RE.pattern, description="1-128 characters of A-Z, a-z, 0-9, '_' or '-'")]
"""An id in a URL path (`{workerId}`, `{executionId}`): validated, and documented with its pattern."""


class ServerSentEvent(msgspec.Struct, kw_only=True):
    """One event of a `text/event-stream` answer, as OpenAPI 3.1 documents a stream: its fields. `data` is
    the JSON of a jetdag event (docs/events.md); a first event carries only `retry`."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None


SSE_RESPONSE = {
    200: ResponseSpec(
        ServerSentEvent, media_type="text/event-stream", description="Server-sent events, one per jetdag event"
    )
}
"""`responses=` of a route answering `text/event-stream`."""


_DESCRIPTIONS = {
    400: "Malformed or invalid request; `error` names the field",
    401: "API tokens are configured and the request has none, or an unknown one",
    403: "The token's scope does not allow this, or the request's Origin or Host is not allowed",
    415: "A request that changes something must be `Content-Type: application/json`",
    404: "The worker or execution does not exist",
    409: "The request conflicts with the resource's state",
    413: "The body is larger than the configured limit",
    429: "The token has as many open executions as it may (JETDAG_MAX_OPEN_EXECUTIONS_PER_TOKEN)",
    503: "A backing service (NATS, the registry, the scheduler) did not answer in time",
}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` for a route: each status with the `{success: false, error}` body."""
    return {
        s: ResponseSpec(ErrorResponse, description=_DESCRIPTIONS[s], generate_examples=False)
        for s in (*statuses, 401, 403, 503)
    }


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's schema of a msgspec Struct, plus what the Struct enforces and Litestar leaves out:
    `additionalProperties: false` for Structs that forbid unknown fields (every request body), the exclusive
    bounds (`gt`, `lt`) of optional numbers, and the `format` a field's `Meta(extra_json_schema=...)` declares
    (`date-time` on every time)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        assert isinstance(info, msgspec.inspect.StructType)
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        for field in info.fields:
            prop = (schema.properties or {}).get(field.encode_name)
            if not isinstance(prop, Schema):
                continue
            arms = [arm for arm in prop.one_of or [prop] if isinstance(arm, Schema)]
            fmt, bounds = _declared(field.type)
            for arm in arms:
                if fmt is not None and arm.type == "string":
                    arm.format = fmt
                if bounds is not None and arm.type in ("number", "integer"):
                    arm.exclusive_minimum = bounds.gt if bounds.gt is not None else arm.exclusive_minimum
                    arm.exclusive_maximum = bounds.lt if bounds.lt is not None else arm.exclusive_maximum
                    arm.minimum = bounds.ge if bounds.ge is not None else arm.minimum
                    arm.maximum = bounds.le if bounds.le is not None else arm.maximum
        return schema


def _declared(
    field_type: msgspec.inspect.Type,
) -> tuple[Any, msgspec.inspect.IntType | msgspec.inspect.FloatType | None]:
    """The declared `format` and numeric bounds of a field's type, looking through `X | None` and Meta."""
    fmt: Any = None
    bounds: msgspec.inspect.IntType | msgspec.inspect.FloatType | None = None
    types = field_type.types if isinstance(field_type, msgspec.inspect.UnionType) else (field_type,)
    for arm in types:
        inner = arm
        if isinstance(arm, msgspec.inspect.Metadata):
            if arm.extra_json_schema and fmt is None:
                fmt = arm.extra_json_schema.get("format")
            inner = arm.type
        if isinstance(inner, msgspec.inspect.IntType | msgspec.inspect.FloatType):
            bounds = inner
    return fmt, bounds


def explorer() -> SwaggerRenderPlugin:
    """Swagger UI at `/schema` and `/schema/swagger`, its scripts and styles from `explorer_assets`."""
    return SwaggerRenderPlugin(
        path=["/", "/swagger"],
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )


def explorer_assets() -> Router:
    """The Swagger UI files of the `swagger-ui-bundle-v2` wheel, at ASSETS_PATH."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[str(swagger_ui_path)], include_in_schema=False, name="explorer-assets"
    )

"""The OpenAPI document says what the server really answers: every status, with the one error envelope.

FastAPI documents a 422 for every route with parameters; this server answers validation errors with 400
in the envelope (as vLLM does), so the 422 and its schema are replaced by what routes declare here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, starting with the field it is about")
    type: str = Field(
        description="invalid_request_error | not_found_error | service_unavailable | server_error"
    )
    param: str | None = Field(description="the offending field, e.g. items[2].image; null when none")
    code: str = Field(description="machine-readable reason, e.g. invalid_base64, set_not_found")


class ErrorResponse(BaseModel):
    error: ErrorDetail


_WHEN = {
    400: "A field is missing, ill-typed or out of range (the envelope's param names it)",
    401: "API keys are configured and the request has none, or an unknown one",
    404: "An id or set that does not exist (or belongs to another tenant)",
    413: "The body, an image, the request's images together or a metadata object is over its limit",
    503: "Starting (not_ready), the bank unreachable (bank_unreachable, with Retry-After) or the engine unhealthy",
}


# One server-sent event of a stream: its data is a chunk as JSON, an error envelope, or [DONE].
SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status it can answer with the error envelope."""
    return {status: {"model": ErrorResponse, "description": _WHEN[status]} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

"""One error envelope for every failure: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bank import BANK_UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

BANK_UNAVAILABLE_MESSAGE = "the demonstration bank is unreachable; retry shortly"
RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error the caller sees. Services raise these; routes never build error responses."""

    status_code = 400
    type = "invalid_request_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        if param and not message.startswith(f"{param}:"):
            message = f"{param}: {message}"  # every message names its field, wherever it was raised
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class NotFoundError(APIError):
    status_code = 404
    type = "not_found_error"


class PayloadTooLargeError(APIError):
    status_code = 413


class ServiceUnavailableError(APIError):
    status_code = 503
    type = "service_unavailable"


def _body(message: str, type_: str, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def envelope(
    status: int, message: str, type_: str, param: str | None, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=_body(message, type_, param, code), headers=headers)


def error_body(exc: BaseException) -> dict[str, Any]:
    """The envelope for any exception, for the places that cannot send a status (a stream under way)."""
    if isinstance(exc, APIError):
        return _body(exc.message, exc.type, exc.param, exc.code)
    if isinstance(exc, BANK_UNAVAILABLE_ERRORS):
        return _body(BANK_UNAVAILABLE_MESSAGE, ServiceUnavailableError.type, None, "bank_unreachable")
    return _body("internal server error", "server_error", None, "internal_error")


def param_path(loc: Sequence[Any]) -> str | None:
    """``("body", "items", 0, "image")`` -> ``"items[0].image"``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return envelope(exc.status_code, exc.message, exc.type, exc.param, exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = param_path(first.get("loc", ()))
        if first.get("type") == "json_invalid":
            return envelope(
                400, "request body is not valid JSON", "invalid_request_error", None, "invalid_json"
            )
        message = first.get("msg", "invalid value")
        if param:
            message = f"{param}: {message}"
        code = "missing" if first.get("type") == "missing" else "invalid_value"
        return envelope(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # Starlette's own headers matter: a 405 carries the Allow header the caller needs.
        return envelope(
            exc.status_code, str(exc.detail), type_, None, f"http_{exc.status_code}", headers=exc.headers
        )

    async def _bank_unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("bank unreachable: %s", exc)
        return envelope(
            503,
            BANK_UNAVAILABLE_MESSAGE,
            ServiceUnavailableError.type,
            None,
            "bank_unreachable",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    for error_class in BANK_UNAVAILABLE_ERRORS:
        app.add_exception_handler(error_class, _bank_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return envelope(500, "internal server error", "server_error", None, "internal_error")

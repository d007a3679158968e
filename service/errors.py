"""The JSON error envelope and the exception handlers that produce it.

Every 4xx and 5xx body is `{"error": {"code": ..., "message": ...}}`. Messages name
the field and the rule that failed, never the bytes that were sent: request data can
be a credential, a presigned URL or just hostile.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# Codes for the plain HTTP errors that Starlette raises on its own.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error that maps straight to a JSON error response."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def not_found(what: str = "recording") -> ApiError:
    """Build the one 404 used for both missing and foreign objects, so they look alike."""
    return ApiError(404, "not_found", f"{what} not found")


def error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status_code, headers=headers
    )


def _describe_validation_error(error: dict[str, Any]) -> str:
    # loc is like ("body", "size_bytes"); the "input" key is deliberately ignored.
    loc = list(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        return "request body is not valid JSON"
    if error.get("type") == "extra_forbidden":
        # The last part of loc is the unknown key itself, which the client sent.
        loc = [*loc[:-1], "<unknown field>"]
    location = ".".join(str(part) for part in loc if part != "body") or "body"
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "value_error":
        # pydantic prefixes the message of a ValueError raised in a validator.
        message = message.removeprefix("Value error, ")
    return f"{location}: {message}"


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    message = "; ".join(_describe_validation_error(error) for error in errors[:5])
    return error_response(422, "invalid_request", message or "invalid request")


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    # Starlette's own details are fixed phrases ("Not Found", "Method Not Allowed")
    # or body-parsing errors; none of them contains request bytes.
    message = str(exc.detail).lower() if exc.detail else code.replace("_", " ")
    return error_response(exc.status_code, code, message, getattr(exc, "headers", None))


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log, never to the client.
    logger.exception(
        "unhandled error on %s %s", request.method, request.url.path, exc_info=exc
    )
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)

"""The request body size cap, whose rejections use petvault's JSON error envelope.

Without a cap, a route that parses JSON reads a body of any size into memory first.
FastAPI's own `max_body_size` rejects a too-large Content-Length with a plain-text
body (FastAPI 0.165), which would break the rule that every error is the envelope.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response


class BodySizeLimitMiddleware:
    """Reject request bodies larger than `max_bytes` with 413 `payload_too_large`.

    A declared Content-Length above the cap is rejected before the app runs. A chunked
    body is counted as the app reads it, and the read that passes the cap raises.
    Whatever the app then does with that error, this middleware discards the app's
    response and sends the 413 itself, so the status does not depend on the order of
    the middleware inside it. Only a response that started before the cap was
    passed goes out unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"request body is larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(413, "payload_too_large", self.message)
            await response(scope, receive, send)
            return

        received = 0
        response_started = False
        rejected = False

        async def receive_with_limit() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = not response_started
                    # An HTTPException, because FastAPI turns any other error raised
                    # while it reads the body into 400 "error parsing the body". A
                    # Starlette BaseHTTPMiddleware inside this one wraps it in an
                    # ExceptionGroup, which gets that 400 all the same, so the 413 is
                    # sent below whatever response the app makes.
                    raise HTTPException(413, self.message)
            return message

        async def send_unless_rejected(message: Message) -> None:
            nonlocal response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_with_limit, send_unless_rejected)
        except Exception:
            if not rejected:
                raise
        if rejected:
            response = error_response(413, "payload_too_large", self.message)
            await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    try:
        return int(Headers(scope=scope)["content-length"])
    except (KeyError, ValueError):
        return None

"""The admin application: operator routes under `/admin/v1`, and the audit of every request.

It is served only on the admin listener, whose TLS handshake accepts certificates
from the operator CA alone. `AuditEveryRequest` writes one audit entry per request,
whatever the outcome: a handler cannot forget it, and a request that fails
validation is recorded like one that succeeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.body_limit import BodySizeLimitMiddleware
from service.errors import install_error_handlers
from service.operators import fingerprint_of_pem, read_operator_certificate
from service.routes.admin import router as admin_router
from service.runtime import Runtime
from service.transport import client_certificate_from_scope

logger = logging.getLogger(__name__)

# The largest request is an enrollment: a CSR or certificate of at most 64 KiB in JSON.
MAX_ADMIN_BODY_BYTES = 256 * 1024
# Error bodies are small JSON envelopes, so their start is enough to read the error code.
_MAX_ERROR_BODY_BYTES = 4096


def _actor_from(scope: Scope) -> dict[str, Any]:
    pem = client_certificate_from_scope(scope)  # type: ignore[arg-type]
    if pem is None:
        return {"type": "anonymous"}
    operator = read_operator_certificate(pem)
    if operator is not None:
        return operator.as_actor()
    return {"type": "certificate", "fingerprint": fingerprint_of_pem(pem)}


def _result_of(status: int) -> str:
    if status < 400:
        return "success"
    if status < 500:
        return "rejected"
    return "failed"


def _error_code_of(body: bytes) -> str | None:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


class AuditEveryRequest:
    """ASGI middleware that appends one audit entry per admin request.

    The action is the matched route's name (such as `device.revoke`), or
    `admin.unmatched_route` for a 404 or 405 from routing. Successful reads are
    coalesced per operator, action and target, so polling the audit log does not
    flood it; every change and every rejection is written.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        status = 500
        error_body = bytearray()

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400:
                room = _MAX_ERROR_BODY_BYTES - len(error_body)
                error_body.extend(message.get("body", b"")[:room])
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        except Exception:
            status = 500
            raise
        finally:
            await self._record(scope, status, bytes(error_body))

    async def _record(self, scope: Scope, status: int, error_body: bytes) -> None:
        runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
        if runtime is None:
            return

        route = scope.get("route")
        if route is not None and scope["method"] not in (getattr(route, "methods", None) or ()):
            route = None  # the path matched but the method did not, so routing returned 405
        action = getattr(route, "name", None) or "admin.unmatched_route"
        state: dict[str, Any] = scope.get("state") or {}
        path_params: dict[str, Any] = scope.get("path_params") or {}
        target = state.get("audit_target") or next(iter(path_params.values()), None)

        details: dict[str, Any] = {"method": scope["method"], "status": status}
        if route is None:
            details["path"] = scope["path"][:200]
        details.update(state.get("audit_details") or {})
        if status >= 400:
            details["error"] = _error_code_of(error_body)

        client = scope.get("client")
        await runtime.audit.record(
            action=action,
            actor=_actor_from(scope),
            target=str(target)[:200] if target is not None else None,
            source_ip=client[0] if client else None,
            result=_result_of(status),
            details=details,
            coalesce=scope["method"] in ("GET", "HEAD") and status < 400,
        )


async def _no_store(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def create_admin_app(runtime: Runtime) -> FastAPI:
    """Build the admin API around a runtime shared with the other listeners."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime  # the server opens and closes it
        yield

    app = FastAPI(
        title="petvault admin API",
        version="1",
        summary="Device enrollment, revocation, suspension, rate-limit overrides, the CRL "
        "and the audit log, for operators with a certificate from the operator CA.",
        docs_url="/admin/v1/docs",
        redoc_url=None,
        openapi_url="/admin/v1/openapi.json",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.middleware("http")(_no_store)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_ADMIN_BODY_BYTES)
    app.add_middleware(AuditEveryRequest)  # outermost, so it records rejections by the others
    app.include_router(admin_router)
    return app

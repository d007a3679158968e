"""Application factories: the device API and the plain-HTTP health endpoint."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from service.body_limit import BodySizeLimitMiddleware
from service.config import Settings
from service.errors import install_error_handlers
from service.limits import RateLimitHeadersMiddleware
from service.routes import device
from service.runtime import Runtime, open_runtime
from service.storage.mongo import StoreUnavailableError
from service.storage.s3 import ObjectStoreUnavailableError

logger = logging.getLogger(__name__)

SECURITY_TXT = """\
Contact: mailto:security@petvault.example
Expires: 2027-12-31T23:59:59Z
Preferred-Languages: en
Policy: https://petvault.example/security-policy
"""

# Device API request bodies are JSON of a few hundred bytes, because audio goes
# straight to S3.
MAX_REQUEST_BODY_BYTES = 16 * 1024


async def _no_store(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    # Responses carry presigned URLs, which are bearer credentials: keep them out of caches.
    response = await call_next(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _lifespan_for(settings: Settings, runtime: Runtime | None) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            # Shared with the other listeners of this process; the caller closes it.
            app.state.runtime = runtime
            yield
            return
        async with open_runtime(settings) as own_runtime:
            app.state.runtime = own_runtime
            yield

    return lifespan


def create_device_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the device API.

    Args:
        settings: Service settings.
        runtime: A runtime shared with other listeners. Without one, the app's lifespan
            opens (and closes) its own, which is what `uvicorn --factory` workers use.
    """
    app = FastAPI(
        title="petvault device API",
        version="1",
        summary="Recordings for devices that authenticate with mutual TLS.",
        lifespan=_lifespan_for(settings, runtime),
    )
    install_error_handlers(app)
    # Added first, so it is the innermost middleware. Its 413 must reach FastAPI's body
    # parsing as it is, and the `_no_store` middleware would wrap it in an ExceptionGroup.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_REQUEST_BODY_BYTES)
    app.middleware("http")(_no_store)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.include_router(device.router)

    @app.get("/.well-known/security.txt", include_in_schema=False)
    async def security_txt() -> PlainTextResponse:
        return PlainTextResponse(SECURITY_TXT)

    return app


def create_app_from_env() -> FastAPI:
    """Device API from `PETVAULT_*` variables, for `uvicorn --factory` and multi-worker runs."""
    return create_device_app(Settings())


def create_health_app(runtime_getter: Callable[[], Runtime | None]) -> FastAPI:
    """Build the health app, served over plain HTTP on loopback for container probes."""
    app = FastAPI(title="petvault health", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    # Endpoints read the getter from app.state rather than closing over it: FastAPI
    # caches endpoint callables process-wide (0.165), so a closure would keep every
    # server a test process ever started alive.
    app.state.runtime_getter = runtime_getter
    app.include_router(_health_router)
    return app


_health_router = APIRouter()


@_health_router.get("/healthz")
async def _healthz(request: Request) -> Response:
    runtime: Runtime | None = request.app.state.runtime_getter()
    if runtime is None:
        return _health_response(503, {"status": "starting"})
    checks: dict[str, str] = {}
    try:
        await runtime.store.ping()
        checks["mongodb"] = "ok"
    except StoreUnavailableError:
        checks["mongodb"] = "unavailable"
    try:
        await runtime.objects.check_bucket()
        checks["s3"] = "ok"
    except ObjectStoreUnavailableError:
        checks["s3"] = "unavailable"
    if runtime.crl is not None:
        # "stale" once nextUpdate has passed: relying parties then reject the CRL.
        checks["crl"] = runtime.crl.health()
    healthy = all(value == "ok" for value in checks.values())
    return _health_response(
        200 if healthy else 503, {"status": "ok" if healthy else "degraded", "checks": checks}
    )


@_health_router.get("/.well-known/security.txt", include_in_schema=False)
async def _health_security_txt() -> PlainTextResponse:
    return PlainTextResponse(SECURITY_TXT)


def _health_response(status_code: int, body: dict[str, Any]) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status_code)

"""FastAPI dependencies: the runtime, and the authenticated, rate-limited device."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from fastapi import Request

from service.errors import ApiError
from service.identity import fingerprint_of, read_presented_certificate
from service.limits import RouteClass
from service.runtime import Runtime
from service.storage.mongo import ACTIVE, REVOKED, SUSPENDED, DeviceRecord, StoreUnavailableError
from service.transport import client_certificate_from_scope

logger = logging.getLogger(__name__)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _fingerprint_of_der_in(pem: str) -> str | None:
    # The ssl module only base64-decodes, so this works where X.509 parsing failed.
    try:
        return fingerprint_of(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError:
        return None


def metadata_unavailable() -> ApiError:
    return ApiError(503, "metadata_store_unavailable", "metadata store unavailable; retry later")


async def current_device(request: Request) -> DeviceRecord:
    """Authenticate the request's client certificate as a registered, active device.

    Raises:
        ApiError: 401 without a certificate, for an unparseable, unregistered or revoked
            one, or when the certificate's device id disagrees with the record;
            403 when the device is suspended; 503 when MongoDB cannot be reached.
    """
    runtime = get_runtime(request)
    source_ip = client_ip(request)

    pem = client_certificate_from_scope(request.scope)
    if pem is None:
        # The handshake requires a certificate, so this means a misconfigured listener.
        logger.error("request without a client certificate reached the device API")
        raise ApiError(401, "client_certificate_required", "a client certificate is required")

    presented = read_presented_certificate(pem)
    if presented is None:
        logger.warning("unparseable client certificate rejected: ip=%s", source_ip)
        await runtime.audit.record(
            action="auth.invalid_certificate",
            actor={"type": "certificate", "fingerprint": _fingerprint_of_der_in(pem)},
            target=None,
            source_ip=source_ip,
            result="rejected",
            coalesce=True,
        )
        raise ApiError(401, "invalid_certificate", "the client certificate cannot be parsed")

    try:
        record = await runtime.identity.lookup(presented.fingerprint)
    except StoreUnavailableError as exc:
        logger.error("identity lookup failed: %s", exc)
        raise metadata_unavailable() from exc

    if record is None:
        logger.warning(
            "unregistered certificate rejected: fingerprint=%s.. serial=%s ip=%s",
            presented.fingerprint[:16],
            presented.serial,
            source_ip,
        )
        await runtime.audit.record(
            action="auth.certificate_not_registered",
            actor={"type": "certificate", "fingerprint": presented.fingerprint},
            target=presented.device_id,
            source_ip=source_ip,
            result="rejected",
            coalesce=True,
        )
        raise ApiError(
            401, "certificate_not_registered", "the client certificate is not registered"
        )

    if presented.device_id != record.device_id:
        logger.warning(
            "certificate identity mismatch: record=%s problem=%s fingerprint=%s..",
            record.device_id,
            presented.problem or "device id differs",
            presented.fingerprint[:16],
        )
        await runtime.audit.record(
            action="auth.certificate_identity_mismatch",
            actor={"type": "device", "device_id": record.device_id},
            target=record.device_id,
            source_ip=source_ip,
            result="rejected",
            coalesce=True,
        )
        raise ApiError(
            401,
            "certificate_identity_mismatch",
            "the device id in the certificate does not match its registration",
        )

    if record.status != ACTIVE:
        await _reject_inactive(runtime, record, source_ip)

    request.state.device = record
    return record


async def _reject_inactive(runtime: Runtime, record: DeviceRecord, source_ip: str | None) -> None:
    if record.status == SUSPENDED:
        code, status_code, message = "device_suspended", 403, "the device is suspended"
    elif record.status == REVOKED:
        code, status_code, message = "certificate_revoked", 401, "the client certificate is revoked"
    else:
        code, status_code, message = "device_inactive", 403, "the device is not active"
    logger.warning(
        "request by %s device rejected: device=%s ip=%s", record.status, record.device_id, source_ip
    )
    await runtime.audit.record(
        action=f"auth.{code}",
        actor={"type": "device", "device_id": record.device_id},
        target=record.serial,
        source_ip=source_ip,
        result="rejected",
        coalesce=True,
    )
    raise ApiError(status_code, code, message)


def limited_device(route_class: RouteClass) -> Callable[[Request], Awaitable[DeviceRecord]]:
    """Build a dependency that authenticates the device, then applies its rate limits.

    A request whose certificate fails identity with 401 or 403 counts against a limit
    keyed by the certificate's fingerprint; over that limit it gets 429 instead.

    NOTE: FastAPI decodes a JSON body before it runs dependencies, so a request whose
    body is not valid JSON gets its 422 without identity, rate limit or RateLimit
    headers. Closing that gap needs the checks in a route class or middleware that
    runs before the body is read.
    """

    async def authenticated_and_limited(request: Request) -> DeviceRecord:
        rate_limits = get_runtime(request).rate_limits
        try:
            device = await current_device(request)
        except ApiError as exc:
            if exc.status_code in (401, 403):
                await rate_limits.limit_failed_identity(request, exc)
            raise
        await rate_limits.limit_device(request, device, route_class)
        return device

    return authenticated_and_limited

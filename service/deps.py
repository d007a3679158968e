"""FastAPI dependencies: the runtime, and the authenticated device of a request."""

from __future__ import annotations

import logging

from fastapi import Request

from service.errors import ApiError
from service.identity import read_presented_certificate
from service.runtime import Runtime
from service.storage.mongo import ACTIVE, REVOKED, SUSPENDED, DeviceRecord, StoreUnavailableError
from service.transport import client_certificate_from_scope

logger = logging.getLogger(__name__)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


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
        raise ApiError(401, "invalid_certificate", "the client certificate cannot be parsed")

    try:
        record = await runtime.identity.lookup(presented.fingerprint)
    except StoreUnavailableError as exc:
        logger.error("identity lookup failed: %s", exc)
        raise metadata_unavailable() from exc

    if record is None:
        logger.warning(
            "unregistered certificate rejected: fingerprint=%s.. serial=%s ip=%s",
            presented.fingerprint[:16], presented.serial, source_ip,
        )
        await runtime.audit.record(
            action="auth.certificate_not_registered",
            actor={"type": "certificate", "fingerprint": presented.fingerprint},
            target=presented.device_id,
            source_ip=source_ip,
            result="rejected",
            coalesce=True,
        )
        raise ApiError(401, "certificate_not_registered", "the client certificate is not registered")

    if presented.device_id != record.device_id:
        logger.warning(
            "certificate identity mismatch: record=%s problem=%s fingerprint=%s..",
            record.device_id, presented.problem or "device id differs", presented.fingerprint[:16],
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
            401, "certificate_identity_mismatch",
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
    logger.warning("request by %s device rejected: device=%s ip=%s", record.status, record.device_id,
                   source_ip)
    await runtime.audit.record(
        action=f"auth.{code}",
        actor={"type": "device", "device_id": record.device_id},
        target=record.serial,
        source_ip=source_ip,
        result="rejected",
        coalesce=True,
    )
    raise ApiError(status_code, code, message)

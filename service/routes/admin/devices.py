"""Admin routes for devices: enroll, list, read, revoke, suspend and reactivate."""

from __future__ import annotations

from typing import Annotated

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Query, Request, Response

from service import revocation
from service.admin_models import (
    HOUSEHOLD_ID_PATTERN,
    MAX_PAGE_LIMIT,
    DeviceOut,
    DevicePage,
    DeviceStatus,
    EnrollDeviceRequest,
    EnrolledDevice,
    RevocationOut,
    RevokeRequest,
    StatusChangeOut,
    check_device_id,
    decode_cursor,
    device_out,
    encode_cursor,
    revocation_out,
)
from service.enrollment import enroll_device
from service.recordings import MAX_LIST_LIMIT, RecordingPage, recording_out
from service.recordings import decode_cursor as decode_recording_cursor
from service.recordings import encode_cursor as encode_recording_cursor
from service.routes.admin.deps import RuntimeDep, registry_errors, set_audit_context
from service.storage.registry import DeviceRegistry

router = APIRouter(tags=["devices"])


@router.post("/devices", status_code=201, response_model=EnrolledDevice, name="device.enroll")
async def enroll(
    body: EnrollDeviceRequest, request: Request, response: Response, runtime: RuntimeDep
) -> EnrolledDevice:
    """Enroll a device from a CSR (signed by the device CA) or a certificate issued elsewhere.

    A CSR's key must be ECDSA P-256/P-384 or RSA >= 2048 and its signature must
    verify. A certificate must chain to the device CA, be valid now, allow clientAuth
    and name `device_id` in its CN and SAN URI. A revoked device may be enrolled
    again, in the same household, with a key that was never registered.
    """
    path = "csr" if body.csr_pem is not None else "certificate"
    set_audit_context(request, target=body.device_id,
                      details={"household_id": body.household_id, "enrollment": path})
    with registry_errors():
        view, certificate = await enroll_device(
            runtime,
            device_id=body.device_id,
            household_id=body.household_id,
            csr_pem=body.csr_pem,
            cert_pem=body.cert_pem,
        )
    set_audit_context(request, details={"serial": format(certificate.serial_number, "x")})
    response.headers["Location"] = f"/admin/v1/devices/{body.device_id}"
    return EnrolledDevice(
        device=device_out(view),
        certificate_pem=certificate.public_bytes(Encoding.PEM).decode("ascii"),
    )


@router.get("/devices", response_model=DevicePage, name="devices.list")
async def list_devices(
    runtime: RuntimeDep,
    status: DeviceStatus | None = None,
    household_id: Annotated[str | None, Query(pattern=HOUSEHOLD_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DevicePage:
    """List devices in device id order, optionally by status and household, with a cursor."""
    after = decode_cursor(cursor) if cursor else None
    with registry_errors():
        views = await DeviceRegistry(runtime.store).list_devices(
            status=status, household_id=household_id, limit=limit + 1, after_device_id=after
        )
    page = views[:limit]
    next_cursor = encode_cursor(page[-1].device["_id"]) if len(views) > limit else None
    return DevicePage(devices=[device_out(view) for view in page], next_cursor=next_cursor)


@router.get("/devices/{device_id}", response_model=DeviceOut, name="device.read")
async def read_device(device_id: str, runtime: RuntimeDep) -> DeviceOut:
    """Return a device with its certificates: serial, fingerprint, not-after and status."""
    check_device_id(device_id)
    with registry_errors():
        view = await DeviceRegistry(runtime.store).get_device(device_id)
    return device_out(view)


@router.get("/devices/{device_id}/recordings", response_model=RecordingPage,
            name="device.recordings")
async def list_device_recordings(
    device_id: str,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RecordingPage:
    """List a device's recordings, newest first, whatever the device's status.

    Revoking or suspending a device keeps its recordings. This route returns their
    metadata only, never a presigned URL.
    """
    check_device_id(device_id)
    after = decode_recording_cursor(cursor) if cursor else None
    with registry_errors():
        await DeviceRegistry(runtime.store).get_device(device_id)
        documents = await runtime.store.list_recordings(device_id, limit=limit + 1, after=after)
    page = documents[:limit]
    next_cursor = encode_recording_cursor(page[-1]) if len(documents) > limit else None
    return RecordingPage(recordings=[recording_out(doc) for doc in page], next_cursor=next_cursor)


@router.post("/devices/{device_id}/revoke", response_model=RevocationOut, name="device.revoke")
async def revoke_device(
    device_id: str, body: RevokeRequest, request: Request, runtime: RuntimeDep
) -> RevocationOut:
    """Revoke a device and every one of its certificates, permanently.

    The device's next request is rejected with 401 `certificate_revoked`: at once on
    this instance, and within 1 s on every instance that shares the database, on
    open keep-alive connections too. Revoking again returns 200 with the original
    time and reason. The device's recordings stay stored.
    """
    check_device_id(device_id)
    set_audit_context(request, details={"reason": body.reason})
    with registry_errors():
        result = await revocation.revoke_device(runtime, device_id, body.reason)
    device = result.change.view.device
    set_audit_context(request, details={
        "already_revoked": not result.change.changed,
        "serials": [doc["_id"] for doc in result.change.view.certificates
                    if doc.get("status") == "revoked"],
    })
    return revocation_out(device, result.change.view, changed=result.change.changed,
                          crl_number=result.crl_number)


@router.post("/devices/{device_id}/suspend", response_model=StatusChangeOut, name="device.suspend")
async def suspend_device(device_id: str, runtime: RuntimeDep) -> StatusChangeOut:
    """Block a device until it is reactivated. Its requests get 403 `device_suspended`.

    Unlike a revocation this is reversible and does not appear on the CRL. A revoked
    device gets 409.
    """
    check_device_id(device_id)
    with registry_errors():
        change = await revocation.suspend_device(runtime, device_id)
    return StatusChangeOut(changed=change.changed, device=device_out(change.view))


@router.post("/devices/{device_id}/reactivate", response_model=StatusChangeOut,
             name="device.reactivate")
async def reactivate_device(device_id: str, runtime: RuntimeDep) -> StatusChangeOut:
    """Lift a suspension. A revoked device gets 409 because revocation is permanent."""
    check_device_id(device_id)
    with registry_errors():
        change = await revocation.reactivate_device(runtime, device_id)
    return StatusChangeOut(changed=change.changed, device=device_out(change.view))


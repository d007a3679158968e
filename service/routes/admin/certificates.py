"""Admin routes for single certificates: revoking one serial."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import revocation
from service.admin_models import RevocationOut, RevokeRequest, normalize_serial, revocation_out
from service.routes.admin.deps import RuntimeDep, registry_errors, set_audit_context

router = APIRouter(tags=["certificates"])


@router.post("/certificates/{serial}/revoke", response_model=RevocationOut,
             name="certificate.revoke")
async def revoke_certificate(
    serial: str, body: RevokeRequest, request: Request, runtime: RuntimeDep
) -> RevocationOut:
    """Revoke one certificate by its serial (hex), permanently.

    The device keeps its other certificates. A device left without an active
    certificate is revoked as well, so that it can be enrolled again with a new key.
    Revoking again returns 200 with the original time and reason.
    """
    normalized = normalize_serial(serial)
    set_audit_context(request, target=normalized, details={"reason": body.reason})
    with registry_errors():
        result = await revocation.revoke_certificate(runtime, normalized, body.reason)
    certificate = result.change.certificate
    assert certificate is not None
    set_audit_context(request, details={
        "already_revoked": not result.change.changed,
        "device_id": certificate["device_id"],
    })
    return revocation_out(certificate, result.change.view, changed=result.change.changed,
                          crl_number=result.crl_number, certificate=certificate)

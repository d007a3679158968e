"""Admin routes for the device CA's CRL, in DER and in PEM."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.crl import SignedCrl
from service.errors import ApiError
from service.routes.admin.deps import RuntimeDep, registry_errors
from service.runtime import Runtime

router = APIRouter(tags=["crl"])

_CRL_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/pkix-crl": {}}, "description": "DER-encoded X.509 CRL"},
}
_CRL_PEM_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"application/x-pem-file": {}}, "description": "PEM-encoded X.509 CRL"},
}


async def _current_crl(runtime: Runtime) -> SignedCrl:
    if runtime.crl is None:
        raise ApiError(
            503, "device_ca_unavailable",
            "the device CA key is not available, so no CRL is signed; set PETVAULT_DEVICE_CA_KEY",
        )
    with registry_errors():
        return await runtime.crl.ensure_current()


@router.get("/crl", response_class=Response, responses=_CRL_RESPONSES, name="crl.read")
async def read_crl(runtime: RuntimeDep) -> Response:
    """Return the CRL signed by the device CA (DER, `application/pkix-crl`).

    It lists every revoked serial with its revocation time and RFC 5280 reason code,
    and carries thisUpdate, nextUpdate (24 h later by default) and a CRL number. A new
    CRL is signed on every revocation and again at half its validity.
    """
    crl = await _current_crl(runtime)
    return Response(crl.der, media_type="application/pkix-crl")


@router.get("/crl.pem", response_class=Response, responses=_CRL_PEM_RESPONSES,
            name="crl.read_pem")
async def read_crl_pem(runtime: RuntimeDep) -> Response:
    """Return the same CRL as `/crl`, PEM-encoded."""
    crl = await _current_crl(runtime)
    return Response(crl.pem, media_type="application/x-pem-file")

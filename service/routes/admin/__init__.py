"""The admin API under `/admin/v1`, one router per resource.

Every route requires an operator certificate (`service.operators.current_operator`);
the admin listener's handshake has already rejected device certificates and
connections without a certificate.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.operators import current_operator
from service.routes.admin.audit import router as audit_router
from service.routes.admin.certificates import router as certificates_router
from service.routes.admin.crl import router as crl_router
from service.routes.admin.devices import router as devices_router
from service.routes.admin.rate_limits import router as rate_limits_router

router = APIRouter(prefix="/admin/v1", dependencies=[Depends(current_operator)])
router.include_router(devices_router)
router.include_router(rate_limits_router)
router.include_router(certificates_router)
router.include_router(crl_router)
router.include_router(audit_router)

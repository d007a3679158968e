"""Shared pieces of the admin routers: the audit context of a request, and error mapping.

Registry and enrollment errors become the API's error envelope in one place, so
every route returns the same 404 for a missing device, a conflict with 409 and an
unreachable database with 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request

from service.deps import get_runtime, metadata_unavailable
from service.enrollment import DeviceCaUnusableError, EnrollmentRejectedError
from service.errors import ApiError, not_found
from service.operators import OperatorIdentity, current_operator
from service.runtime import Runtime
from service.storage.mongo import StoreUnavailableError
from service.storage.registry import (
    CertificateNotFoundError,
    DeviceNotFoundError,
    RegistryConflictError,
)

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
Operator = Annotated[OperatorIdentity, Depends(current_operator)]


def set_audit_context(
    request: Request, *, target: str | None = None, details: dict[str, Any] | None = None
) -> None:
    """Give this request's audit entry its target and extra details.

    Details must never hold credentials, key material or presigned URLs.
    """
    if target is not None:
        request.state.audit_target = target
    if details:
        existing: dict[str, Any] = getattr(request.state, "audit_details", {})
        request.state.audit_details = {**existing, **details}


@contextmanager
def registry_errors() -> Iterator[None]:
    """Translate registry, enrollment and store exceptions into `ApiError`."""
    try:
        yield
    except DeviceNotFoundError:
        raise not_found("device") from None
    except CertificateNotFoundError:
        raise not_found("certificate") from None
    except RegistryConflictError as exc:
        raise ApiError(409, exc.code, exc.message) from None
    except EnrollmentRejectedError as exc:
        raise ApiError(422, exc.code, exc.message) from None
    except DeviceCaUnusableError as exc:
        raise ApiError(503, "device_ca_unavailable", str(exc)) from None
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc

"""Admin routes for a device's rate-limit override: set it, or clear it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import rate_limit_overrides
from service.admin_models import (
    EffectiveRateLimitsOut,
    RateLimitChangeOut,
    RateLimitOverrideRequest,
    check_device_id,
    device_out,
)
from service.errors import ApiError
from service.limits import format_rate_limits
from service.routes.admin.deps import RuntimeDep, registry_errors, set_audit_context
from service.runtime import Runtime
from service.storage.mongo import stored_rate_limit_override
from service.storage.registry import RateLimitOverrideChange

router = APIRouter(tags=["rate limits"])


@router.put("/devices/{device_id}/rate-limits", response_model=RateLimitChangeOut,
            name="device.rate_limits.set")
async def set_rate_limits(
    device_id: str, body: RateLimitOverrideRequest, request: Request, runtime: RuntimeDep
) -> RateLimitChangeOut:
    """Give a device its own limits, replacing any override set before.

    Each route class that the body names takes these limits; the others keep
    PETVAULT_RATE_LIMIT_OVERRIDES or the fleet's limits. The device's next request
    counts against them at once on this instance, and within 1 s on every instance
    that shares the database. A new limit starts with an empty window.
    """
    check_device_id(device_id)
    try:
        override = rate_limit_overrides.check_override(body.named_limits())
    except ValueError as exc:
        raise ApiError(422, "invalid_rate_limits", str(exc)) from None
    set_audit_context(request, details={"rate_limits": override})

    with registry_errors():
        change = await rate_limit_overrides.set_override(runtime, device_id, override)
    set_audit_context(request, details={"changed": change.changed, "previous": change.previous})
    return _change_out(runtime, change)


@router.delete("/devices/{device_id}/rate-limits", response_model=RateLimitChangeOut,
               name="device.rate_limits.clear")
async def clear_rate_limits(
    device_id: str, request: Request, runtime: RuntimeDep
) -> RateLimitChangeOut:
    """Remove a device's override, so PETVAULT_RATE_LIMIT_OVERRIDES or the fleet's limits apply.

    Clearing a device without an override returns 200 with `changed` false.
    """
    check_device_id(device_id)
    with registry_errors():
        change = await rate_limit_overrides.clear_override(runtime, device_id)
    set_audit_context(request, details={"changed": change.changed, "previous": change.previous})
    return _change_out(runtime, change)


def _change_out(runtime: Runtime, change: RateLimitOverrideChange) -> RateLimitChangeOut:
    return RateLimitChangeOut(
        changed=change.changed,
        device=device_out(change.view),
        effective_rate_limits=_effective_limits(runtime, change.view.device),
    )


def _effective_limits(runtime: Runtime, device: dict[str, object]) -> EffectiveRateLimitsOut | None:
    policies = runtime.rate_limits.policies
    if policies is None:
        return None
    override = stored_rate_limit_override(device.get("rate_limits"))
    policy = policies.policy_for(str(device["_id"]), override)
    return EffectiveRateLimitsOut(
        default=format_rate_limits(policy.default),
        upload=None if policy.upload is None else format_rate_limits(policy.upload),
        download=None if policy.download is None else format_rate_limits(policy.download),
    )

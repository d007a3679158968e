"""Per-device rate limits: the policy, the counters, and how requests meet them.

Every limit is keyed on the verified identity from the client certificate, never on
the client address or a header, so two devices behind one NAT never share a budget:

- a request that passes identity counts against its device's budget, keyed by the
  device id;
- a request whose certificate fails identity (unregistered, revoked, suspended)
  counts against a limit keyed by that certificate's SHA-256 fingerprint, so
  replaying or guessing certificates is slowed down as well.

Every limit uses the moving-window strategy, so no window boundary lets a burst
through; `service.limit_storage` keeps the counters and explains the choice.

**Why not slowapi's decorator.** slowapi 0.1.10 calls the storage synchronously on
the event loop, and it sets headers only through a `response` parameter on each route.
Its key function runs either before routing (middleware) or after every dependency
(decorator), so identity failures raised inside a dependency never reach it. This
module awaits `limits.aio` storage from a FastAPI dependency instead. The limit
notation and the counters are the same `limits` code that slowapi uses.

When the limit storage fails or times out, requests get 503 `rate_limiter_unavailable`
(fail-closed) unless `PETVAULT_RATE_LIMIT_FAIL_OPEN` is true.

A device's limits come, per route class, from the first source that names that class:
the override that an operator stored on the device through the admin API, then
`PETVAULT_RATE_LIMIT_OVERRIDES`, then the fleet-wide settings. The stored override
travels in the identity cache's `DeviceRecord`, so a request reads no database for it.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from limits import RateLimitItem, parse_many
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certs.naming import InvalidNameError, validate_device_id
from service.audit import AuditLog
from service.errors import ApiError
from service.identity import fingerprint_of
from service.limit_storage import (
    RateLimitDecision,
    RateLimiter,
    RateLimiterUnavailableError,
    open_limiter,
)
from service.storage.mongo import DeviceRecord
from service.transport import client_certificate_from_scope

if TYPE_CHECKING:
    from service.config import Settings

logger = logging.getLogger(__name__)

RouteClass = Literal["default", "upload", "download"]
DEFAULT: RouteClass = "default"
UPLOAD: RouteClass = "upload"  # POST /v1/recordings, which presigns an upload
DOWNLOAD: RouteClass = "download"  # GET /v1/recordings/{id}, which presigns a download
ROUTE_CLASSES: tuple[RouteClass, ...] = get_args(RouteClass)

# Attribute of `request.state` that carries the decision to the header middleware.
_DECISION_STATE_KEY = "rate_limit"

LIMIT_NOTATION_EXAMPLE = "60/minute;200/hour;400/day"


# --- Parsing the settings ------------------------------------------------------------


def parse_rate_limits(text: str, variable: str) -> tuple[RateLimitItem, ...]:
    """Parse a list of limits that all apply at once.

    Args:
        text: Limits in the `limits` notation, separated by `;`, `,` or `|`:
            ``"60/minute;200/hour;400/day"``, ``"5/2 seconds"``, ``"10 per hour"``.
        variable: The setting's environment variable, named in error messages.

    Raises:
        ValueError: the text is empty or unparseable, a limit allows 0 requests, or
            a limit is listed twice (both would count every request).
    """
    try:
        items = tuple(parse_many(text.strip()))
    except ValueError:
        raise ValueError(
            f"{variable} contains an invalid rate limit list {text!r}; "
            f"write limits like {LIMIT_NOTATION_EXAMPLE!r}"
        ) from None
    if not items:
        raise ValueError(f"{variable} is empty; an empty limit list would allow nothing")
    for item in items:
        if item.amount < 1:
            raise ValueError(f"{variable}: '{item}' allows no request; suspend the device instead")
    if len({(item.amount, item.get_expiry()) for item in items}) != len(items):
        raise ValueError(f"{variable} lists the same limit twice in {text!r}")
    return items


def check_rate_limit_overrides(overrides: Mapping[str, Mapping[str, str]]) -> None:
    """Check per-device overrides: device ids, route classes and limit lists.

    Raises:
        ValueError: naming the device id, the route class or the limit list at fault.
    """
    variable = "PETVAULT_RATE_LIMIT_OVERRIDES"
    for device_id, by_class in overrides.items():
        try:
            validate_device_id(device_id)
        except InvalidNameError as exc:
            raise ValueError(f"{variable}: {exc}") from None
        if not by_class:
            raise ValueError(f"{variable}: the override for {device_id!r} names no route class")
        for route_class, text in by_class.items():
            if route_class not in ROUTE_CLASSES:
                raise ValueError(
                    f"{variable}: unknown route class {route_class!r} for {device_id!r}; "
                    f"use one of {', '.join(ROUTE_CLASSES)}"
                )
            parse_rate_limits(text, f"{variable}[{device_id!r}][{route_class!r}]")


def parse_rate_limit_override(
    override: Mapping[str, str],
) -> dict[RouteClass, tuple[RateLimitItem, ...]]:
    """Parse a per-device override with the parser of `PETVAULT_RATE_LIMITS`.

    Args:
        override: Route class to limit list, e.g. ``{"download": "600/minute"}``.

    Returns:
        The parsed limits of each route class that `override` names.

    Raises:
        ValueError: a route class is unknown or its limit list is invalid. The message
            names the route class and the rule that failed.
    """
    for route_class in override:
        if route_class not in ROUTE_CLASSES:
            raise ValueError(
                f"unknown route class {route_class!r}; use one of {', '.join(ROUTE_CLASSES)}"
            )
    return {
        route_class: parse_rate_limits(override[route_class], route_class)
        for route_class in ROUTE_CLASSES
        if route_class in override
    }


def format_rate_limits(items: tuple[RateLimitItem, ...]) -> str:
    """Format limits in the notation that `parse_rate_limits` reads, e.g. "60 per 1 minute"."""
    return "; ".join(str(item) for item in items)


# --- Policy ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitPolicy:
    """The limits of one device, per route class.

    A route class whose limits are None has no budget of its own: its requests count
    against the device's default budget.
    """

    default: tuple[RateLimitItem, ...]
    upload: tuple[RateLimitItem, ...] | None = None
    download: tuple[RateLimitItem, ...] | None = None

    def budget(self, route_class: RouteClass) -> tuple[RouteClass, tuple[RateLimitItem, ...]]:
        """Return the budget that a request of `route_class` counts against, and its limits."""
        own = {UPLOAD: self.upload, DOWNLOAD: self.download}.get(route_class)
        if own is None:
            return DEFAULT, self.default
        return route_class, own


class RateLimitPolicies:
    """The fleet-wide policy, per-device overrides, and the failed-identity limit."""

    def __init__(
        self,
        fleet: RateLimitPolicy,
        failed_identity: tuple[RateLimitItem, ...],
        overrides: Mapping[str, RateLimitPolicy] | None = None,
    ) -> None:
        self.fleet = fleet
        self.failed_identity = failed_identity
        self._overrides = dict(overrides or {})
        # Every request of a device with a stored override needs its parsed limits, and
        # an invalid one is logged once per distinct value while it stays cached.
        self._parse_stored_override = functools.lru_cache(maxsize=4096)(
            _parse_stored_override
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimitPolicies:
        """Build the policies from `PETVAULT_RATE_LIMIT*` settings, which Settings validated."""
        fleet = RateLimitPolicy(
            default=parse_rate_limits(settings.rate_limits, "PETVAULT_RATE_LIMITS"),
            upload=_optional_limits(settings.rate_limits_upload, "PETVAULT_RATE_LIMITS_UPLOAD"),
            download=_optional_limits(
                settings.rate_limits_download, "PETVAULT_RATE_LIMITS_DOWNLOAD"
            ),
        )
        overrides = {}
        for device_id, by_class in settings.rate_limit_overrides.items():
            # An override replaces only the route classes it names.
            changes = {
                route_class: parse_rate_limits(text, "PETVAULT_RATE_LIMIT_OVERRIDES")
                for route_class, text in by_class.items()
            }
            overrides[device_id] = replace(fleet, **changes)
        failed_identity = parse_rate_limits(
            settings.rate_limit_failed_auth, "PETVAULT_RATE_LIMIT_FAILED_AUTH"
        )
        return cls(fleet, failed_identity, overrides)

    def policy_for(
        self, device_id: str, admin_override: tuple[tuple[str, str], ...] = ()
    ) -> RateLimitPolicy:
        """Return the device's policy, combined per route class.

        Each route class takes its limits from the admin override when it names the
        class, else from `PETVAULT_RATE_LIMIT_OVERRIDES`, else from the fleet.

        Args:
            device_id: The verified device id.
            admin_override: `DeviceRecord.rate_limit_override`, which the identity cache
                keeps current. An invalid stored entry is logged and skipped.
        """
        configured = self._overrides.get(device_id, self.fleet)
        if not admin_override:
            return configured
        stored = self._parse_stored_override(device_id, admin_override)
        return replace(configured, **dict(stored))

    def describe(self) -> str:
        """Summarize the policies in one line for the startup log."""
        def listed(items: tuple[RateLimitItem, ...] | None) -> str:
            return "shares the default budget" if items is None else ", ".join(map(str, items))

        return (
            f"default {listed(self.fleet.default)}; upload {listed(self.fleet.upload)}; "
            f"download {listed(self.fleet.download)}; failed identity "
            f"{listed(self.failed_identity)} per certificate; "
            f"{len(self._overrides)} device override(s) in PETVAULT_RATE_LIMIT_OVERRIDES, "
            "and any set through the admin API"
        )


def _optional_limits(text: str | None, variable: str) -> tuple[RateLimitItem, ...] | None:
    return None if text is None else parse_rate_limits(text, variable)


def _parse_stored_override(
    device_id: str, override: tuple[tuple[str, str], ...]
) -> tuple[tuple[RouteClass, tuple[RateLimitItem, ...]], ...]:
    # The admin API validates overrides before storing them, so an invalid entry here
    # was written another way. Skipping it keeps the lower-precedence limits in force.
    parsed: list[tuple[RouteClass, tuple[RateLimitItem, ...]]] = []
    for route_class, text in override:
        try:
            parsed.extend(parse_rate_limit_override({route_class: text}).items())
        except ValueError as exc:
            logger.error(
                "ignoring the stored rate-limit override of device %s for route class %r: %s; "
                "set it again with `petvault admin rate-limits %s`",
                device_id, route_class, exc, device_id,
            )
    return tuple(parsed)


# --- Requests --------------------------------------------------------------------------


class DeviceRateLimits:
    """Applies the rate-limit policy to device API requests, or nothing when disabled."""

    def __init__(
        self,
        policies: RateLimitPolicies | None,
        limiter: RateLimiter | None,
        audit: AuditLog,
    ) -> None:
        self.policies = policies
        self.limiter = limiter
        self._audit = audit

    async def limit_device(
        self, request: Request, device: DeviceRecord, route_class: RouteClass
    ) -> None:
        """Count the request against the device's budget for `route_class`.

        Raises:
            ApiError: 429 `rate_limited` over the limit; 503 `rate_limiter_unavailable`
                when the storage fails and the limiter is fail-closed.
        """
        if self.policies is None or self.limiter is None:
            return
        policy = self.policies.policy_for(device.device_id, device.rate_limit_override)
        budget, items = policy.budget(route_class)
        identifiers = ("device", budget, device.device_id)

        try:
            decision = await self.limiter.hit(items, identifiers)
        except RateLimiterUnavailableError:
            raise ApiError(
                503, "rate_limiter_unavailable", "rate limiter unavailable; retry later"
            ) from None
        if decision is None:
            return  # fail-open during a storage outage: no limit, so no headers
        setattr(request.state, _DECISION_STATE_KEY, decision)
        if decision.allowed:
            return

        await self._report_rejection(
            decision, identifiers, request,
            actor={"type": "device", "device_id": device.device_id},
            target=device.device_id,
            details={"route_class": route_class, "budget": budget},
        )
        raise _rate_limited(decision)

    async def limit_failed_identity(self, request: Request, identity_error: ApiError) -> None:
        """Count a request whose certificate failed identity, keyed by its fingerprint.

        The identity error rejects the request in any case, so a storage failure here
        never changes the response, whatever the fail-open setting.

        Raises:
            ApiError: 429 `rate_limited` when the certificate is over the limit.
        """
        if self.policies is None or self.limiter is None:
            return
        fingerprint = _presented_fingerprint(request)
        if fingerprint is None:
            return  # no certificate to key on, so only the identity error applies
        identifiers = ("certificate", fingerprint)

        try:
            decision = await self.limiter.hit(self.policies.failed_identity, identifiers)
        except RateLimiterUnavailableError:
            return
        if decision is None:
            return
        setattr(request.state, _DECISION_STATE_KEY, decision)
        if decision.allowed:
            return

        await self._report_rejection(
            decision, identifiers, request,
            actor={"type": "certificate", "fingerprint": fingerprint},
            target=None,
            details={"identity_error": identity_error.code},
        )
        raise _rate_limited(decision)

    async def _report_rejection(
        self,
        decision: RateLimitDecision,
        identifiers: tuple[str, ...],
        request: Request,
        *,
        actor: dict[str, Any],
        target: str | None,
        details: dict[str, Any],
    ) -> None:
        # One log line and one audit entry per key and window. The limit storage
        # decides, so this holds across workers, and later rejections stay silent.
        assert self.limiter is not None
        if not await self.limiter.record_once_per_window(decision.limit, identifiers):
            return
        source_ip = request.client.host if request.client else None
        subject = target or f"certificate {str(actor.get('fingerprint', ''))[:16]}.."
        logger.warning(
            "rate limit exceeded: %s limit=%s retry_after=%ds ip=%s "
            "(further rejections in this window are not logged)",
            subject, decision.limit, decision.retry_after, source_ip,
        )
        await self._audit.record(
            action="rate_limit.exceeded",
            actor=actor,
            target=target,
            source_ip=source_ip,
            result="rejected",
            details={**details, "limit": str(decision.limit),
                     "retry_after_seconds": decision.retry_after},
        )

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()


def _rate_limited(decision: RateLimitDecision) -> ApiError:
    retry_after = decision.retry_after or 1
    return ApiError(
        429, "rate_limited",
        f"rate limit of {decision.limit} exceeded; retry in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def _presented_fingerprint(request: Request) -> str | None:
    pem = client_certificate_from_scope(request.scope)
    if pem is None:
        return None
    try:
        return fingerprint_of(ssl.PEM_cert_to_DER_cert(pem))
    except ValueError:
        return None


class RateLimitHeadersMiddleware:
    """Adds the RateLimit-* headers of the request's decision to its response.

    A middleware, not the route, sets them, so they reach every response of a limited
    route: models, plain dicts, `Response` objects and error responses alike.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Starlette keeps `request.state` in this dict of the shared scope.
                decision = scope.get("state", {}).get(_DECISION_STATE_KEY)
                if decision is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in decision.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- Lifetime --------------------------------------------------------------------------


async def open_rate_limits(settings: Settings, audit: AuditLog) -> DeviceRateLimits:
    """Build the request-facing limits from settings, and log what is in force."""
    if not settings.rate_limit_enabled:
        logger.warning("per-device rate limits are DISABLED (PETVAULT_RATE_LIMIT_ENABLED=false)")
        return DeviceRateLimits(None, None, audit)

    policies = RateLimitPolicies.from_settings(settings)
    limiter = open_limiter(
        settings.rate_limit_storage,
        timeout=settings.rate_limit_storage_timeout_seconds,
        fail_open=settings.rate_limit_fail_open,
    )
    logger.info("rate limits per device: %s", policies.describe())
    if limiter.shared:
        logger.info("rate-limit counters in %s, shared by every worker and instance; "
                    "storage timeout %.2f s", limiter.description,
                    settings.rate_limit_storage_timeout_seconds)
        await limiter.check_reachable()
    else:
        logger.warning(
            "rate-limit counters in process memory (PETVAULT_RATE_LIMIT_STORAGE=memory://): "
            "correct for a single worker only, because each worker and instance keeps its "
            "own budget per device; set PETVAULT_RATE_LIMIT_STORAGE=redis://HOST:PORT/DB to "
            "share them"
        )
    if settings.rate_limit_fail_open:
        logger.warning("PETVAULT_RATE_LIMIT_FAIL_OPEN is true: requests pass without rate "
                       "limits while the limit storage is unavailable")
    return DeviceRateLimits(policies, limiter, audit)

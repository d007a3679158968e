"""Setting and clearing a device's rate-limit override, and how fast each takes effect.

The override is written to the device document in MongoDB first. Then this instance
drops the device's fingerprints from its identity cache, so the device's next request
here already counts against the new limits. Other instances that share the database
apply it within `identity_cache_max_staleness_seconds` (1 s by default), because their
caches re-read the device document with every entry they refresh.

A new limit starts with an empty window: the limit storage keys each window by the
limit itself, so requests counted under the old limit do not count under the new one.
"""

from __future__ import annotations

import logging

from certs.clock import utc_now
from service.limits import ROUTE_CLASSES, parse_rate_limit_override
from service.runtime import Runtime
from service.storage.registry import DeviceRegistry, RateLimitOverrideChange

logger = logging.getLogger(__name__)


def check_override(override: dict[str, str]) -> dict[str, str]:
    """Validate an override and return it with its route classes in canonical order.

    The canonical order makes equal overrides equal documents in MongoDB, which
    compares embedded documents field by field in order.

    Raises:
        ValueError: the override names no route class, an unknown one, or an invalid
            limit list; the message names the route class and the rule.
    """
    if not override:
        raise ValueError(
            f"name at least one route class ({', '.join(ROUTE_CLASSES)}); "
            "to remove the override, send DELETE instead"
        )
    parse_rate_limit_override(override)
    return {route_class: override[route_class].strip()
            for route_class in ROUTE_CLASSES if route_class in override}


async def set_override(
    runtime: Runtime, device_id: str, override: dict[str, str]
) -> RateLimitOverrideChange:
    """Store a validated override on the device, replacing any earlier one.

    Raises:
        DeviceNotFoundError: the device is not registered.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    change = await DeviceRegistry(runtime.store).set_rate_limit_override(
        device_id, override, utc_now()
    )
    _forget_identities(runtime, change)
    logger.info("rate-limit override set: device=%s limits=%s changed=%s",
                device_id, override, change.changed)
    return change


async def clear_override(runtime: Runtime, device_id: str) -> RateLimitOverrideChange:
    """Remove the device's override, so configuration and the fleet's limits apply again.

    Raises:
        DeviceNotFoundError: the device is not registered.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    change = await DeviceRegistry(runtime.store).clear_rate_limit_override(device_id, utc_now())
    _forget_identities(runtime, change)
    logger.info("rate-limit override cleared: device=%s changed=%s", device_id, change.changed)
    return change


def _forget_identities(runtime: Runtime, change: RateLimitOverrideChange) -> None:
    runtime.identity.invalidate([doc["fingerprint"] for doc in change.view.certificates])

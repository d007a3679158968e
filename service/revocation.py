"""Revoking, suspending and reactivating devices, and how fast each takes effect.

A status change is written to MongoDB first. Then this instance drops the device's
fingerprints from its identity cache, so its very next request is checked against
the new status. Other instances that share the database see the change within
`identity_cache_max_staleness_seconds` (1 s by default): their caches serve an
entry only while it was confirmed less than that long ago, and a background task
re-confirms entries several times a second. The identity check runs on every
request, so keep-alive connections opened before the change are covered too.

After a revocation this instance signs a new CRL before the operator gets the
response, so `GET /admin/v1/crl` on this instance already lists the serial.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from certs.clock import utc_now
from service.runtime import Runtime
from service.storage.mongo import StoreUnavailableError
from service.storage.registry import DeviceRegistry, StatusChange

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revocation:
    """A revocation's registry result and the number of the CRL signed after it."""

    change: StatusChange
    crl_number: int | None  # None when no CRL could be signed


async def revoke_device(runtime: Runtime, device_id: str, reason: str) -> Revocation:
    """Revoke a device and all its certificates; repeat calls return the original revocation.

    Raises:
        DeviceNotFoundError: the device is not registered.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    registry = DeviceRegistry(runtime.store)
    change = await registry.revoke_device(device_id, reason, utc_now())
    _forget_identities(runtime, change)
    logger.info("device revoked: device=%s reason=%s new=%s", device_id,
                   change.view.device.get("revocation_reason"), change.changed)
    return Revocation(change, await _sign_crl(runtime))


async def revoke_certificate(runtime: Runtime, serial: str, reason: str) -> Revocation:
    """Revoke one certificate; repeat calls return the original revocation.

    Raises:
        CertificateNotFoundError: no certificate has this serial.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    registry = DeviceRegistry(runtime.store)
    change = await registry.revoke_certificate(serial, reason, utc_now())
    _forget_identities(runtime, change)
    logger.info("certificate revoked: serial=%s device=%s new=%s", serial,
                   change.view.device["_id"], change.changed)
    return Revocation(change, await _sign_crl(runtime))


async def suspend_device(runtime: Runtime, device_id: str) -> StatusChange:
    """Block a device until it is reactivated; suspending twice changes nothing.

    Raises:
        DeviceNotFoundError: the device is not registered.
        RegistryConflictError: the device is revoked.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    change = await DeviceRegistry(runtime.store).suspend_device(device_id, utc_now())
    _forget_identities(runtime, change)
    logger.info("device suspended: device=%s new=%s", device_id, change.changed)
    return change


async def reactivate_device(runtime: Runtime, device_id: str) -> StatusChange:
    """Lift a suspension; reactivating an active device changes nothing.

    Raises:
        DeviceNotFoundError: the device is not registered.
        RegistryConflictError: the device is revoked, which is permanent.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    change = await DeviceRegistry(runtime.store).reactivate_device(device_id, utc_now())
    _forget_identities(runtime, change)
    logger.info("device reactivated: device=%s new=%s", device_id, change.changed)
    return change


def _forget_identities(runtime: Runtime, change: StatusChange) -> None:
    runtime.identity.invalidate([doc["fingerprint"] for doc in change.view.certificates])


async def _sign_crl(runtime: Runtime) -> int | None:
    # The revocation is already stored in MongoDB. A failed signing only delays the
    # CRL until the background refresh, so it does not fail the call.
    if runtime.crl is None:
        return None
    try:
        signed = await runtime.crl.publish()
    except StoreUnavailableError as exc:
        logger.error("signing the CRL after a revocation failed: %s", exc)
        return None
    return signed.number

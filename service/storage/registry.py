"""The device registry in MongoDB: enrollment, revocation, suspension and operator reads.

It works on the `devices` and `certificates` collections of `MetadataStore`. The
rules that make these operations safe to retry and safe under concurrency live here:

- Each status change is one conditional `find_one_and_update`, so two operators
  racing on one device get one winner, and the loser gets the winner's result.
- Revocation is permanent. A certificate once `revoked` never becomes `active`
  again, and revoking again returns the original time and reason.
- Every multi-document change writes the document that blocks access first. A
  failure between two writes can leave a device blocked too early, never served too
  long, and repeating the call completes it.

NOTE: without a replica set there are no multi-document transactions, so a
database failure between the writes of one call can leave the first write in
place. The call then fails with StoreUnavailableError and is safe to repeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from service.storage.mongo import ACTIVE, REVOKED, SUSPENDED, MetadataStore, StoreUnavailableError

logger = logging.getLogger(__name__)

Document = dict[str, Any]


class DeviceNotFoundError(Exception):
    """No device with this id is registered."""


class CertificateNotFoundError(Exception):
    """No certificate with this serial is registered."""


class RegistryConflictError(Exception):
    """The request conflicts with the registry's state.

    Attributes:
        code: A stable error code, such as `device_exists` or `device_revoked`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class NewCertificate:
    """A verified device certificate, ready to be registered."""

    serial: str  # lowercase hex, no leading zeros
    fingerprint: str  # SHA-256 of the DER certificate, lowercase hex
    public_key_sha256: str  # SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex
    not_after: datetime


@dataclass(frozen=True)
class DeviceView:
    """A device document with its certificates, oldest registration first."""

    device: Document
    certificates: list[Document]


@dataclass(frozen=True)
class StatusChange:
    """The result of a revoke, suspend or reactivate call.

    `changed` is False when the call found the state already in place, e.g. a second
    revoke. The documents then show the original times and reason.
    """

    view: DeviceView
    changed: bool
    certificate: Document | None = None  # the target of a certificate revocation


@dataclass(frozen=True)
class RateLimitOverrideChange:
    """The result of setting or clearing a device's rate-limit override.

    `changed` is False when the device already had exactly this override, or had
    none to clear.
    """

    view: DeviceView
    changed: bool
    previous: Document | None  # the override before the call; None when there was none


@dataclass(frozen=True)
class RevokedCertificate:
    """One entry of the CRL."""

    serial: str
    revoked_at: datetime
    reason: str


def _unavailable(exc: PyMongoError) -> StoreUnavailableError:
    return StoreUnavailableError(exc.__class__.__name__)


class DeviceRegistry:
    """Operator-facing access to devices and certificates.

    Every method may raise StoreUnavailableError.
    """

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self._devices = store.devices
        self._certificates = store.certificates

    async def ensure_indexes(self) -> None:
        """Create the indexes behind the admin listings, the CRL and the key reuse check."""
        try:
            await self._devices.create_index(
                [("household_id", ASCENDING), ("_id", ASCENDING)], name="household_id"
            )
            await self._devices.create_index([("status", ASCENDING), ("_id", ASCENDING)],
                                             name="status")
            await self._certificates.create_index([("status", ASCENDING)], name="status")
            await self._certificates.create_index(
                [("public_key_sha256", ASCENDING)], name="public_key_sha256"
            )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

    # Reads

    async def get_device(self, device_id: str) -> DeviceView:
        """Return a device with its certificates.

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        try:
            device = await self._devices.find_one({"_id": device_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if device is None:
            raise DeviceNotFoundError(device_id)
        certificates = await self._certificates_of([device_id])
        return DeviceView(device, certificates.get(device_id, []))

    async def list_devices(
        self,
        *,
        status: str | None,
        household_id: str | None,
        limit: int,
        after_device_id: str | None,
    ) -> list[DeviceView]:
        """List devices in device id order, strictly after `after_device_id`."""
        query: Document = {}
        if status is not None:
            query["status"] = status
        if household_id is not None:
            query["household_id"] = household_id
        if after_device_id is not None:
            query["_id"] = {"$gt": after_device_id}
        try:
            cursor = self._devices.find(query).sort([("_id", ASCENDING)]).limit(limit)
            devices = [doc async for doc in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        certificates = await self._certificates_of([doc["_id"] for doc in devices])
        return [DeviceView(doc, certificates.get(doc["_id"], [])) for doc in devices]

    async def find_certificate(self, serial: str) -> Document | None:
        try:
            document: Document | None = await self._certificates.find_one({"_id": serial})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return document

    async def fingerprints_of(self, device_id: str) -> list[str]:
        """Return the fingerprints of every certificate of a device."""
        certificates = await self._certificates_of([device_id])
        return [doc["fingerprint"] for doc in certificates.get(device_id, [])]

    async def revoked_certificates(self) -> list[RevokedCertificate]:
        """Return every revoked certificate, ordered by serial, for the CRL."""
        try:
            cursor = self._certificates.find({"status": REVOKED}).sort([("_id", ASCENDING)])
            documents = [doc async for doc in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return [
            RevokedCertificate(
                serial=doc["_id"],
                revoked_at=doc["revoked_at"],
                reason=doc.get("revocation_reason", "unspecified"),
            )
            for doc in documents
        ]

    async def _certificates_of(self, device_ids: list[str]) -> dict[str, list[Document]]:
        if not device_ids:
            return {}
        try:
            cursor = self._certificates.find({"device_id": {"$in": device_ids}}).sort(
                [("registered_at", ASCENDING), ("_id", ASCENDING)]
            )
            documents = [doc async for doc in cursor]
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        grouped: dict[str, list[Document]] = {}
        for doc in documents:
            grouped.setdefault(doc["device_id"], []).append(doc)
        return grouped

    # Enrollment

    async def enroll(
        self, *, device_id: str, household_id: str, certificate: NewCertificate, now: datetime
    ) -> DeviceView:
        """Register a certificate for a new device, or for a revoked device enrolled again.

        The certificate document is written first. Until the device document exists
        (new device) or turns active (re-enrollment), identity lookups treat the
        certificate as unregistered or revoked, so no partial state ever lets a device
        in. When the second write fails, the first is undone.

        Raises:
            RegistryConflictError: `device_exists` (the device id is taken by an active
                or suspended device), `household_mismatch` (a revoked device is enrolled
                into another household), `certificate_exists` (serial or fingerprint
                already registered) or `key_reused` (the public key belongs to a
                registered certificate).
        """
        try:
            existing = await self._devices.find_one({"_id": device_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        self._check_device_can_enroll(device_id, household_id, existing)
        await self._check_certificate_is_new(certificate)

        try:
            await self._certificates.insert_one(
                {
                    "_id": certificate.serial,
                    "fingerprint": certificate.fingerprint,
                    "public_key_sha256": certificate.public_key_sha256,
                    "device_id": device_id,
                    "not_after": certificate.not_after,
                    "status": ACTIVE,
                    "registered_at": now,
                }
            )
        except DuplicateKeyError as exc:
            raise RegistryConflictError(
                "certificate_exists", "a certificate with this serial or fingerprint is registered"
            ) from exc
        except PyMongoError as exc:
            raise _unavailable(exc) from exc

        try:
            await self._activate_device(device_id, household_id, existing, now)
        except BaseException:
            await self._undo_certificate_insert(certificate.serial)
            raise
        return await self.get_device(device_id)

    @staticmethod
    def _check_device_can_enroll(
        device_id: str, household_id: str, existing: Document | None
    ) -> None:
        if existing is None:
            return
        if existing.get("status") != REVOKED:
            raise RegistryConflictError(
                "device_exists",
                f"device {device_id} is already registered ({existing.get('status')}); "
                "revoke it before enrolling it again with a new key",
            )
        if existing["household_id"] != household_id:
            # The device's recordings belong to its old household, and a new owner must
            # not see them under the same device id.
            raise RegistryConflictError(
                "household_mismatch",
                f"revoked device {device_id} belongs to another household; "
                "enroll the device under a new device id",
            )

    async def _check_certificate_is_new(self, certificate: NewCertificate) -> None:
        query = {
            "$or": [
                {"_id": certificate.serial},
                {"fingerprint": certificate.fingerprint},
                {"public_key_sha256": certificate.public_key_sha256},
            ]
        }
        try:
            clash = await self._certificates.find_one(query)
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if clash is None:
            return
        if clash["_id"] == certificate.serial or clash["fingerprint"] == certificate.fingerprint:
            raise RegistryConflictError(
                "certificate_exists",
                f"certificate serial {certificate.serial} is already registered "
                f"to device {clash['device_id']}",
            )
        raise RegistryConflictError(
            "key_reused",
            f"the public key belongs to certificate {clash['_id']} of device {clash['device_id']}; "
            "enroll with a newly generated key",
        )

    async def _activate_device(
        self, device_id: str, household_id: str, existing: Document | None, now: datetime
    ) -> None:
        try:
            if existing is None:
                await self._devices.insert_one(
                    {
                        "_id": device_id,
                        "household_id": household_id,
                        "status": ACTIVE,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                return
            result = await self._devices.update_one(
                {"_id": device_id, "status": REVOKED, "household_id": household_id},
                {
                    "$set": {"status": ACTIVE, "updated_at": now, "reenrolled_at": now},
                    "$unset": {"revoked_at": "", "revocation_reason": "", "suspended_at": ""},
                },
            )
        except DuplicateKeyError as exc:
            raise RegistryConflictError(
                "device_exists", f"device {device_id} was registered concurrently"
            ) from exc
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if result.matched_count == 0:
            raise RegistryConflictError(
                "device_exists", f"device {device_id} changed concurrently; retry the enrollment"
            )

    async def _undo_certificate_insert(self, serial: str) -> None:
        try:
            await self._certificates.delete_one({"_id": serial, "status": ACTIVE})
        except PyMongoError as exc:
            # The orphan is harmless: identity lookups ignore a certificate whose device
            # does not exist, and a revoked device keeps the certificate blocked.
            logger.error("undoing certificate registration failed: serial=%s: %s", serial,
                         exc.__class__.__name__)

    # Rate-limit overrides

    async def set_rate_limit_override(
        self, device_id: str, override: dict[str, str], now: datetime
    ) -> RateLimitOverrideChange:
        """Replace the device's `rate_limits` override with `override` in one write.

        The caller validates `override`. Any device status is accepted, so an override
        set on a suspended device applies once it is reactivated.

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        # The filter makes a repeated call a no-op that leaves `updated_at` alone.
        return await self._change_rate_limit_override(
            device_id,
            {"_id": device_id, "rate_limits": {"$ne": override}},
            {"$set": {"rate_limits": override, "updated_at": now}},
        )

    async def clear_rate_limit_override(
        self, device_id: str, now: datetime
    ) -> RateLimitOverrideChange:
        """Remove the device's `rate_limits` override, if it has one.

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        return await self._change_rate_limit_override(
            device_id,
            {"_id": device_id, "rate_limits": {"$exists": True}},
            {"$unset": {"rate_limits": ""}, "$set": {"updated_at": now}},
        )

    async def _change_rate_limit_override(
        self, device_id: str, query: Document, update: Document
    ) -> RateLimitOverrideChange:
        try:
            before = await self._devices.find_one_and_update(
                query, update, return_document=ReturnDocument.BEFORE
            )
            changed = before is not None
            if before is None:
                before = await self._devices.find_one({"_id": device_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if before is None:
            raise DeviceNotFoundError(device_id)
        previous = before.get("rate_limits")
        return RateLimitOverrideChange(
            await self.get_device(device_id),
            changed,
            previous if isinstance(previous, dict) else None,
        )

    # Revocation and suspension

    async def revoke_device(self, device_id: str, reason: str, now: datetime) -> StatusChange:
        """Revoke a device and every one of its certificates.

        Raises:
            DeviceNotFoundError: the device is not registered.
        """
        try:
            device = await self._devices.find_one_and_update(
                {"_id": device_id, "status": {"$ne": REVOKED}},
                {"$set": {"status": REVOKED, "revoked_at": now, "revocation_reason": reason,
                          "updated_at": now}},
                return_document=ReturnDocument.AFTER,
            )
            changed = device is not None
            if device is None:
                device = await self._devices.find_one({"_id": device_id})
            if device is None:
                raise DeviceNotFoundError(device_id)

            # Runs on a repeated call too, so it completes a call that failed here.
            await self._certificates.update_many(
                {"device_id": device_id, "status": ACTIVE},
                {"$set": {"status": REVOKED, "revoked_at": device["revoked_at"],
                          "revocation_reason": device["revocation_reason"]}},
            )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return StatusChange(await self.get_device(device_id), changed)

    async def revoke_certificate(self, serial: str, reason: str, now: datetime) -> StatusChange:
        """Revoke one certificate. A device left without an active certificate is revoked too.

        Revoking the device as well lets an operator enroll it again with a new key,
        and keeps its status truthful: with no usable certificate it cannot connect.

        Raises:
            CertificateNotFoundError: no certificate has this serial.
        """
        try:
            certificate = await self._certificates.find_one_and_update(
                {"_id": serial, "status": ACTIVE},
                {"$set": {"status": REVOKED, "revoked_at": now, "revocation_reason": reason}},
                return_document=ReturnDocument.AFTER,
            )
            changed = certificate is not None
            if certificate is None:
                certificate = await self._certificates.find_one({"_id": serial})
            if certificate is None:
                raise CertificateNotFoundError(serial)

            device_id = certificate["device_id"]
            still_active = await self._certificates.count_documents(
                {"device_id": device_id, "status": ACTIVE}, limit=1
            )
            if not still_active:
                await self._devices.update_one(
                    {"_id": device_id, "status": {"$ne": REVOKED}},
                    {"$set": {"status": REVOKED, "revoked_at": certificate["revoked_at"],
                              "revocation_reason": certificate["revocation_reason"],
                              "updated_at": now}},
                )
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        return StatusChange(await self.get_device(device_id), changed, certificate)

    async def suspend_device(self, device_id: str, now: datetime) -> StatusChange:
        """Block an active device until it is reactivated.

        Raises:
            DeviceNotFoundError: the device is not registered.
            RegistryConflictError: `device_revoked`.
        """
        return await self._change_status(
            device_id, ACTIVE, SUSPENDED, now,
            set_fields={"suspended_at": now}, unset_fields=[],
        )

    async def reactivate_device(self, device_id: str, now: datetime) -> StatusChange:
        """Lift a suspension.

        Raises:
            DeviceNotFoundError: the device is not registered.
            RegistryConflictError: `device_revoked`, because revocation is permanent.
        """
        return await self._change_status(
            device_id, SUSPENDED, ACTIVE, now,
            set_fields={"reactivated_at": now}, unset_fields=["suspended_at"],
        )

    async def _change_status(
        self,
        device_id: str,
        current: str,
        target: str,
        now: datetime,
        *,
        set_fields: Document,
        unset_fields: list[str],
    ) -> StatusChange:
        update: Document = {"$set": {"status": target, "updated_at": now, **set_fields}}
        if unset_fields:
            update["$unset"] = {field: "" for field in unset_fields}
        try:
            device = await self._devices.find_one_and_update(
                {"_id": device_id, "status": current}, update, return_document=ReturnDocument.AFTER
            )
            changed = device is not None
            if device is None:
                device = await self._devices.find_one({"_id": device_id})
        except PyMongoError as exc:
            raise _unavailable(exc) from exc
        if device is None:
            raise DeviceNotFoundError(device_id)
        if device["status"] == REVOKED:
            raise RegistryConflictError(
                "device_revoked",
                f"device {device_id} is revoked, which is permanent; "
                "enroll it again with a new key and certificate",
            )
        return StatusChange(await self.get_device(device_id), changed)

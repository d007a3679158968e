"""Recording and device metadata in MongoDB, through PyMongo's async API.

Collections:
- `devices`: one document per device id, with its household, its status
  (`active`, `suspended` or `revoked`) and an optional `rate_limits` override that
  operators set through the admin API: route class to limit list, such as
  `{"default": "600/minute"}`.
- `certificates`: one document per registered certificate, keyed by serial, with a
  unique SHA-256 fingerprint, the owning device id, not-after and revocation data.
- `recordings`: one document per recording, always queried with its owner's device id.
- `audit`: append-only security and admin events.

Presigned URLs are never written here: a recording stores its object key only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

logger = logging.getLogger(__name__)

# Recording states. A recording is `pending` until `complete` verifies the object.
PENDING = "pending"
AVAILABLE = "available"
REJECTED = "rejected"
DELETED = "deleted"

# Device and certificate states.
ACTIVE = "active"
SUSPENDED = "suspended"
REVOKED = "revoked"


class StoreUnavailableError(Exception):
    """MongoDB could not be reached or did not respond in time."""


class DuplicateError(Exception):
    """A unique field (device id, fingerprint or serial) already exists."""


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC datetime; some drivers hand back naive ones."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass(frozen=True)
class DeviceRecord:
    """A registered certificate joined with its device: what identity checks need."""

    device_id: str
    household_id: str
    status: str  # effective: revoked when the certificate or the device is revoked
    fingerprint: str
    serial: str
    not_after: datetime
    # The device's `rate_limits` override as stored: (route class, limit list) pairs,
    # sorted, unparsed. `service.limits` parses and validates them.
    rate_limit_override: tuple[tuple[str, str], ...] = ()


def _device_record(certificate: dict[str, Any], device: dict[str, Any]) -> DeviceRecord:
    status = device.get("status", ACTIVE)
    if certificate.get("status") == REVOKED:
        status = REVOKED
    not_after = as_utc(certificate["not_after"])
    assert not_after is not None
    return DeviceRecord(
        device_id=device["_id"],
        household_id=device["household_id"],
        status=status,
        fingerprint=certificate["fingerprint"],
        serial=certificate["_id"],
        not_after=not_after,
        rate_limit_override=stored_rate_limit_override(device.get("rate_limits")),
    )


def stored_rate_limit_override(value: object) -> tuple[tuple[str, str], ...]:
    """Return a device document's `rate_limits` field as sorted (route class, text) pairs.

    Only string pairs pass, so a hand-edited document cannot break identity checks.
    """
    if not isinstance(value, dict):
        return ()
    return tuple(
        sorted(
            (route_class, limits)
            for route_class, limits in value.items()
            if isinstance(route_class, str) and isinstance(limits, str)
        )
    )


class MetadataStore:
    """Typed access to petvault's collections. Every method may raise StoreUnavailableError."""

    def __init__(self, database: Any) -> None:
        # `database` is a pymongo AsyncDatabase, or the embedded stand-in's equivalent.
        self.database = database
        self.devices = database["devices"]
        self.certificates = database["certificates"]
        self.recordings = database["recordings"]
        self.audit = database["audit"]

    async def ensure_indexes(self) -> None:
        """Create the indexes that uniqueness and the hot queries rely on."""
        try:
            await self.certificates.create_index(
                [("fingerprint", ASCENDING)], unique=True, name="fingerprint_unique"
            )
            await self.certificates.create_index([("device_id", ASCENDING)], name="device_id")
            await self.recordings.create_index(
                [("owner_device_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
                name="owner_created_at",
            )
            await self.audit.create_index([("time", ASCENDING), ("_id", ASCENDING)], name="time")
        except PyMongoError as exc:
            raise StoreUnavailableError(
                f"creating indexes failed: {exc.__class__.__name__}"
            ) from exc

    async def ping(self) -> None:
        try:
            await self.database.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailableError(f"ping failed: {exc.__class__.__name__}") from exc

    # Devices and certificates

    async def register_device_certificate(
        self,
        *,
        device_id: str,
        household_id: str,
        fingerprint: str,
        serial: str,
        not_after: datetime,
        now: datetime,
        public_key_sha256: str | None = None,
    ) -> None:
        """Register a certificate for a device, creating the device when it is new.

        `public_key_sha256` (of the DER SubjectPublicKeyInfo) lets enrollment reject a
        new certificate for a key that was already registered.

        Raises:
            DuplicateError: the fingerprint or serial is already registered, or the
                device exists in another household.
        """
        try:
            device = await self.devices.find_one({"_id": device_id})
            if device is None:
                await self.devices.insert_one(
                    {
                        "_id": device_id,
                        "household_id": household_id,
                        "status": ACTIVE,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
            elif device["household_id"] != household_id:
                raise DuplicateError(f"device {device_id} belongs to another household")
            await self.certificates.insert_one(
                {
                    "_id": serial,
                    "fingerprint": fingerprint,
                    "device_id": device_id,
                    "not_after": not_after,
                    "status": ACTIVE,
                    "registered_at": now,
                    **({"public_key_sha256": public_key_sha256} if public_key_sha256 else {}),
                }
            )
        except DuplicateKeyError as exc:
            raise DuplicateError("certificate is already registered") from exc
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

    async def find_device_by_fingerprint(self, fingerprint: str) -> DeviceRecord | None:
        records = await self.find_devices_by_fingerprints([fingerprint])
        return records.get(fingerprint)

    async def find_devices_by_fingerprints(
        self, fingerprints: list[str]
    ) -> dict[str, DeviceRecord]:
        """Look up many fingerprints in two queries; unknown ones are absent from the result."""
        if not fingerprints:
            return {}
        try:
            certificates = [
                doc async for doc in self.certificates.find({"fingerprint": {"$in": fingerprints}})
            ]
            device_ids = sorted({doc["device_id"] for doc in certificates})
            devices = {
                doc["_id"]: doc async for doc in self.devices.find({"_id": {"$in": device_ids}})
            }
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

        records = {}
        for certificate in certificates:
            device = devices.get(certificate["device_id"])
            if device is not None:
                records[certificate["fingerprint"]] = _device_record(certificate, device)
        return records

    # Recordings

    async def insert_recording(self, document: dict[str, Any]) -> None:
        try:
            await self.recordings.insert_one(document)
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

    async def find_recording(
        self, owner_device_id: str, recording_id: str
    ) -> dict[str, Any] | None:
        """Return the owner's recording, or None when it is missing, foreign or deleted."""
        try:
            return await self.recordings.find_one(
                {
                    "_id": recording_id,
                    "owner_device_id": owner_device_id,
                    "status": {"$ne": DELETED},
                }
            )
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

    async def update_recording(
        self, owner_device_id: str, recording_id: str, expected_status: str, changes: dict[str, Any]
    ) -> bool:
        """Apply `changes` if the recording is still in `expected_status`; return whether it was."""
        try:
            result = await self.recordings.update_one(
                {
                    "_id": recording_id,
                    "owner_device_id": owner_device_id,
                    "status": expected_status,
                },
                {"$set": changes},
            )
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc
        return bool(result.matched_count)

    async def list_recordings(
        self,
        owner_device_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[dict[str, Any]]:
        """List the owner's recordings, newest first, strictly after the `after` position."""
        query: dict[str, Any] = {"owner_device_id": owner_device_id, "status": {"$ne": DELETED}}
        if after is not None:
            created_at, recording_id = after
            query["$or"] = [
                {"created_at": {"$lt": created_at}},
                {"created_at": created_at, "_id": {"$lt": recording_id}},
            ]
        try:
            cursor = (
                self.recordings.find(query)
                .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
            )
            return [doc async for doc in cursor]
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

    # Audit

    async def append_audit(self, entry: dict[str, Any]) -> None:
        try:
            await self.audit.insert_one(entry)
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

    async def list_audit(
        self, *, limit: int, since: datetime | None, after_id: str | None
    ) -> list[dict[str, Any]]:
        """List audit entries oldest first, from `since` on and strictly after `after_id`.

        Entry ids start with the nanosecond time of writing, so id order is time order
        within one instance and across instances whose clocks agree.
        """
        query: dict[str, Any] = {}
        if since is not None:
            query["time"] = {"$gte": since}
        if after_id is not None:
            query["_id"] = {"$gt": after_id}
        try:
            cursor = self.audit.find(query).sort([("_id", ASCENDING)]).limit(limit)
            return [doc async for doc in cursor]
        except PyMongoError as exc:
            raise StoreUnavailableError(exc.__class__.__name__) from exc

"""Request and response models of the admin API, and its id, serial and cursor rules."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from certs.csr import MAX_CSR_PEM_BYTES
from certs.naming import DEVICE_ID_RULE, InvalidNameError, validate_device_id
from service.enrollment import MAX_CERTIFICATE_PEM_BYTES
from service.errors import ApiError
from service.storage.mongo import ACTIVE, REVOKED, as_utc
from service.storage.registry import DeviceView, Document

# The RFC 5280 reason names that `service.crl.REVOCATION_REASONS` maps to CRL codes.
RevocationReason = Literal[
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
]
DeviceStatus = Literal["active", "suspended", "revoked"]

# Household ids follow the device id rule: they land in the same records and logs.
HOUSEHOLD_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# Serials are at most 20 octets (RFC 5280 section 4.1.2.2), so at most 40 significant
# hex digits. A few leading zeros are tolerated.
_SERIAL_PATTERN = re.compile(r"[0-9A-Fa-f]{1,64}")
_MAX_SERIAL = 2**160
_MAX_CURSOR_CHARACTERS = 200

MAX_PAGE_LIMIT = 500


def check_device_id(device_id: str) -> str:
    """Validate a device id from a path.

    Raises:
        ApiError: 422 `invalid_device_id` naming the rule.
    """
    try:
        return validate_device_id(device_id)
    except InvalidNameError as exc:
        raise ApiError(422, "invalid_device_id", str(exc)) from None


def normalize_serial(serial: str) -> str:
    """Return a serial from a path in the stored form: lowercase hex without leading zeros.

    Raises:
        ApiError: 422 `invalid_serial` for anything but a hex number below 2**160.
    """
    if not _SERIAL_PATTERN.fullmatch(serial) or int(serial, 16) >= _MAX_SERIAL:
        raise ApiError(
            422, "invalid_serial",
            "serial must be 1 to 40 hexadecimal digits, e.g. 3f1a9c (no colons or 0x prefix)",
        )
    return format(int(serial, 16), "x")


def encode_cursor(position: str) -> str:
    """Wrap a page position (a device id or an audit entry id) in an opaque cursor."""
    payload = json.dumps({"after": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Unwrap a cursor from `encode_cursor`.

    Raises:
        ApiError: 422 `invalid_cursor` for anything `encode_cursor` did not produce.
    """
    invalid = ApiError(422, "invalid_cursor", "cursor is invalid; pass next_cursor unchanged")
    if len(cursor) > _MAX_CURSOR_CHARACTERS:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    if not isinstance(position, str) or not position or len(position) > 100:
        raise invalid
    return position


# Requests


class EnrollDeviceRequest(BaseModel):
    """An enrollment with one of `csr_pem` (signed here) or `cert_pem` (issued elsewhere)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    device_id: str = Field(max_length=64, description=f"device id: {DEVICE_ID_RULE}")
    household_id: str = Field(
        pattern=HOUSEHOLD_ID_PATTERN, description=f"household id: {DEVICE_ID_RULE}"
    )
    csr_pem: str | None = Field(
        default=None, max_length=MAX_CSR_PEM_BYTES,
        description="PEM certificate signing request generated on the device",
    )
    cert_pem: str | None = Field(
        default=None, max_length=MAX_CERTIFICATE_PEM_BYTES,
        description="PEM device certificate issued elsewhere that chains to the device CA",
    )

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        return validate_device_id(value)

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> Self:
        if (self.csr_pem is None) == (self.cert_pem is None):
            raise ValueError("give exactly one of csr_pem and cert_pem")
        return self


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: RevocationReason = Field(description="RFC 5280 revocation reason")


# Responses


class CertificateOut(BaseModel):
    serial: str = Field(description="lowercase hex")
    fingerprint: str = Field(description="SHA-256 of the DER certificate, lowercase hex")
    not_after: datetime
    status: Literal["active", "revoked"]
    registered_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None


class DeviceOut(BaseModel):
    device_id: str
    household_id: str
    status: DeviceStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    suspended_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None
    certificates: list[CertificateOut]


class EnrolledDevice(BaseModel):
    device: DeviceOut
    certificate_pem: str = Field(description="the registered device certificate, PEM")


class DevicePage(BaseModel):
    devices: list[DeviceOut]
    next_cursor: str | None


class RevocationOut(BaseModel):
    already_revoked: bool = Field(description="true when an earlier call revoked it")
    revoked_at: datetime = Field(description="time of the original revocation")
    revocation_reason: RevocationReason
    certificate: CertificateOut | None = Field(
        default=None, description="the revoked certificate, for a revocation by serial"
    )
    device: DeviceOut
    crl_number: int | None = Field(
        default=None, description="number of the CRL signed after this call; null if none was"
    )


class StatusChangeOut(BaseModel):
    changed: bool = Field(description="false when the device already had this status")
    device: DeviceOut


class AuditEntryOut(BaseModel):
    id: str
    time: datetime
    actor: dict[str, Any]
    action: str
    target: str | None
    source_ip: str | None
    result: str
    details: dict[str, Any] | None = None
    repeats_since_last_entry: int | None = None


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    next_cursor: str | None


# Conversions from stored documents


def certificate_out(document: Document) -> CertificateOut:
    not_after = as_utc(document["not_after"])
    assert not_after is not None
    return CertificateOut(
        serial=document["_id"],
        fingerprint=document["fingerprint"],
        not_after=not_after,
        status="revoked" if document.get("status") == REVOKED else "active",
        registered_at=as_utc(document.get("registered_at")),
        revoked_at=as_utc(document.get("revoked_at")),
        revocation_reason=document.get("revocation_reason"),
    )


def device_out(view: DeviceView) -> DeviceOut:
    device = view.device
    return DeviceOut(
        device_id=device["_id"],
        household_id=device["household_id"],
        status=device.get("status", ACTIVE),
        created_at=as_utc(device.get("created_at")),
        updated_at=as_utc(device.get("updated_at")),
        suspended_at=as_utc(device.get("suspended_at")),
        revoked_at=as_utc(device.get("revoked_at")),
        revocation_reason=device.get("revocation_reason"),
        certificates=[certificate_out(doc) for doc in view.certificates],
    )


def audit_entry_out(document: Document) -> AuditEntryOut:
    time = as_utc(document["time"])
    assert time is not None
    return AuditEntryOut(
        id=document["_id"],
        time=time,
        actor=document.get("actor") or {},
        action=document["action"],
        target=document.get("target"),
        source_ip=document.get("source_ip"),
        result=document["result"],
        details=document.get("details"),
        repeats_since_last_entry=document.get("repeats_since_last_entry"),
    )


def revocation_out(
    revoked: Document, view: DeviceView, *, changed: bool, crl_number: int | None,
    certificate: Document | None = None,
) -> RevocationOut:
    """Describe a revocation from the revoked document (a device or a certificate)."""
    revoked_at = as_utc(revoked["revoked_at"])
    assert revoked_at is not None
    return RevocationOut(
        already_revoked=not changed,
        revoked_at=revoked_at,
        revocation_reason=revoked["revocation_reason"],
        certificate=certificate_out(certificate) if certificate is not None else None,
        device=device_out(view),
        crl_number=crl_number,
    )

"""Request and response models of the admin API, and its id, serial and cursor rules."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
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

# Household ids use the characters of device ids: they land in the same records and
# logs. They never appear in a URL path, so '.' and '..' are allowed.
HOUSEHOLD_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
HOUSEHOLD_ID_RULE = "1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
# Serials are at most 20 octets (RFC 5280 section 4.1.2.2), so at most 40 significant
# hex digits. A few leading zeros are tolerated.
_SERIAL_PATTERN = re.compile(r"[0-9A-Fa-f]{1,64}")
_MAX_SERIAL = 2**160
_MAX_CURSOR_CHARACTERS = 200

MAX_PAGE_LIMIT = 500
# Maximum length, in characters, of one route class's limit list in a rate-limit
# override. Every limit in the list costs a storage operation per request.
MAX_RATE_LIMITS_CHARACTERS = 200


def check_device_id(device_id: str) -> str:
    """Validate a device id from a path.

    Raises:
        ApiError: 422 `invalid_device_id` stating the rule, without the rejected id.
    """
    try:
        return validate_device_id(device_id)
    except InvalidNameError as exc:
        raise ApiError(422, "invalid_device_id", exc.rule_message) from None


def query_time_in_utc(value: datetime, parameter: str) -> datetime:
    """Return a time from a query parameter in UTC. A time without an offset is UTC.

    Converting a time near year 1 or 9999 to UTC can leave datetime's range (for
    example 9999-12-31T23:59:59-10:00), and so can the conversion that PyMongo's
    BSON encoder and the embedded store make, so such a time is rejected here.

    Raises:
        ApiError: 422 `invalid_request` naming the parameter and the range.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ApiError(
            422, "invalid_request",
            f"{parameter} is out of range: in UTC it must fall between "
            "0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ) from None


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
        pattern=HOUSEHOLD_ID_PATTERN, description=f"household id: {HOUSEHOLD_ID_RULE}"
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
        try:
            return validate_device_id(value)
        except InvalidNameError as exc:
            raise ValueError(exc.rule_message) from None  # without the rejected id

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> Self:
        if (self.csr_pem is None) == (self.cert_pem is None):
            raise ValueError("give exactly one of csr_pem and cert_pem")
        return self


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: RevocationReason = Field(description="RFC 5280 revocation reason")


_LIMITS_DESCRIPTION = (
    "limits in the notation of PETVAULT_RATE_LIMITS, all applied at once, "
    "e.g. '600/minute;2000/hour'"
)


class RateLimitOverrideRequest(BaseModel):
    """A device's override, per route class. A class left out keeps the configured limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    default: str | None = Field(
        default=None, max_length=MAX_RATE_LIMITS_CHARACTERS,
        description=f"requests outside the upload and download classes: {_LIMITS_DESCRIPTION}",
    )
    upload: str | None = Field(
        default=None, max_length=MAX_RATE_LIMITS_CHARACTERS,
        description=f"POST /v1/recordings, its own budget: {_LIMITS_DESCRIPTION}",
    )
    download: str | None = Field(
        default=None, max_length=MAX_RATE_LIMITS_CHARACTERS,
        description=f"GET /v1/recordings/{{id}}, its own budget: {_LIMITS_DESCRIPTION}",
    )

    def named_limits(self) -> dict[str, str]:
        """Return the route classes that the request names, with their limit lists."""
        return {route_class: text for route_class, text in self.model_dump().items()
                if text is not None}


# Responses


class CertificateOut(BaseModel):
    serial: str = Field(description="lowercase hex")
    fingerprint: str = Field(description="SHA-256 of the DER certificate, lowercase hex")
    not_after: datetime
    status: Literal["active", "revoked"]
    registered_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None


class RateLimitOverrideOut(BaseModel):
    """The limit lists that an operator set for a device; null classes are not overridden."""

    default: str | None = None
    upload: str | None = None
    download: str | None = None


class DeviceOut(BaseModel):
    device_id: str
    household_id: str
    status: DeviceStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    suspended_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None
    rate_limit_override: RateLimitOverrideOut | None = Field(
        default=None, description="limits set through the admin API; null when none are"
    )
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


class EffectiveRateLimitsOut(BaseModel):
    """The limits that apply to a device on this instance, per route class."""

    default: str
    upload: str | None = Field(description="null: uploads count against the default budget")
    download: str | None = Field(description="null: downloads count against the default budget")


class RateLimitChangeOut(BaseModel):
    changed: bool = Field(description="false when the call found this override already in place")
    device: DeviceOut
    effective_rate_limits: EffectiveRateLimitsOut | None = Field(
        description="null when PETVAULT_RATE_LIMIT_ENABLED is false"
    )


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
        rate_limit_override=rate_limit_override_out(device.get("rate_limits")),
        certificates=[certificate_out(doc) for doc in view.certificates],
    )


def rate_limit_override_out(stored: object) -> RateLimitOverrideOut | None:
    """Describe a stored override, skipping entries that are not route class to text."""
    if not isinstance(stored, dict):
        return None
    known = {route_class: text for route_class, text in stored.items()
             if route_class in RateLimitOverrideOut.model_fields and isinstance(text, str)}
    return RateLimitOverrideOut(**known) if known else None


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

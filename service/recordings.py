"""Recording rules: request and response models, ids, object keys and list cursors."""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.storage.mongo import as_utc

# 128 random bits, base64url without padding: 22 characters.
RECORDING_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_LIST_LIMIT = 100


def new_recording_id() -> str:
    return secrets.token_urlsafe(16)


def new_object_key() -> str:
    """Return a key with 128 random bits and nothing about the device, owner or time."""
    return f"recordings/{secrets.token_hex(16)}"


def check_recording_id(recording_id: str) -> str:
    if not RECORDING_ID_PATTERN.fullmatch(recording_id):
        raise ApiError(
            422, "invalid_recording_id",
            "recording id must be 22 characters from A-Z, a-z, 0-9, '_' and '-'",
        )
    return recording_id


class CreateRecordingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content_type: str = Field(max_length=100)
    size_bytes: int = Field(gt=0)
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the file, lowercase hex")


class UploadForm(BaseModel):
    url: str
    fields: dict[str, str]
    expires_at: datetime


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime


class CreateRecordingResponse(BaseModel):
    recording_id: str
    upload: UploadForm


class RecordingOut(BaseModel):
    recording_id: str
    content_type: str
    size_bytes: int
    sha256: str
    status: str
    created_at: datetime
    completed_at: datetime | None = None


class RecordingWithDownload(RecordingOut):
    download: DownloadLink | None = Field(
        default=None, description="Present only when the recording is available"
    )


class RecordingPage(BaseModel):
    recordings: list[RecordingOut]
    next_cursor: str | None


class DeviceOut(BaseModel):
    device_id: str
    household_id: str
    certificate_not_after: datetime


def recording_out(document: dict[str, Any]) -> RecordingOut:
    created_at = as_utc(document["created_at"])
    assert created_at is not None
    return RecordingOut(
        recording_id=document["_id"],
        content_type=document["content_type"],
        size_bytes=document["size_bytes"],
        sha256=document["sha256"],
        status=document["status"],
        created_at=created_at,
        completed_at=as_utc(document.get("completed_at")),
    )


def encode_cursor(document: dict[str, Any]) -> str:
    created_at = as_utc(document["created_at"])
    assert created_at is not None
    payload = json.dumps(
        {"t": created_at.isoformat(), "id": document["_id"]}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Parse an opaque list cursor.

    Cursors only narrow a query that is already scoped to the caller, so a forged one
    can reveal nothing; it is still parsed strictly.

    Raises:
        ApiError: 422 for anything that `encode_cursor` did not produce.
    """
    invalid = ApiError(422, "invalid_cursor", "cursor is invalid; pass next_cursor unchanged")
    if len(cursor) > 200:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        created_at = datetime.fromisoformat(payload["t"])
        recording_id = payload["id"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    if not isinstance(recording_id, str) or not RECORDING_ID_PATTERN.fullmatch(recording_id):
        raise invalid
    # `encode_cursor` writes UTC. With another offset (or none), a time near year 1 or
    # 9999 overflows when the driver converts it to UTC, and the request would fail.
    if created_at.utcoffset() != timedelta(0):
        raise invalid
    return created_at, recording_id

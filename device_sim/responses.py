"""Shapes of the petvault API responses, and checks that a response has them.

The simulator checks every field it relies on, so a server bug surfaces as a
SimulatorError naming the endpoint and the field, not as a KeyError deep in a step.
"""

from __future__ import annotations

import re
from typing import Any, TypedDict, cast

from device_sim.errors import SimulatorError

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class DeviceIdentity(TypedDict):
    """The device that the server identified from the client certificate (`GET /v1/me`)."""

    device_id: str
    household_id: str
    certificate_not_after: str


class UploadSpec(TypedDict):
    """A presigned POST: the S3 URL, the form fields to send before the file, and expiry."""

    url: str
    fields: dict[str, str]
    expires_at: str


class CreatedRecording(TypedDict):
    """Response of `POST /v1/recordings`."""

    recording_id: str
    upload: UploadSpec


class RecordingMetadata(TypedDict):
    """Metadata of one recording, as returned by complete, list and get."""

    recording_id: str
    content_type: str
    size_bytes: int
    sha256: str
    status: str
    created_at: str
    completed_at: str | None


class DownloadSpec(TypedDict):
    """A presigned GET URL and its expiry."""

    url: str
    expires_at: str


class RecordingWithDownload(RecordingMetadata):
    """Response of `GET /v1/recordings/{id}`: metadata plus a presigned GET."""

    download: DownloadSpec


class RecordingPage(TypedDict):
    """One page of `GET /v1/recordings`, newest first."""

    recordings: list[RecordingMetadata]
    next_cursor: str | None


def _require(body: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SimulatorError(f"invalid response from {where}: field '{key}' is missing or invalid")
    return value


def _require_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SimulatorError(f"invalid response from {where}: expected a JSON object")
    return cast(dict[str, Any], value)


def parse_identity(value: object, where: str) -> DeviceIdentity:
    """Check the `GET /v1/me` body and return it typed."""
    body = _require_object(value, where)
    for key in ("device_id", "household_id", "certificate_not_after"):
        _require(body, key, str, where)
    return cast(DeviceIdentity, body)


def parse_created_recording(value: object, where: str) -> CreatedRecording:
    """Check the `POST /v1/recordings` body, including the presigned POST, and return it."""
    body = _require_object(value, where)
    _require(body, "recording_id", str, where)

    upload = _require_object(_require(body, "upload", dict, where), f"{where} (upload)")
    _require(upload, "url", str, f"{where} (upload)")
    _require(upload, "expires_at", str, f"{where} (upload)")
    fields = _require(upload, "fields", dict, f"{where} (upload)")
    if not all(isinstance(name, str) and isinstance(v, str) for name, v in fields.items()):
        raise SimulatorError(f"invalid response from {where}: upload fields must be strings")

    return cast(CreatedRecording, body)


def parse_recording(value: object, where: str) -> RecordingMetadata:
    """Check one recording's metadata and return it typed."""
    body = _require_object(value, where)
    for key in ("recording_id", "content_type", "status", "created_at"):
        _require(body, key, str, where)
    _require(body, "size_bytes", int, where)

    sha256 = _require(body, "sha256", str, where)
    if not _SHA256_HEX.fullmatch(sha256):
        raise SimulatorError(
            f"invalid response from {where}: sha256 is not 64 lowercase hex digits"
        )

    completed_at = body.get("completed_at")
    if completed_at is not None and not isinstance(completed_at, str):
        raise SimulatorError(f"invalid response from {where}: field 'completed_at' is invalid")

    return cast(RecordingMetadata, body)


def parse_recording_with_download(value: object, where: str) -> RecordingWithDownload:
    """Check a `GET /v1/recordings/{id}` body, including the presigned GET, and return it."""
    body = _require_object(value, where)
    parse_recording(body, where)

    download = _require_object(_require(body, "download", dict, where), f"{where} (download)")
    _require(download, "url", str, f"{where} (download)")
    _require(download, "expires_at", str, f"{where} (download)")

    return cast(RecordingWithDownload, body)


def parse_recording_page(value: object, where: str) -> RecordingPage:
    """Check a `GET /v1/recordings` body and every recording in it."""
    body = _require_object(value, where)
    recordings = _require(body, "recordings", list, where)
    for index, item in enumerate(recordings):
        parse_recording(item, f"{where} (recordings[{index}])")

    next_cursor = body.get("next_cursor")
    if next_cursor is not None and not isinstance(next_cursor, str):
        raise SimulatorError(f"invalid response from {where}: field 'next_cursor' is invalid")

    return cast(RecordingPage, body)

"""The device API under `/v1`. Every query is scoped to the authenticated device.

A recording id that belongs to another device gets exactly the 404 of an id that
does not exist, on every route, so ids reveal nothing about other devices.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from service.deps import client_ip, get_runtime, limited_device, metadata_unavailable
from service.errors import ApiError, not_found
from service.limits import DEFAULT, DOWNLOAD, UPLOAD
from service.recordings import (
    MAX_LIST_LIMIT,
    CreateRecordingRequest,
    CreateRecordingResponse,
    DeviceOut,
    DownloadLink,
    RecordingOut,
    RecordingPage,
    RecordingWithDownload,
    UploadForm,
    check_recording_id,
    decode_cursor,
    encode_cursor,
    new_object_key,
    new_recording_id,
    recording_out,
)
from service.runtime import Runtime
from service.storage.mongo import (
    AVAILABLE,
    DELETED,
    PENDING,
    REJECTED,
    DeviceRecord,
    StoreUnavailableError,
)
from service.storage.s3 import ObjectStoreUnavailableError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["device"])

# Each alias authenticates the device and counts the request against one budget.
Device = Annotated[DeviceRecord, Depends(limited_device(DEFAULT))]
UploadingDevice = Annotated[DeviceRecord, Depends(limited_device(UPLOAD))]
DownloadingDevice = Annotated[DeviceRecord, Depends(limited_device(DOWNLOAD))]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _object_store_unavailable() -> ApiError:
    return ApiError(503, "object_store_unavailable", "object store unavailable; retry later")


async def _owned_recording(
    runtime: Runtime, device: DeviceRecord, recording_id: str, request: Request
) -> dict[str, Any]:
    check_recording_id(recording_id)
    try:
        document = await runtime.store.find_recording(device.device_id, recording_id)
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc
    if document is None:
        # Missing and foreign recordings get the same 404, and only the audit log tells them apart.
        await runtime.audit.record(
            action="recording.not_found_or_denied",
            actor={"type": "device", "device_id": device.device_id},
            target=recording_id,
            source_ip=client_ip(request),
            result="rejected",
            coalesce=True,
        )
        raise not_found()
    return document


@router.get("/me", response_model=DeviceOut)
async def read_me(device: Device) -> DeviceOut:
    """Return the calling device's registered identity."""
    return DeviceOut(
        device_id=device.device_id,
        household_id=device.household_id,
        certificate_not_after=device.not_after,
    )


@router.post("/recordings", status_code=201, response_model=CreateRecordingResponse)
async def create_recording(
    body: CreateRecordingRequest, device: UploadingDevice, runtime: RuntimeDep
) -> CreateRecordingResponse:
    """Reserve a recording and return a presigned POST form for exactly this upload."""
    settings = runtime.settings
    content_type = body.content_type.lower()
    if content_type not in settings.allowed_content_types:
        raise ApiError(
            415,
            "unsupported_content_type",
            f"content_type must be one of {', '.join(settings.allowed_content_types)}",
        )
    if body.size_bytes > settings.max_upload_bytes:
        raise ApiError(
            413,
            "recording_too_large",
            f"size_bytes is {body.size_bytes}, above the maximum of {settings.max_upload_bytes}",
        )

    recording_id = new_recording_id()
    object_key = new_object_key()
    form = runtime.objects.presign_upload(
        object_key,
        content_type=content_type,
        size_bytes=body.size_bytes,
        ttl_seconds=settings.upload_ttl_seconds,
    )
    try:
        await runtime.store.insert_recording(
            {
                "_id": recording_id,
                "owner_device_id": device.device_id,
                "household_id": device.household_id,
                "object_key": object_key,
                "content_type": content_type,
                "size_bytes": body.size_bytes,
                "sha256": body.sha256,
                "status": PENDING,
                "created_at": datetime.now(UTC),
            }
        )
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc

    logger.info(
        "recording reserved: device=%s recording=%s size=%d type=%s",
        device.device_id,
        recording_id,
        body.size_bytes,
        content_type,
    )
    return CreateRecordingResponse(
        recording_id=recording_id,
        upload=UploadForm(url=form.url, fields=form.fields, expires_at=form.expires_at),
    )


@router.post("/recordings/{recording_id}/complete", response_model=RecordingOut)
async def complete_recording(
    recording_id: str, request: Request, device: Device, runtime: RuntimeDep
) -> RecordingOut:
    """Verify the uploaded object against the declaration and make it available.

    The recording stores the S3 version that was hashed, and downloads serve exactly
    that version. So a repeated `complete` returns the recording as it is, without
    reading the object again.
    """
    document = await _owned_recording(runtime, device, recording_id, request)
    if document["status"] == AVAILABLE:
        return recording_out(document)
    if document["status"] != PENDING:
        raise ApiError(409, "recording_not_pending", f"recording is {document['status']}")

    try:
        stored = await runtime.objects.inspect_object(document["object_key"])
    except ObjectStoreUnavailableError as exc:
        logger.error(
            "complete failed: device=%s recording=%s: %s", device.device_id, recording_id, exc
        )
        raise _object_store_unavailable() from exc
    if stored is None:
        raise ApiError(
            409, "upload_not_found", "upload not found; upload the file before completing"
        )

    mismatches = []
    if stored.size_bytes != document["size_bytes"]:
        mismatches.append(f"size is {stored.size_bytes} bytes, declared {document['size_bytes']}")
    if stored.content_type.lower() != document["content_type"]:
        # The stored type is whatever the uploader sent, so it is not echoed back.
        mismatches.append(f"Content-Type differs from the declared {document['content_type']}")
    if stored.sha256 != document["sha256"]:
        mismatches.append("SHA-256 differs from the declared value")

    now = datetime.now(UTC)
    if mismatches:
        try:
            await runtime.objects.delete_object(document["object_key"])
        except ObjectStoreUnavailableError as exc:
            raise _object_store_unavailable() from exc
        try:
            await runtime.store.update_recording(
                device.device_id,
                recording_id,
                PENDING,
                {"status": REJECTED, "completed_at": now, "rejection": "; ".join(mismatches)},
            )
        except StoreUnavailableError as exc:
            raise metadata_unavailable() from exc
        logger.warning(
            "upload rejected: device=%s recording=%s: %s",
            device.device_id,
            recording_id,
            "; ".join(mismatches),
        )
        raise ApiError(
            409,
            "upload_mismatch",
            "upload does not match the declaration: " + "; ".join(mismatches),
        )

    # None on a bucket without versioning: downloads then serve the key's current object.
    changes = {"status": AVAILABLE, "completed_at": now, "object_version_id": stored.version_id}
    try:
        updated = await runtime.store.update_recording(
            device.device_id, recording_id, PENDING, changes
        )
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc
    if not updated:
        # A concurrent `complete` or DELETE changed the status after it was read above.
        current = await _owned_recording(runtime, device, recording_id, request)
        if current["status"] == AVAILABLE:
            return recording_out(current)
        raise ApiError(409, "recording_not_pending", f"recording is {current['status']}")
    document.update(changes)
    logger.info(
        "recording verified: device=%s recording=%s version=%s",
        device.device_id,
        recording_id,
        stored.version_id or "none (bucket not versioned)",
    )
    return recording_out(document)


@router.get("/recordings", response_model=RecordingPage)
async def list_recordings(
    device: Device,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RecordingPage:
    """List the caller's recordings, newest first, with an opaque cursor."""
    after = decode_cursor(cursor) if cursor else None
    try:
        documents = await runtime.store.list_recordings(
            device.device_id, limit=limit + 1, after=after
        )
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc
    page = documents[:limit]
    next_cursor = encode_cursor(page[-1]) if len(documents) > limit else None
    return RecordingPage(recordings=[recording_out(doc) for doc in page], next_cursor=next_cursor)


@router.get("/recordings/{recording_id}", response_model=RecordingWithDownload)
async def read_recording(
    recording_id: str, request: Request, device: DownloadingDevice, runtime: RuntimeDep
) -> RecordingWithDownload:
    """Return the recording's metadata and, once available, a short-lived download URL."""
    document = await _owned_recording(runtime, device, recording_id, request)
    result = RecordingWithDownload(**recording_out(document).model_dump())
    if document["status"] == AVAILABLE:
        link = runtime.objects.presign_download(
            document["object_key"],
            ttl_seconds=runtime.settings.download_ttl_seconds,
            version_id=document.get("object_version_id"),
        )
        result.download = DownloadLink(url=link.url, expires_at=link.expires_at)
    return result


@router.delete("/recordings/{recording_id}", status_code=204, response_class=Response)
async def delete_recording(
    recording_id: str, request: Request, device: Device, runtime: RuntimeDep
) -> Response:
    """Delete the recording. A versioned bucket keeps the object behind a delete marker."""
    document = await _owned_recording(runtime, device, recording_id, request)
    try:
        await runtime.objects.delete_object(document["object_key"])
    except ObjectStoreUnavailableError as exc:
        raise _object_store_unavailable() from exc
    try:
        await runtime.store.update_recording(
            device.device_id,
            recording_id,
            document["status"],
            {"status": DELETED, "deleted_at": datetime.now(UTC)},
        )
    except StoreUnavailableError as exc:
        raise metadata_unavailable() from exc
    logger.info("recording deleted: device=%s recording=%s", device.device_id, recording_id)
    return Response(status_code=204)

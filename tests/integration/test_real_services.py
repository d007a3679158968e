"""The service's MongoDB and S3 code against real servers, and the MongoDB posture check.

These tests run only when pointed at real services, and skip otherwise:

- `MONGODB_URI`: an authenticated MongoDB URI. The tests use a fresh database named
  `petvault_it_<random>` and drop it afterwards.
- `PETVAULT_IT_S3_BUCKET` (and `PETVAULT_IT_S3_ENDPOINT_URL` for MinIO or another
  endpoint, `PETVAULT_IT_S3_REGION`, `PETVAULT_IT_S3_ADDRESSING_STYLE`): a bucket the
  default AWS credential chain may write to. The tests write and delete keys under
  `recordings/it-`.

Unlike moto, a real S3 enforces the POST policy, so the size rule is checked here too.
Run this directory on its own (`pytest tests/integration`): the embedded S3 of the
other tests replaces the AWS credentials of the process with dummy ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import boto3
import httpx
import pytest

from service.recordings import decode_cursor, encode_cursor
from service.storage.mongo import DuplicateError, MetadataStore
from service.storage.s3 import ObjectStore

pytestmark = pytest.mark.integration

_T = TypeVar("_T")

MONGODB_URI = os.environ.get("MONGODB_URI", "")
S3_BUCKET = os.environ.get("PETVAULT_IT_S3_BUCKET", "")
S3_ENDPOINT_URL = os.environ.get("PETVAULT_IT_S3_ENDPOINT_URL") or None
S3_REGION = os.environ.get("PETVAULT_IT_S3_REGION") or os.environ.get("AWS_REGION", "us-east-1")
S3_ADDRESSING_STYLE = os.environ.get(
    "PETVAULT_IT_S3_ADDRESSING_STYLE", "path" if S3_ENDPOINT_URL else "auto"
)

# Read at import, before the embedded S3 of other test modules can overwrite them.
_AWS_ENVIRONMENT = {
    name: os.environ.get(name)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
}

needs_mongodb = pytest.mark.skipif(
    not MONGODB_URI, reason="set MONGODB_URI to an authenticated MongoDB to run this test"
)
needs_s3 = pytest.mark.skipif(
    not S3_BUCKET,
    reason="set PETVAULT_IT_S3_BUCKET (and PETVAULT_IT_S3_ENDPOINT_URL for a non-AWS "
    "endpoint) to run this test",
)


def _run(make: Callable[[], Awaitable[_T]]) -> _T:
    # One event loop per test: PyMongo's async client belongs to the loop it starts in.
    async def main() -> _T:
        return await make()

    return asyncio.run(main())


# --- MongoDB ----------------------------------------------------------------------


@asynccontextmanager
async def _fresh_store() -> AsyncIterator[MetadataStore]:
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(MONGODB_URI, tz_aware=True, serverSelectionTimeoutMS=10_000)
    name = f"petvault_it_{secrets.token_hex(4)}"
    try:
        store = MetadataStore(client[name])
        await store.ensure_indexes()
        yield store
    finally:
        await client.drop_database(name)
        await client.close()


async def _register(store: MetadataStore, device_id: str, fingerprint: str, serial: str) -> None:
    now = datetime.now(UTC)
    await store.register_device_certificate(
        device_id=device_id, household_id="it-household", fingerprint=fingerprint,
        serial=serial, not_after=now + timedelta(days=1), now=now,
    )


@needs_mongodb
def test_mongodb_register_and_find() -> None:
    async def scenario() -> Any:
        async with _fresh_store() as store:
            await _register(store, "it-toy-1", "f" * 64, "01")
            return await store.find_device_by_fingerprint("f" * 64)

    record = _run(scenario)

    assert record is not None
    assert record.device_id == "it-toy-1"
    assert record.status == "active"
    assert record.not_after.tzinfo is not None


@needs_mongodb
def test_mongodb_duplicate_fingerprint_rejected() -> None:
    async def scenario() -> None:
        async with _fresh_store() as store:
            await _register(store, "it-toy-1", "e" * 64, "02")
            # Another serial, the same fingerprint: the unique index must reject it.
            await _register(store, "it-toy-1", "e" * 64, "03")

    with pytest.raises(DuplicateError):
        _run(scenario)


@needs_mongodb
def test_mongodb_list_pages_with_cursor() -> None:
    # Real MongoDB keeps milliseconds only, so the cursor must round-trip stored times.
    async def scenario() -> tuple[list[str], list[str]]:
        async with _fresh_store() as store:
            base = datetime.now(UTC)
            created = []
            for index in range(5):
                recording_id = secrets.token_urlsafe(16)
                created.append(recording_id)
                await store.insert_recording({
                    "_id": recording_id, "owner_device_id": "it-toy-1",
                    "household_id": "it-household", "object_key": f"recordings/{index}",
                    "content_type": "audio/wav", "size_bytes": 1, "sha256": "0" * 64,
                    "status": "available",
                    "created_at": base + timedelta(microseconds=1500 * index),
                })
            paged: list[str] = []
            after = None
            while True:
                page = await store.list_recordings("it-toy-1", limit=2, after=after)
                paged += [document["_id"] for document in page]
                if len(page) < 2:
                    return list(reversed(created)), paged
                after = decode_cursor(encode_cursor(page[-1]))

    expected, paged = _run(scenario)

    assert paged == expected


@needs_mongodb
def test_mongodb_find_recording_scoped_to_owner() -> None:
    async def scenario() -> tuple[Any, Any]:
        async with _fresh_store() as store:
            await store.insert_recording({
                "_id": "it-recording", "owner_device_id": "it-toy-1", "status": "pending",
                "created_at": datetime.now(UTC),
            })
            return (await store.find_recording("it-toy-1", "it-recording"),
                    await store.find_recording("it-toy-2", "it-recording"))

    own, foreign = _run(scenario)

    assert own is not None
    assert foreign is None


def _without_credentials(uri: str) -> str:
    """Return `uri` with its user, password and auth* options removed."""
    scheme, _, rest = uri.partition("://")
    before_options, _, options = rest.partition("?")
    # The userinfo ends at the last "@" before the options.
    hosts_and_path = before_options.rpartition("@")[2]
    kept = [(name, value) for name, value in parse_qsl(options)
            if not name.lower().startswith("auth")]
    return f"{scheme}://{hosts_and_path}" + (f"?{urlencode(kept)}" if kept else "")


@needs_mongodb
def test_mongodb_rejects_unauthenticated_read() -> None:
    from pymongo import AsyncMongoClient
    from pymongo.errors import OperationFailure

    async def read_without_credentials() -> None:
        client: Any = AsyncMongoClient(_without_credentials(MONGODB_URI),
                                       serverSelectionTimeoutMS=10_000)
        try:
            await client["petvault"]["devices"].find_one({})
        finally:
            await client.close()

    with pytest.raises(OperationFailure) as raised:
        _run(read_without_credentials)

    assert raised.value.code == 13  # Unauthorized


# --- S3 ---------------------------------------------------------------------------


def _aws_session() -> boto3.session.Session:
    keys = _AWS_ENVIRONMENT
    if keys["AWS_ACCESS_KEY_ID"] and keys["AWS_SECRET_ACCESS_KEY"]:
        return boto3.session.Session(
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=keys["AWS_SESSION_TOKEN"],
        )
    if os.environ.get("AWS_ACCESS_KEY_ID") == "petvault-embedded":
        pytest.skip("the embedded S3 replaced this process's AWS credentials; "
                    "run tests/integration on its own")
    return boto3.session.Session(profile_name=keys["AWS_PROFILE"])


@pytest.fixture
def objects() -> ObjectStore:
    return ObjectStore(bucket=S3_BUCKET, region=S3_REGION, endpoint_url=S3_ENDPOINT_URL,
                       addressing_style=S3_ADDRESSING_STYLE, session=_aws_session())


def _key() -> str:
    return f"recordings/it-{secrets.token_hex(16)}"


@needs_s3
def test_s3_upload_inspect_download_delete(objects: ObjectStore) -> None:
    key = _key()
    data = b"RIFF integration audio " + secrets.token_bytes(64)

    form = objects.presign_upload(key, content_type="audio/wav", size_bytes=len(data),
                                  ttl_seconds=60)
    uploaded = httpx.post(form.url, data=form.fields, files={"file": ("f", data, "audio/wav")})
    stored = _run(lambda: objects.inspect_object(key))
    downloaded = httpx.get(objects.presign_download(key, ttl_seconds=60).url)
    _run(lambda: objects.delete_object(key))
    after_delete = _run(lambda: objects.inspect_object(key))

    assert uploaded.status_code in (200, 201, 204)
    assert stored is not None
    assert stored.size_bytes == len(data)
    assert stored.content_type == "audio/wav"
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert downloaded.content == data
    assert after_delete is None


@pytest.mark.parametrize(
    ("sent", "content_type"),
    [
        pytest.param(b"x" * 11, "audio/wav", id="more bytes than declared"),
        pytest.param(b"x" * 9, "audio/wav", id="fewer bytes than declared"),
        pytest.param(b"x" * 10, "audio/ogg", id="other Content-Type"),
    ],
)
@needs_s3
def test_s3_policy_rejects_other_upload(sent: bytes, content_type: str,
                                        objects: ObjectStore) -> None:
    key = _key()
    form = objects.presign_upload(key, content_type="audio/wav", size_bytes=10, ttl_seconds=60)
    fields = {**form.fields, "Content-Type": content_type}

    response = httpx.post(form.url, data=fields, files={"file": ("f", sent, content_type)})
    stored = _run(lambda: objects.inspect_object(key))

    assert response.status_code in (400, 403)
    assert stored is None

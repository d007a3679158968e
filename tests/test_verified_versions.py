"""Downloads serve exactly the object version that `complete` verified.

A presigned POST form stays valid for its whole TTL, and its policy pins only the key,
the Content-Type and the exact size. So the device, or anyone who copied the form, can
post other bytes of the same size and type to the same key after `complete`. Real S3
accepts that too. These tests post through the form with httpx, as an attacker would.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import api_client, declare_recording, upload_with_form
from tests.harness import RunningServer, ServerLoop, make_settings
from tests.store_access import stored_recording

VERIFIED = b"RIFF the bytes that complete verified"
# Same size and Content-Type, so the form's policy accepts them too.
REPLACEMENT = b"RIFF bytes posted after completion!!!"
UNVERSIONED_BUCKET = "petvault-test-unversioned"

assert len(VERIFIED) == len(REPLACEMENT)


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    running = server_loop.start_server(make_settings(pki.directory, s3, rate_limit_enabled=False))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def toy1(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    with api_client(pki, "toy-1", server.url) as client:
        yield client


def _s3_client(s3: EmbeddedS3) -> Any:
    return boto3.client("s3", region_name=s3.region, endpoint_url=s3.endpoint_url)


def _download(client: httpx.Client, recording_id: str) -> httpx.Response:
    body = client.get(f"/v1/recordings/{recording_id}").json()
    assert body["download"] is not None, f"recording is {body['status']}, not available"
    return httpx.get(body["download"]["url"], trust_env=False)


def _version_ids(s3: EmbeddedS3, bucket: str, key: str) -> list[str]:
    """Return the key's object versions, newest first, without delete markers."""
    listing = _s3_client(s3).list_object_versions(Bucket=bucket, Prefix=key)
    return [version["VersionId"] for version in listing.get("Versions", [])
            if version["Key"] == key]


@pytest.fixture
def replaced(toy1: httpx.Client, server: RunningServer) -> dict[str, Any]:
    """An available recording whose upload form was posted again with other bytes."""
    created = declare_recording(toy1, VERIFIED)
    recording_id = created["recording_id"]
    upload_with_form(created["upload"], VERIFIED)
    complete = toy1.post(f"/v1/recordings/{recording_id}/complete")
    complete.raise_for_status()

    upload_with_form(created["upload"], REPLACEMENT)

    return {"id": recording_id, "form": created["upload"],
            "key": stored_recording(server, recording_id)["object_key"]}


# --- the replace-after-complete attack -----------------------------------------------


def test_replaced_upload_reaches_s3(replaced: dict[str, Any], s3: EmbeddedS3) -> None:
    # The premise: the second post through the form did create a newer version.
    latest = _s3_client(s3).get_object(Bucket=s3.bucket, Key=replaced["key"])["Body"].read()

    assert latest == REPLACEMENT


def test_replaced_download_serves_verified_bytes(replaced: dict[str, Any],
                                                 toy1: httpx.Client) -> None:
    response = _download(toy1, replaced["id"])

    assert response.status_code == 200
    assert response.content == VERIFIED


def test_replaced_download_matches_sha256(replaced: dict[str, Any], toy1: httpx.Client) -> None:
    declared = toy1.get(f"/v1/recordings/{replaced['id']}").json()["sha256"]

    response = _download(toy1, replaced["id"])

    assert hashlib.sha256(response.content).hexdigest() == declared


def test_complete_stores_verified_version(replaced: dict[str, Any], server: RunningServer,
                                          s3: EmbeddedS3) -> None:
    newest, verified = _version_ids(s3, s3.bucket, replaced["key"])[:2]

    document = stored_recording(server, replaced["id"])

    assert document["object_version_id"] == verified
    assert document["object_version_id"] != newest


def test_download_url_names_verified_version(replaced: dict[str, Any], toy1: httpx.Client,
                                             server: RunningServer) -> None:
    url = toy1.get(f"/v1/recordings/{replaced['id']}").json()["download"]["url"]

    version_ids = parse_qs(urlsplit(url).query)["versionId"]

    assert version_ids == [stored_recording(server, replaced["id"])["object_version_id"]]


# --- complete on a recording that is already available ------------------------------


def test_recomplete_skips_object_read(replaced: dict[str, Any], toy1: httpx.Client,
                                      server: RunningServer) -> None:
    read_object = mock.AsyncMock(side_effect=AssertionError("complete read the object again"))

    with mock.patch.object(server.runtime.objects, "inspect_object", read_object):
        response = toy1.post(f"/v1/recordings/{replaced['id']}/complete")

    assert response.status_code == 200
    assert response.json()["status"] == "available"
    assert read_object.await_count == 0


def test_recomplete_keeps_verified_version(replaced: dict[str, Any], toy1: httpx.Client,
                                           server: RunningServer) -> None:
    before = stored_recording(server, replaced["id"])["object_version_id"]

    toy1.post(f"/v1/recordings/{replaced['id']}/complete").raise_for_status()
    response = _download(toy1, replaced["id"])

    assert stored_recording(server, replaced["id"])["object_version_id"] == before
    assert response.content == VERIFIED


# --- stale forms after a rejection or a delete ---------------------------------------


def test_stale_form_after_mismatch_not_served(toy1: httpx.Client) -> None:
    created = declare_recording(toy1, VERIFIED)
    recording_id = created["recording_id"]
    upload_with_form(created["upload"], REPLACEMENT)
    mismatch = toy1.post(f"/v1/recordings/{recording_id}/complete")

    upload_with_form(created["upload"], VERIFIED)
    complete = toy1.post(f"/v1/recordings/{recording_id}/complete")
    body = toy1.get(f"/v1/recordings/{recording_id}").json()

    assert mismatch.status_code == 409
    assert complete.status_code == 409
    assert complete.json()["error"]["code"] == "recording_not_pending"
    assert body["status"] == "rejected"
    assert body["download"] is None


def test_stale_form_after_delete_not_served(toy1: httpx.Client, server: RunningServer,
                                            s3: EmbeddedS3) -> None:
    created = declare_recording(toy1, VERIFIED)
    recording_id = created["recording_id"]
    upload_with_form(created["upload"], VERIFIED)
    toy1.post(f"/v1/recordings/{recording_id}/complete").raise_for_status()
    key = stored_recording(server, recording_id)["object_key"]

    delete = toy1.delete(f"/v1/recordings/{recording_id}")
    upload_with_form(created["upload"], REPLACEMENT)
    after = toy1.get(f"/v1/recordings/{recording_id}")

    assert delete.status_code == 204
    assert after.status_code == 404
    # The stale post leaves an orphan object that no recording serves.
    assert len(_version_ids(s3, s3.bucket, key)) == 2


def test_delete_keeps_verified_version(toy1: httpx.Client, server: RunningServer,
                                       s3: EmbeddedS3) -> None:
    created = declare_recording(toy1, VERIFIED)
    recording_id = created["recording_id"]
    upload_with_form(created["upload"], VERIFIED)
    toy1.post(f"/v1/recordings/{recording_id}/complete").raise_for_status()
    document = stored_recording(server, recording_id)

    toy1.delete(f"/v1/recordings/{recording_id}").raise_for_status()
    listing = _s3_client(s3).list_object_versions(Bucket=s3.bucket, Prefix=document["object_key"])

    assert [marker["IsLatest"] for marker in listing.get("DeleteMarkers", [])] == [True]
    assert _version_ids(s3, s3.bucket, document["object_key"]) == [document["object_version_id"]]


# --- a bucket without versioning -----------------------------------------------------

STARTUP_WARNING = "does not have versioning enabled"
COMPLETE_WARNING = "returned no version id"


@pytest.fixture(scope="module")
def unversioned_bucket(s3: EmbeddedS3) -> str:
    _s3_client(s3).create_bucket(Bucket=UNVERSIONED_BUCKET)
    return UNVERSIONED_BUCKET


@pytest.fixture
def unversioned_server(
    pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop, unversioned_bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[RunningServer]:
    caplog.set_level(logging.INFO, logger="service.storage.s3")
    settings = make_settings(pki.directory, s3, s3_bucket=unversioned_bucket,
                             rate_limit_enabled=False)
    running = server_loop.start_server(settings)
    yield running
    running.stop()


def _s3_messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    # The startup check can finish while the server fixture is still being set up.
    records = caplog.get_records("setup") + caplog.get_records("call")
    return [record for record in records
            if record.name == "service.storage.s3" and text in record.getMessage()]


def _wait_for_message(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """Wait for the startup versioning check, which runs in the background."""
    deadline = time.monotonic() + 10
    while not (records := _s3_messages(caplog, text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return records


def _add_recording(client: httpx.Client, data: bytes) -> str:
    created = declare_recording(client, data)
    upload_with_form(created["upload"], data)
    client.post(f"/v1/recordings/{created['recording_id']}/complete").raise_for_status()
    recording_id: str = created["recording_id"]
    return recording_id


def test_unversioned_download_serves_key(pki: PkiLayout,
                                         unversioned_server: RunningServer) -> None:
    with api_client(pki, "toy-1", unversioned_server.url) as client:
        recording_id = _add_recording(client, VERIFIED)
        url = client.get(f"/v1/recordings/{recording_id}").json()["download"]["url"]
    document = stored_recording(unversioned_server, recording_id)

    assert "versionId" not in parse_qs(urlsplit(url).query)
    assert document["object_version_id"] is None
    assert httpx.get(url, trust_env=False).content == VERIFIED


def test_unversioned_startup_warns(unversioned_server: RunningServer,
                                   caplog: pytest.LogCaptureFixture) -> None:
    warnings = _wait_for_message(caplog, STARTUP_WARNING)

    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert UNVERSIONED_BUCKET in warnings[0].getMessage()
    assert "enable versioning" in warnings[0].getMessage()


def test_unversioned_complete_warns_once(pki: PkiLayout, unversioned_server: RunningServer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with api_client(pki, "toy-1", unversioned_server.url) as client:
        _add_recording(client, VERIFIED)
        _add_recording(client, REPLACEMENT)

    warnings = _s3_messages(caplog, COMPLETE_WARNING)

    assert len(warnings) == 1
    assert UNVERSIONED_BUCKET in warnings[0].getMessage()


def test_versioned_bucket_no_warning(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.storage.s3")
    running = server_loop.start_server(make_settings(pki.directory, s3, rate_limit_enabled=False))
    try:
        with api_client(pki, "toy-1", running.url) as client:
            _add_recording(client, VERIFIED)
        checked = _wait_for_message(caplog, "has versioning enabled")
    finally:
        running.stop()

    assert len(checked) == 1
    assert _s3_messages(caplog, STARTUP_WARNING) == []
    assert _s3_messages(caplog, COMPLETE_WARNING) == []

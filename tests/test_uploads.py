"""`complete` checks the stored object against the declaration before making it available.

moto does not enforce the POST policy, so a device that ignores it is simulated by
writing the object straight to the recording's key with boto3.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import api_client, declare_recording
from tests.harness import RunningServer, ServerLoop, make_settings
from tests.store_access import stored_recording

DECLARED = b"RIFF declared audio bytes for the upload checks"


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """One server for the module, with rate limits off because the module exceeds them."""
    running = server_loop.start_server(make_settings(pki.directory, s3, rate_limit_enabled=False))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def toy1(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    with api_client(pki, "toy-1", server.url) as client:
        yield client


def _put_object(s3: EmbeddedS3, key: str, data: bytes, content_type: str) -> None:
    client = boto3.client("s3", region_name=s3.region, endpoint_url=s3.endpoint_url)
    client.put_object(Bucket=s3.bucket, Key=key, Body=data, ContentType=content_type)


def _object_exists(s3: EmbeddedS3, key: str) -> bool:
    client = boto3.client("s3", region_name=s3.region, endpoint_url=s3.endpoint_url)
    listing = client.list_objects_v2(Bucket=s3.bucket, Prefix=key)
    return bool(listing.get("KeyCount"))


MISMATCHES = [
    pytest.param((DECLARED[:-1], "audio/wav", "size"), id="fewer bytes"),
    pytest.param((DECLARED + b"!", "audio/wav", "size"), id="more bytes"),
    pytest.param((DECLARED, "audio/ogg", "Content-Type"), id="other allowed Content-Type"),
    pytest.param((DECLARED, "text/html", "Content-Type"), id="disallowed Content-Type"),
    pytest.param((DECLARED[:-1] + b"?", "audio/wav", "SHA-256"), id="same size, other bytes"),
]


@pytest.fixture(params=MISMATCHES)
def mismatched(request: pytest.FixtureRequest, toy1: httpx.Client, server: RunningServer,
               s3: EmbeddedS3) -> dict[str, Any]:
    """A recording declared for DECLARED as audio/wav, whose stored object differs."""
    data, content_type, field = request.param
    created = declare_recording(toy1, DECLARED)
    key = stored_recording(server, created["recording_id"])["object_key"]
    _put_object(s3, key, data, content_type)
    response = toy1.post(f"/v1/recordings/{created['recording_id']}/complete")
    return {"id": created["recording_id"], "key": key, "field": field, "response": response}


def test_mismatch_gets_409(mismatched: dict[str, Any]) -> None:
    response = mismatched["response"]

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "upload_mismatch"
    assert mismatched["field"] in response.json()["error"]["message"]


def test_mismatch_deletes_object(mismatched: dict[str, Any], s3: EmbeddedS3) -> None:
    assert not _object_exists(s3, mismatched["key"])


def test_mismatch_rejects_recording(mismatched: dict[str, Any], toy1: httpx.Client) -> None:
    body = toy1.get(f"/v1/recordings/{mismatched['id']}").json()

    assert body["status"] == "rejected"
    assert body["download"] is None


def test_rejected_recording_cannot_complete(mismatched: dict[str, Any],
                                            toy1: httpx.Client) -> None:
    response = toy1.post(f"/v1/recordings/{mismatched['id']}/complete")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "recording_not_pending"


def test_complete_before_upload_gets_409(toy1: httpx.Client) -> None:
    created = declare_recording(toy1, DECLARED)

    response = toy1.post(f"/v1/recordings/{created['recording_id']}/complete")
    body = toy1.get(f"/v1/recordings/{created['recording_id']}").json()

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "upload_not_found"
    assert "upload not found" in response.json()["error"]["message"]
    assert body["status"] == "pending"


def test_matching_upload_completes(toy1: httpx.Client, server: RunningServer,
                                   s3: EmbeddedS3) -> None:
    # The control case: the same path with the declared bytes and type succeeds.
    created = declare_recording(toy1, DECLARED)
    key = stored_recording(server, created["recording_id"])["object_key"]
    _put_object(s3, key, DECLARED, "audio/wav")

    response = toy1.post(f"/v1/recordings/{created['recording_id']}/complete")

    assert response.status_code == 200
    assert response.json()["sha256"] == hashlib.sha256(DECLARED).hexdigest()

"""The device API end to end: identity, recordings, listing, download, delete, ownership."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import httpx
import pytest
from cryptography import x509

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import (
    add_available_recording,
    api_client,
    declare_recording,
    upload_with_form,
)
from tests.harness import RunningServer, ServerLoop, make_settings
from tests.store_access import stored_recording

AUDIO = b"RIFF\x00\x00\x00\x00WAVEfmt api test audio"
# A well-formed recording id that no recording has.
MISSING_ID = "AAAAAAAAAAAAAAAAAAAAAA"


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """One server for this module. toy-1 adds recordings, toy-2 never does, and only
    the listing test uses toy-3. Rate limits are off: the module sends more requests
    per device than the default budget allows."""
    running = server_loop.start_server(make_settings(pki.directory, s3, rate_limit_enabled=False))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def toy1(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    with api_client(pki, "toy-1", server.url) as client:
        yield client


@pytest.fixture(scope="module")
def toy2(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    with api_client(pki, "toy-2", server.url) as client:
        yield client


@pytest.fixture(scope="module")
def toy3(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    with api_client(pki, "toy-3", server.url) as client:
        yield client


def _s3_client(s3: EmbeddedS3) -> Any:
    return boto3.client("s3", region_name=s3.region, endpoint_url=s3.endpoint_url)


# --- GET /v1/me ----------------------------------------------------------------------


def test_me_returns_device_identity(pki: PkiLayout, toy1: httpx.Client) -> None:
    certificate = x509.load_pem_x509_certificate(pki.device_cert("toy-1").read_bytes())

    response = toy1.get("/v1/me")
    body = response.json()

    assert response.status_code == 200
    assert body["device_id"] == "toy-1"
    assert body["household_id"] == "household-demo"
    assert datetime.fromisoformat(body["certificate_not_after"]) == certificate.not_valid_after_utc


def test_responses_not_cacheable(toy1: httpx.Client) -> None:
    response = toy1.get("/v1/me")

    assert response.headers["Cache-Control"] == "no-store"


# --- create, upload, complete --------------------------------------------------------


def test_create_returns_upload_form(toy1: httpx.Client) -> None:
    response = toy1.post(
        "/v1/recordings",
        json={"content_type": "audio/wav", "size_bytes": len(AUDIO),
              "sha256": "0" * 64},
    )
    body = response.json()

    assert response.status_code == 201
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", body["recording_id"])
    assert body["upload"]["url"].startswith("http://127.0.0.1:")
    assert body["upload"]["fields"]["Content-Type"] == "audio/wav"
    assert body["upload"]["fields"]["key"].startswith("recordings/")
    assert datetime.fromisoformat(body["upload"]["expires_at"]).tzinfo is not None


def test_object_key_carries_no_device_data(toy1: httpx.Client) -> None:
    created = declare_recording(toy1, AUDIO)

    key = created["upload"]["fields"]["key"]

    assert re.fullmatch(r"recordings/[0-9a-f]{32}", key)


def test_new_recording_is_pending(toy1: httpx.Client) -> None:
    created = declare_recording(toy1, AUDIO)

    body = toy1.get(f"/v1/recordings/{created['recording_id']}").json()

    assert body["status"] == "pending"
    assert body["download"] is None


def test_complete_makes_recording_available(toy1: httpx.Client) -> None:
    created = declare_recording(toy1, AUDIO)
    upload_with_form(created["upload"], AUDIO)

    response = toy1.post(f"/v1/recordings/{created['recording_id']}/complete")
    body = response.json()

    assert response.status_code == 200
    assert body["status"] == "available"
    assert body["size_bytes"] == len(AUDIO)
    assert body["completed_at"] is not None


def test_complete_twice_returns_available(toy1: httpx.Client) -> None:
    recording_id = add_available_recording(toy1, AUDIO)

    response = toy1.post(f"/v1/recordings/{recording_id}/complete")

    assert response.status_code == 200
    assert response.json()["status"] == "available"


# --- GET /v1/recordings/{id} with a download ----------------------------------------


def test_available_recording_downloads(toy1: httpx.Client) -> None:
    recording_id = add_available_recording(toy1, AUDIO)

    body = toy1.get(f"/v1/recordings/{recording_id}").json()
    downloaded = httpx.get(body["download"]["url"])

    assert downloaded.status_code == 200
    assert downloaded.content == AUDIO


# --- GET /v1/recordings --------------------------------------------------------------


def test_list_newest_first_with_cursor(toy3: httpx.Client) -> None:
    created = [declare_recording(toy3, AUDIO)["recording_id"] for _ in range(5)]
    everything = toy3.get("/v1/recordings", params={"limit": 100}).json()["recordings"]

    pages = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = toy3.get("/v1/recordings", params=params).json()
        pages.append([item["recording_id"] for item in page["recordings"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    paged = [recording_id for page in pages for recording_id in page]
    created_times = [datetime.fromisoformat(item["created_at"]) for item in everything]

    assert [len(page) for page in pages] == [2, 2, 1]
    assert len(paged) == len(set(paged))  # no duplicates
    assert set(paged) == set(created)  # no gaps
    assert paged == [item["recording_id"] for item in everything]
    assert created_times == sorted(created_times, reverse=True)


def test_list_scoped_to_device(toy1: httpx.Client, toy2: httpx.Client) -> None:
    declare_recording(toy1, AUDIO)

    body = toy2.get("/v1/recordings").json()

    assert body == {"recordings": [], "next_cursor": None}


# --- DELETE --------------------------------------------------------------------------


def test_delete_returns_204(toy1: httpx.Client) -> None:
    recording_id = add_available_recording(toy1, AUDIO)

    response = toy1.delete(f"/v1/recordings/{recording_id}")

    assert response.status_code == 204
    assert response.content == b""


def test_deleted_recording_not_found(toy1: httpx.Client) -> None:
    recording_id = add_available_recording(toy1, AUDIO)
    toy1.delete(f"/v1/recordings/{recording_id}").raise_for_status()

    read = toy1.get(f"/v1/recordings/{recording_id}")
    listed = toy1.get("/v1/recordings").json()["recordings"]

    assert read.status_code == 404
    assert recording_id not in [item["recording_id"] for item in listed]


def test_deleted_object_kept_behind_delete_marker(
    toy1: httpx.Client, server: RunningServer, s3: EmbeddedS3
) -> None:
    recording_id = add_available_recording(toy1, AUDIO)
    key = stored_recording(server, recording_id)["object_key"]
    toy1.delete(f"/v1/recordings/{recording_id}").raise_for_status()

    client = _s3_client(s3)
    listing = client.list_object_versions(Bucket=s3.bucket, Prefix=key)
    versions = listing.get("Versions", [])
    markers = listing.get("DeleteMarkers", [])
    kept = client.get_object(
        Bucket=s3.bucket, Key=key, VersionId=versions[0]["VersionId"]
    )["Body"].read()

    assert len(versions) == 1
    assert versions[0]["IsLatest"] is False
    assert len(markers) == 1
    assert markers[0]["IsLatest"] is True
    assert kept == AUDIO


# --- ownership: another device's recording looks exactly like a missing one ---------


ROUTES_BY_ID = [
    pytest.param("GET", "/v1/recordings/{id}", id="read"),
    pytest.param("POST", "/v1/recordings/{id}/complete", id="complete"),
    pytest.param("DELETE", "/v1/recordings/{id}", id="delete"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES_BY_ID)
def test_foreign_recording_looks_missing(
    method: str, path: str, toy1: httpx.Client, toy2: httpx.Client
) -> None:
    foreign_id = add_available_recording(toy1, AUDIO)

    foreign = toy2.request(method, path.format(id=foreign_id))
    missing = toy2.request(method, path.format(id=MISSING_ID))

    assert foreign.status_code == 404
    assert missing.status_code == 404
    assert foreign.content == missing.content


@pytest.mark.parametrize(("method", "path"), ROUTES_BY_ID)
def test_foreign_request_leaves_recording(
    method: str, path: str, toy1: httpx.Client, toy2: httpx.Client
) -> None:
    recording_id = add_available_recording(toy1, AUDIO)

    toy2.request(method, path.format(id=recording_id))
    body = toy1.get(f"/v1/recordings/{recording_id}").json()

    assert body["status"] == "available"
    assert httpx.get(body["download"]["url"]).content == AUDIO

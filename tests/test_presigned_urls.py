"""Presigned URLs: TTL, true expiry, the signed key, method and region, and the POST policy.

moto checks neither signatures nor policies, so these tests re-derive every signature
with SigV4 and the dummy credentials that the embedded S3 sets in the environment.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.auth
import botocore.session
import httpx
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    ReadOnlyCredentials,
    RefreshableCredentials,
)

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from service.storage.s3 import ObjectStore
from tests.clients import add_available_recording, api_client, declare_recording
from tests.harness import RunningServer, ServerLoop, make_settings
from tests.store_access import stored_recording

DOWNLOAD_TTL_SECONDS = 30
AUDIO = b"RIFF presigned test audio"
SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"


@pytest.fixture(scope="module")
def ttl_server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    settings = make_settings(
        pki.directory, s3, download_ttl_seconds=DOWNLOAD_TTL_SECONDS, rate_limit_enabled=False
    )
    running = server_loop.start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def download(pki: PkiLayout, ttl_server: RunningServer) -> dict[str, Any]:
    """toy-1's available recording, with its download link and the time it was fetched."""
    with api_client(pki, "toy-1", ttl_server.url) as client:
        recording_id = add_available_recording(client, AUDIO)
        body = client.get(f"/v1/recordings/{recording_id}").json()
    body["fetched_at"] = datetime.now(UTC)
    document = stored_recording(ttl_server, recording_id)
    body["object_key"] = document["object_key"]
    body["object_version_id"] = document.get("object_version_id")
    return body


@pytest.fixture(scope="module")
def upload(pki: PkiLayout, ttl_server: RunningServer) -> dict[str, Any]:
    """A fresh upload form for toy-1, with the object key that the store holds."""
    with api_client(pki, "toy-1", ttl_server.url) as client:
        created = declare_recording(client, AUDIO)
    created["object_key"] = stored_recording(ttl_server, created["recording_id"])["object_key"]
    return created


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def _embedded_credentials() -> ReadOnlyCredentials:
    # EmbeddedS3 put its dummy key pair into the environment, and the service signs with it.
    credentials = botocore.session.get_session().get_credentials()
    assert credentials is not None
    return credentials.get_frozen_credentials()


def _url_expiry(url: str) -> datetime:
    query = _query(url)
    signed_at = datetime.strptime(query["X-Amz-Date"], SIGV4_TIMESTAMP).replace(tzinfo=UTC)
    return signed_at + timedelta(seconds=int(query["X-Amz-Expires"]))


def _sign_query(url: str, *, method: str, region: str, key: str | None = None,
                version_id: str | None = None) -> str:
    """Re-derive the X-Amz-Signature of a presigned URL with botocore's SigV4 signer.

    The signing time and lifetime come from the URL itself, and so do the request
    parameters such as versionId. `key` replaces the object key in the path and
    `version_id` the versionId parameter, to show that the signature covers them.
    """
    parts = urlsplit(url)
    query = _query(url)
    path = parts.path
    if key is not None:
        bucket = path.split("/")[1]
        path = f"/{bucket}/{key}"
    # The signer adds the X-Amz-* parameters itself.
    parameters = {name: value for name, value in query.items() if not name.startswith("X-Amz-")}
    if version_id is not None:
        parameters["versionId"] = version_id
    request = AWSRequest(method=method, url=f"{parts.scheme}://{parts.netloc}{path}",
                         params=parameters)
    signer = botocore.auth.S3SigV4QueryAuth(
        _embedded_credentials(), "s3", region, expires=int(query["X-Amz-Expires"])
    )
    signed_at = datetime.strptime(query["X-Amz-Date"], SIGV4_TIMESTAMP)
    # add_auth reads the clock through this function, so pin it to the URL's X-Amz-Date.
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=signed_at):
        signer.add_auth(request)
    return _query(request.url)["X-Amz-Signature"]


def _signing_key(secret: str, date: str, region: str) -> bytes:
    """Derive the SigV4 signing key (AWS docs, "Create a signature for AWS API requests")."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _policy(fields: dict[str, str]) -> dict[str, Any]:
    policy: dict[str, Any] = json.loads(base64.b64decode(fields["policy"]))
    return policy


# --- download URLs --------------------------------------------------------------------


def test_download_expires_at_within_ttl(download: dict[str, Any]) -> None:
    expires_at = datetime.fromisoformat(download["download"]["expires_at"])

    assert expires_at <= download["fetched_at"] + timedelta(seconds=DOWNLOAD_TTL_SECONDS)


def test_download_url_lifetime_within_ttl(download: dict[str, Any]) -> None:
    query = _query(download["download"]["url"])

    assert int(query["X-Amz-Expires"]) <= DOWNLOAD_TTL_SECONDS


def test_download_expires_at_not_after_url_expiry(download: dict[str, Any]) -> None:
    # SigV4 signs a whole-second X-Amz-Date, so the URL can expire up to a second
    # before `now + TTL`. expires_at must not promise that second.
    expires_at = datetime.fromisoformat(download["download"]["expires_at"])

    assert expires_at <= _url_expiry(download["download"]["url"])


def test_download_url_path_is_owner_key(download: dict[str, Any], s3: EmbeddedS3) -> None:
    path = unquote(urlsplit(download["download"]["url"]).path)

    assert path == f"/{s3.bucket}/{download['object_key']}"


def test_download_url_names_verified_version(download: dict[str, Any]) -> None:
    query = _query(download["download"]["url"])

    assert download["object_version_id"]
    assert query["versionId"] == download["object_version_id"]


def test_download_url_signature_valid(download: dict[str, Any], s3: EmbeddedS3) -> None:
    url = download["download"]["url"]

    expected = _sign_query(url, method="GET", region=s3.region, key=download["object_key"])

    assert _query(url)["X-Amz-Signature"] == expected


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"key": "recordings/00000000000000000000000000000000"}, id="other key"),
        pytest.param({"method": "PUT"}, id="PUT instead of GET"),
        pytest.param({"method": "DELETE"}, id="DELETE instead of GET"),
        pytest.param({"region": "eu-west-1"}, id="other region"),
        pytest.param({"version_id": "other-version"}, id="other versionId"),
    ],
)
def test_download_url_signature_covers(
    change: dict[str, str], download: dict[str, Any], s3: EmbeddedS3
) -> None:
    url = download["download"]["url"]
    request = {"method": "GET", "region": s3.region, "key": download["object_key"], **change}

    assert _query(url)["X-Amz-Signature"] != _sign_query(url, **request)


# --- upload forms (presigned POST) ---------------------------------------------------


def test_upload_policy_pins_content_type(upload: dict[str, Any]) -> None:
    conditions = _policy(upload["upload"]["fields"])["conditions"]

    assert {"Content-Type": "audio/wav"} in conditions


def test_upload_policy_pins_size(upload: dict[str, Any]) -> None:
    conditions = _policy(upload["upload"]["fields"])["conditions"]

    assert ["content-length-range", len(AUDIO), len(AUDIO)] in conditions


def test_upload_policy_pins_key(upload: dict[str, Any]) -> None:
    conditions = _policy(upload["upload"]["fields"])["conditions"]

    assert {"key": upload["object_key"]} in conditions


def test_upload_policy_pins_bucket(upload: dict[str, Any], s3: EmbeddedS3) -> None:
    conditions = _policy(upload["upload"]["fields"])["conditions"]

    assert {"bucket": s3.bucket} in conditions


def test_upload_form_key_is_owner_key(upload: dict[str, Any]) -> None:
    assert upload["upload"]["fields"]["key"] == upload["object_key"]


def test_upload_policy_signature_valid(upload: dict[str, Any], s3: EmbeddedS3) -> None:
    fields = upload["upload"]["fields"]
    credentials = _embedded_credentials()
    date = fields["x-amz-date"][:8]
    signing_key = _signing_key(credentials.secret_key, date, s3.region)

    expected = hmac.new(signing_key, fields["policy"].encode(), hashlib.sha256).hexdigest()

    assert fields["x-amz-signature"] == expected


def test_upload_credential_scope(upload: dict[str, Any], s3: EmbeddedS3) -> None:
    fields = upload["upload"]["fields"]
    access_key = _embedded_credentials().access_key
    date = fields["x-amz-date"][:8]

    assert fields["x-amz-credential"] == f"{access_key}/{date}/{s3.region}/s3/aws4_request"


def test_upload_expires_at_not_after_policy_expiration(upload: dict[str, Any]) -> None:
    expiration = datetime.fromisoformat(_policy(upload["upload"]["fields"])["expiration"])
    expires_at = datetime.fromisoformat(upload["upload"]["expires_at"])

    assert expires_at <= expiration


# --- object keys that need encoding --------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("recordings/with space.wav", id="space"),
        pytest.param("recordings/a+b.wav", id="plus"),
        pytest.param("recordings/grüße ☃.wav", id="non-ASCII"),
        pytest.param("recordings/a b+c%20d.wav", id="space, plus and percent"),
    ],
)
def test_object_key_round_trip(key: str, s3: EmbeddedS3) -> None:
    objects = ObjectStore(bucket=s3.bucket, region=s3.region, endpoint_url=s3.endpoint_url,
                          addressing_style="path")
    data = b"audio for " + key.encode()

    form = objects.presign_upload(
        key, content_type="audio/ogg", size_bytes=len(data), ttl_seconds=60
    )
    httpx.post(form.url, data=form.fields,
               files={"file": ("f", data, "audio/ogg")}).raise_for_status()
    downloaded = httpx.get(objects.presign_download(key, ttl_seconds=60).url)
    stored = _run(objects.inspect_object(key))
    _run(objects.delete_object(key))
    after_delete = _run(objects.inspect_object(key))

    assert downloaded.content == data
    assert stored is not None
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.content_type == "audio/ogg"
    assert after_delete is None


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# --- credentials that expire before the TTL ------------------------------------------


class _ShortLivedCredentials(CredentialProvider):
    """Hands out credentials that expire 20 s after each refresh, like an IAM role near expiry.

    Each refresh gets its own session token, so a URL's X-Amz-Security-Token names the
    credentials that signed it, and `expiries` maps each token to its expiry.
    """

    METHOD = "short-lived-test"
    LIFETIME = timedelta(seconds=20)

    def __init__(self) -> None:
        self.expiries: dict[str, datetime] = {}

    def _metadata(self) -> dict[str, str]:
        token = f"token-{len(self.expiries)}"
        expiry = datetime.now(UTC) + self.LIFETIME
        self.expiries[token] = expiry
        frozen = _embedded_credentials()
        return {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                "token": token, "expiry_time": expiry.isoformat()}

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            metadata=self._metadata(), refresh_using=self._metadata, method=self.METHOD
        )


@pytest.fixture
def short_lived() -> tuple[ObjectStore, _ShortLivedCredentials]:
    provider = _ShortLivedCredentials()
    session = botocore.session.get_session()
    session.register_component("credential_provider", CredentialResolver([provider]))
    objects = ObjectStore(bucket="any", region="us-east-1", endpoint_url="http://127.0.0.1:9",
                          session=boto3.session.Session(botocore_session=session))
    return objects, provider


def test_download_expires_at_bounded_by_credentials(
    short_lived: tuple[ObjectStore, _ShortLivedCredentials],
) -> None:
    objects, provider = short_lived

    link = objects.presign_download("recordings/x", ttl_seconds=60)
    signing_token = _query(link.url)["X-Amz-Security-Token"]

    assert link.expires_at <= provider.expiries[signing_token]
    assert _url_expiry(link.url) <= provider.expiries[signing_token]


def test_upload_expires_at_bounded_by_credentials(
    short_lived: tuple[ObjectStore, _ShortLivedCredentials],
) -> None:
    objects, provider = short_lived

    form = objects.presign_upload("recordings/x", content_type="audio/wav", size_bytes=1,
                                  ttl_seconds=60)
    signing_token = form.fields["x-amz-security-token"]

    assert form.expires_at <= provider.expiries[signing_token]

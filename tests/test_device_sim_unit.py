"""Unit tests for the device simulator, against in-memory stand-ins for petvault and S3.

The API and S3 run as httpx.MockTransport handlers (`FakePetvault`). A few tests run
real mutual TLS against an `http.server` on 127.0.0.1 to check how handshake failures
are reported. The test PKI is generated here with `cryptography`, so the file needs
no other part of petvault.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import logging
import os
import socket
import ssl
import stat
import threading
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.naming import DEVICE_ID_RULE
from device_sim import cli
from device_sim.audio import synthesize_wav
from device_sim.client import ApiError, DeviceClient, DigestMismatchError, SimulatorError
from device_sim.errors import StorageError
from device_sim.keygen import generate_device_key_and_csr
from device_sim.scenario import ScenarioStepError, run_scenario

SIGNATURE = "c2VjcmV0LXNpZ25hdHVyZQ"  # stand-in for the X-Amz-Signature of a presigned URL
S3_ENDPOINT = "https://s3.test/petvault-bucket"
BASE_URL = "https://petvault.test:8443"

Handler = Callable[[httpx.Request], httpx.Response]


# --- test PKI ------------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _issue(
    common_name: str,
    issuer: Issued | None,
    *,
    ca: bool = False,
    server_ip: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """Issue a certificate signed by `issuer`, or a self-signed CA if `issuer` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server_ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(server_ip))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )

    signing_key = issuer.key if issuer else key
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def _write_cert(path: Path, issued: Issued) -> Path:
    path.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, issued: Issued, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class Pki:
    """Paths of the test PKI, laid out like certs/dev."""

    root: Path
    server_ca: Path
    device_ca: Path
    server_cert: Path
    server_key: Path
    device_cert: Path
    device_key: Path
    expired_cert: Path
    expired_key: Path
    future_cert: Path
    future_key: Path
    rogue_cert: Path  # device certificate from a CA that the server does not trust
    rogue_key: Path
    other_server_ca: Path  # CA that did not issue the server certificate
    encrypted_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    devices = root / "devices"
    devices.mkdir()
    now = datetime.now(UTC)

    server_ca = _issue("petvault test server CA", None, ca=True)
    device_ca = _issue("petvault test device CA", None, ca=True)
    rogue_ca = _issue("rogue CA", None, ca=True)
    other_server_ca = _issue("other server CA", None, ca=True)

    server = _issue("petvault server", server_ca, server_ip="127.0.0.1")
    device = _issue("toy-1", device_ca)
    expired = _issue(
        "toy-old", device_ca, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    future = _issue(
        "toy-new", device_ca, not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)
    )
    rogue = _issue("toy-1", rogue_ca)

    return Pki(
        root=root,
        server_ca=_write_cert(root / "server-ca.pem", server_ca),
        device_ca=_write_cert(root / "device-ca.pem", device_ca),
        server_cert=_write_cert(root / "server.pem", server),
        server_key=_write_key(root / "server.key", server),
        device_cert=_write_cert(devices / "toy-1.pem", device),
        device_key=_write_key(devices / "toy-1.key", device),
        expired_cert=_write_cert(devices / "toy-old.pem", expired),
        expired_key=_write_key(devices / "toy-old.key", expired),
        future_cert=_write_cert(devices / "toy-new.pem", future),
        future_key=_write_key(devices / "toy-new.key", future),
        rogue_cert=_write_cert(root / "rogue.pem", rogue),
        rogue_key=_write_key(root / "rogue.key", rogue),
        other_server_ca=_write_cert(root / "other-server-ca.pem", other_server_ca),
        encrypted_key=_write_key(root / "encrypted.key", device, password=b"hunter2"),
    )


# --- in-memory petvault and S3 -------------------------------------------------------


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message}}, headers=headers
    )


def _parse_multipart(request: httpx.Request) -> list[tuple[str, bytes]]:
    """Return the (field name, value) pairs of a multipart/form-data body, in order."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    fields = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = str(part.get_param("name", header="content-disposition"))
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields.append((name, payload))
    return fields


class FakePetvault:
    """In-memory petvault API and S3 bucket for one device, behind two MockTransports."""

    def __init__(self, device_id: str = "toy-1") -> None:
        self.device_id = device_id
        self.recordings: dict[str, dict[str, Any]] = {}  # insertion order is creation order
        self.object_keys: dict[str, str] = {}  # recording id -> S3 object key
        self.objects: dict[str, bytes] = {}  # S3 object key -> bytes
        self.calls: list[str] = []
        self.upload_fields: list[tuple[str, bytes]] = []
        self.download_override: bytes | None = None
        self.s3_upload_status = 204

    def api_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_api)

    def storage_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_s3)

    def handle_api(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        raw_path = request.url.raw_path.decode().partition("?")[0]
        self.calls.append(f"{request.method} {raw_path}")
        parts = path.strip("/").split("/")

        if request.method == "GET" and path == "/v1/me":
            return httpx.Response(
                200,
                json={
                    "device_id": self.device_id,
                    "household_id": "household-7",
                    "certificate_not_after": "2030-01-01T00:00:00Z",
                },
            )
        if request.method == "POST" and path == "/v1/recordings":
            return self._create(json.loads(request.content))
        if request.method == "GET" and path == "/v1/recordings":
            return self._list(request.url.params)
        if len(parts) >= 3 and parts[:2] == ["v1", "recordings"]:
            recording = self.recordings.get(parts[2])
            if recording is None:
                return _error(404, "not_found", "recording not found")
            if request.method == "POST" and parts[3:] == ["complete"]:
                return self._complete(recording)
            if request.method == "GET" and len(parts) == 3:
                key = self.object_keys[recording["recording_id"]]
                download = {
                    "url": f"{S3_ENDPOINT}/{key}?X-Amz-Signature={SIGNATURE}",
                    "expires_at": "2030-01-01T00:01:00Z",
                }
                return httpx.Response(200, json={**recording, "download": download})
            if request.method == "DELETE" and len(parts) == 3:
                del self.recordings[recording["recording_id"]]
                return httpx.Response(204)
        return _error(404, "not_found", "not found")

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        recording_id = f"rec-{len(self.recordings) + 1}"
        key = f"objects/{hashlib.sha256(recording_id.encode()).hexdigest()[:16]}"
        self.recordings[recording_id] = {
            "recording_id": recording_id,
            "content_type": body["content_type"],
            "size_bytes": body["size_bytes"],
            "sha256": body["sha256"],
            "status": "pending",
            "created_at": f"2025-01-01T00:00:{len(self.recordings):02d}Z",
            "completed_at": None,
        }
        self.object_keys[recording_id] = key
        upload = {
            "url": S3_ENDPOINT,
            "fields": {
                "key": key,
                "Content-Type": body["content_type"],
                "policy": "eyJjb25kaXRpb25zIjogW119",
                "x-amz-signature": SIGNATURE,
            },
            "expires_at": "2030-01-01T00:01:00Z",
        }
        return httpx.Response(201, json={"recording_id": recording_id, "upload": upload})

    def _complete(self, recording: dict[str, Any]) -> httpx.Response:
        data = self.objects.get(self.object_keys[recording["recording_id"]])
        if data is None:
            return _error(409, "upload_missing", "upload not found")
        if hashlib.sha256(data).hexdigest() != recording["sha256"]:
            return _error(409, "checksum_mismatch", "stored object does not match sha256")
        recording["status"] = "available"
        recording["completed_at"] = "2025-01-01T00:01:00Z"
        return httpx.Response(200, json=recording)

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        newest_first = list(reversed(self.recordings.values()))
        start = int(params.get("cursor", "0"))
        limit = int(params.get("limit", "2"))
        page = newest_first[start : start + limit]
        more = start + limit < len(newest_first)
        return httpx.Response(
            200,
            json={"recordings": page, "next_cursor": str(start + limit) if more else None},
        )

    def handle_s3(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"S3 {request.method}")
        if request.method == "POST" and str(request.url) == S3_ENDPOINT:
            self.upload_fields = _parse_multipart(request)
            if self.s3_upload_status != 204:
                body = (
                    b"<Error><Code>AccessDenied</Code>"
                    b"<Message>Request has expired</Message></Error>"
                )
                return httpx.Response(self.s3_upload_status, content=body)
            fields = dict(self.upload_fields)
            self.objects[fields["key"].decode()] = fields["file"]
            return httpx.Response(204)
        if request.method == "GET" and request.url.params.get("X-Amz-Signature") == SIGNATURE:
            key = request.url.path.removeprefix("/petvault-bucket/")
            if key not in self.objects:
                return httpx.Response(404, content=b"<Error><Code>NoSuchKey</Code></Error>")
            data = (
                self.download_override if self.download_override is not None else self.objects[key]
            )
            return httpx.Response(200, content=data)
        return httpx.Response(403, content=b"<Error><Code>SignatureDoesNotMatch</Code></Error>")


@pytest.fixture
def fake() -> FakePetvault:
    return FakePetvault()


@pytest.fixture
def client(pki: Pki, fake: FakePetvault) -> Iterator[DeviceClient]:
    with DeviceClient(
        pki.device_cert,
        pki.device_key,
        pki.server_ca,
        BASE_URL,
        api_transport=fake.api_transport(),
        storage_transport=fake.storage_transport(),
    ) as device_client:
        yield device_client


def _client_with_api(pki: Pki, handler: Handler) -> DeviceClient:
    return DeviceClient(
        pki.device_cert,
        pki.device_key,
        pki.server_ca,
        BASE_URL,
        api_transport=httpx.MockTransport(handler),
        storage_transport=httpx.MockTransport(lambda request: httpx.Response(500)),
    )


# --- audio ---------------------------------------------------------------------------


def test_wav_default_format() -> None:
    data = synthesize_wav()

    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 16000
        assert wav.getnframes() == 48000
        assert wav.getcomptype() == "NONE"
    assert len(data) == 44 + 48000 * 2


def test_wav_duration_and_tone() -> None:
    data = synthesize_wav(seconds=0.5, frequency=440.0)

    with wave.open(io.BytesIO(data)) as wav:
        frames = wav.readframes(wav.getnframes())
        assert wav.getnframes() / wav.getframerate() == pytest.approx(0.5)
    assert any(frames), "the tone must not be silence"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"seconds": 0}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 601}, "seconds"),
        ({"sample_rate": 100}, "sample_rate"),
        ({"frequency": 8000.0}, "frequency"),
        ({"frequency": 0.0}, "frequency"),
    ],
)
def test_wav_rejects_invalid_arguments(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        synthesize_wav(**kwargs)  # type: ignore[arg-type]


# --- scenario ------------------------------------------------------------------------


def test_scenario_step_order_and_logs(client: DeviceClient, fake: FakePetvault) -> None:
    lines: list[str] = []

    result = run_scenario(client, log=lines.append)

    steps = [line.split(":", 1)[0] for line in lines]
    assert steps == [
        f"[toy-1] {step}" for step in ("me", "record", "upload", "complete", "list", "play")
    ]
    assert "[toy-1] upload: 96044 bytes sent (audio/wav)" in lines[2]
    assert "sha256 verified" in lines[5]
    assert fake.calls == [
        "GET /v1/me",
        "POST /v1/recordings",
        "S3 POST",
        "POST /v1/recordings/rec-1/complete",
        "GET /v1/recordings",
        "GET /v1/recordings/rec-1",
        "S3 GET",
    ]
    assert result.device_id == "toy-1"
    assert result.recording_id == "rec-1"
    assert result.sha256 == fake.recordings["rec-1"]["sha256"]
    assert result.size_bytes == 96044


def test_scenario_sends_form_fields_before_file(client: DeviceClient, fake: FakePetvault) -> None:
    run_scenario(client, log=lambda line: None)

    names = [name for name, _ in fake.upload_fields]
    assert names[-1] == "file"
    assert set(names[:-1]) == {"key", "Content-Type", "policy", "x-amz-signature"}


def test_scenario_upload_failure_names_step(client: DeviceClient, fake: FakePetvault) -> None:
    fake.s3_upload_status = 403

    with pytest.raises(ScenarioStepError) as caught:
        run_scenario(client, log=lambda line: None)

    assert caught.value.step == "upload"
    assert "scenario step 'upload' failed" in str(caught.value)
    assert "HTTP 403 AccessDenied" in str(caught.value)
    assert "expired" in str(caught.value)
    assert SIGNATURE not in str(caught.value)
    assert "s3.test" not in str(caught.value)


def test_scenario_missing_from_listing(client: DeviceClient, fake: FakePetvault) -> None:
    original = fake.handle_api

    def hide_listing(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/recordings":
            return httpx.Response(200, json={"recordings": [], "next_cursor": None})
        return original(request)

    fake.handle_api = hide_listing  # type: ignore[method-assign]
    hiding_client = DeviceClient(
        client.cert_path,
        client.key_path,
        client.server_ca_path,
        BASE_URL,
        api_transport=fake.api_transport(),
        storage_transport=fake.storage_transport(),
    )

    with hiding_client, pytest.raises(ScenarioStepError) as caught:
        run_scenario(hiding_client, log=lambda line: None)

    assert caught.value.step == "list"
    assert "rec-1 is missing from GET /v1/recordings" in str(caught.value)


def test_iter_recordings_follows_cursor(client: DeviceClient, fake: FakePetvault) -> None:
    for index in range(3):
        _upload_one(client, f"audio {index}".encode())

    listed = [item["recording_id"] for item in client.iter_recordings(page_size=2)]

    assert listed == ["rec-3", "rec-2", "rec-1"]
    assert fake.calls.count("GET /v1/recordings") == 2


def test_iter_recordings_repeated_cursor(pki: Pki) -> None:
    page = {"recordings": [], "next_cursor": "same"}
    client = _client_with_api(pki, lambda request: httpx.Response(200, json=page))

    with client, pytest.raises(SimulatorError, match="cursor it had returned before"):
        list(client.iter_recordings())


def test_scenario_logs_no_presigned_url(
    client: DeviceClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    run_scenario(client, log=lambda line: None)

    assert "HTTP Request" in caplog.text  # httpx did log the requests
    assert SIGNATURE not in caplog.text


# --- API errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "headers", "fragment"),
    [
        (401, "unauthenticated", {}, "not accept this device certificate"),
        (401, "certificate_not_registered", {}, "register the device"),
        (401, "certificate_revoked", {}, "certificate is revoked; the device needs a new key"),
        (403, "device_suspended", {}, "device is suspended"),
        (403, "forbidden", {}, "not allowed"),
        (404, "not_found", {}, "belongs to another device"),
        (409, "conflict", {}, "conflicts"),
        (413, "payload_too_large", {}, "too large"),
        (422, "invalid_request", {}, "rejected as invalid"),
        (429, "rate_limited", {"Retry-After": "30"}, "rate limited; retry after 30 s"),
        (500, "internal_error", {}, "server-side error"),
        (503, "service_unavailable", {}, "service is unavailable"),
    ],
)
def test_api_error_message_per_status(
    pki: Pki, status: int, code: str, headers: dict[str, str], fragment: str
) -> None:
    client = _client_with_api(pki, lambda request: _error(status, code, "details here", headers))

    with client, pytest.raises(ApiError) as caught:
        client.get_recording("rec-1")

    message = str(caught.value)
    assert caught.value.status == status
    assert caught.value.code == code
    assert fragment in message
    assert f"HTTP {status} {code}: details here" in message
    assert "\n" not in message


def test_revoked_error_does_not_suggest_registering() -> None:
    error = ApiError(401, "certificate_revoked", "the client certificate is revoked")

    assert "register the device" not in str(error)


def test_api_error_retry_after_http_date(pki: Pki) -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    retry_after = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    client = _client_with_api(
        pki, lambda request: _error(429, "rate_limited", "slow down", {"Retry-After": retry_after})
    )

    with client, pytest.raises(ApiError) as caught:
        client.me()

    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 121


def test_api_error_without_envelope(pki: Pki) -> None:
    client = _client_with_api(
        pki, lambda request: httpx.Response(502, text="<html>Bad Gateway</html>")
    )

    with client, pytest.raises(ApiError) as caught:
        client.me()

    assert caught.value.code == "http_502"
    assert "server-side error" in str(caught.value)


def test_api_error_strips_control_characters(pki: Pki) -> None:
    hostile = "line one\nline two\x1b[31m red"
    client = _client_with_api(pki, lambda request: _error(409, "conflict", hostile))

    with client, pytest.raises(ApiError) as caught:
        client.complete("rec-1")

    assert "\n" not in str(caught.value)
    assert "\x1b" not in str(caught.value)
    assert "line one line two" in str(caught.value)


def test_complete_without_upload_conflicts(client: DeviceClient) -> None:
    created = client.create_recording("audio/wav", b"RIFF")

    with pytest.raises(ApiError) as caught:
        client.complete(created["recording_id"])

    assert caught.value.status == 409
    assert "upload not found" in str(caught.value)


def test_invalid_response_names_field(pki: Pki) -> None:
    client = _client_with_api(pki, lambda request: httpx.Response(200, json={"device_id": 7}))

    with client, pytest.raises(SimulatorError, match="field 'device_id' is missing or invalid"):
        client.me()


def test_recording_id_stays_one_path_segment(client: DeviceClient, fake: FakePetvault) -> None:
    with pytest.raises(ApiError):
        client.get_recording("../me")

    assert fake.calls == ["GET /v1/recordings/..%2Fme"]


# --- download verification -----------------------------------------------------------


def _upload_one(client: DeviceClient, data: bytes) -> str:
    created = client.create_recording("audio/wav", data)
    client.upload(created["upload"], data, "audio/wav")
    client.complete(created["recording_id"])
    return created["recording_id"]


def test_download_returns_verified_bytes(client: DeviceClient) -> None:
    recording_id = _upload_one(client, b"original audio")

    assert client.download(client.get_recording(recording_id)) == b"original audio"


def test_download_fetches_url_for_list_item(client: DeviceClient) -> None:
    _upload_one(client, b"original audio")
    listed = client.list_recordings()["recordings"][0]

    assert client.download(listed) == b"original audio"


def test_download_sha256_mismatch_raises(client: DeviceClient, fake: FakePetvault) -> None:
    recording_id = _upload_one(client, b"original audio")
    fake.download_override = b"tampered audio"  # same length, other bytes

    with pytest.raises(DigestMismatchError) as caught:
        client.download(client.get_recording(recording_id))

    assert caught.value.field == "sha256"
    assert caught.value.expected == hashlib.sha256(b"original audio").hexdigest()
    assert caught.value.actual == hashlib.sha256(b"tampered audio").hexdigest()


def test_download_oversized_body_raises(client: DeviceClient, fake: FakePetvault) -> None:
    recording_id = _upload_one(client, b"original audio")
    fake.download_override = b"original audio plus a lot more"

    with pytest.raises(DigestMismatchError, match="more than 14 bytes"):
        client.download(client.get_recording(recording_id))


def test_download_s3_error_hides_url(client: DeviceClient, fake: FakePetvault) -> None:
    recording_id = _upload_one(client, b"original audio")
    recording = client.get_recording(recording_id)
    fake.objects.clear()

    with pytest.raises(StorageError) as caught:
        client.download(recording)

    assert (
        str(caught.value)
        == "download from S3 (presigned GET) failed: S3 returned HTTP 404 NoSuchKey"
    )


def test_storage_unreachable_hides_url(pki: Pki, fake: FakePetvault) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = DeviceClient(
        pki.device_cert,
        pki.device_key,
        pki.server_ca,
        BASE_URL,
        api_transport=fake.api_transport(),
        storage_transport=httpx.MockTransport(refuse),
    )
    with client:
        created = client.create_recording("audio/wav", b"x")
        with pytest.raises(StorageError) as caught:
            client.upload(created["upload"], b"x", "audio/wav")

    assert "unreachable" in str(caught.value)
    assert "s3.test" not in str(caught.value)


# --- credentials ---------------------------------------------------------------------


def test_missing_cert_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"

    with pytest.raises(SimulatorError) as caught:
        DeviceClient(missing, pki.device_key, pki.server_ca, BASE_URL)

    assert str(caught.value) == f"device certificate file {missing} is missing"


def test_missing_key_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="device key file .* is missing"):
        DeviceClient(pki.device_cert, tmp_path / "nope.key", pki.server_ca, BASE_URL)


def test_missing_server_ca_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="server CA file .* is missing"):
        DeviceClient(pki.device_cert, pki.device_key, tmp_path / "nope.pem", BASE_URL)


def test_garbage_cert_file(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")

    with pytest.raises(SimulatorError, match="contains no valid PEM certificate"):
        DeviceClient(garbage, pki.device_key, pki.server_ca, BASE_URL)


def test_key_not_matching_cert(pki: Pki) -> None:
    with pytest.raises(SimulatorError, match="does not match the public key"):
        DeviceClient(pki.device_cert, pki.rogue_key, pki.server_ca, BASE_URL)


def test_encrypted_key_rejected(pki: Pki) -> None:
    with pytest.raises(SimulatorError, match="is encrypted"):
        DeviceClient(pki.device_cert, pki.encrypted_key, pki.server_ca, BASE_URL)


def test_expired_cert_detected_locally(pki: Pki) -> None:
    expired = x509.load_pem_x509_certificate(pki.expired_cert.read_bytes())
    expected_date = expired.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    with pytest.raises(SimulatorError) as caught:
        DeviceClient(pki.expired_cert, pki.expired_key, pki.server_ca, BASE_URL)

    assert str(caught.value).startswith(f"device certificate expired at {expected_date}")
    assert "toy-old" in str(caught.value)


def test_not_yet_valid_cert_detected_locally(pki: Pki) -> None:
    with pytest.raises(SimulatorError, match="not valid before .* check the system clock"):
        DeviceClient(pki.future_cert, pki.future_key, pki.server_ca, BASE_URL)


def test_plain_http_server_url_rejected(pki: Pki) -> None:
    with pytest.raises(SimulatorError, match="needs https://"):
        DeviceClient(pki.device_cert, pki.device_key, pki.server_ca, "http://127.0.0.1:8443")


# --- real mutual TLS on loopback -----------------------------------------------------


class _MeHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"])
        body = json.dumps(
            {
                "device_id": subject["commonName"],
                "household_id": "household-7",
                "certificate_not_after": "2030-01-01T00:00:00Z",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _tls_server(cert: Path, key: Path, client_ca: Path) -> Iterator[str]:
    """Serve `_MeHandler` over TLS on 127.0.0.1, requiring a client certificate from `client_ca`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=client_ca)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _MeHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tls_me_over_mutual_tls(pki: Pki) -> None:
    with _tls_server(pki.server_cert, pki.server_key, pki.device_ca) as url:
        with DeviceClient(pki.device_cert, pki.device_key, pki.server_ca, url) as client:
            identity = client.me()

    assert identity["device_id"] == "toy-1"


def test_tls_untrusted_server_certificate(pki: Pki) -> None:
    with _tls_server(pki.server_cert, pki.server_key, pki.device_ca) as url:
        with DeviceClient(pki.device_cert, pki.device_key, pki.other_server_ca, url) as client:
            with pytest.raises(SimulatorError) as caught:
                client.me()

    assert "server certificate is not trusted by the server CA" in str(caught.value)


def test_tls_server_rejects_device_certificate(pki: Pki) -> None:
    with _tls_server(pki.server_cert, pki.server_key, pki.device_ca) as url:
        with DeviceClient(pki.rogue_cert, pki.rogue_key, pki.server_ca, url) as client:
            with pytest.raises(SimulatorError) as caught:
                client.me()

    message = str(caught.value)
    assert "the server does not trust the CA that issued the device certificate" in message
    assert url in message


def test_tls_server_name_mismatch(pki: Pki) -> None:
    with _tls_server(pki.server_cert, pki.server_key, pki.device_ca) as url:
        localhost_url = url.replace("127.0.0.1", "localhost")  # the certificate has only an IP SAN
        with DeviceClient(pki.device_cert, pki.device_key, pki.server_ca, localhost_url) as client:
            with pytest.raises(SimulatorError) as caught:
                client.me()

    assert "server certificate is not valid for the server address" in str(caught.value)


def test_server_unreachable_names_url(pki: Pki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{probe.getsockname()[1]}"  # bound but not listening

        with DeviceClient(pki.device_cert, pki.device_key, pki.server_ca, url) as client:
            with pytest.raises(SimulatorError) as caught:
                client.me()

    assert (
        str(caught.value)
        == f"server unreachable: connection to {url} refused (is petvault running?)"
    )


# --- keygen --------------------------------------------------------------------------


def test_keygen_key_mode_0600(tmp_path: Path) -> None:
    files = generate_device_key_and_csr("toy-9", tmp_path / "devices")

    assert files.key_path == tmp_path / "devices" / "toy-9.key"
    assert stat.S_IMODE(files.key_path.stat().st_mode) == 0o600


def test_keygen_csr_signature_and_subject(tmp_path: Path) -> None:
    files = generate_device_key_and_csr("toy-9", tmp_path)

    csr = x509.load_pem_x509_csr(files.csr_path.read_bytes())
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    public_der = csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert csr.is_signature_valid
    assert [attribute.value for attribute in common_names] == ["toy-9"]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert csr.public_key() == key.public_key()
    assert files.public_key_sha256 == hashlib.sha256(public_der).hexdigest()
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_keygen_refuses_overwrite(tmp_path: Path) -> None:
    first = generate_device_key_and_csr("toy-9", tmp_path)
    original_key = first.key_path.read_bytes()

    with pytest.raises(SimulatorError, match="already exists; pass --force"):
        generate_device_key_and_csr("toy-9", tmp_path)

    assert first.key_path.read_bytes() == original_key


def test_keygen_force_replaces(tmp_path: Path) -> None:
    first = generate_device_key_and_csr("toy-9", tmp_path)
    original_key = first.key_path.read_bytes()

    second = generate_device_key_and_csr("toy-9", tmp_path, force=True)

    assert second.key_path.read_bytes() != original_key
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600


def test_keygen_does_not_follow_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "toy-9.key").symlink_to(target)

    with pytest.raises(SimulatorError, match="already exists"):
        generate_device_key_and_csr("toy-9", tmp_path)

    assert not target.exists()


@pytest.mark.parametrize("device_id", ["", "../toy", "toy/1", ".", "..", "t" * 65, "toy 1"])
def test_keygen_rejects_invalid_device_id(tmp_path: Path, device_id: str) -> None:
    with pytest.raises(SimulatorError, match="invalid device id") as caught:
        generate_device_key_and_csr(device_id, tmp_path)
    assert DEVICE_ID_RULE in str(caught.value)


# Ids that the CA and the admin API accept, so the simulator must accept them too.
@pytest.mark.parametrize("device_id", ["-toy", "_toy", ".toy", "...", "t" * 64])
def test_keygen_accepts_ca_device_id(tmp_path: Path, device_id: str) -> None:
    files = generate_device_key_and_csr(device_id, tmp_path)

    assert files.key_path == tmp_path / f"{device_id}.key"


# --- CLI -----------------------------------------------------------------------------


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    output = capsys.readouterr()
    return code, output.out, output.err


def test_cli_missing_cert_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_cli(["--certs-dir", str(tmp_path), "me"], capsys)

    assert code == 1
    assert out == ""
    assert err == (
        f"petvault-sim: error: device certificate file {tmp_path}/devices/toy-1.pem is missing\n"
    )


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--cert", "device.pem", "me"])

    assert caught.value.code == 2
    assert "--cert and --key must be given together" in capsys.readouterr().err


def test_cli_rejects_invalid_device_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--device", "../etc", "me"])

    assert caught.value.code == 2


def test_cli_record_writes_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "clip.wav"

    code, out, err = _run_cli(["record", "--seconds", "1", "--out", str(out_file)], capsys)

    assert code == 0
    assert err == ""
    assert out.startswith(f"wrote {out_file} (1 s, 32044 bytes, sha256 ")
    with wave.open(str(out_file)) as wav:
        assert wav.getnframes() == 16000


def test_cli_keygen_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_cli(
        ["--certs-dir", str(tmp_path), "keygen", "--device-id", "toy-5"], capsys
    )

    assert code == 0
    assert (tmp_path / "devices" / "toy-5.key").exists()
    assert (tmp_path / "devices" / "toy-5.csr").exists()
    assert "public key SHA-256:" in out


def test_cli_keygen_existing_key_is_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--certs-dir", str(tmp_path), "keygen", "--device-id", "toy-5"]
    _run_cli(argv, capsys)

    code, out, err = _run_cli(argv, capsys)

    assert code == 1
    assert err.count("\n") == 1
    assert "pass --force" in err


@pytest.fixture
def cli_fake(pki: Pki, fake: FakePetvault, monkeypatch: pytest.MonkeyPatch) -> FakePetvault:
    """Route the CLI's DeviceClient to FakePetvault, using the test PKI's toy-1 files."""

    def open_client(args: Any) -> DeviceClient:
        return DeviceClient(
            pki.device_cert,
            pki.device_key,
            pki.server_ca,
            BASE_URL,
            api_transport=fake.api_transport(),
            storage_transport=fake.storage_transport(),
        )

    monkeypatch.setattr(cli, "_open_client", open_client)
    return fake


def test_cli_upload_list_play_delete(
    cli_fake: FakePetvault, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio_file = tmp_path / "clip.wav"
    audio_file.write_bytes(synthesize_wav(0.2))
    played_file = tmp_path / "played.wav"

    upload_code, upload_out, _ = _run_cli(["upload", str(audio_file)], capsys)
    list_code, list_out, _ = _run_cli(["list", "--limit", "5"], capsys)
    play_code, play_out, _ = _run_cli(["play", "rec-1", "--out", str(played_file)], capsys)
    delete_code, delete_out, _ = _run_cli(["delete", "rec-1"], capsys)

    assert (upload_code, list_code, play_code, delete_code) == (0, 0, 0, 0)
    assert upload_out == "rec-1\n"
    assert list_out.splitlines()[0].startswith("RECORDING ID  STATUS")
    assert list_out.splitlines()[1].split() == [
        "rec-1",
        "available",
        "6444",
        "audio/wav",
        "2025-01-01T00:00:00Z",
    ]
    assert play_out.startswith("sha256 verified (6444 bytes, recording rec-1)")
    assert played_file.read_bytes() == audio_file.read_bytes()
    assert delete_out == "deleted recording rec-1\n"
    assert cli_fake.recordings == {}


def test_cli_play_unknown_recording(
    cli_fake: FakePetvault, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_cli(["play", "rec-404"], capsys)

    assert code == 1
    assert err.startswith("petvault-sim: error: not found (the recording does not exist")
    assert err.count("\n") == 1


def test_cli_scenario_prints_steps(
    cli_fake: FakePetvault, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_cli(["scenario", "--seconds", "0.5"], capsys)

    assert code == 0
    assert err == ""
    assert out.splitlines()[-1] == "[toy-1] scenario passed: recording rec-1"
    assert len(out.splitlines()) == 7


def test_cli_env_sets_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETVAULT_SIM_SERVER", "https://10.0.0.5:9443")
    monkeypatch.setenv("PETVAULT_SIM_DEVICE", "toy-2")

    args = cli.build_parser().parse_args(["me"])

    assert args.server == "https://10.0.0.5:9443"
    assert args.device == "toy-2"


def test_cli_unexpected_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: Any) -> DeviceClient:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_open_client", broken)

    code, out, err = _run_cli(["me"], capsys)

    assert code == 1
    assert err.startswith("petvault-sim: internal error: RuntimeError: boom ")
    assert err.endswith("(run with --verbose for the traceback)\n")
    assert err.count("\n") == 1


def test_key_file_mode_warning(pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(pki.device_key.read_bytes())
    os.chmod(loose_key, 0o644)

    with DeviceClient(pki.device_cert, loose_key, pki.server_ca, BASE_URL):
        pass

    assert "accessible by group or others (mode 644)" in caplog.text

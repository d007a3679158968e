"""Identity: parsing presented certificates, and the cache in front of MongoDB.

The cache serves steady-state requests without a database round trip, and a status
change made directly in the store is seen within the 1 s staleness bound, on an open
keep-alive connection too.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.authority import CertificateAuthority
from certs.pki import PkiLayout, load_certificate_authority
from service.identity import fingerprint_of, read_presented_certificate
from tests.certificates import common_name, device_uri, issue_client_certificate
from tests.clients import api_client
from tests.harness import RunningServer
from tests.store_access import update_one

STALENESS_BOUND_SECONDS = 1.0


@pytest.fixture(scope="module")
def device_ca(pki: PkiLayout) -> CertificateAuthority:
    return load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)


# --- read_presented_certificate ------------------------------------------------------


def test_presented_certificate_reads_device_id(pki: PkiLayout) -> None:
    pem = pki.device_cert("toy-1").read_text()

    presented = read_presented_certificate(pem)

    assert presented is not None
    assert presented.device_id == "toy-1"
    assert presented.problem is None


# OpenSSL rejects these when it loads a certificate, so no TLS client can present
# them. The parser must still turn them into "no device id", not an exception.
INVALID_UTF8 = [
    pytest.param(b"\xff\xfe", id="bytes that never occur in UTF-8"),
    pytest.param(b"\xc0\xaf", id="overlong encoding"),
    pytest.param(b"\xed\xa0\x80"[:2], id="truncated sequence"),
]


@pytest.mark.parametrize("invalid", INVALID_UTF8)
def test_presented_certificate_invalid_utf8_cn(
    invalid: bytes, device_ca: CertificateAuthority, tmp_path: Path
) -> None:
    placeholder = b"toy-1" + b"Z" * len(invalid)
    credentials = issue_client_certificate(
        device_ca, tmp_path, "invalid-utf8",
        subject=[common_name(placeholder.decode())], san=[device_uri("toy-1")],
        replace=(placeholder, b"toy-1" + invalid),
    )

    presented = read_presented_certificate(ssl.DER_cert_to_PEM_cert(credentials.der))

    assert presented is not None
    assert presented.fingerprint == credentials.fingerprint
    assert presented.device_id is None


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param("", id="empty"),
        pytest.param("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                     id="not base64"),
        pytest.param("-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n",
                     id="truncated DER"),
        pytest.param("-----BEGIN CERTIFICATE-----\ntøy\n-----END CERTIFICATE-----\n",
                     id="non-ASCII"),
    ],
)
def test_presented_certificate_unparseable(pem: str) -> None:
    assert read_presented_certificate(pem) is None


def test_presented_fingerprint_is_der_sha256(pki: PkiLayout) -> None:
    certificate = x509.load_pem_x509_certificate(pki.device_cert("toy-2").read_bytes())

    presented = read_presented_certificate(pki.device_cert("toy-2").read_text())

    assert presented is not None
    assert presented.fingerprint == fingerprint_of(certificate.public_bytes(Encoding.DER))


# --- IdentityCache on a live server --------------------------------------------------


def test_steady_state_needs_no_lookup(pki: PkiLayout, server: RunningServer) -> None:
    identity = server.runtime.identity
    with api_client(pki, "toy-1", server.url) as client:
        client.get("/v1/me").raise_for_status()
        lookups_after_first = identity.database_lookups

        statuses = [client.get("/v1/me").status_code for _ in range(20)]

    assert statuses == [200] * 20
    assert identity.database_lookups == lookups_after_first


def _poll_until_changed(client: httpx.Client) -> tuple[int, float]:
    """Send GET /v1/me until it stops returning 200, and return that status and the seconds."""
    started = time.monotonic()
    while True:
        status = client.get("/v1/me").status_code
        elapsed = time.monotonic() - started
        if status != 200 or elapsed > 3 * STALENESS_BOUND_SECONDS:
            return status, elapsed
        time.sleep(0.02)


STATUS_CHANGES = [
    pytest.param("devices", {"_id": "toy-1"}, {"status": "suspended"}, 403,
                 id="device suspended"),
    pytest.param("devices", {"_id": "toy-1"}, {"status": "revoked"}, 401, id="device revoked"),
    pytest.param("certificates", {"device_id": "toy-1"}, {"status": "revoked"}, 401,
                 id="certificate revoked"),
]


@pytest.mark.parametrize(("collection", "query", "changes", "expected_status"), STATUS_CHANGES)
def test_status_change_seen_within_bound(
    collection: str, query: dict[str, Any], changes: dict[str, Any], expected_status: int,
    pki: PkiLayout, server: RunningServer,
) -> None:
    # One client, so the change must reach an open keep-alive connection.
    with api_client(pki, "toy-1", server.url) as client:
        client.get("/v1/me").raise_for_status()
        update_one(server, collection, query, changes)

        status, elapsed = _poll_until_changed(client)

    assert status == expected_status
    assert elapsed < STALENESS_BOUND_SECONDS

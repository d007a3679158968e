"""Device enrollment and device listings through the admin API.

A CSR is signed by the device CA after its key and signature pass; a certificate
issued elsewhere must chain to the device CA. Every rejected enrollment gets 422
or 409 with the reason and leaves the registry unchanged.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import generate_private_key
from certs.csr import sign_device_csr
from certs.leaf import build_device_certificate, build_leaf_certificate
from certs.pki import PkiLayout, load_certificate_authority
from device_sim.client import DeviceClient
from device_sim.errors import ApiError as SimulatorApiError
from device_sim.keygen import generate_device_key_and_csr
from device_sim.scenario import run_scenario
from tests.certificates import common_name, device_uri, issue_client_certificate
from tests.conftest import OPERATOR
from tests.enrollment import csr_pem, csr_with_broken_signature, registry_snapshot, weak_rsa_key
from tests.harness import RunningServer

NOW = datetime.datetime.now(datetime.UTC)


def _enroll(admin: httpx.Client, **body: Any) -> httpx.Response:
    return admin.post("/admin/v1/devices", json={"household_id": "household-7", **body})


def _certificate_from_device_ca(pki: PkiLayout, device_id: str) -> str:
    """A device certificate issued outside the service, e.g. at the factory."""
    device_ca = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    certificate = build_device_certificate(
        device_ca, generate_private_key().public_key(), device_id, validity_days=30, now=NOW
    )
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


# --- the CSR path ------------------------------------------------------------------


def test_enroll_csr_returns_certificate(pki: PkiLayout, admin: httpx.Client) -> None:
    response = _enroll(admin, device_id="toy-new", csr_pem=csr_pem("whatever-the-csr-says"))

    assert response.status_code == 201, response.text
    assert response.headers["Location"] == "/admin/v1/devices/toy-new"
    certificate = x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())
    device_ca = x509.load_pem_x509_certificate(pki.device_ca_cert.read_bytes())
    certificate.verify_directly_issued_by(device_ca)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:petvault:device:toy-new"]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_enroll_csr_registers_device(admin: httpx.Client) -> None:
    body = _enroll(admin, device_id="toy-new", csr_pem=csr_pem("toy-new")).json()
    device = admin.get("/admin/v1/devices/toy-new").json()
    assert device == body["device"]
    assert device["status"] == "active"
    assert device["household_id"] == "household-7"
    assert len(device["certificates"]) == 1


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["P-256", "P-384"])
def test_enroll_accepts_ecdsa_curves(admin: httpx.Client, curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    assert _enroll(admin, device_id="toy-new", csr_pem=csr_pem("toy-new", key)).status_code == 201


def test_enroll_accepts_rsa_2048(admin: httpx.Client) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _enroll(admin, device_id="toy-new", csr_pem=csr_pem("toy-new", key)).status_code == 201


def test_enroll_with_simulator_end_to_end(pki: PkiLayout, server: RunningServer,
                                          admin: httpx.Client, tmp_path: Path) -> None:
    # The device makes its key and CSR; only the CSR travels to the operator.
    files = generate_device_key_and_csr("toy-42", tmp_path)
    response = _enroll(admin, device_id="toy-42", csr_pem=files.csr_path.read_text())
    assert response.status_code == 201, response.text
    cert_path = tmp_path / "toy-42.pem"
    cert_path.write_text(response.json()["certificate_pem"])

    with DeviceClient(cert_path, files.key_path, pki.server_ca_cert, server.url) as client:
        result = run_scenario(client, log=lambda line: None)

    listing = admin.get("/admin/v1/devices/toy-42/recordings").json()["recordings"]
    assert [item["recording_id"] for item in listing] == [result.recording_id]


def test_enroll_clears_cached_rejection(pki: PkiLayout, server: RunningServer,
                                        admin: httpx.Client, tmp_path: Path) -> None:
    files = generate_device_key_and_csr("toy-42", tmp_path)
    device_ca = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    certificate = sign_device_csr(files.csr_path.read_bytes(), "toy-42", device_ca)
    cert_pem = certificate.public_bytes(Encoding.PEM).decode()
    cert_path = tmp_path / "toy-42.pem"
    cert_path.write_text(cert_pem)

    with DeviceClient(cert_path, files.key_path, pki.server_ca_cert, server.url) as client:
        with pytest.raises(SimulatorApiError) as error:
            client.me()  # this instance now caches "not registered"
        assert error.value.code == "certificate_not_registered"
        assert _enroll(admin, device_id="toy-42", cert_pem=cert_pem).status_code == 201
        assert client.me()["device_id"] == "toy-42"


# --- the certificate path ------------------------------------------------------------


def test_enroll_certificate_from_device_ca(pki: PkiLayout, admin: httpx.Client) -> None:
    cert_pem = _certificate_from_device_ca(pki, "toy-factory")
    response = _enroll(admin, device_id="toy-factory", cert_pem=cert_pem)
    assert response.status_code == 201, response.text
    assert response.json()["certificate_pem"] == cert_pem


def test_enroll_duplicate_device_is_409(server: RunningServer, admin: httpx.Client) -> None:
    before = registry_snapshot(server)
    response = _enroll(admin, device_id="toy-1", csr_pem=csr_pem("toy-1"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "device_exists"
    assert registry_snapshot(server) == before


def test_enroll_duplicate_certificate_is_409(pki: PkiLayout, server: RunningServer,
                                             admin: httpx.Client) -> None:
    cert_pem = _certificate_from_device_ca(pki, "toy-factory")
    assert _enroll(admin, device_id="toy-factory", cert_pem=cert_pem).status_code == 201
    admin.post("/admin/v1/devices/toy-factory/revoke", json={"reason": "superseded"})
    before = registry_snapshot(server)

    response = _enroll(admin, device_id="toy-factory", cert_pem=cert_pem)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "certificate_exists"
    assert registry_snapshot(server) == before


# --- rejected input ------------------------------------------------------------------


def _hostile_certificate(pki: PkiLayout, directory: Path, case: str) -> str:
    device_ca = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    operator_ca = load_certificate_authority(pki.operator_ca_cert, pki.operator_ca_key)
    hour = datetime.timedelta(hours=1)
    if case == "other CA":
        credentials = issue_client_certificate(operator_ca, directory, case, subject=[
            common_name("toy-new")], san=[device_uri("toy-new")])
    elif case == "expired":
        credentials = issue_client_certificate(
            device_ca, directory, case, subject=[common_name("toy-new")],
            san=[device_uri("toy-new")], not_before=NOW - 3 * hour, not_after=NOW - hour)
    elif case == "other device":
        credentials = issue_client_certificate(device_ca, directory, case, subject=[
            common_name("toy-other")], san=[device_uri("toy-other")])
    elif case == "CN and SAN disagree":
        credentials = issue_client_certificate(device_ca, directory, case, subject=[
            common_name("toy-other")], san=[device_uri("toy-new")])
    elif case == "operator certificate":
        return pki.operator_cert(OPERATOR).read_text()
    elif case == "device CA certificate":
        return pki.device_ca_cert.read_text()
    elif case == "forged issuer name":
        # Names the device CA as issuer, but another key signed it.
        key = generate_private_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([common_name("toy-new")]))
            .issuer_name(device_ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - hour)
            .not_valid_after(NOW + hour)
            .add_extension(x509.SubjectAlternativeName([device_uri("toy-new")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return certificate.public_bytes(Encoding.PEM).decode()
    else:  # serverAuth only
        certificate = build_leaf_certificate(
            device_ca, generate_private_key().public_key(),
            subject=x509.Name([common_name("toy-new")]), san=[device_uri("toy-new")],
            eku=[ExtendedKeyUsageOID.SERVER_AUTH], not_before=NOW - hour, not_after=NOW + hour,
        )
        return certificate.public_bytes(Encoding.PEM).decode()
    return credentials.cert_path.read_text()


HOSTILE_CERTIFICATES = [
    ("other CA", "cert_pem was not issued by the device CA"),
    ("operator certificate", "cert_pem is an operator certificate, not a device certificate"),
    ("device CA certificate", "cert_pem is a CA certificate"),
    ("forged issuer name", "signature does not verify with the CA's key"),
    ("expired", "not valid now"),
    ("other device", "cert_pem names another device"),
    ("CN and SAN disagree", "CN and SAN URI disagree"),
    ("serverAuth only", "lacks clientAuth"),
]


@pytest.mark.parametrize(("case", "reason"), HOSTILE_CERTIFICATES,
                         ids=[case for case, _ in HOSTILE_CERTIFICATES])
def test_enroll_rejects_certificate(pki: PkiLayout, server: RunningServer, admin: httpx.Client,
                                    tmp_path: Path, case: str, reason: str) -> None:
    before = registry_snapshot(server)
    cert_pem = _hostile_certificate(pki, tmp_path, case)
    response = _enroll(admin, device_id="toy-new", cert_pem=cert_pem)
    message = response.json()["error"]["message"]
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_certificate"
    assert reason in message
    assert "candidates exhausted" not in message
    assert "toy-other" not in message  # names from the certificate are not echoed
    assert "CN=" not in message
    assert registry_snapshot(server) == before


def _hostile_body(case: str) -> Any:
    bodies: dict[str, Any] = {
        "malformed CSR": {"device_id": "toy-new", "csr_pem": "not a CSR"},
        "PEM of another type": {
            "device_id": "toy-new",
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                       "-----END CERTIFICATE REQUEST-----\n",
        },
        "broken CSR signature": {"device_id": "toy-new",
                                 "csr_pem": csr_with_broken_signature("toy-new")},
        "RSA 1024": {"device_id": "toy-new", "csr_pem": csr_pem("toy-new", weak_rsa_key())},
        "P-521": {"device_id": "toy-new",
                  "csr_pem": csr_pem("toy-new", ec.generate_private_key(ec.SECP521R1()))},
        "Ed25519": {"device_id": "toy-new",
                    "csr_pem": csr_pem("toy-new", ed25519.Ed25519PrivateKey.generate())},
        "oversized CSR": {"device_id": "toy-new", "csr_pem": "A" * 70_000},
        "malformed certificate": {"device_id": "toy-new",
                                  "cert_pem": "-----BEGIN CERTIFICATE-----"},
        "device id with space": {"device_id": "toy new", "csr_pem": csr_pem("x")},
        "device id too long": {"device_id": "t" * 65, "csr_pem": csr_pem("x")},
        "device id non-ASCII": {"device_id": "t\u00f8y", "csr_pem": csr_pem("x")},
        "device id not a string": {"device_id": 42, "csr_pem": csr_pem("x")},
        "household id with slash": {"device_id": "toy-new", "household_id": "a/b",
                                    "csr_pem": csr_pem("x")},
        "both CSR and certificate": {"device_id": "toy-new", "csr_pem": csr_pem("x"),
                                     "cert_pem": "x"},
        "neither CSR nor certificate": {"device_id": "toy-new"},
        "unknown field": {"device_id": "toy-new", "csr_pem": csr_pem("x"), "status": "active"},
        "missing device id": {"csr_pem": csr_pem("x")},
        "not an object": ["toy-new"],
    }
    return bodies[case]


HOSTILE_BODIES = [
    ("malformed CSR", "invalid_csr", "not a valid PEM certificate signing request"),
    ("PEM of another type", "invalid_csr", "not a valid PEM certificate signing request"),
    ("broken CSR signature", "invalid_csr", "signature is invalid"),
    ("RSA 1024", "invalid_csr", "too weak"),
    ("P-521", "invalid_csr", "secp521r1 is not accepted"),
    ("Ed25519", "invalid_csr", "Ed25519 keys are not accepted"),
    ("oversized CSR", "invalid_request", "csr_pem"),
    ("malformed certificate", "invalid_certificate", "not a valid PEM certificate"),
    ("device id with space", "invalid_request", "device_id: device id must be 1 to 64"),
    ("device id too long", "invalid_request", "device_id"),
    ("device id non-ASCII", "invalid_request", "device_id: device id must be 1 to 64"),
    ("device id not a string", "invalid_request", "device_id"),
    ("household id with slash", "invalid_request", "household_id"),
    ("both CSR and certificate", "invalid_request", "exactly one of csr_pem and cert_pem"),
    ("neither CSR nor certificate", "invalid_request", "exactly one of csr_pem and cert_pem"),
    ("unknown field", "invalid_request", "Extra inputs are not permitted"),
    ("missing device id", "invalid_request", "device_id"),
    ("not an object", "invalid_request", "body"),
]


@pytest.mark.parametrize(("case", "code", "reason"), HOSTILE_BODIES,
                         ids=[case for case, _, _ in HOSTILE_BODIES])
def test_enroll_rejects_input(server: RunningServer, admin: httpx.Client, case: str, code: str,
                              reason: str) -> None:
    body = _hostile_body(case)
    if isinstance(body, dict):
        body.setdefault("household_id", "household-7")
    before = registry_snapshot(server)

    response = admin.post("/admin/v1/devices", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert reason in response.json()["error"]["message"]
    assert registry_snapshot(server) == before


def test_enroll_rejects_oversized_body(server: RunningServer, admin: httpx.Client) -> None:
    before = registry_snapshot(server)
    response = _enroll(admin, device_id="toy-new", csr_pem="A" * 300_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert registry_snapshot(server) == before


# --- listings ------------------------------------------------------------------------


def test_read_device_lists_certificates(pki: PkiLayout, admin: httpx.Client) -> None:
    device = admin.get("/admin/v1/devices/toy-1").json()
    certificate = x509.load_pem_x509_certificate(pki.device_cert("toy-1").read_bytes())
    listed = device["certificates"][0]
    assert listed["serial"] == format(certificate.serial_number, "x")
    assert listed["status"] == "active"
    assert listed["not_after"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(listed["fingerprint"]) == 64


def test_list_devices_pages_with_cursor(admin: httpx.Client) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = admin.get("/admin/v1/devices", params=params).json()
        seen.extend(device["device_id"] for device in page["devices"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["toy-1", "toy-2", "toy-3"]


def test_list_devices_filters_status(admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/suspend")
    page = admin.get("/admin/v1/devices", params={"status": "suspended"}).json()
    assert [device["device_id"] for device in page["devices"]] == ["toy-2"]


def test_list_devices_filters_household(admin: httpx.Client) -> None:
    _enroll(admin, device_id="toy-new", csr_pem=csr_pem("toy-new"))
    page = admin.get("/admin/v1/devices", params={"household_id": "household-7"}).json()
    assert [device["device_id"] for device in page["devices"]] == ["toy-new"]


INVALID_LIST_QUERIES = [
    {"status": "deleted"},
    {"limit": 0},
    {"limit": 501},
    {"limit": "many"},
    {"cursor": "not-a-cursor"},
    {"cursor": "eyJhZnRlciI6IDV9"},  # {"after": 5}
    {"household_id": "a b"},
]


@pytest.mark.parametrize("params", INVALID_LIST_QUERIES)
def test_list_devices_rejects_query(admin: httpx.Client, params: dict[str, Any]) -> None:
    response = admin.get("/admin/v1/devices", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")

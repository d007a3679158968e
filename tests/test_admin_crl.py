"""The device CA's CRL: served in DER and PEM, written to a file, re-signed in time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from certs.clock import utc_now
from certs.pki import PkiLayout, load_certificate_authority
from service.crl import CRL_NOT_SIGNED, CRL_OK, CRL_STALE, CrlPublisher
from service.embedded import EmbeddedS3
from service.storage.registry import RevokedCertificate
from tests.conftest import OPERATOR
from tests.enrollment import serial_of
from tests.harness import RunningServer, ServerLoop, make_settings, operator_client


def _crl(admin: httpx.Client) -> x509.CertificateRevocationList:
    response = admin.get("/admin/v1/crl")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(response.content)


def _reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@pytest.fixture
def crl_server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop,
               tmp_path: Path) -> Iterator[RunningServer]:
    """A fresh server that also writes its CRL to `tmp_path / "device-ca.crl"`."""
    settings = make_settings(pki.directory, s3, crl_path=tmp_path / "device-ca.crl")
    running = server_loop.start_server(settings)
    yield running
    running.stop()


def test_crl_is_signed_by_device_ca(pki: PkiLayout, admin: httpx.Client) -> None:
    crl = _crl(admin)
    device_ca = x509.load_pem_x509_certificate(pki.device_ca_cert.read_bytes())
    assert crl.issuer == device_ca.subject
    assert crl.is_signature_valid(device_ca.public_key())  # type: ignore[arg-type]


def test_crl_lists_revoked_serial_with_reason(pki: PkiLayout, admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    serial = int(serial_of(pki.device_cert("toy-2").read_bytes()), 16)

    entry = _crl(admin).get_revoked_certificate_by_serial_number(serial)

    assert entry is not None
    assert _reason(entry) is x509.ReasonFlags.key_compromise


def test_crl_lists_only_revoked(pki: PkiLayout, admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    listed = {format(entry.serial_number, "x") for entry in _crl(admin)}
    assert listed == {serial_of(pki.device_cert("toy-2").read_bytes())}


def test_crl_omits_unspecified_reason(pki: PkiLayout, admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "unspecified"})
    serial = int(serial_of(pki.device_cert("toy-2").read_bytes()), 16)
    entry = _crl(admin).get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert _reason(entry) is None, "RFC 5280 recommends no reasonCode for unspecified"


@pytest.mark.parametrize(("reason", "flag"), [
    ("affiliationChanged", x509.ReasonFlags.affiliation_changed),
    ("superseded", x509.ReasonFlags.superseded),
    ("cessationOfOperation", x509.ReasonFlags.cessation_of_operation),
    ("certificateHold", x509.ReasonFlags.certificate_hold),
])
def test_crl_carries_reason_code(pki: PkiLayout, admin: httpx.Client, reason: str,
                                 flag: x509.ReasonFlags) -> None:
    serial = serial_of(pki.device_cert("toy-3").read_bytes())
    admin.post(f"/admin/v1/certificates/{serial}/revoke", json={"reason": reason})
    entry = _crl(admin).get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert _reason(entry) is flag


def test_crl_next_update_is_24_hours(admin: httpx.Client) -> None:
    crl = _crl(admin)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > datetime.now(UTC)
    assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=24)


def test_crl_number_increases_on_revocation(admin: httpx.Client) -> None:
    before = _number(_crl(admin))
    response = admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    after = _number(_crl(admin))
    assert after > before
    assert response.json()["crl_number"] == after


def test_crl_pem_matches_der(admin: httpx.Client) -> None:
    der = admin.get("/admin/v1/crl").content
    pem = admin.get("/admin/v1/crl.pem")
    assert pem.headers["content-type"] == "application/x-pem-file"
    assert x509.load_pem_x509_crl(pem.content) == x509.load_der_x509_crl(der)


def test_crl_file_follows_revocations(pki: PkiLayout, crl_server: RunningServer,
                                      tmp_path: Path) -> None:
    path = tmp_path / "device-ca.crl"
    assert len(x509.load_pem_x509_crl(path.read_bytes())) == 0

    with operator_client(pki, OPERATOR, crl_server.admin_url) as admin:
        admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})

    crl = x509.load_pem_x509_crl(path.read_bytes())
    listed = [format(entry.serial_number, "x") for entry in crl]
    assert listed == [serial_of(pki.device_cert("toy-2").read_bytes())]


def test_crl_file_is_world_readable(crl_server: RunningServer, tmp_path: Path) -> None:
    assert (tmp_path / "device-ca.crl").stat().st_mode & 0o777 == 0o644


def test_other_instance_serves_revocation(pki: PkiLayout, s3: EmbeddedS3,
                                          server_loop: ServerLoop) -> None:
    from mongomock_motor import AsyncMongoMockClient

    async def new_client() -> Any:
        return AsyncMongoMockClient(tz_aware=True)

    client = server_loop.run(new_client())
    first = server_loop.start_server(make_settings(pki.directory, s3), mongo_client=client)
    second = server_loop.start_server(make_settings(pki.directory, s3), mongo_client=client)
    try:
        with operator_client(pki, OPERATOR, first.admin_url) as admin:
            admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
        with operator_client(pki, OPERATOR, second.admin_url) as admin:
            listed = [format(entry.serial_number, "x") for entry in _crl(admin)]
    finally:
        first.stop()
        second.stop()
    assert listed == [serial_of(pki.device_cert("toy-2").read_bytes())]


# --- the publisher's schedule, with a fake clock ----------------------------------------


class _FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class _FakeRegistry:
    def __init__(self) -> None:
        self.revoked: list[RevokedCertificate] = []

    async def revoked_certificates(self) -> list[RevokedCertificate]:
        return list(self.revoked)


def _publisher(pki: PkiLayout, clock: _FakeClock, registry: _FakeRegistry) -> CrlPublisher:
    authority = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    return CrlPublisher(
        authority, registry, validity=timedelta(hours=24), path=None, clock=clock  # type: ignore[arg-type]
    )


def test_publisher_keeps_fresh_crl(pki: PkiLayout) -> None:
    clock, registry = _FakeClock(), _FakeRegistry()
    publisher = _publisher(pki, clock, registry)
    first = asyncio.run(publisher.publish())
    clock.now += timedelta(hours=11)
    assert asyncio.run(publisher.ensure_current()) is first


def test_publisher_resigns_at_half_validity(pki: PkiLayout) -> None:
    clock, registry = _FakeClock(), _FakeRegistry()
    publisher = _publisher(pki, clock, registry)
    first = asyncio.run(publisher.publish())
    clock.now += timedelta(hours=12)
    second = asyncio.run(publisher.ensure_current())
    assert second.number > first.number
    assert second.next_update == clock.now + timedelta(hours=24)


def test_publisher_resigns_on_new_revocation(pki: PkiLayout) -> None:
    clock, registry = _FakeClock(), _FakeRegistry()
    publisher = _publisher(pki, clock, registry)
    asyncio.run(publisher.publish())
    registry.revoked.append(RevokedCertificate("abc123", clock.now, "keyCompromise"))
    assert asyncio.run(publisher.ensure_current()).serials == ("abc123",)


def test_publisher_health_states(pki: PkiLayout) -> None:
    clock, registry = _FakeClock(), _FakeRegistry()
    publisher = _publisher(pki, clock, registry)
    assert publisher.health() == CRL_NOT_SIGNED
    asyncio.run(publisher.publish())
    assert publisher.health() == CRL_OK
    clock.now += timedelta(hours=24)
    assert publisher.health() == CRL_STALE


def test_stale_crl_is_logged_once(pki: PkiLayout, caplog: pytest.LogCaptureFixture) -> None:
    clock, registry = _FakeClock(), _FakeRegistry()
    publisher = _publisher(pki, clock, registry)
    asyncio.run(publisher.publish())
    clock.now += timedelta(hours=25)
    with caplog.at_level(logging.ERROR, logger="service.crl"):
        publisher.log_if_stale()
        publisher.log_if_stale()
    assert len(caplog.records) == 1
    assert "is stale" in caplog.records[0].message


def test_stale_crl_shown_in_health(server: RunningServer) -> None:
    publisher = server.runtime.crl
    publisher.clock = lambda: utc_now() + timedelta(days=2)  # nextUpdate has passed
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server.health_port}/healthz",
                             trust_env=False)
    finally:
        publisher.clock = utc_now
    assert response.status_code == 503
    assert response.json()["checks"]["crl"] == "stale"

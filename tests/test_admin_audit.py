"""The audit log: one entry per admin action, and every rejected device request."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.pki import PkiLayout, load_certificate_authority
from tests.certificates import common_name, device_uri, issue_client_certificate
from tests.clients import add_available_recording, api_client, client_context
from tests.conftest import OPERATOR
from tests.enrollment import csr_pem, serial_of
from tests.harness import RunningServer


def _entries(admin: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = admin.get("/admin/v1/audit", params={"limit": 500, **params})
    assert response.status_code == 200
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def _find(entries: list[dict[str, Any]], action: str, target: str | None = None
          ) -> dict[str, Any]:
    matches = [entry for entry in entries
               if entry["action"] == action and (target is None or entry["target"] == target)]
    assert matches, f"no audit entry for {action} {target or ''}"
    return matches[-1]


def _operator_fingerprint(pki: PkiLayout) -> str:
    certificate = x509.load_pem_x509_certificate(pki.operator_cert(OPERATOR).read_bytes())
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


ADMIN_ACTIONS = [
    ("device.enroll", "toy-new"),
    ("devices.list", None),
    ("device.read", "toy-1"),
    ("device.suspend", "toy-1"),
    ("device.reactivate", "toy-1"),
    ("device.revoke", "toy-2"),
    ("certificate.revoke", "serial of toy-3"),
    ("crl.read", None),
    ("crl.read_pem", None),
]


def _perform_admin_actions(pki: PkiLayout, admin: httpx.Client) -> str:
    toy_3_serial = serial_of(pki.device_cert("toy-3").read_bytes())
    admin.post("/admin/v1/devices", json={
        "device_id": "toy-new", "household_id": "household-7", "csr_pem": csr_pem("toy-new"),
    }).raise_for_status()
    admin.get("/admin/v1/devices").raise_for_status()
    admin.get("/admin/v1/devices/toy-1").raise_for_status()
    admin.post("/admin/v1/devices/toy-1/suspend").raise_for_status()
    admin.post("/admin/v1/devices/toy-1/reactivate").raise_for_status()
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"}
               ).raise_for_status()
    admin.post(f"/admin/v1/certificates/{toy_3_serial}/revoke", json={"reason": "superseded"}
               ).raise_for_status()
    admin.get("/admin/v1/crl").raise_for_status()
    admin.get("/admin/v1/crl.pem").raise_for_status()
    return toy_3_serial


@pytest.mark.parametrize(("action", "target"), ADMIN_ACTIONS, ids=[a for a, _ in ADMIN_ACTIONS])
def test_audit_records_admin_action(pki: PkiLayout, admin: httpx.Client, action: str,
                                    target: str | None) -> None:
    toy_3_serial = _perform_admin_actions(pki, admin)
    expected_target = toy_3_serial if target == "serial of toy-3" else target

    entry = _find(_entries(admin), action, expected_target)

    assert entry["result"] == "success"
    assert entry["source_ip"] == "127.0.0.1"
    assert entry["actor"] == {
        "type": "operator", "name": OPERATOR, "fingerprint": _operator_fingerprint(pki),
    }
    assert datetime.datetime.fromisoformat(entry["time"]) <= datetime.datetime.now(datetime.UTC)


def test_audit_records_revocation_details(pki: PkiLayout, admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    details = _find(_entries(admin), "device.revoke", "toy-2")["details"]
    assert details["reason"] == "keyCompromise"
    assert details["serials"] == [serial_of(pki.device_cert("toy-2").read_bytes())]
    assert details["already_revoked"] is False


REJECTED_ADMIN_CALLS = [
    ("POST", "/admin/v1/devices/toy-1/revoke", {"reason": "bogus"}, "device.revoke",
     "toy-1", "invalid_request"),
    ("POST", "/admin/v1/devices/toy-404/revoke", {"reason": "keyCompromise"}, "device.revoke",
     "toy-404", "not_found"),
    ("POST", "/admin/v1/devices", {"device_id": "toy-1", "household_id": "h",
                                   "csr_pem": "not a CSR"}, "device.enroll", "toy-1",
     "invalid_csr"),
    ("POST", "/admin/v1/devices/toy%20x/suspend", None, "device.suspend", "toy x",
     "invalid_device_id"),
    ("DELETE", "/admin/v1/audit", None, "admin.unmatched_route", None, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "action", "target", "code"),
                         REJECTED_ADMIN_CALLS, ids=[row[5] for row in REJECTED_ADMIN_CALLS])
def test_audit_records_rejected_admin_call(admin: httpx.Client, method: str, path: str,
                                           body: Any, action: str, target: str | None,
                                           code: str) -> None:
    admin.request(method, path, json=body)
    entry = _find(_entries(admin), action, target)
    assert entry["result"] == "rejected"
    assert entry["details"]["error"] == code
    assert entry["actor"]["name"] == OPERATOR


def test_audit_records_revoked_device_request(pki: PkiLayout, server: RunningServer,
                                              admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    with api_client(pki, "toy-2", server.url) as client:
        assert client.get("/v1/me").status_code == 401

    entry = _find(_entries(admin), "auth.certificate_revoked")

    assert entry["actor"] == {"type": "device", "device_id": "toy-2"}
    assert entry["result"] == "rejected"
    assert entry["target"] == serial_of(pki.device_cert("toy-2").read_bytes())


def test_audit_records_suspended_device_request(pki: PkiLayout, server: RunningServer,
                                                admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/suspend")
    with api_client(pki, "toy-2", server.url) as client:
        assert client.get("/v1/me").status_code == 403
    assert _find(_entries(admin), "auth.device_suspended")["actor"]["device_id"] == "toy-2"


def test_audit_records_unregistered_certificate(pki: PkiLayout, server: RunningServer,
                                                admin: httpx.Client, tmp_path: Path) -> None:
    device_ca = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    stranger = issue_client_certificate(device_ca, tmp_path, "toy-stranger",
                                        subject=[common_name("toy-stranger")],
                                        san=[device_uri("toy-stranger")])
    context = client_context(stranger.cert_path, stranger.key_path, pki.server_ca_cert)
    with httpx.Client(base_url=server.url, verify=context, trust_env=False) as client:
        assert client.get("/v1/me").status_code == 401

    entry = _find(_entries(admin), "auth.certificate_not_registered", "toy-stranger")

    assert entry["actor"] == {"type": "certificate", "fingerprint": stranger.fingerprint}


def test_audit_records_ownership_denial(pki: PkiLayout, server: RunningServer,
                                        admin: httpx.Client) -> None:
    with api_client(pki, "toy-1", server.url) as owner:
        recording_id = add_available_recording(owner, b"RIFF" + bytes(32))
    with api_client(pki, "toy-2", server.url) as other:
        assert other.get(f"/v1/recordings/{recording_id}").status_code == 404

    entry = _find(_entries(admin), "recording.not_found_or_denied", recording_id)

    assert entry["actor"] == {"type": "device", "device_id": "toy-2"}
    assert entry["result"] == "rejected"


def test_audit_pages_with_cursor(pki: PkiLayout, admin: httpx.Client) -> None:
    _perform_admin_actions(pki, admin)
    everything = [entry["id"] for entry in _entries(admin)]

    paged: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = admin.get("/admin/v1/audit", params=params).json()
        paged.extend(entry["id"] for entry in page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert paged[: len(everything)] == everything
    assert len(set(paged)) == len(paged)


def test_audit_since_filters(admin: httpx.Client) -> None:
    admin.get("/admin/v1/devices")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert _entries(admin, since=later.isoformat()) == []


def test_audit_since_without_offset_is_utc(admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/suspend")
    earlier = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    naive = earlier.replace(tzinfo=None).isoformat()
    assert _find(_entries(admin, since=naive), "device.suspend", "toy-1")


@pytest.mark.parametrize("params", [
    {"since": "yesterday"},
    {"limit": 0},
    {"limit": 501},
    {"cursor": "%%%"},
    {"cursor": "x" * 300},
])
def test_audit_rejects_query(admin: httpx.Client, params: dict[str, Any]) -> None:
    response = admin.get("/admin/v1/audit", params=params)
    assert response.status_code == 422
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")


def test_audit_entries_survive_api(admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/suspend")
    before = _entries(admin)
    for method in ("DELETE", "PUT", "PATCH", "POST"):
        assert admin.request(method, "/admin/v1/audit").status_code == 405
        assert admin.request(method, f"/admin/v1/audit/{before[0]['id']}").status_code in (404, 405)
    after = _entries(admin)
    assert after[: len(before)] == before

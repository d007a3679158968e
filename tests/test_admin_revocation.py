"""Revocation, suspension and reactivation through the admin API, seen by devices.

A revoked device's next request gets 401 `certificate_revoked`, on a keep-alive
connection opened before the revoke, on the instance that handled the revoke at
once and on every other instance that shares the store within 1 s.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certs.pki import PkiLayout
from device_sim.client import DeviceClient
from device_sim.errors import ApiError as SimulatorApiError
from device_sim.keygen import generate_device_key_and_csr
from service.embedded import EmbeddedS3
from service.identity import IdentityCache
from service.storage.mongo import ACTIVE, DeviceRecord
from tests.clients import add_available_recording, api_client, device_context
from tests.conftest import OPERATOR
from tests.enrollment import csr_pem, registry_snapshot, serial_of
from tests.harness import RunningServer, ServerLoop, device_client, make_settings, operator_client

MAX_STALENESS_SECONDS = 1.0


def _status_and_code(connection: http.client.HTTPSConnection) -> tuple[int, str | None]:
    connection.request("GET", "/v1/me")
    response = connection.getresponse()
    body = response.read()
    if response.status == 200:
        return 200, None
    return response.status, json.loads(body)["error"]["code"]


def _status_on_new_connection(pki: PkiLayout, device_id: str, port: int
                              ) -> tuple[int, str | None]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=device_context(pki, device_id), timeout=10
    )
    try:
        return _status_and_code(connection)
    finally:
        connection.close()


def _open_connection(pki: PkiLayout, device_id: str, port: int) -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=device_context(pki, device_id), timeout=10
    )
    assert _status_and_code(connection) == (200, None)
    return connection


# --- one instance ----------------------------------------------------------------


def test_revoke_rejects_open_connection(pki: PkiLayout, server: RunningServer,
                                        admin: httpx.Client) -> None:
    connection = _open_connection(pki, "toy-1", server.port)
    socket_before = connection.sock

    response = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200

    assert _status_and_code(connection) == (401, "certificate_revoked")
    assert connection.sock is socket_before, "the request must reuse the open connection"
    connection.close()


def test_revoke_leaves_other_devices(pki: PkiLayout, server: RunningServer,
                                     admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-2/revoke", json={"reason": "keyCompromise"})
    with device_client(pki, "toy-1", server.url) as client:
        assert client.me()["device_id"] == "toy-1"


def test_revoke_twice_keeps_original(admin: httpx.Client) -> None:
    first = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"}).json()
    second = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "superseded"})
    assert second.status_code == 200
    assert second.json()["already_revoked"] is True
    assert second.json()["revoked_at"] == first["revoked_at"]
    assert second.json()["revocation_reason"] == "keyCompromise"


def test_revoke_marks_every_certificate(admin: httpx.Client) -> None:
    body = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"}).json()
    statuses = [certificate["status"] for certificate in body["device"]["certificates"]]
    assert statuses == ["revoked"]
    assert body["device"]["status"] == "revoked"
    assert body["device"]["certificates"][0]["revocation_reason"] == "keyCompromise"


def test_revoke_certificate_by_serial(pki: PkiLayout, server: RunningServer,
                                      admin: httpx.Client) -> None:
    serial = serial_of(pki.device_cert("toy-1").read_bytes())
    connection = _open_connection(pki, "toy-1", server.port)

    response = admin.post(f"/admin/v1/certificates/{serial}/revoke", json={"reason": "superseded"})

    assert response.status_code == 200
    assert response.json()["certificate"]["serial"] == serial
    assert response.json()["certificate"]["status"] == "revoked"
    assert response.json()["device"]["status"] == "revoked", "its only certificate is revoked"
    assert _status_and_code(connection) == (401, "certificate_revoked")
    connection.close()


def test_revoke_certificate_accepts_uppercase_serial(pki: PkiLayout, admin: httpx.Client) -> None:
    serial = serial_of(pki.device_cert("toy-1").read_bytes())
    response = admin.post(f"/admin/v1/certificates/00{serial.upper()}/revoke",
                          json={"reason": "superseded"})
    assert response.status_code == 200
    assert response.json()["certificate"]["serial"] == serial


def test_revoke_certificate_twice_keeps_original(pki: PkiLayout, admin: httpx.Client) -> None:
    serial = serial_of(pki.device_cert("toy-1").read_bytes())
    first = admin.post(f"/admin/v1/certificates/{serial}/revoke",
                       json={"reason": "keyCompromise"}).json()
    second = admin.post(f"/admin/v1/certificates/{serial}/revoke",
                        json={"reason": "unspecified"}).json()
    assert second["already_revoked"] is True
    assert second["revoked_at"] == first["revoked_at"]
    assert second["revocation_reason"] == "keyCompromise"


@pytest.mark.parametrize("path", [
    "/admin/v1/devices/toy-404/revoke",
    "/admin/v1/certificates/abcdef0123/revoke",
])
def test_revoke_unknown_is_404(admin: httpx.Client, path: str) -> None:
    response = admin.post(path, json={"reason": "keyCompromise"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/admin/v1/devices/toy-404/suspend"),
    ("POST", "/admin/v1/devices/toy-404/reactivate"),
    ("GET", "/admin/v1/devices/toy-404"),
    ("GET", "/admin/v1/devices/toy-404/recordings"),
])
def test_unknown_device_is_404(admin: httpx.Client, method: str, path: str) -> None:
    response = admin.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


INVALID_REVOKE_BODIES: list[tuple[str, Any]] = [
    ("missing reason", {}),
    ("empty reason", {"reason": ""}),
    ("wrong case", {"reason": "keycompromise"}),
    ("cACompromise is for CAs", {"reason": "cACompromise"}),
    ("removeFromCRL would undo a revocation", {"reason": "removeFromCRL"}),
    ("privilegeWithdrawn", {"reason": "privilegeWithdrawn"}),
    ("number", {"reason": 1}),
    ("null", {"reason": None}),
    ("list", {"reason": ["keyCompromise"]}),
    ("extra field", {"reason": "keyCompromise", "force": True}),
    ("not an object", ["keyCompromise"]),
]


@pytest.mark.parametrize(("case", "body"), INVALID_REVOKE_BODIES,
                         ids=[case for case, _ in INVALID_REVOKE_BODIES])
def test_revoke_rejects_invalid_body(server: RunningServer, admin: httpx.Client, case: str,
                                     body: Any) -> None:
    before = registry_snapshot(server)
    response = admin.post("/admin/v1/devices/toy-1/revoke", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert registry_snapshot(server) == before


def test_revoke_rejects_non_json(admin: httpx.Client) -> None:
    response = admin.post("/admin/v1/devices/toy-1/revoke", content=b"reason=keyCompromise",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]["message"]


INVALID_DEVICE_IDS = ["toy 1", "toy$1", "t\u00f8y", "a" * 65, "toy\n1", "-", "toy%1"]


@pytest.mark.parametrize("device_id", INVALID_DEVICE_IDS)
@pytest.mark.parametrize("action", ["revoke", "suspend", "reactivate"])
def test_status_change_rejects_invalid_device_id(server: RunningServer, admin: httpx.Client,
                                                 device_id: str, action: str) -> None:
    before = registry_snapshot(server)
    response = admin.post(f"/admin/v1/devices/{quote(device_id, safe='')}/{action}",
                          json={"reason": "keyCompromise"})
    if device_id == "-":
        assert response.status_code == 404  # valid id, not registered
    else:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_device_id"
        assert "device id" in response.json()["error"]["message"]
    assert registry_snapshot(server) == before


def test_encoded_slash_in_device_id_is_404(admin: httpx.Client) -> None:
    response = admin.post("/admin/v1/devices/..%2Fcrl/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 404


@pytest.mark.parametrize("serial", ["xyz", "0x1f", "1f:2a", "a" * 41, "0" * 65, "-1", "%00", "+1"])
def test_revoke_rejects_invalid_serial(admin: httpx.Client, serial: str) -> None:
    response = admin.post(f"/admin/v1/certificates/{serial}/revoke",
                          json={"reason": "keyCompromise"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_serial"


# --- suspension ------------------------------------------------------------------


def test_suspend_then_reactivate(pki: PkiLayout, server: RunningServer,
                                 admin: httpx.Client) -> None:
    connection = _open_connection(pki, "toy-1", server.port)

    suspended = admin.post("/admin/v1/devices/toy-1/suspend")
    assert suspended.status_code == 200
    assert suspended.json()["device"]["status"] == "suspended"
    assert _status_and_code(connection) == (403, "device_suspended")

    reactivated = admin.post("/admin/v1/devices/toy-1/reactivate")
    assert reactivated.status_code == 200
    assert reactivated.json()["device"]["status"] == "active"
    assert _status_and_code(connection) == (200, None)
    connection.close()


def test_suspend_twice_changes_nothing(admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/suspend")
    second = admin.post("/admin/v1/devices/toy-1/suspend")
    assert second.status_code == 200
    assert second.json()["changed"] is False


def test_reactivate_active_changes_nothing(admin: httpx.Client) -> None:
    response = admin.post("/admin/v1/devices/toy-1/reactivate")
    assert response.status_code == 200
    assert response.json()["changed"] is False


@pytest.mark.parametrize("action", ["reactivate", "suspend"])
def test_revoked_device_stays_revoked(pki: PkiLayout, server: RunningServer,
                                      admin: httpx.Client, action: str) -> None:
    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    before = registry_snapshot(server)

    response = admin.post(f"/admin/v1/devices/toy-1/{action}")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "device_revoked"
    assert registry_snapshot(server) == before
    assert _status_on_new_connection(pki, "toy-1", server.port) == (401, "certificate_revoked")


def test_revoke_suspended_device(pki: PkiLayout, server: RunningServer,
                                 admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/suspend")
    response = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    assert response.json()["device"]["status"] == "revoked"
    assert _status_on_new_connection(pki, "toy-1", server.port) == (401, "certificate_revoked")


# --- what a revocation keeps -------------------------------------------------------


def test_revoke_keeps_recordings(pki: PkiLayout, server: RunningServer,
                                 admin: httpx.Client) -> None:
    with api_client(pki, "toy-1", server.url) as client:
        recording_id = add_available_recording(client, b"RIFF" + bytes(64))

    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    listing = admin.get("/admin/v1/devices/toy-1/recordings")

    assert listing.status_code == 200
    assert [item["recording_id"] for item in listing.json()["recordings"]] == [recording_id]
    assert "download" not in listing.json()["recordings"][0], "operators get no presigned URL"


def test_reenroll_revoked_with_new_key(pki: PkiLayout, server: RunningServer,
                                       admin: httpx.Client, tmp_path: Any) -> None:
    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    files = generate_device_key_and_csr("toy-1", tmp_path)

    response = admin.post("/admin/v1/devices", json={
        "device_id": "toy-1", "household_id": "household-demo",
        "csr_pem": files.csr_path.read_text(),
    })

    assert response.status_code == 201, response.text
    assert response.json()["device"]["status"] == "active"
    cert_path = tmp_path / "toy-1.pem"
    cert_path.write_text(response.json()["certificate_pem"])
    with device_client(pki, "toy-1", server.url) as old, pytest.raises(SimulatorApiError) as error:
        old.me()
    assert error.value.code == "certificate_revoked"
    with DeviceClient(cert_path, files.key_path, pki.server_ca_cert, server.url) as new:
        assert new.me()["device_id"] == "toy-1"


def test_reenroll_old_key_rejected(pki: PkiLayout, server: RunningServer,
                                       admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    old_key = load_pem_private_key(pki.device_key("toy-1").read_bytes(), password=None)
    before = registry_snapshot(server)

    response = admin.post("/admin/v1/devices", json={
        "device_id": "toy-1", "household_id": "household-demo",
        "csr_pem": csr_pem("toy-1", old_key),  # type: ignore[arg-type]
    })

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "key_reused"
    assert registry_snapshot(server) == before


def test_reenroll_old_certificate_rejected(pki: PkiLayout, server: RunningServer,
                                               admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
    before = registry_snapshot(server)

    response = admin.post("/admin/v1/devices", json={
        "device_id": "toy-1", "household_id": "household-demo",
        "cert_pem": pki.device_cert("toy-1").read_text(),
    })

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "certificate_exists"
    assert registry_snapshot(server) == before


def test_reenroll_other_household_rejected(server: RunningServer,
                                               admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "affiliationChanged"})
    before = registry_snapshot(server)

    response = admin.post("/admin/v1/devices", json={
        "device_id": "toy-1", "household_id": "household-new", "csr_pem": csr_pem("toy-1"),
    })

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "household_mismatch"
    assert registry_snapshot(server) == before


# --- two instances on one store ----------------------------------------------------


@dataclass
class Probe:
    """A keep-alive connection to one instance and what it saw after the revoke."""

    name: str
    connection: http.client.HTTPSConnection
    last_served: float | None = None  # send time, seconds after the revoke's 200
    first_rejected: float | None = None
    rejection: tuple[int, str | None] | None = None


@pytest.fixture
def two_instances(pki: PkiLayout, s3: EmbeddedS3,
                  server_loop: ServerLoop) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two servers, each with its own identity cache, on one embedded MongoDB."""
    from mongomock_motor import AsyncMongoMockClient

    async def new_client() -> Any:
        return AsyncMongoMockClient(tz_aware=True)

    client = server_loop.run(new_client())
    first = server_loop.start_server(make_settings(pki.directory, s3), mongo_client=client)
    second = server_loop.start_server(make_settings(pki.directory, s3), mongo_client=client)
    yield first, second
    first.stop()
    second.stop()


def test_two_instances_reject_within_one_second(
    pki: PkiLayout, two_instances: tuple[RunningServer, RunningServer]
) -> None:
    first, second = two_instances
    probes = [
        Probe("instance A (handled the revoke)", _open_connection(pki, "toy-1", first.port)),
        Probe("instance B (same store, own cache)", _open_connection(pki, "toy-1", second.port)),
    ]
    sockets_before = [probe.connection.sock for probe in probes]
    # Warm B's cache with more requests, so its entry is not simply expired.
    for _ in range(3):
        assert _status_and_code(probes[1].connection) == (200, None)

    with operator_client(pki, OPERATOR, first.admin_url) as admin:
        response = admin.post("/admin/v1/devices/toy-1/revoke", json={"reason": "keyCompromise"})
        revoked_at = time.perf_counter()
    assert response.status_code == 200

    while time.perf_counter() - revoked_at < 3 * MAX_STALENESS_SECONDS:
        pending = [probe for probe in probes if probe.rejection is None]
        if not pending:
            break
        for probe in pending:
            sent = time.perf_counter() - revoked_at
            status, code = _status_and_code(probe.connection)
            if status == 200:
                probe.last_served = sent
            else:
                probe.first_rejected, probe.rejection = sent, (status, code)
        time.sleep(0.005)

    for probe in probes:
        served = "never" if probe.last_served is None else f"{probe.last_served * 1000:.1f} ms"
        print(f"\n{probe.name}: last request served {served} after the revoke's 200; "
              f"first rejected request sent at {(probe.first_rejected or 0) * 1000:.1f} ms")
    for probe in probes:
        assert probe.rejection == (401, "certificate_revoked"), probe.name
    assert probes[0].last_served is None, "the instance that revoked must reject at once"
    assert probes[1].last_served is None or probes[1].last_served < MAX_STALENESS_SECONDS
    assert [probe.connection.sock for probe in probes] == sockets_before
    for probe in probes:
        probe.connection.close()


def test_second_instance_sees_suspension(
    pki: PkiLayout, two_instances: tuple[RunningServer, RunningServer]
) -> None:
    first, second = two_instances
    connection = _open_connection(pki, "toy-1", second.port)
    with operator_client(pki, OPERATOR, first.admin_url) as admin:
        admin.post("/admin/v1/devices/toy-1/suspend").raise_for_status()
    time.sleep(MAX_STALENESS_SECONDS)
    assert _status_and_code(connection) == (403, "device_suspended")
    connection.close()


# --- the identity cache's invalidation -----------------------------------------------


class _SlowStore:
    """A store whose lookups wait for `release`, to put a query in flight on purpose."""

    def __init__(self, record: DeviceRecord) -> None:
        self.record = record
        self.release = asyncio.Event()

    async def find_device_by_fingerprint(self, fingerprint: str) -> DeviceRecord | None:
        await self.release.wait()
        return self.record

    async def find_devices_by_fingerprints(self, fingerprints: list[str]
                                           ) -> dict[str, DeviceRecord]:
        return {fingerprint: self.record for fingerprint in fingerprints}


def test_invalidate_discards_query_in_flight() -> None:
    record = DeviceRecord("toy-1", "household-demo", ACTIVE, "f" * 64, "ab",
                          datetime(2030, 1, 1, tzinfo=UTC))
    store = _SlowStore(record)
    cache = IdentityCache(store)  # type: ignore[arg-type]

    async def scenario() -> int:
        lookup = asyncio.create_task(cache.lookup("f" * 64))
        await asyncio.sleep(0)  # the query starts and waits
        cache.invalidate(["f" * 64])
        store.release.set()
        await lookup
        store.release.clear()
        second = asyncio.create_task(cache.lookup("f" * 64))
        await asyncio.sleep(0)
        store.release.set()
        await second
        return cache.database_lookups

    assert asyncio.run(scenario()) == 2, "the answer that predates the invalidation is not cached"

"""Per-device rate-limit overrides through the admin API, seen by devices.

An override stored on the device applies to that device alone: at once on the
instance that stored it, and within 1 s on every instance that shares the store.
Per route class it beats PETVAULT_RATE_LIMIT_OVERRIDES, which beats the fleet's
limits. Each test starts its own servers, so every budget starts empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import api_client
from tests.conftest import OPERATOR
from tests.enrollment import registry_snapshot
from tests.harness import RunningServer, ServerLoop, make_settings, operator_client

StartServer = Callable[..., RunningServer]
MAX_STALENESS_SECONDS = 1.0
UPLOAD_BODY = {"content_type": "audio/wav", "size_bytes": 10, "sha256": "0" * 64}


@pytest.fixture
def start_server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[StartServer]:
    """Start servers with extra settings; every one is stopped after the test."""
    running: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        server = server_loop.start_server(make_settings(pki.directory, s3, **overrides))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def _set(pki: PkiLayout, server: RunningServer, device_id: str, **limits: str) -> httpx.Response:
    with operator_client(pki, OPERATOR, server.admin_url) as admin:
        return admin.put(f"/admin/v1/devices/{device_id}/rate-limits", json=limits)


def _clear(pki: PkiLayout, server: RunningServer, device_id: str) -> httpx.Response:
    with operator_client(pki, OPERATOR, server.admin_url) as admin:
        return admin.delete(f"/admin/v1/devices/{device_id}/rate-limits")


def _statuses(pki: PkiLayout, server: RunningServer, device_id: str, count: int) -> list[int]:
    with api_client(pki, device_id, server.url) as client:
        return [client.get("/v1/me").status_code for _ in range(count)]


def _limit_header(response: httpx.Response) -> int:
    return int(response.headers["RateLimit-Limit"])


# --- the device's budget ------------------------------------------------------------


def test_override_raises_budget(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="2/minute")
    assert _set(pki, server, "toy-1", default="5/minute").status_code == 200

    assert _statuses(pki, server, "toy-1", 6) == [200] * 5 + [429]


def test_override_lowers_budget(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="5/minute")
    assert _set(pki, server, "toy-1", default="2/minute").status_code == 200

    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]


def test_override_leaves_other_devices(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="2/minute")
    assert _set(pki, server, "toy-1", default="5/minute").status_code == 200

    assert _statuses(pki, server, "toy-2", 3) == [200, 200, 429]
    assert _statuses(pki, server, "toy-3", 3) == [200, 200, 429]


def test_override_applies_on_open_connection(pki: PkiLayout, start_server: StartServer) -> None:
    # The instance that stores the override drops its cached identity, so the very
    # next request counts against the new limit.
    server = start_server(rate_limits="50/minute")

    with api_client(pki, "toy-1", server.url) as client:
        before = client.get("/v1/me")
        assert _set(pki, server, "toy-1", default="3/minute").status_code == 200
        after = client.get("/v1/me")

    assert _limit_header(before) == 50
    assert _limit_header(after) == 3


def test_override_of_one_route_class(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="20/minute")
    assert _set(pki, server, "toy-1", upload="1/minute").status_code == 200

    with api_client(pki, "toy-1", server.url) as client:
        uploads = [client.post("/v1/recordings", json=UPLOAD_BODY) for _ in range(2)]
        me = client.get("/v1/me")

    assert [response.status_code for response in uploads] == [201, 429]
    assert me.status_code == 200
    assert _limit_header(me) == 20


def test_override_beats_configured_override(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="9/minute", rate_limit_overrides={"toy-1": "5/minute"})
    assert _set(pki, server, "toy-1", default="2/minute").status_code == 200

    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]


def test_configured_override_kept_for_unnamed_class(
    pki: PkiLayout, start_server: StartServer
) -> None:
    server = start_server(rate_limits="9/minute", rate_limit_overrides={"toy-1": "5/minute"})

    response = _set(pki, server, "toy-1", download="30/minute")
    with api_client(pki, "toy-1", server.url) as client:
        me = client.get("/v1/me")

    assert response.json()["effective_rate_limits"] == {
        "default": "5 per 1 minute", "upload": None, "download": "30 per 1 minute",
    }
    assert _limit_header(me) == 5


def test_put_replaces_whole_override(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="9/minute")
    _set(pki, server, "toy-1", default="2/minute", upload="1/minute")

    response = _set(pki, server, "toy-1", download="30/minute")

    assert response.json()["device"]["rate_limit_override"] == {
        "default": None, "upload": None, "download": "30/minute",
    }
    assert response.json()["effective_rate_limits"]["default"] == "9 per 1 minute"
    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 200]


# --- clearing ---------------------------------------------------------------------


def test_clear_restores_fleet_limits(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="50/minute")
    _set(pki, server, "toy-1", default="2/minute")
    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]

    response = _clear(pki, server, "toy-1")
    with api_client(pki, "toy-1", server.url) as client:
        me = client.get("/v1/me")

    assert response.status_code == 200
    assert response.json()["changed"] is True
    assert response.json()["device"]["rate_limit_override"] is None
    assert me.status_code == 200
    assert _limit_header(me) == 50


def test_clear_restores_configured_override(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="50/minute", rate_limit_overrides={"toy-1": "40/minute"})
    _set(pki, server, "toy-1", default="2/minute")

    response = _clear(pki, server, "toy-1")
    with api_client(pki, "toy-1", server.url) as client:
        me = client.get("/v1/me")

    assert response.json()["effective_rate_limits"]["default"] == "40 per 1 minute"
    assert _limit_header(me) == 40


def test_clear_without_override_changes_nothing(
    pki: PkiLayout, start_server: StartServer
) -> None:
    server = start_server()
    before = registry_snapshot(server)

    response = _clear(pki, server, "toy-1")

    assert response.status_code == 200
    assert response.json()["changed"] is False
    assert registry_snapshot(server) == before


def test_same_override_changes_nothing(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server()
    _set(pki, server, "toy-1", default="5/minute", upload="1/minute")
    before = registry_snapshot(server)

    response = _set(pki, server, "toy-1", upload="1/minute", default=" 5/minute ")

    assert response.status_code == 200
    assert response.json()["changed"] is False
    assert registry_snapshot(server) == before


# --- two instances on one store ----------------------------------------------------


@pytest.fixture
def two_instances(pki: PkiLayout, s3: EmbeddedS3,
                  server_loop: ServerLoop) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two servers, each with its own identity cache and counters, on one embedded MongoDB."""
    from mongomock_motor import AsyncMongoMockClient

    async def new_client() -> Any:
        return AsyncMongoMockClient(tz_aware=True)

    client = server_loop.run(new_client())
    # A large fleet budget, so the polling below never exhausts it.
    settings = make_settings(pki.directory, s3, rate_limits="5000/minute")
    first = server_loop.start_server(settings, mongo_client=client)
    second = server_loop.start_server(settings, mongo_client=client)
    yield first, second
    first.stop()
    second.stop()


def test_second_instance_applies_within_one_second(
    pki: PkiLayout, two_instances: tuple[RunningServer, RunningServer]
) -> None:
    first, second = two_instances
    last_old_limit: float | None = None  # send time, seconds after the PUT's 200
    first_new_limit: float | None = None

    with api_client(pki, "toy-1", second.url) as client:
        # Warm the second instance's cache, so its entry is not simply expired.
        for _ in range(3):
            assert _limit_header(client.get("/v1/me")) == 5000

        assert _set(pki, first, "toy-1", default="7/minute").status_code == 200
        stored_at = time.perf_counter()

        while time.perf_counter() - stored_at < 3 * MAX_STALENESS_SECONDS:
            sent = time.perf_counter() - stored_at
            limit = _limit_header(client.get("/v1/me"))
            if limit == 5000:
                last_old_limit = sent
            else:
                first_new_limit = sent
                assert limit == 7
                break
            time.sleep(0.005)

    old = "never" if last_old_limit is None else f"{last_old_limit * 1000:.1f} ms"
    print(f"\nsecond instance: old limit last applied {old} after the PUT's 200")
    assert first_new_limit is not None, "the second instance never applied the override"
    assert last_old_limit is None or last_old_limit < MAX_STALENESS_SECONDS


def test_second_instance_clears_within_one_second(
    pki: PkiLayout, two_instances: tuple[RunningServer, RunningServer]
) -> None:
    first, second = two_instances
    _set(pki, first, "toy-1", default="100/minute")

    with api_client(pki, "toy-1", second.url) as client:
        assert _limit_header(client.get("/v1/me")) == 100
        assert _clear(pki, first, "toy-1").status_code == 200
        time.sleep(MAX_STALENESS_SECONDS)
        after = client.get("/v1/me")

    assert _limit_header(after) == 5000


# --- invalid calls leave nothing behind ---------------------------------------------


INVALID_BODIES = [
    pytest.param({}, "invalid_rate_limits", "name at least one route class", id="empty body"),
    pytest.param({"default": None}, "invalid_rate_limits", "name at least one route class",
                 id="only nulls"),
    pytest.param({"default": "fast"}, "invalid_rate_limits",
                 "default contains an invalid rate limit list", id="unparseable"),
    pytest.param({"upload": "60/minit"}, "invalid_rate_limits",
                 "upload contains an invalid rate limit list", id="unknown unit"),
    pytest.param({"download": ""}, "invalid_rate_limits",
                 "download contains an invalid rate limit list", id="empty list"),
    pytest.param({"default": "0/minute"}, "invalid_rate_limits", "allows no request",
                 id="zero requests"),
    pytest.param({"default": "-1/minute"}, "invalid_rate_limits", "invalid rate limit list",
                 id="negative"),
    pytest.param({"default": "5/minute;5 per 1 minute"}, "invalid_rate_limits",
                 "lists the same limit twice", id="same limit twice"),
    pytest.param({"default": "5/minute", "upload": "lots"}, "invalid_rate_limits",
                 "upload contains", id="one class of two invalid"),
    pytest.param({"uploads": "5/minute"}, "invalid_request", "Extra inputs are not permitted",
                 id="unknown route class"),
    pytest.param({"default": 60}, "invalid_request", "default: Input should be a valid string",
                 id="number"),
    pytest.param({"default": ["60/minute"]}, "invalid_request",
                 "default: Input should be a valid string", id="list"),
    pytest.param({"default": "60/minute;" * 30}, "invalid_request",
                 "at most 200 characters", id="too long"),
    pytest.param(["60/minute"], "invalid_request", "valid dictionary", id="JSON array"),
]


@pytest.mark.parametrize(("body", "code", "reason"), INVALID_BODIES)
def test_invalid_limits_rejected(
    pki: PkiLayout, start_server: StartServer, body: Any, code: str, reason: str
) -> None:
    server = start_server(rate_limits="9/minute")
    _set(pki, server, "toy-1", default="2/minute")
    before = registry_snapshot(server)

    with operator_client(pki, OPERATOR, server.admin_url) as admin:
        response = admin.put("/admin/v1/devices/toy-1/rate-limits", json=body)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert reason in response.json()["error"]["message"]
    assert registry_snapshot(server) == before
    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]


def test_non_json_body_rejected(pki: PkiLayout, server: RunningServer,
                                admin: httpx.Client) -> None:
    before = registry_snapshot(server)

    response = admin.put("/admin/v1/devices/toy-1/rate-limits", content=b"default=5/minute",
                         headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert registry_snapshot(server) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_unknown_device_is_404(server: RunningServer, admin: httpx.Client, method: str) -> None:
    before = registry_snapshot(server)

    response = admin.request(method, "/admin/v1/devices/toy-404/rate-limits",
                             json={"default": "5/minute"} if method == "PUT" else None)

    assert response.status_code == 404
    assert response.json()["error"] == {"code": "not_found", "message": "device not found"}
    assert registry_snapshot(server) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_invalid_device_id_is_422(admin: httpx.Client, method: str) -> None:
    response = admin.request(method, "/admin/v1/devices/toy%20x/rate-limits",
                             json={"default": "5/minute"} if method == "PUT" else None)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_device_id"


# --- what operators see -------------------------------------------------------------


def test_read_device_shows_override(pki: PkiLayout, server: RunningServer,
                                    admin: httpx.Client) -> None:
    admin.put("/admin/v1/devices/toy-1/rate-limits", json={"upload": "3/minute"})

    override = admin.get("/admin/v1/devices/toy-1").json()["rate_limit_override"]
    listed = {device["device_id"]: device["rate_limit_override"]
              for device in admin.get("/admin/v1/devices").json()["devices"]}

    assert override == {"default": None, "upload": "3/minute", "download": None}
    assert listed["toy-1"] == override
    assert listed["toy-2"] is None


def test_effective_limits_null_when_disabled(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limit_enabled=False)

    response = _set(pki, server, "toy-1", default="5/minute")

    assert response.status_code == 200
    assert response.json()["effective_rate_limits"] is None
    assert response.json()["device"]["rate_limit_override"]["default"] == "5/minute"


def test_suspended_device_keeps_override(pki: PkiLayout, server: RunningServer,
                                         admin: httpx.Client) -> None:
    admin.post("/admin/v1/devices/toy-1/suspend").raise_for_status()
    assert admin.put("/admin/v1/devices/toy-1/rate-limits",
                     json={"default": "2/minute"}).status_code == 200
    admin.post("/admin/v1/devices/toy-1/reactivate").raise_for_status()

    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]


# --- stored documents written another way -------------------------------------------


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("600/minute", id="string"),
        pytest.param({"default": 600}, id="number"),
        pytest.param({"default": "fast"}, id="unparseable"),
        pytest.param({"uploads": "1/minute"}, id="unknown route class"),
    ],
)
def test_malformed_stored_override_ignored(
    pki: PkiLayout, start_server: StartServer, stored: Any
) -> None:
    server = start_server(rate_limits="2/minute")
    server.loop.run(server.runtime.store.devices.update_one(
        {"_id": "toy-1"}, {"$set": {"rate_limits": stored}}
    ))
    server.runtime.identity.invalidate()

    with operator_client(pki, OPERATOR, server.admin_url) as admin:
        read = admin.get("/admin/v1/devices/toy-1")

    assert read.status_code == 200
    assert _statuses(pki, server, "toy-1", 3) == [200, 200, 429]


def test_unparseable_stored_override_logged(
    pki: PkiLayout, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(rate_limits="2/minute")
    server.loop.run(server.runtime.store.devices.update_one(
        {"_id": "toy-1"}, {"$set": {"rate_limits": {"default": "fast", "upload": "1/minute"}}}
    ))
    server.runtime.identity.invalidate()

    with caplog.at_level("ERROR", logger="service.limits"):
        statuses = _statuses(pki, server, "toy-1", 3)

    ignored = [record for record in caplog.records
               if "ignoring the stored rate-limit override of device toy-1" in record.message]
    assert statuses == [200, 200, 429]
    assert len(ignored) == 1, "logged once, not per request"
    assert "'default'" in ignored[0].message


# --- audit ----------------------------------------------------------------------------


def _audit_entries(admin: httpx.Client, action: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin.get("/admin/v1/audit",
                                              params={"limit": 500}).json()["entries"]
    return [entry for entry in entries if entry["action"] == action]


def test_audit_records_set(admin: httpx.Client) -> None:
    admin.put("/admin/v1/devices/toy-1/rate-limits", json={"default": "600/minute"})
    admin.put("/admin/v1/devices/toy-1/rate-limits", json={"upload": "5/minute"})

    entries = _audit_entries(admin, "device.rate_limits.set")

    assert [entry["target"] for entry in entries] == ["toy-1", "toy-1"]
    assert [entry["result"] for entry in entries] == ["success", "success"]
    assert entries[0]["actor"]["name"] == OPERATOR
    assert entries[1]["details"]["rate_limits"] == {"upload": "5/minute"}
    assert entries[1]["details"]["previous"] == {"default": "600/minute"}
    assert entries[1]["details"]["changed"] is True


def test_audit_records_clear(admin: httpx.Client) -> None:
    admin.put("/admin/v1/devices/toy-1/rate-limits", json={"default": "600/minute"})
    admin.delete("/admin/v1/devices/toy-1/rate-limits")

    entries = _audit_entries(admin, "device.rate_limits.clear")

    assert len(entries) == 1
    assert entries[0]["target"] == "toy-1"
    assert entries[0]["result"] == "success"
    assert entries[0]["actor"]["name"] == OPERATOR
    assert entries[0]["details"]["previous"] == {"default": "600/minute"}


def test_audit_records_rejected_set(admin: httpx.Client) -> None:
    admin.put("/admin/v1/devices/toy-1/rate-limits", json={"default": "0/minute"})

    entries = _audit_entries(admin, "device.rate_limits.set")

    assert len(entries) == 1
    assert entries[0]["result"] == "rejected"
    assert entries[0]["details"]["error"] == "invalid_rate_limits"

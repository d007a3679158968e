"""Per-device rate limits against real mTLS servers with in-memory counters.

Each test starts its own server, so every budget starts empty.
"""

from __future__ import annotations

import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.harness import RunningServer, ServerLoop, make_settings

StartServer = Callable[..., RunningServer]
# Well formed (22 URL-safe characters) and never issued.
UNKNOWN_RECORDING_ID = "A" * 22


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


def device_http(pki: PkiLayout, device_id: str, url: str) -> httpx.Client:
    """An httpx client that presents the device's certificate over one keep-alive connection."""
    context = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    context.load_cert_chain(pki.device_cert(device_id), pki.device_key(device_id))
    return httpx.Client(base_url=url, verify=context, trust_env=False)


def rate_limit_headers(response: httpx.Response) -> tuple[int, int, int]:
    return (
        int(response.headers["RateLimit-Limit"]),
        int(response.headers["RateLimit-Remaining"]),
        int(response.headers["RateLimit-Reset"]),
    )


def test_sixty_first_request_in_minute_rejected(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server()  # the default limits: 60/minute;200/hour;400/day

    with device_http(pki, "toy-1", server.url) as client:
        responses = [client.get("/v1/me") for _ in range(61)]

    for number, response in enumerate(responses[:60], start=1):
        assert response.status_code == 200, number
        limit, remaining, reset = rate_limit_headers(response)
        assert limit == 60, number
        assert remaining == 60 - number, number
        assert 0 <= reset <= 60, number

    rejected = responses[60]
    assert rejected.status_code == 429
    assert rejected.json()["error"]["code"] == "rate_limited"
    assert rejected.headers["Retry-After"].isdigit()
    assert 1 <= int(rejected.headers["Retry-After"]) <= 60
    assert rate_limit_headers(rejected)[:2] == (60, 0)


def test_sixth_request_rejected_at_five_per_minute(
    pki: PkiLayout, start_server: StartServer
) -> None:
    server = start_server(rate_limits="5/minute")

    with device_http(pki, "toy-1", server.url) as client:
        statuses = [client.get("/v1/me").status_code for _ in range(5)]
        sixth = client.get("/v1/me")

    assert statuses == [200] * 5
    assert sixth.status_code == 429
    assert 1 <= int(sixth.headers["Retry-After"]) <= 60


def test_devices_have_independent_budgets(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="3/minute")

    with device_http(pki, "toy-1", server.url) as toy1:
        toy1_statuses = [toy1.get("/v1/me").status_code for _ in range(4)]
    with device_http(pki, "toy-2", server.url) as toy2:
        toy2_first = toy2.get("/v1/me")

    assert toy1_statuses == [200, 200, 200, 429]
    assert toy2_first.status_code == 200
    assert rate_limit_headers(toy2_first)[:2] == (3, 2)


def test_hour_limit_applies(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="100/minute;5/hour;400/day")

    with device_http(pki, "toy-1", server.url) as client:
        statuses = [client.get("/v1/me").status_code for _ in range(5)]
        rejected = client.get("/v1/me")

    assert statuses == [200] * 5
    assert rejected.status_code == 429
    assert rate_limit_headers(rejected)[:2] == (5, 0)
    # The hour window, not the minute one, decides when the next request passes.
    assert 60 < int(rejected.headers["Retry-After"]) <= 3600


def test_day_limit_applies(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="100/minute;100/hour;3/day")

    with device_http(pki, "toy-1", server.url) as client:
        statuses = [client.get("/v1/me").status_code for _ in range(3)]
        rejected = client.get("/v1/me")

    assert statuses == [200] * 3
    assert rejected.status_code == 429
    assert rate_limit_headers(rejected)[:2] == (3, 0)
    assert 3600 < int(rejected.headers["Retry-After"]) <= 86400


def test_headers_reported_for_closest_limit(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="10/minute;4/hour")

    with device_http(pki, "toy-1", server.url) as client:
        response = client.get("/v1/me")

    assert rate_limit_headers(response)[:2] == (4, 3)


def test_rejected_requests_spare_longer_windows(
    pki: PkiLayout, start_server: StartServer
) -> None:
    # Rejections by the 2-second window must not use up the hour's 4 requests.
    server = start_server(rate_limits="2/2 seconds;4/hour")

    with device_http(pki, "toy-2", server.url) as client:
        first_window = [client.get("/v1/me").status_code for _ in range(6)]
        time.sleep(2.2)
        second_window = [client.get("/v1/me").status_code for _ in range(2)]
        over_hour = client.get("/v1/me")

    assert first_window == [200, 200, 429, 429, 429, 429]
    assert second_window == [200, 200]
    assert over_hour.status_code == 429
    assert rate_limit_headers(over_hour)[:2] == (4, 0)


def test_headers_on_error_responses(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="50/minute")

    with device_http(pki, "toy-1", server.url) as client:
        not_found = client.get(f"/v1/recordings/{UNKNOWN_RECORDING_ID}")
        invalid = client.post("/v1/recordings", json={"content_type": "audio/wav"})
        deleted_missing = client.delete(f"/v1/recordings/{UNKNOWN_RECORDING_ID}")
        listing = client.get("/v1/recordings")

    for response in (not_found, invalid, deleted_missing, listing):
        assert "RateLimit-Limit" in response.headers, response.status_code
        assert "RateLimit-Remaining" in response.headers, response.status_code
        assert "RateLimit-Reset" in response.headers, response.status_code
    assert not_found.status_code == 404
    assert invalid.status_code == 422
    assert deleted_missing.status_code == 404
    assert listing.status_code == 200


def test_security_txt_not_limited(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="1/minute")

    with device_http(pki, "toy-1", server.url) as client:
        statuses = [client.get("/.well-known/security.txt").status_code for _ in range(3)]
        last = client.get("/.well-known/security.txt")

    assert statuses == [200, 200, 200]
    assert "RateLimit-Limit" not in last.headers


def test_upload_budget_separate_when_configured(
    pki: PkiLayout, start_server: StartServer
) -> None:
    server = start_server(rate_limits="20/minute", rate_limits_upload="2/minute")
    body = {"content_type": "audio/wav", "size_bytes": 10, "sha256": "0" * 64}

    with device_http(pki, "toy-1", server.url) as client:
        uploads = [client.post("/v1/recordings", json=body) for _ in range(3)]
        me = client.get("/v1/me")

    assert [response.status_code for response in uploads] == [201, 201, 429]
    assert rate_limit_headers(uploads[0])[:2] == (2, 1)
    assert me.status_code == 200
    assert rate_limit_headers(me)[:2] == (20, 19)


def test_download_shares_default_budget_when_unset(
    pki: PkiLayout, start_server: StartServer
) -> None:
    server = start_server(rate_limits="20/minute")

    with device_http(pki, "toy-1", server.url) as client:
        client.get("/v1/me")
        download = client.get(f"/v1/recordings/{UNKNOWN_RECORDING_ID}")

    assert rate_limit_headers(download)[:2] == (20, 18)


def test_override_gives_device_own_limits(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="2/minute", rate_limit_overrides={"toy-2": "5/minute"})

    with device_http(pki, "toy-1", server.url) as toy1:
        toy1_statuses = [toy1.get("/v1/me").status_code for _ in range(3)]
    with device_http(pki, "toy-2", server.url) as toy2:
        toy2_statuses = [toy2.get("/v1/me").status_code for _ in range(6)]

    assert toy1_statuses == [200, 200, 429]
    assert toy2_statuses == [200] * 5 + [429]


def test_unregistered_certificate_limited_by_fingerprint(
    pki: PkiLayout, start_server: StartServer, tmp_path: Path
) -> None:
    # This server registers toy-1 only, so toy-3's valid certificate is unregistered.
    registered = tmp_path / "registered"
    registered.mkdir()
    shutil.copy(pki.device_cert("toy-1"), registered / "toy-1.pem")
    server = start_server(register_devices_from=registered, rate_limit_failed_auth="4/minute")

    with device_http(pki, "toy-3", server.url) as stranger:
        failures = [stranger.get("/v1/me") for _ in range(4)]
        rejected = stranger.get("/v1/me")
    with device_http(pki, "toy-1", server.url) as toy1:
        registered_response = toy1.get("/v1/me")

    for response in failures:
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "certificate_not_registered"
    assert [rate_limit_headers(response)[1] for response in failures] == [3, 2, 1, 0]
    assert rejected.status_code == 429
    assert rejected.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(rejected.headers["Retry-After"]) <= 60
    assert registered_response.status_code == 200


@pytest.mark.parametrize(
    ("status", "expected_code"),
    [("suspended", "device_suspended"), ("revoked", "certificate_revoked")],
)
def test_inactive_device_limited_by_fingerprint(
    pki: PkiLayout, start_server: StartServer, status: str, expected_code: str
) -> None:
    server = start_server(rate_limit_failed_auth="3/minute")
    runtime = server.runtime
    server.loop.run(
        runtime.store.devices.update_one({"_id": "toy-2"}, {"$set": {"status": status}})
    )
    runtime.identity.invalidate()

    with device_http(pki, "toy-2", server.url) as client:
        failures = [client.get("/v1/me") for _ in range(3)]
        rejected = client.get("/v1/me")

    assert [response.json()["error"]["code"] for response in failures] == [expected_code] * 3
    assert rejected.status_code == 429
    assert rejected.json()["error"]["code"] == "rate_limited"


def test_rejections_audited_once_per_window(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limits="2/minute")

    with device_http(pki, "toy-1", server.url) as client:
        statuses = [client.get("/v1/me").status_code for _ in range(8)]

    assert statuses == [200, 200] + [429] * 6
    entries = server.loop.run(
        server.runtime.store.audit.find({"action": "rate_limit.exceeded"}).to_list(None)
    )
    assert len(entries) == 1
    assert entries[0]["target"] == "toy-1"
    assert entries[0]["details"]["limit"] == "2 per 1 minute"


def test_disabled_limits_send_no_headers(pki: PkiLayout, start_server: StartServer) -> None:
    server = start_server(rate_limit_enabled=False, rate_limits="1/minute")

    with device_http(pki, "toy-1", server.url) as client:
        responses = [client.get("/v1/me") for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert "RateLimit-Limit" not in responses[-1].headers

"""Hostile and malformed requests from an authenticated operator.

Every case gets a specific 4xx, never a 500, in the error envelope. The body never
echoes what the request sent: each case carries MARKER, and the response must not
contain it in any letter case. Requests go out byte for byte as written, so dot
segments and encoded characters reach the server unchanged.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from certs.pki import PkiLayout
from service.admin_app import MAX_ADMIN_BODY_BYTES
from service.embedded import EmbeddedS3
from tests.clients import RawResponse, client_context, raw_request
from tests.conftest import OPERATOR
from tests.harness import RunningServer, ServerLoop, make_settings

MARKER = "PVMARK-c41b"
# A device id that breaks the id rule and carries the marker, percent-encoded for a path.
HOSTILE_ID = f"{MARKER}%3Cscript%3E"
JSON = {"Content-Type": "application/json"}
REVOKE = json.dumps({"reason": "keyCompromise"}).encode()


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    running = server_loop.start_server(make_settings(pki.directory, s3))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def operator(pki: PkiLayout) -> ssl.SSLContext:
    return client_context(pki.operator_cert(OPERATOR), pki.operator_key(OPERATOR),
                          pki.server_ca_cert)


def _send(operator: ssl.SSLContext, server: RunningServer, method: str, target: str,
          body: bytes | list[bytes] | None = None,
          headers: dict[str, str] | None = None) -> RawResponse:
    return raw_request(operator, server.admin_port, method, target, body, headers)


def _assert_rejected(response: RawResponse, status: int) -> None:
    assert response.status == status, response.body
    body = response.json()
    assert sorted(body) == ["error"]
    assert sorted(body["error"]) == ["code", "message"]
    assert MARKER.lower() not in response.body.decode("utf-8", "replace").lower()


def _enroll_body(**changes: Any) -> bytes:
    fields = {"device_id": "toy-new", "household_id": "household-7",
              "cert_pem": "-----BEGIN CERTIFICATE-----", **changes}
    return json.dumps(fields).encode()


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# --- request values are never echoed ------------------------------------------------

NOT_ECHOED = [
    pytest.param("GET", f"/admin/v1/devices/{HOSTILE_ID}", None, 422, id="read device"),
    pytest.param("GET", f"/admin/v1/devices/{HOSTILE_ID}/recordings", None, 422,
                 id="device recordings"),
    pytest.param("POST", f"/admin/v1/devices/{HOSTILE_ID}/suspend", None, 422, id="suspend"),
    pytest.param("POST", f"/admin/v1/devices/{HOSTILE_ID}/reactivate", None, 422,
                 id="reactivate"),
    pytest.param("POST", f"/admin/v1/devices/{HOSTILE_ID}/revoke", REVOKE, 422, id="revoke"),
    pytest.param("GET", f"/admin/v1/devices/{MARKER}", None, 404, id="well-formed unknown id"),
    pytest.param("POST", f"/admin/v1/certificates/{MARKER}/revoke", REVOKE, 422,
                 id="revoke serial"),
    pytest.param("POST", "/admin/v1/devices", _enroll_body(device_id=f"{MARKER}<script>"), 422,
                 id="enroll device id"),
    pytest.param("POST", "/admin/v1/devices", _enroll_body(device_id=MARKER * 10), 422,
                 id="enroll device id too long"),
    pytest.param("POST", "/admin/v1/devices", _enroll_body(household_id=f"{MARKER}/x"), 422,
                 id="enroll household id"),
    pytest.param("POST", "/admin/v1/devices",
                 _enroll_body(cert_pem=f"-----BEGIN CERTIFICATE-----\n{MARKER}"), 422,
                 id="enroll certificate"),
    pytest.param("POST", "/admin/v1/devices", _enroll_body(**{MARKER: 1}), 422,
                 id="enroll unknown field"),
    pytest.param("POST", "/admin/v1/devices/toy-1/revoke",
                 json.dumps({"reason": MARKER}).encode(), 422, id="revoke reason"),
    pytest.param("GET", f"/admin/v1/devices?status={MARKER}", None, 422, id="status filter"),
    pytest.param("GET", f"/admin/v1/devices?household_id={MARKER}%2F", None, 422,
                 id="household filter"),
    pytest.param("GET", f"/admin/v1/devices?cursor={MARKER}", None, 422, id="devices cursor"),
    pytest.param("GET", f"/admin/v1/audit?since={MARKER}", None, 422, id="audit since"),
    pytest.param("GET", f"/admin/v1/audit?cursor={MARKER}", None, 422, id="audit cursor"),
    pytest.param("GET", f"/admin/v1/{MARKER}", None, 404, id="unknown path"),
]


@pytest.mark.parametrize(("method", "target", "body", "status"), NOT_ECHOED)
def test_admin_error_omits_request_value(
    method: str, target: str, body: bytes | None, status: int,
    operator: ssl.SSLContext, server: RunningServer,
) -> None:
    response = _send(operator, server, method, target, body, JSON if body else None)

    _assert_rejected(response, status)


def test_invalid_device_id_states_rule(operator: ssl.SSLContext, server: RunningServer) -> None:
    response = _send(operator, server, "GET", f"/admin/v1/devices/{HOSTILE_ID}")

    assert response.json()["error"]["code"] == "invalid_device_id"
    assert response.json()["error"]["message"].startswith("device id must be 1 to 64 characters")


def test_enroll_device_id_states_rule(operator: ssl.SSLContext, server: RunningServer) -> None:
    response = _send(operator, server, "POST", "/admin/v1/devices",
                     _enroll_body(device_id="toy 1"), JSON)

    assert response.json()["error"]["message"].startswith(
        "device_id: device id must be 1 to 64 characters")


# --- dot segments as device ids ------------------------------------------------------

DOT_SEGMENTS = [
    pytest.param("GET", "/admin/v1/devices/%2E%2E", None, id="read .."),
    pytest.param("GET", "/admin/v1/devices/%2E", None, id="read ."),
    pytest.param("POST", "/admin/v1/devices/%2E/suspend", None, id="suspend ."),
    pytest.param("POST", "/admin/v1/devices/%2E%2E/revoke", REVOKE, id="revoke .."),
]


@pytest.mark.parametrize(("method", "target", "body"), DOT_SEGMENTS)
def test_dot_segment_device_id_is_422(method: str, target: str, body: bytes | None,
                                      operator: ssl.SSLContext, server: RunningServer) -> None:
    response = _send(operator, server, method, target, body, JSON if body else None)

    assert response.status == 422
    assert response.json()["error"]["code"] == "invalid_device_id"


@pytest.mark.parametrize("device_id", [".", ".."])
def test_enroll_rejects_dot_segment_id(device_id: str, operator: ssl.SSLContext,
                                       server: RunningServer) -> None:
    response = _send(operator, server, "POST", "/admin/v1/devices",
                     _enroll_body(device_id=device_id), JSON)

    assert response.status == 422
    assert "other than '.' and '..'" in response.json()["error"]["message"]


# --- times near the ends of datetime's range ------------------------------------------

OUT_OF_RANGE_TIMES = [
    pytest.param("9999-12-31T23:59:59-10:00", id="after year 9999 in UTC"),
    pytest.param("9999-12-31T23:59:59.999999-00:01", id="one minute past the end"),
    pytest.param("0001-01-01T00:00:00%2B01:00", id="before year 1 in UTC"),
]


@pytest.mark.parametrize("since", OUT_OF_RANGE_TIMES)
def test_audit_since_out_of_range_is_422(since: str, operator: ssl.SSLContext,
                                         server: RunningServer) -> None:
    response = _send(operator, server, "GET", f"/admin/v1/audit?since={since}")

    assert response.status == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["message"].startswith("since is out of range")


EDGE_TIMES = [
    pytest.param("9999-12-31T23:59:59Z", id="last second"),
    pytest.param("9999-12-31T23:59:59.999999%2B00:00", id="last microsecond"),
    pytest.param("0001-01-01T00:00:00Z", id="first second"),
    pytest.param("0001-01-01T00:00:00", id="first second without offset"),
    pytest.param("9999-12-31T23:59:59%2B10:00", id="east of UTC near the end"),
]


@pytest.mark.parametrize("since", EDGE_TIMES)
def test_audit_since_edge_is_accepted(since: str, operator: ssl.SSLContext,
                                      server: RunningServer) -> None:
    response = _send(operator, server, "GET", f"/admin/v1/audit?since={since}")

    assert response.status == 200, response.body


@pytest.mark.parametrize("created_at", [
    pytest.param("9999-12-31T23:59:59-10:00", id="after year 9999 in UTC"),
    pytest.param("0001-01-01T00:00:00+01:00", id="before year 1 in UTC"),
    pytest.param("2026-01-01T00:00:00", id="no offset"),
])
def test_recordings_cursor_out_of_range_is_422(created_at: str, operator: ssl.SSLContext,
                                               server: RunningServer) -> None:
    cursor = _cursor({"t": created_at, "id": "A" * 22})

    response = _send(operator, server, "GET",
                     f"/admin/v1/devices/toy-1/recordings?cursor={cursor}")

    assert response.status == 422
    assert response.json()["error"]["code"] == "invalid_cursor"


# --- body size ------------------------------------------------------------------------


def _chunks_over_limit(prefix: bytes) -> list[bytes]:
    # 1000-byte chunks, so the body has no Content-Length and the limit is found mid-read.
    count = MAX_ADMIN_BODY_BYTES // 1000 + 2
    return [prefix] + [b"A" * 1000] * count + [b'"}']


@pytest.mark.parametrize(("target", "prefix"), [
    pytest.param("/admin/v1/devices",
                 b'{"device_id":"toy-new","household_id":"h","csr_pem":"', id="enroll"),
    pytest.param("/admin/v1/devices/toy-1/revoke", b'{"reason":"', id="revoke"),
])
def test_chunked_body_over_limit_is_413(target: str, prefix: bytes, operator: ssl.SSLContext,
                                        server: RunningServer) -> None:
    response = _send(operator, server, "POST", target, _chunks_over_limit(prefix), JSON)

    _assert_rejected(response, 413)
    assert response.json()["error"]["code"] == "payload_too_large"


def test_declared_body_over_limit_is_413(operator: ssl.SSLContext,
                                         server: RunningServer) -> None:
    body = b'{"reason":"' + b"A" * MAX_ADMIN_BODY_BYTES + b'"}'

    response = _send(operator, server, "POST", "/admin/v1/devices/toy-1/revoke", body, JSON)

    _assert_rejected(response, 413)

"""Hostile and malformed requests from an authenticated device.

Every case gets a specific 4xx, never a 500. The body is always the error envelope
`{"error": {"code", "message"}}`, and it never echoes what the request sent: each
case carries MARKER, and the response must not contain it in any letter case.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import RawResponse, device_context, raw_request
from tests.harness import RunningServer, ServerLoop, make_settings

MARKER = "PVMARK-c41b"
SHA256 = "a" * 64
VALID = {"content_type": "audio/wav", "size_bytes": 1000, "sha256": SHA256}
# Well-formed but unknown, so routes that need an id get past id validation.
UNKNOWN_ID = "AAAAAAAAAAAAAAAAAAAAAA"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """One server for the module. The cases exceed the default per-device rate limit."""
    running = server_loop.start_server(make_settings(pki.directory, s3, rate_limit_enabled=False))
    yield running
    running.stop()


def _send(pki: PkiLayout, server: RunningServer, method: str, target: str,
          body: bytes | list[bytes] | None = None,
          headers: dict[str, str] | None = None) -> RawResponse:
    return raw_request(device_context(pki, "toy-1"), server.port, method, target, body, headers)


def _error_keys(response: RawResponse) -> tuple[list[str], list[str]]:
    body = response.json()
    return sorted(body), sorted(body["error"])


# Passed as a field value to `_create_body` to leave that field out.
_DROP = object()


def _create_body(**changes: Any) -> bytes:
    fields = {**VALID, **changes}
    kept = {name: value for name, value in fields.items() if value is not _DROP}
    return json.dumps(kept).encode()


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _assert_rejected(response: RawResponse, status: int) -> None:
    assert response.status == status
    assert _error_keys(response) == (["error"], ["code", "message"])
    assert MARKER.lower() not in response.body.decode("utf-8", "replace").lower()


# --- POST /v1/recordings bodies ------------------------------------------------------

CREATE_BODIES = [
    pytest.param(b'{"content_type": "' + MARKER.encode(), JSON, 422, id="malformed JSON"),
    pytest.param(_create_body() + b" " + MARKER.encode(), JSON, 422, id="trailing garbage"),
    pytest.param(b'{"content_type": "\xff\xfe' + MARKER.encode() + b'"}', JSON, 400,
                 id="not UTF-8"),
    pytest.param(json.dumps([MARKER]).encode(), JSON, 422, id="JSON array"),
    pytest.param(json.dumps(MARKER).encode(), JSON, 422, id="JSON string"),
    pytest.param(b"null", JSON, 422, id="JSON null"),
    pytest.param(b"", JSON, 422, id="empty body"),
    pytest.param(_create_body(size_bytes="10"), JSON, 422, id="size as string"),
    pytest.param(_create_body(size_bytes=True), JSON, 422, id="size as boolean"),
    pytest.param(_create_body(size_bytes=1.5), JSON, 422, id="size as fraction"),
    pytest.param(_create_body(size_bytes=1000.0), JSON, 422, id="size as float"),
    pytest.param(_create_body(size_bytes=None), JSON, 422, id="size null"),
    pytest.param(_create_body(size_bytes=MARKER), JSON, 422, id="size as marker"),
    pytest.param(_create_body(size_bytes=0), JSON, 422, id="size zero"),
    pytest.param(_create_body(size_bytes=-1), JSON, 422, id="size negative"),
    pytest.param(_create_body(size_bytes=10_000_001), JSON, 413, id="size above maximum"),
    pytest.param(_create_body(size_bytes=10**30), JSON, 413, id="size far above maximum"),
    pytest.param(b'{"content_type":"audio/wav","sha256":"' + SHA256.encode()
                 + b'","size_bytes":1' + b"0" * 5000 + b"}", JSON, 400,
                 id="size beyond the integer digit limit"),
    pytest.param(_create_body(content_type="audio/" + MARKER), JSON, 415,
                 id="content type not allowed"),
    pytest.param(_create_body(content_type=""), JSON, 415, id="content type empty"),
    pytest.param(_create_body(content_type=MARKER * 20), JSON, 422, id="content type too long"),
    pytest.param(_create_body(content_type=42), JSON, 422, id="content type as number"),
    pytest.param(_create_body(sha256=SHA256.upper()), JSON, 422, id="sha256 uppercase"),
    pytest.param(_create_body(sha256=SHA256[:63]), JSON, 422, id="sha256 63 characters"),
    pytest.param(_create_body(sha256=SHA256 + "a"), JSON, 422, id="sha256 65 characters"),
    pytest.param(_create_body(sha256=SHA256 + "\n"), JSON, 422, id="sha256 trailing newline"),
    pytest.param(_create_body(sha256=(MARKER * 6)[:64]), JSON, 422, id="sha256 not hex"),
    pytest.param(_create_body(**{MARKER: 1}), JSON, 422, id="unknown field name"),
    pytest.param(_create_body(note=MARKER), JSON, 422, id="unknown field value"),
    pytest.param(_create_body(content_type=_DROP), JSON, 422, id="content type missing"),
    pytest.param(_create_body(size_bytes=_DROP), JSON, 422, id="size missing"),
    pytest.param(_create_body(sha256=_DROP), JSON, 422, id="sha256 missing"),
    pytest.param(b"{}", JSON, 422, id="all fields missing"),
    pytest.param(_create_body(), {"Content-Type": "text/plain"}, 422, id="text/plain body"),
    pytest.param(_create_body(), {"Content-Type": "application/" + MARKER}, 422,
                 id="unknown media type"),
    pytest.param(_create_body(content_type=MARKER * 200_000), JSON, 413, id="huge body"),
    pytest.param([_create_body(content_type=MARKER * 1000)] * 200, JSON, 413,
                 id="huge chunked body"),
]


@pytest.mark.parametrize(("body", "headers", "status"), CREATE_BODIES)
def test_create_rejects_body(
    body: bytes | list[bytes], headers: dict[str, str], status: int,
    pki: PkiLayout, server: RunningServer,
) -> None:
    response = _send(pki, server, "POST", "/v1/recordings", body, headers)

    _assert_rejected(response, status)


# --- recording ids in the path, on every route that takes one ------------------------

ID_ROUTES = [
    pytest.param("GET", "/v1/recordings/{id}", id="read"),
    pytest.param("POST", "/v1/recordings/{id}/complete", id="complete"),
    pytest.param("DELETE", "/v1/recordings/{id}", id="delete"),
]

BAD_IDS = [
    pytest.param("A" * 23, 422, id="too long"),
    pytest.param("A" * 21, 422, id="too short"),
    pytest.param("A" * 5000, 422, id="5000 characters"),
    pytest.param("A" * 21 + "%C3%A9", 422, id="non-ASCII letter"),
    pytest.param("%F0%9F%90%B6" * 22, 422, id="emoji"),
    pytest.param(MARKER + "%00" + "A" * 10, 422, id="NUL byte"),
    pytest.param("A" * 21 + "%0A", 422, id="trailing newline"),
    pytest.param(MARKER + "+" + "A" * 10, 422, id="plus sign"),
    pytest.param("%2E%2E", 422, id="encoded dot-dot"),
    pytest.param("..", 422, id="dot-dot"),
    pytest.param("%", 422, id="bare percent"),
    pytest.param("..%2F..%2F" + MARKER, 404, id="encoded path traversal"),
    pytest.param("../" + MARKER, 404, id="path traversal"),
    # Well-formed, so it reaches the lookup: 404 without echoing the id.
    pytest.param(MARKER.replace("-", "_") + "A" * 11, 404, id="well-formed marker id"),
]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
@pytest.mark.parametrize(("recording_id", "status"), BAD_IDS)
def test_route_rejects_recording_id(
    method: str, route: str, recording_id: str, status: int,
    pki: PkiLayout, server: RunningServer,
) -> None:
    response = _send(pki, server, method, route.format(id=recording_id))

    _assert_rejected(response, status)


# --- GET /v1/recordings query ---------------------------------------------------------

LIST_QUERIES = [
    pytest.param("limit=101", id="limit above 100"),
    pytest.param("limit=0", id="limit zero"),
    pytest.param("limit=-1", id="limit negative"),
    pytest.param("limit=1.5", id="limit fraction"),
    pytest.param(f"limit={MARKER}", id="limit not a number"),
    pytest.param(f"cursor={MARKER}", id="cursor not base64 JSON"),
    pytest.param("cursor=" + "A" * 201, id="cursor too long"),
    pytest.param("cursor=" + _cursor([MARKER]), id="cursor JSON array"),
    pytest.param("cursor=" + _cursor({"t": MARKER, "id": UNKNOWN_ID}), id="cursor bad time"),
    pytest.param("cursor=" + _cursor({"t": "2026-01-01T00:00:00+00:00", "id": MARKER}),
                 id="cursor bad id"),
    pytest.param("cursor=" + _cursor({"t": "2026-01-01T00:00:00", "id": UNKNOWN_ID}),
                 id="cursor naive time"),
    # A non-UTC offset moves these out of datetime's range on conversion to UTC.
    pytest.param("cursor=" + _cursor({"t": "0001-01-01T00:00:00+01:00", "id": UNKNOWN_ID}),
                 id="cursor before year 1 in UTC"),
    pytest.param("cursor=" + _cursor({"t": "9999-12-31T23:59:59-01:00", "id": UNKNOWN_ID}),
                 id="cursor after year 9999 in UTC"),
    pytest.param("cursor=" + _cursor({"t": "2026-01-01T00:00:00+05:00", "id": UNKNOWN_ID}),
                 id="cursor not UTC"),
]


@pytest.mark.parametrize("query", LIST_QUERIES)
def test_list_rejects_query(query: str, pki: PkiLayout, server: RunningServer) -> None:
    response = _send(pki, server, "GET", f"/v1/recordings?{query}")

    _assert_rejected(response, 422)


# --- methods and paths ----------------------------------------------------------------

WRONG_METHODS = [
    pytest.param("PUT", "/v1/recordings", id="PUT recordings"),
    pytest.param("DELETE", "/v1/recordings", id="DELETE recordings"),
    pytest.param("PATCH", "/v1/me", id="PATCH me"),
    pytest.param("POST", "/v1/me", id="POST me"),
    pytest.param("PUT", f"/v1/recordings/{UNKNOWN_ID}", id="PUT recording"),
    pytest.param("GET", f"/v1/recordings/{UNKNOWN_ID}/complete", id="GET complete"),
]


@pytest.mark.parametrize(("method", "target"), WRONG_METHODS)
def test_wrong_method_gets_405(method: str, target: str, pki: PkiLayout,
                               server: RunningServer) -> None:
    response = _send(pki, server, method, target, MARKER.encode(), JSON)

    _assert_rejected(response, 405)


def test_unknown_path_gets_404(pki: PkiLayout, server: RunningServer) -> None:
    response = _send(pki, server, "GET", f"/v1/{MARKER}")

    _assert_rejected(response, 404)

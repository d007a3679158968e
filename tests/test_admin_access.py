"""Admin listener access: operator certificates only, on every route.

The admin listener trusts the operator CA alone, so a device certificate or a
missing certificate fails the TLS handshake before any route runs. An operator
certificate fails the device listener's handshake the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from certs.pki import PkiLayout, load_certificate_authority
from service.config import ConfigError, Settings
from service.embedded import EmbeddedS3
from service.operators import check_client_cas_are_separate
from tests.certificates import common_name, device_uri, issue_client_certificate
from tests.clients import client_context, handshake_outcome
from tests.conftest import OPERATOR
from tests.enrollment import csr_pem, serial_of
from tests.harness import RunningServer, ServerLoop, make_settings, operator_client


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None
    success: int

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _routes(pki: PkiLayout) -> list[Route]:
    toy_1_serial = serial_of(pki.device_cert("toy-1").read_bytes())
    enrollment = {"device_id": "toy-new", "household_id": "household-9", "csr_pem": csr_pem("x")}
    return [
        Route("POST", "/admin/v1/devices", enrollment, 201),
        Route("GET", "/admin/v1/devices", None, 200),
        Route("GET", "/admin/v1/devices/toy-1", None, 200),
        Route("GET", "/admin/v1/devices/toy-1/recordings", None, 200),
        Route("POST", "/admin/v1/devices/toy-2/revoke", {"reason": "keyCompromise"}, 200),
        Route("POST", f"/admin/v1/certificates/{toy_1_serial}/revoke", {"reason": "superseded"},
              200),
        Route("POST", "/admin/v1/devices/toy-3/suspend", None, 200),
        Route("POST", "/admin/v1/devices/toy-3/reactivate", None, 200),
        Route("PUT", "/admin/v1/devices/toy-3/rate-limits", {"default": "600/minute"}, 200),
        Route("DELETE", "/admin/v1/devices/toy-3/rate-limits", None, 200),
        Route("GET", "/admin/v1/crl", None, 200),
        Route("GET", "/admin/v1/crl.pem", None, 200),
        Route("GET", "/admin/v1/audit", None, 200),
        Route("GET", "/admin/v1/openapi.json", None, 200),
    ]


ROUTE_NAMES = [
    "enroll", "list", "read", "recordings", "revoke", "revoke-certificate", "suspend",
    "reactivate", "set-rate-limits", "clear-rate-limits", "crl", "crl-pem", "audit", "openapi",
]


@pytest.fixture(scope="module")
def shared_server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop
                  ) -> Iterator[RunningServer]:
    """One server for the tests that change no state."""
    running = server_loop.start_server(make_settings(pki.directory, s3))
    yield running
    running.stop()


def _send(client: httpx.Client, route: Route) -> httpx.Response:
    return client.request(route.method, route.path, json=route.body)


def _client_with(context: ssl.SSLContext, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=context, trust_env=False, timeout=10)


@pytest.mark.parametrize("index", range(len(ROUTE_NAMES)), ids=ROUTE_NAMES)
def test_route_accepts_operator(pki: PkiLayout, server: RunningServer, admin: httpx.Client,
                                index: int) -> None:
    route = _routes(pki)[index]
    response = _send(admin, route)
    assert response.status_code == route.success, f"{route}: {response.text}"


@pytest.mark.parametrize("index", range(len(ROUTE_NAMES)), ids=ROUTE_NAMES)
def test_route_rejects_device_certificate(pki: PkiLayout, shared_server: RunningServer,
                                          index: int) -> None:
    route = _routes(pki)[index]
    context = client_context(pki.device_cert("toy-1"), pki.device_key("toy-1"), pki.server_ca_cert)
    with _client_with(context, shared_server.admin_url) as client, pytest.raises(
        httpx.TransportError
    ):
        _send(client, route)


@pytest.mark.parametrize("index", range(len(ROUTE_NAMES)), ids=ROUTE_NAMES)
def test_route_rejects_missing_certificate(pki: PkiLayout, shared_server: RunningServer,
                                           index: int) -> None:
    route = _routes(pki)[index]
    context = client_context(None, None, pki.server_ca_cert)
    with _client_with(context, shared_server.admin_url) as client, pytest.raises(
        httpx.TransportError
    ):
        _send(client, route)


def test_device_listener_rejects_operator(pki: PkiLayout, shared_server: RunningServer) -> None:
    context = client_context(pki.operator_cert(OPERATOR), pki.operator_key(OPERATOR),
                             pki.server_ca_cert)
    assert handshake_outcome(context, shared_server.port) == "handshake rejected"


def test_operator_ca_certificate_without_operator_name(
    pki: PkiLayout, shared_server: RunningServer, tmp_path: Any
) -> None:
    # Signed by the operator CA, but shaped like a device certificate.
    operator_ca = load_certificate_authority(pki.operator_ca_cert, pki.operator_ca_key)
    credentials = issue_client_certificate(
        operator_ca, tmp_path, "not-an-operator",
        subject=[common_name("toy-1")], san=[device_uri("toy-1")],
    )
    context = client_context(credentials.cert_path, credentials.key_path, pki.server_ca_cert)
    with _client_with(context, shared_server.admin_url) as client:
        response = client.get("/admin/v1/devices")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_operator_certificate"


def test_openapi_lists_admin_routes(pki: PkiLayout, shared_server: RunningServer) -> None:
    with operator_client(pki, OPERATOR, shared_server.admin_url) as client:
        paths = client.get("/admin/v1/openapi.json").json()["paths"]
    expected = {
        "/admin/v1/devices", "/admin/v1/devices/{device_id}",
        "/admin/v1/devices/{device_id}/recordings", "/admin/v1/devices/{device_id}/revoke",
        "/admin/v1/devices/{device_id}/suspend", "/admin/v1/devices/{device_id}/reactivate",
        "/admin/v1/devices/{device_id}/rate-limits", "/admin/v1/certificates/{serial}/revoke",
        "/admin/v1/crl", "/admin/v1/crl.pem", "/admin/v1/audit",
    }
    assert expected <= set(paths)


WRONG_METHODS = [
    ("DELETE", "/admin/v1/devices"),
    ("PUT", "/admin/v1/devices/toy-1"),
    ("DELETE", "/admin/v1/devices/toy-1"),
    ("GET", "/admin/v1/devices/toy-1/revoke"),
    ("PATCH", "/admin/v1/devices/toy-1/suspend"),
    ("POST", "/admin/v1/devices/toy-1/rate-limits"),
    ("PATCH", "/admin/v1/devices/toy-1/rate-limits"),
    ("GET", "/admin/v1/certificates/ab12/revoke"),
    ("POST", "/admin/v1/crl"),
    ("DELETE", "/admin/v1/audit"),
    ("PUT", "/admin/v1/audit"),
    ("PATCH", "/admin/v1/audit"),
    ("POST", "/admin/v1/audit"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_method_is_405(pki: PkiLayout, shared_server: RunningServer, method: str,
                             path: str) -> None:
    with operator_client(pki, OPERATOR, shared_server.admin_url) as client:
        response = client.request(method, path)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_unknown_route_is_404(pki: PkiLayout, shared_server: RunningServer) -> None:
    with operator_client(pki, OPERATOR, shared_server.admin_url) as client:
        response = client.get("/admin/v1/operators")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_health_shows_crl(pki: PkiLayout, shared_server: RunningServer) -> None:
    port = shared_server.server.health_port
    checks = httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False).json()["checks"]
    assert checks["crl"] == "ok"


# --- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "8.8.8.8", "2001:4860::8888", "example.com"]  # noqa: S104
)
def test_admin_host_rejects_public(host: str) -> None:
    with pytest.raises(ValidationError, match="PETVAULT_ADMIN_HOST"):
        Settings(_env_file=None, admin_host=host)  # type: ignore[call-arg]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "10.0.0.5", "192.168.1.20",
                                  "fd00::5"])
def test_admin_host_accepts_private(host: str) -> None:
    settings = Settings(_env_file=None, admin_host=host)  # type: ignore[call-arg]
    assert settings.admin_host == host


def test_shared_client_ca_rejected(pki: PkiLayout) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, certs_dir=pki.directory, operator_ca=pki.device_ca_cert
    )
    with pytest.raises(ConfigError, match="separate CAs"):
        check_client_cas_are_separate(settings)


def test_startup_fails_on_shared_client_ca(pki: PkiLayout, s3: EmbeddedS3,
                                           server_loop: ServerLoop) -> None:
    settings = make_settings(pki.directory, s3, operator_ca=pki.device_ca_cert)
    with pytest.raises(ConfigError):
        server_loop.start_server(settings)


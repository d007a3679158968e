"""The ASGI TLS extension: the verified client leaf reaches the app in the scope.

`ClientCertH11Protocol` runs here under plain uvicorn with the project's server
context and a recording app, over real TLS. The device API's response to a scope
without a certificate is checked in-process, because no TLS listener of ours lets
such a request through.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509

from certs.pki import PkiLayout
from service.app import create_device_app
from service.server import bind_socket
from service.transport import (
    ClientCertH11Protocol,
    client_certificate_from_scope,
    ssl_context_factory_for,
)
from tests.clients import device_context, request_over_tls
from tests.harness import RunningServer, ServerLoop


class _ScopeRecorder:
    """An ASGI app that stores each request's TLS extension and returns 204."""

    def __init__(self) -> None:
        self.tls: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.tls.append(scope["extensions"]["tls"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def recorder_port(
    pki: PkiLayout, server_loop: ServerLoop
) -> Iterator[tuple[_ScopeRecorder, int]]:
    recorder = _ScopeRecorder()
    config = uvicorn.Config(
        recorder,
        http=ClientCertH11Protocol,
        ssl_context_factory=ssl_context_factory_for(
            pki.server_cert, pki.server_key, pki.device_ca_cert
        ),
        lifespan="off",
        log_config=None,
    )
    uvicorn_server = uvicorn.Server(config)
    sock = bind_socket("127.0.0.1", 0)
    serving = asyncio.run_coroutine_threadsafe(uvicorn_server.serve(sockets=[sock]),
                                               server_loop.loop)

    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        if serving.done() or time.monotonic() > deadline:
            serving.result(timeout=0)  # re-raises the startup error
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.01)
    yield recorder, sock.getsockname()[1]
    uvicorn_server.should_exit = True
    serving.result(timeout=10)
    sock.close()


def test_scope_carries_client_leaf(
    pki: PkiLayout, recorder_port: tuple[_ScopeRecorder, int]
) -> None:
    recorder, port = recorder_port
    expected = x509.load_pem_x509_certificate(pki.device_cert("toy-1").read_bytes())

    request_over_tls(device_context(pki, "toy-1"), port)
    chain = recorder.tls[0]["client_cert_chain"]

    assert len(chain) == 1
    assert x509.load_pem_x509_certificate(chain[0].encode()) == expected


@pytest.mark.parametrize(
    ("maximum_version", "wire_version"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, 0x0303, id="TLS 1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, 0x0304, id="TLS 1.3"),
    ],
)
def test_scope_carries_tls_version(
    maximum_version: ssl.TLSVersion, wire_version: int,
    pki: PkiLayout, recorder_port: tuple[_ScopeRecorder, int],
) -> None:
    recorder, port = recorder_port
    context = device_context(pki, "toy-1")
    context.maximum_version = maximum_version

    request_over_tls(context, port)

    assert recorder.tls[0]["tls_version"] == wire_version


def test_scope_of_each_connection_is_its_own(
    pki: PkiLayout, recorder_port: tuple[_ScopeRecorder, int]
) -> None:
    recorder, port = recorder_port

    request_over_tls(device_context(pki, "toy-1"), port)
    request_over_tls(device_context(pki, "toy-2"), port)
    common_names = [
        x509.load_pem_x509_certificate(tls["client_cert_chain"][0].encode())
        .subject.rfc4514_string()
        for tls in recorder.tls
    ]

    assert common_names == ["CN=toy-1", "CN=toy-2"]


# --- client_certificate_from_scope ---------------------------------------------------

LEAF = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        pytest.param({}, None, id="no extensions"),
        pytest.param({"extensions": {}}, None, id="no tls extension"),
        pytest.param({"extensions": {"tls": None}}, None, id="tls extension None"),
        pytest.param({"extensions": {"tls": {}}}, None, id="no chain"),
        pytest.param({"extensions": {"tls": {"client_cert_chain": []}}}, None, id="empty chain"),
        pytest.param({"extensions": {"tls": {"client_cert_chain": [""]}}}, None,
                     id="empty leaf"),
        pytest.param({"extensions": {"tls": {"client_cert_chain": [LEAF, "ca"]}}}, LEAF,
                     id="leaf first"),
    ],
)
def test_client_certificate_from_scope(scope: dict[str, Any], expected: str | None) -> None:
    assert client_certificate_from_scope(scope) == expected


# --- the device API without a certificate in the scope -------------------------------


def _with_tls_extension(app: Any, tls: dict[str, Any] | None) -> Any:
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if tls is None:
            scope.get("extensions", {}).pop("tls", None)
        else:
            scope.setdefault("extensions", {})["tls"] = tls
        await app(scope, receive, send)

    return wrapped


@pytest.mark.parametrize(
    ("tls", "expected_code"),
    [
        pytest.param(None, "client_certificate_required", id="no tls extension"),
        pytest.param({"client_cert_chain": []}, "client_certificate_required", id="empty chain"),
        pytest.param({"client_cert_chain": [LEAF]}, "invalid_certificate", id="unparseable leaf"),
    ],
)
def test_device_api_without_usable_certificate_gets_401(
    tls: dict[str, Any] | None, expected_code: str, server: RunningServer
) -> None:
    app = create_device_app(server.runtime.settings, server.runtime)
    # No lifespan runs in-process, so hand the app the running server's runtime.
    app.state.runtime = server.runtime
    transport = httpx.ASGITransport(app=_with_tls_extension(app, tls))

    async def get_me() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="https://device") as client:
            return await client.get("/v1/me")

    response = server.loop.run(get_me())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == expected_code

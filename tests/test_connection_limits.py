"""Connection limits on both mutual-TLS listeners: head deadline, head size, connections.

The tests run a real server with a 1 s request head deadline and talk raw TLS to it,
because an HTTP client library always sends a whole request at once.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from service.server import bind_socket
from service.transport import MAX_REQUEST_HEAD_BYTES, ClientCertH11Protocol, ssl_context_factory_for
from tests.clients import client_context, device_context
from tests.conftest import OPERATOR
from tests.harness import RunningServer, ServerLoop, make_settings

HEADER_TIMEOUT_SECONDS = 1
# How long a test waits for the server to close a connection before it fails.
CLOSE_WAIT_SECONDS = 10.0
# The deadline counts from the handshake, so a close well before it is some other cause.
EARLIEST_CLOSE_SECONDS = 0.8
LATEST_CLOSE_SECONDS = HEADER_TIMEOUT_SECONDS + 8


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    context: ssl.SSLContext
    path: str


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    settings = make_settings(pki.directory, s3, rate_limit_enabled=False,
                             request_header_timeout_seconds=HEADER_TIMEOUT_SECONDS)
    running = server_loop.start_server(settings)
    yield running
    running.stop()


def _listeners(pki: PkiLayout, server: RunningServer) -> dict[str, Listener]:
    operator = client_context(pki.operator_cert(OPERATOR), pki.operator_key(OPERATOR),
                              pki.server_ca_cert)
    return {
        "device": Listener("device", server.port, device_context(pki, "toy-1"), "/v1/me"),
        "admin": Listener("admin", server.admin_port, operator, "/admin/v1/devices"),
    }


@pytest.fixture(params=["device", "admin"])
def listener(request: pytest.FixtureRequest, pki: PkiLayout, server: RunningServer) -> Listener:
    return _listeners(pki, server)[request.param]


def _connect(listener: Listener) -> ssl.SSLSocket:
    """Open a connection and complete the handshake, without sending a request."""
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=CLOSE_WAIT_SECONDS)
    return listener.context.wrap_socket(sock, server_hostname="127.0.0.1")


def _read_until_closed(tls: ssl.SSLSocket) -> bytes:
    """Read until the server closes the connection; raise TimeoutError if it does not."""
    received = b""
    try:
        while chunk := tls.recv(65536):
            received += chunk
    except (ssl.SSLError, ConnectionError):
        pass  # an abort ends TLS without close_notify
    return received


def _request_head(path: str, *, extra_header_bytes: int = 0) -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if extra_header_bytes:
        head += f"X-Padding: {'a' * extra_header_bytes}\r\n"
    return (head + "\r\n").encode()


def _status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


# --- request head deadline -----------------------------------------------------------


def test_partial_head_closed_at_deadline(listener: Listener) -> None:
    with _connect(listener) as tls:
        started = time.monotonic()
        tls.sendall(f"GET {listener.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())

        received = _read_until_closed(tls)
        elapsed = time.monotonic() - started

    assert received == b""
    assert elapsed >= EARLIEST_CLOSE_SECONDS
    assert elapsed < LATEST_CLOSE_SECONDS


def test_drip_fed_head_closed_at_deadline(listener: Listener) -> None:
    lines_sent = 0
    with _connect(listener) as tls:
        started = time.monotonic()
        tls.sendall(f"GET {listener.path} HTTP/1.1\r\n".encode())
        tls.settimeout(0.3)
        closed = False
        while not closed and time.monotonic() - started < CLOSE_WAIT_SECONDS:
            try:
                tls.sendall(f"X-Drip-{lines_sent}: 1\r\n".encode())
                lines_sent += 1
                closed = tls.recv(1) == b""
            except TimeoutError:
                continue  # still open: send the next line
            except (ssl.SSLError, ConnectionError):
                closed = True
        elapsed = time.monotonic() - started

    assert closed
    assert lines_sent >= 3
    assert elapsed < LATEST_CLOSE_SECONDS


def test_silent_connection_closed_at_deadline(listener: Listener) -> None:
    with _connect(listener) as tls:
        started = time.monotonic()

        received = _read_until_closed(tls)
        elapsed = time.monotonic() - started

    assert received == b""
    assert elapsed >= EARLIEST_CLOSE_SECONDS
    assert elapsed < LATEST_CLOSE_SECONDS


def test_keep_alive_with_short_pauses(pki: PkiLayout, server: RunningServer) -> None:
    # http.client keeps one socket and raises RemoteDisconnected if the server closed it.
    connection = http.client.HTTPSConnection("127.0.0.1", server.port,
                                             context=device_context(pki, "toy-1"), timeout=10)
    statuses = []
    sockets = set()
    try:
        for _ in range(4):
            connection.request("GET", "/v1/me")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.add(id(connection.sock))
            time.sleep(HEADER_TIMEOUT_SECONDS / 2)
    finally:
        connection.close()

    assert statuses == [200, 200, 200, 200]
    assert len(sockets) == 1


def test_idle_keep_alive_closed_at_deadline(pki: PkiLayout, server: RunningServer) -> None:
    listener = _listeners(pki, server)["device"]
    with _connect(listener) as tls:
        tls.sendall(f"GET {listener.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        first = tls.recv(65536)
        started = time.monotonic()

        _read_until_closed(tls)
        elapsed = time.monotonic() - started

    assert first.startswith(b"HTTP/1.1 200")
    assert elapsed >= EARLIEST_CLOSE_SECONDS
    assert elapsed < LATEST_CLOSE_SECONDS


class _SlowApp:
    """An ASGI app that responds with 204 after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def slow_app_port(pki: PkiLayout, server_loop: ServerLoop) -> Iterator[int]:
    """Plain uvicorn with ClientCertH11Protocol, a 1 s deadline and a 2 s app."""
    config = uvicorn.Config(
        _SlowApp(delay=2 * HEADER_TIMEOUT_SECONDS),
        http=ClientCertH11Protocol,
        ssl_context_factory=ssl_context_factory_for(
            pki.server_cert, pki.server_key, pki.device_ca_cert
        ),
        timeout_keep_alive=HEADER_TIMEOUT_SECONDS,
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
    yield sock.getsockname()[1]
    uvicorn_server.should_exit = True
    serving.result(timeout=10)
    sock.close()


def test_deadline_spares_slow_app(pki: PkiLayout, slow_app_port: int) -> None:
    listener = Listener("slow", slow_app_port, device_context(pki, "toy-1"), "/")
    with _connect(listener) as tls:
        tls.sendall(_request_head("/"))

        received = _read_until_closed(tls)

    assert received.startswith(b"HTTP/1.1 204")


# --- request head size ---------------------------------------------------------------

# Beyond MAX_REQUEST_HEAD_BYTES. h11 alone accepts the smaller one when it arrives in
# one read, and the larger one depending on how the server's reads split it.
OVERSIZED_HEADS = [
    pytest.param(20_000, id="20 KB"),
    pytest.param(100_000, id="100 KB"),
]


class _ResponseRecorder(asyncio.Protocol):
    """Collects what the server sends until it closes the connection."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


async def _exchange(listener: Listener, head: bytes, write_size: int | None) -> bytes:
    # asyncio reads while it writes, so the response arrives intact even when the
    # server rejects the head and resets the connection before the client is done.
    loop = asyncio.get_running_loop()
    transport, recorder = await loop.create_connection(
        _ResponseRecorder, "127.0.0.1", listener.port, ssl=listener.context,
        server_hostname="127.0.0.1",
    )
    size = write_size or len(head)
    for offset in range(0, len(head), size):
        if transport.is_closing():
            break
        transport.write(head[offset:offset + size])
        await asyncio.sleep(0.005)
    try:
        await asyncio.wait_for(recorder.closed, CLOSE_WAIT_SECONDS)
    finally:
        transport.abort()
    return bytes(recorder.received)


def _send_head(listener: Listener, head: bytes, *, write_size: int | None = None) -> bytes:
    """Send `head` in one write, or in writes of `write_size` bytes; return the response."""
    return asyncio.run(_exchange(listener, head, write_size))


@pytest.mark.parametrize("extra_header_bytes", OVERSIZED_HEADS)
def test_large_head_in_one_write_gets_431(extra_header_bytes: int, listener: Listener) -> None:
    raw = _send_head(listener, _request_head(listener.path,
                                             extra_header_bytes=extra_header_bytes))
    status, body = _status_and_body(raw)

    assert status == 431
    assert body["error"]["code"] == "request_header_too_large"


@pytest.mark.parametrize("extra_header_bytes", OVERSIZED_HEADS)
def test_large_head_in_small_writes_gets_431(extra_header_bytes: int,
                                             listener: Listener) -> None:
    head = _request_head(listener.path, extra_header_bytes=extra_header_bytes)

    raw = _send_head(listener, head, write_size=1024)
    status, body = _status_and_body(raw)

    assert status == 431
    assert body["error"]["code"] == "request_header_too_large"
    assert str(MAX_REQUEST_HEAD_BYTES) in body["error"]["message"]


def test_head_below_limit_accepted(pki: PkiLayout, server: RunningServer) -> None:
    listener = _listeners(pki, server)["device"]
    head = _request_head(listener.path, extra_header_bytes=MAX_REQUEST_HEAD_BYTES - 1024)

    raw = _send_head(listener, head)
    status, _ = _status_and_body(raw)

    assert status == 200


# --- open connections ----------------------------------------------------------------

MAX_CONNECTIONS = 2


@pytest.fixture(scope="module")
def small_server(pki: PkiLayout, s3: EmbeddedS3,
                 server_loop: ServerLoop) -> Iterator[RunningServer]:
    settings = make_settings(pki.directory, s3, rate_limit_enabled=False,
                             max_connections=MAX_CONNECTIONS)
    running = server_loop.start_server(settings)
    yield running
    running.stop()


def _keep_alive_request(tls: ssl.SSLSocket, path: str) -> bytes:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return tls.recv(65536)


def test_connection_over_limit_gets_503(pki: PkiLayout, small_server: RunningServer) -> None:
    listener = _listeners(pki, small_server)["device"]
    open_connections = [_connect(listener) for _ in range(MAX_CONNECTIONS)]
    try:
        first_responses = [_keep_alive_request(tls, listener.path) for tls in open_connections]
        with _connect(listener) as extra:
            extra.sendall(_request_head(listener.path))
            status, body = _status_and_body(_read_until_closed(extra))
    finally:
        for tls in open_connections:
            tls.close()

    assert all(response.startswith(b"HTTP/1.1 200") for response in first_responses)
    assert status == 503
    assert body["error"]["code"] == "service_unavailable"


def test_connection_after_close_served(pki: PkiLayout, small_server: RunningServer) -> None:
    listener = _listeners(pki, small_server)["device"]
    with _connect(listener) as tls:
        _keep_alive_request(tls, listener.path)

    # The server notices the close asynchronously.
    deadline = time.monotonic() + CLOSE_WAIT_SECONDS
    status = 0
    while status != 200 and time.monotonic() < deadline:
        with _connect(listener) as tls:
            tls.sendall(_request_head(listener.path))
            status, _ = _status_and_body(_read_until_closed(tls))

    assert status == 200

"""Raw HTTPS clients for tests that need full control of TLS or of the request bytes.

`device_sim.client.DeviceClient` turns error responses into exceptions. These helpers
return the status and the body exactly as the server sent them.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from certs.pki import PkiLayout


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def client_context(
    cert_path: Path | None,
    key_path: Path | None,
    server_ca: Path,
    *,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """Build a client context that trusts `server_ca` and presents the given certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_ca))
    if cert_path is not None:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


def device_context(pki: PkiLayout, device_id: str) -> ssl.SSLContext:
    return client_context(pki.device_cert(device_id), pki.device_key(device_id), pki.server_ca_cert)


def api_client(pki: PkiLayout, device_id: str, url: str) -> httpx.Client:
    """Return an httpx client for `url` that presents `device_id`'s certificate."""
    return httpx.Client(base_url=url, verify=device_context(pki, device_id), trust_env=False)


def raw_request(
    context: ssl.SSLContext,
    port: int,
    method: str,
    target: str,
    body: bytes | list[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """Send one request with `target` exactly as given: no dot-segment removal, no quoting.

    httpx normalizes paths such as `/a/../b`, so path tricks need this client. A list
    of chunks is sent with `Transfer-Encoding: chunked`, so without a Content-Length.
    """
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        if isinstance(body, list):
            connection.request(method, target, body=iter(body), headers=headers or {},
                               encode_chunked=True)
        else:
            connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return RawResponse(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


class HandshakeRejectedError(Exception):
    """The server ended the connection before sending any HTTP response."""


def request_over_tls(context: ssl.SSLContext, port: int) -> bytes:
    """Complete a handshake, send `GET /v1/me` and return the raw response bytes.

    Raises:
        HandshakeRejectedError: the handshake failed, or the server closed the
            connection without a response. With TLS 1.3 the client finishes its side
            of the handshake first, so a rejected client certificate surfaces on the
            first read, as an alert or as a bare close.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                chunks = []
                while chunk := tls.recv(65536):
                    chunks.append(chunk)
    except (ssl.SSLError, ConnectionError) as exc:
        raise HandshakeRejectedError(f"{type(exc).__name__}: {exc}") from exc
    if not chunks:
        raise HandshakeRejectedError("connection closed without a response")
    return b"".join(chunks)


def handshake_outcome(context: ssl.SSLContext, port: int) -> str:
    """Return "handshake rejected", or the HTTP status and error code of `GET /v1/me`.

    Examples: "200", "401 certificate_not_registered", "handshake rejected".
    """
    try:
        raw = request_over_tls(context, port)
    except HandshakeRejectedError:
        return "handshake rejected"
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    if status.startswith("2"):
        return status
    return f"{status} {json.loads(body)['error']['code']}"


# --- recording steps through the API, for tests whose subject comes later ------------


def declare_recording(client: httpx.Client, data: bytes, content_type: str = "audio/wav") -> Any:
    """Declare `data` with POST /v1/recordings and return the 201 body (id and upload form)."""
    response = client.post(
        "/v1/recordings",
        json={
            "content_type": content_type,
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )
    response.raise_for_status()
    return response.json()


def upload_with_form(form: dict[str, Any], data: bytes, content_type: str = "audio/wav") -> None:
    """Send `data` to S3 with a presigned POST form from `declare_recording`."""
    response = httpx.post(
        form["url"], data=form["fields"], files={"file": ("recording", data, content_type)}
    )
    response.raise_for_status()


def add_available_recording(client: httpx.Client, data: bytes) -> str:
    """Declare, upload and complete a recording, and return its id."""
    created = declare_recording(client, data)
    upload_with_form(created["upload"], data)
    recording_id: str = created["recording_id"]
    client.post(f"/v1/recordings/{recording_id}/complete").raise_for_status()
    return recording_id


def closed_port() -> int:
    """Return a loopback port that nothing listens on (free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port

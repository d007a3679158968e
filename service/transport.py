"""The TLS end of each listener: the mutual-TLS server context, the peer certificate in
the ASGI scope, and the limits on each connection before a request reaches the app.

Each listener trusts exactly one CA file. The handshake itself rejects a client with no
certificate, a certificate from another CA, or one outside its validity period, so
such clients never reach the application.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from service.errors import error_response

logger = logging.getLogger(__name__)

# The largest request head (request line and header fields) that a listener accepts.
# It equals h11 0.16's DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, uvicorn's default.
MAX_REQUEST_HEAD_BYTES = 16 * 1024

# Wire version numbers that the ASGI TLS extension uses for `tls_version`.
_TLS_VERSION_NUMBERS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def build_server_ssl_context(
    cert_path: Path, key_path: Path, client_ca_path: Path
) -> ssl.SSLContext:
    """Build a server context that requires a client certificate signed by `client_ca_path`.

    Args:
        cert_path: PEM server certificate (chain).
        key_path: PEM private key of the server certificate.
        client_ca_path: PEM bundle of the only CA(s) whose client certificates are accepted.

    Returns:
        An SSLContext for TLS 1.2 and newer with `CERT_REQUIRED`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    # Only this CA: no system trust store, so no public CA can mint a device.
    context.load_verify_locations(cafile=str(client_ca_path))
    context.options |= ssl.OP_NO_COMPRESSION
    # Hard-code HTTP/1.1 because the h11 protocol below is the only one we serve.
    context.set_alpn_protocols(["http/1.1"])
    return context


def ssl_context_factory_for(
    cert_path: Path, key_path: Path, client_ca_path: Path
) -> Callable[[Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """Return a uvicorn `ssl_context_factory` that ignores uvicorn's default context."""

    def factory(config: Config, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return build_server_ssl_context(cert_path, key_path, client_ca_path)

    return factory


def peer_certificate_pem(transport: asyncio.BaseTransport) -> str | None:
    """Return the verified client leaf certificate as PEM, or None when there is none.

    With `CERT_REQUIRED` the handshake has already verified the chain; an empty value
    here still means "unauthenticated", never "anonymous".
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return ssl.DER_cert_to_PEM_cert(der)


class _RepeatedWarning:
    """A warning logged at most once per `interval` seconds, with the count of repeats.

    A client can trigger these at will, so each line reports how many times the event
    happened since the previous line instead of logging every time.
    """

    def __init__(self, message: str, interval: float = 60.0) -> None:
        self._message = message
        self._interval = interval
        self._count = 0
        self._logged_at: float | None = None

    def log(self, *args: object) -> None:
        self._count += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < self._interval:
            return
        logger.warning(
            self._message + " (%d time(s) since the last such message)", *args, self._count
        )
        self._count = 0
        self._logged_at = now


_HEAD_TIMED_OUT = _RepeatedWarning(
    "closed the connection from %s: request head not complete within %d s (%d bytes received)"
)
_HEAD_TOO_LARGE = _RepeatedWarning(
    "rejected a request from %s: request head of %d bytes is larger than the maximum of %d bytes"
)
_OVER_CAPACITY = _RepeatedWarning(
    "rejected a request from %s with 503: %d connections are open, the maximum is %d"
)


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the ASGI TLS extension and limits for each connection.

    The limits come from the uvicorn `Config`, so `petvault serve` and
    `uvicorn --http service.transport:ClientCertH11Protocol` apply the same ones:

    - Request head deadline: the head of each request must be complete within
      `timeout_keep_alive` seconds of the handshake or of the previous response, or
      the connection is aborted. uvicorn restarts its keep-alive timer on every byte
      received and has no deadline of its own, so without this a client that sends
      one header line at a time keeps the connection open indefinitely.
    - Request head size: at most `h11_max_incomplete_event_size` bytes (default
      `MAX_REQUEST_HEAD_BYTES`), rejected with 431. h11 checks only a head that is
      still incomplete, so a larger head that arrives in one read would pass.
    - Connections: with `limit_concurrency` set, a request gets 503 in the JSON
      envelope while more connections are open, or more requests are running, than
      the limit. uvicorn's own 503 for this is plain text.

    NOTE: the deadline stops when a request head is complete, so nothing bounds how
    slowly a client sends the request body. Device API bodies are at most 16 KiB.

    NOTE: uvicorn 0.55 does not fill `scope["extensions"]["tls"]`; pull requests
    Kludex/uvicorn#3132 and #3133 (open in 2026-09) add it. Remove the extension code
    here once uvicorn ships it. The layout follows the ASGI TLS extension:
    `client_cert_chain` is a list of PEM strings, leaf first. Python before 3.13
    exposes only the leaf, so the list contains one entry. The spec's integer
    `cipher_suite` is not available from the ssl module and stays None.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls_extension: dict[str, Any] = {"client_cert_chain": []}
        self._header_deadline: asyncio.TimerHandle | None = None
        self._max_head_bytes: int = (
            self.config.h11_max_incomplete_event_size or MAX_REQUEST_HEAD_BYTES
        )
        # Checked in `_serve_request` instead, so the 503 uses the JSON envelope.
        self._max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self._inner_app = self.app
        self.app = self._serve_request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        pem = peer_certificate_pem(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else None
        self._tls_extension = {
            "server_cert": None,
            "client_cert_chain": [pem] if pem else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": _TLS_VERSION_NUMBERS.get(version or ""),
            "cipher_suite": None,
        }
        self._start_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        # The parent may start a pipelined request here. Its `_serve_request` runs
        # later, as a task, and cancels the deadline started below.
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_header_deadline()

    def send_400_response(self, msg: str) -> None:
        # h11 reports a head that is still incomplete beyond the size limit as a
        # protocol error, for which uvicorn sends a plain-text 400. Send the same 431
        # as for a complete head that is too large.
        buffered = len(self.conn.trailing_data[0])
        if buffered > self._max_head_bytes:
            _HEAD_TOO_LARGE.log(self._client_label(), buffered, self._max_head_bytes)
            self._write_error_and_close(431, *self._head_too_large_error())
            return
        super().send_400_response(msg)

    async def _serve_request(self, scope: Any, receive: Any, send: Any) -> None:
        """Check the limits for a request whose head is complete, then run the app."""
        self._cancel_header_deadline()

        head_bytes = _request_head_size(scope)
        if head_bytes > self._max_head_bytes:
            _HEAD_TOO_LARGE.log(self._client_label(), head_bytes, self._max_head_bytes)
            await _send_error(scope, receive, send, 431, *self._head_too_large_error())
            return

        limit = self._max_connections
        # `self.tasks` includes the task that runs this request.
        if limit is not None and (len(self.connections) > limit or len(self.tasks) > limit):
            _OVER_CAPACITY.log(self._client_label(), len(self.connections), limit)
            await _send_error(
                scope,
                receive,
                send,
                503,
                "service_unavailable",
                "too many open connections; retry later",
            )
            return

        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = dict(self._tls_extension)
        await self._inner_app(scope, receive, send)

    def _start_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(
            self.timeout_keep_alive, self._on_header_deadline
        )

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _on_header_deadline(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        received = len(self.conn.trailing_data[0])
        # An idle keep-alive connection is routine, but a partial head or a connection
        # that never sent a request is not.
        if received or self.cycle is None:
            _HEAD_TIMED_OUT.log(self._client_label(), self.timeout_keep_alive, received)
        # Abort rather than close: asyncio's TLS close waits up to 30 s
        # (SSL_SHUTDOWN_TIMEOUT) for the client's close_notify, which a hostile client
        # never sends.
        self.transport.abort()

    def _head_too_large_error(self) -> tuple[str, str]:
        return (
            "request_header_too_large",
            f"request line and headers are larger than {self._max_head_bytes} bytes",
        )

    def _write_error_and_close(self, status_code: int, code: str, message: str) -> None:
        """Write an error response straight through h11, outside any request cycle."""
        response = error_response(status_code, code, message, headers={"Connection": "close"})
        events = (
            h11.Response(
                status_code=status_code,
                headers=response.raw_headers,
                reason=STATUS_PHRASES[status_code],
            ),
            h11.Data(data=bytes(response.body)),
            h11.EndOfMessage(),
        )
        for event in events:
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _client_label(self) -> str:
        if self.client is None:
            return "unknown client"
        host, port = self.client
        return f"{host}:{port}"


def _request_head_size(scope: Mapping[str, Any]) -> int:
    """Return the size of the request head as h11 parsed it.

    Whitespace that h11 dropped around header values is not counted, so the result
    can be a few bytes below the size on the wire.
    """
    target = len(scope["raw_path"])
    if scope["query_string"]:
        target += 1 + len(scope["query_string"])
    request_line = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
    fields = sum(
        len(name) + len(": ") + len(value) + len("\r\n") for name, value in scope["headers"]
    )
    return request_line + fields + len("\r\n")


async def _send_error(
    scope: Any, receive: Any, send: Any, status_code: int, code: str, message: str
) -> None:
    # Connection: close makes uvicorn close the connection after the response.
    response = error_response(status_code, code, message, headers={"Connection": "close"})
    await response(scope, receive, send)


def client_certificate_from_scope(scope: Mapping[str, Any]) -> str | None:
    """Return the PEM client leaf from the ASGI TLS extension, or None when absent."""
    tls = scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain or not chain[0]:
        return None
    return str(chain[0])

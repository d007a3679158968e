"""Where TLS ends: the mutual-TLS server context and the peer certificate in the ASGI scope.

Each listener trusts exactly one CA file. The handshake itself rejects a client with no
certificate, a certificate from another CA, or one outside its validity period, so
such clients never reach the application.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

# Wire version numbers that the ASGI TLS extension uses for `tls_version`.
_TLS_VERSION_NUMBERS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def build_server_ssl_context(cert_path: Path, key_path: Path, client_ca_path: Path) -> ssl.SSLContext:
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


class ClientCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the ASGI TLS extension for the client certificate.

    NOTE: uvicorn 0.55 does not fill `scope["extensions"]["tls"]`; pull requests
    Kludex/uvicorn#3132 and #3133 (open in 2026-09) add it. Delete this subclass once
    uvicorn ships the extension. The layout follows the ASGI TLS extension:
    `client_cert_chain` is a list of PEM strings, leaf first. Python before 3.13
    exposes only the leaf, so the list holds one entry. The spec's integer
    `cipher_suite` is not available from the ssl module and stays None.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls_extension: dict[str, Any] = {"client_cert_chain": []}
        inner_app = self.app

        async def app_with_tls_extension(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions["tls"] = dict(self._tls_extension)
            await inner_app(scope, receive, send)

        self.app = app_with_tls_extension

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


def client_certificate_from_scope(scope: Mapping[str, Any]) -> str | None:
    """Return the PEM client leaf from the ASGI TLS extension, or None when absent."""
    tls = scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain or not chain[0]:
        return None
    return str(chain[0])

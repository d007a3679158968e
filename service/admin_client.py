"""A client for the admin API that authenticates with an operator certificate.

`petvault admin` and `petvault demo` use it. It trusts only the given server CA,
presents the operator's certificate, and turns error envelopes into `AdminApiError`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from cryptography import x509

from certs.clock import format_utc, utc_now

DEFAULT_ADMIN_URL = "https://127.0.0.1:8444"
DEFAULT_TIMEOUT_SECONDS = 10.0
_API_PREFIX = "/admin/v1"
# Server text shown on a terminal is cut to this length.
_MAX_SERVER_TEXT = 300


class AdminClientError(Exception):
    """The request could not be made: bad local files, no connection, or an invalid response."""


class AdminApiError(AdminClientError):
    """The admin API returned an error envelope.

    Attributes:
        status: HTTP status code.
        code: `error.code` of the body, e.g. `not_found`.
        message: `error.message` of the body, on one line.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} {code}: {message}")


def printable(text: str) -> str:
    """Return server text on one line, without control characters, cut to 300 characters."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if len(cleaned) > _MAX_SERVER_TEXT:
        return cleaned[: _MAX_SERVER_TEXT - 3] + "..."
    return cleaned


def _segment(value: str) -> str:
    # An id such as "../crl" must stay one path segment. Quoting leaves "." and ".."
    # as they are, and httpx would then remove them from the path as dot segments
    # (RFC 3986, section 5.2.4) and call another route. No valid id is either.
    if value in (".", ".."):
        raise AdminClientError(
            f"invalid id {value!r}: '.' and '..' cannot be sent as one segment of a URL path"
        )
    return quote(value, safe="")


class AdminClient:
    """The admin API over mutual TLS with an operator certificate.

    Example::

        with AdminClient("https://127.0.0.1:8444", "certs/dev/operators/alice.pem",
                         "certs/dev/operators/alice.key", "certs/dev/server-ca.pem") as admin:
            admin.revoke_device("toy-2", "keyCompromise")
    """

    def __init__(
        self,
        server_url: str,
        cert_path: Path | str,
        key_path: Path | str,
        server_ca_path: Path | str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        """Load the operator credentials and open the connection pool.

        Raises:
            AdminClientError: the URL is not https, a credential file is missing,
                unreadable or does not match, or the operator certificate is expired
                or not yet valid. The message names the file.
        """
        parts = urlsplit(server_url)
        if parts.scheme != "https" or not parts.netloc:
            raise AdminClientError(
                f"admin server URL {server_url!r} is invalid; use https://HOST:PORT"
            )
        context = _operator_tls_context(Path(cert_path), Path(key_path), Path(server_ca_path))
        self.server_url = server_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server_url + _API_PREFIX, verify=context, timeout=timeout, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Devices

    def enroll(
        self,
        device_id: str,
        household_id: str,
        *,
        csr_pem: str | None = None,
        cert_pem: str | None = None,
    ) -> dict[str, Any]:
        """Enroll a device from a CSR or an existing certificate; return the response body."""
        body: dict[str, Any] = {"device_id": device_id, "household_id": household_id}
        if csr_pem is not None:
            body["csr_pem"] = csr_pem
        if cert_pem is not None:
            body["cert_pem"] = cert_pem
        return self._json("POST", "/devices", json=body)

    def list_devices(
        self,
        *,
        status: str | None = None,
        household_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        params = {
            "status": status, "household_id": household_id, "limit": limit, "cursor": cursor
        }
        present = {key: value for key, value in params.items() if value is not None}
        return self._json("GET", "/devices", params=present)

    def get_device(self, device_id: str) -> dict[str, Any]:
        return self._json("GET", f"/devices/{_segment(device_id)}")

    def revoke_device(self, device_id: str, reason: str) -> dict[str, Any]:
        return self._json("POST", f"/devices/{_segment(device_id)}/revoke", json={"reason": reason})

    def revoke_certificate(self, serial: str, reason: str) -> dict[str, Any]:
        return self._json("POST", f"/certificates/{_segment(serial)}/revoke",
                          json={"reason": reason})

    def suspend(self, device_id: str) -> dict[str, Any]:
        return self._json("POST", f"/devices/{_segment(device_id)}/suspend")

    def reactivate(self, device_id: str) -> dict[str, Any]:
        return self._json("POST", f"/devices/{_segment(device_id)}/reactivate")

    def set_rate_limits(self, device_id: str, limits: dict[str, str]) -> dict[str, Any]:
        """Replace the device's rate-limit override with `limits`, route class to limit list."""
        return self._json("PUT", f"/devices/{_segment(device_id)}/rate-limits", json=limits)

    def clear_rate_limits(self, device_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/devices/{_segment(device_id)}/rate-limits")

    # CRL and audit

    def crl(self, *, pem: bool = False) -> bytes:
        """Fetch the CRL, DER by default."""
        return self._request("GET", "/crl.pem" if pem else "/crl").content

    def audit(
        self, *, since: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {"since": since, "limit": limit, "cursor": cursor}
        present = {key: value for key, value in params.items() if value is not None}
        return self._json("GET", "/audit", params=present)

    # Plumbing

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise AdminClientError(f"{method} {_API_PREFIX}{path}: the body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminClientError(f"{method} {_API_PREFIX}{path}: expected a JSON object")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AdminClientError(_describe_transport_error(exc, self.server_url)) from None
        if response.status_code >= 400:
            raise _api_error(response)
        return response


def _operator_tls_context(cert_path: Path, key_path: Path, server_ca_path: Path) -> ssl.SSLContext:
    """Build a TLS context that presents the operator certificate and trusts the server CA.

    Each file is checked first, because the ssl module's errors do not name the file:
    a missing one raises FileNotFoundError without a file name.
    """
    _check_file(server_ca_path, "server CA")
    _check_file(cert_path, "operator certificate")
    _check_file(key_path, "operator key")
    _check_operator_certificate_validity(cert_path)

    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_ca_path))
    except (ssl.SSLError, OSError) as exc:
        raise AdminClientError(
            f"cannot load the server CA {server_ca_path}: {_ssl_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise AdminClientError(
            f"cannot load the operator certificate {cert_path} with the key {key_path}: "
            f"{_ssl_reason(exc)}"
        ) from None
    return context


def _check_file(path: Path, role: str) -> None:
    if not path.exists():
        raise AdminClientError(f"{role} file {path} not found")
    if not path.is_file():
        raise AdminClientError(f"{role} file {path} is not a regular file")


def _check_operator_certificate_validity(cert_path: Path) -> None:
    # The admin listener rejects an expired certificate in the TLS handshake, and a
    # client sees only a closed connection, so the dates are checked here first.
    try:
        certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except OSError as exc:
        raise AdminClientError(
            f"cannot read the operator certificate {cert_path}: {exc.strerror}"
        ) from None
    except ValueError:
        raise AdminClientError(
            f"operator certificate {cert_path} contains no valid PEM certificate"
        ) from None

    now = utc_now()
    if now > certificate.not_valid_after_utc:
        raise AdminClientError(
            f"operator certificate {cert_path} expired at "
            f"{format_utc(certificate.not_valid_after_utc)}; issue a new one with "
            "`petvault certs issue-operator NAME --force`"
        )
    if now < certificate.not_valid_before_utc:
        raise AdminClientError(
            f"operator certificate {cert_path} is not valid before "
            f"{format_utc(certificate.not_valid_before_utc)}; check the system clock"
        )


def _ssl_reason(exc: OSError) -> str:
    # ssl.SSLError has a short `reason` such as KEY_VALUES_MISMATCH; other OSErrors
    # have `strerror`.
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def _api_error(response: httpx.Response) -> AdminApiError:
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    return AdminApiError(response.status_code, printable(code), printable(message))


def _describe_transport_error(exc: httpx.TransportError, server_url: str) -> str:
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return (
            f"TLS handshake with {server_url} failed: the server certificate is not "
            "trusted by --ca"
        )
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {server_url} (is `petvault serve` running?): {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{server_url} did not answer in time"
    # With TLS 1.3 a rejected client certificate shows up as a closed connection.
    return (
        f"connection to {server_url} failed ({type(exc).__name__}); the admin listener "
        "rejects certificates that are not from the operator CA"
    )

"""The device's HTTP client: the petvault API over mutual TLS, and S3 over presigned URLs.

Two httpx clients with separate trust:

- The API client presents the device certificate and trusts only the petvault server
  CA.
- The storage client talks to the S3 endpoint named in presigned URLs, with httpx's
  default trust store and no client certificate, because S3 is not the petvault
  server.

The S3 transfers themselves, and the rules that keep presigned URLs out of messages
and logs, are in `device_sim.storage`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httpx

from device_sim.errors import (
    ApiError,
    DigestMismatchError,
    SimulatorError,
    StorageError,
    find_cause,
)
from device_sim.responses import (
    CreatedRecording,
    DeviceIdentity,
    RecordingMetadata,
    RecordingPage,
    RecordingWithDownload,
    UploadSpec,
    parse_created_recording,
    parse_identity,
    parse_recording,
    parse_recording_page,
    parse_recording_with_download,
)
from device_sim.storage import get_presigned, post_presigned_form
from device_sim.tls import (
    build_client_ssl_context,
    certificate_common_name,
    check_certificate_validity,
    describe_tls_failure,
    load_device_certificate,
)

__all__ = [
    "DEFAULT_SERVER_URL",
    "ApiError",
    "DeviceClient",
    "DigestMismatchError",
    "SimulatorError",
    "StorageError",
]

logger = logging.getLogger(__name__)

DEFAULT_SERVER_URL = "https://127.0.0.1:8443"
DEFAULT_TIMEOUT = 10.0  # seconds, for connect, read and write alike


class DeviceClient:
    """A connected toy talking to petvault with its own certificate.

    Use it as a context manager, or call `close()`, to release both connection pools.

    Example::

        with DeviceClient("certs/dev/devices/toy-1.pem", "certs/dev/devices/toy-1.key",
                          "certs/dev/server-ca.pem") as client:
            print(client.me()["device_id"])
    """

    def __init__(
        self,
        cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        server_ca_path: str | os.PathLike[str],
        base_url: str = DEFAULT_SERVER_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        api_transport: httpx.BaseTransport | None = None,
        storage_transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Load and check the device credentials and open the two HTTP clients.

        Args:
            cert_path: PEM device certificate (optionally followed by its chain).
            key_path: Unencrypted PEM private key of the device certificate.
            server_ca_path: PEM CA bundle that the petvault server certificate must
                chain to. The system trust store is not used for the API.
            base_url: petvault API root, such as ``https://127.0.0.1:8443``.
            timeout: Seconds allowed for each connect, read and write.
            api_transport: Replaces the network transport of the API client. Tests
                pass an ``httpx.MockTransport`` here. The TLS context is still built,
                so the credential checks still run.
            storage_transport: Replaces the transport of the S3 client.

        Raises:
            SimulatorError: the base URL is not HTTPS, a credential file is missing,
                unreadable or invalid, the key does not match the certificate, or the
                certificate is expired or not yet valid.
        """
        self.base_url = _normalize_base_url(base_url)
        self.timeout = timeout
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.server_ca_path = Path(server_ca_path)

        self._certificate = load_device_certificate(self.cert_path)
        check_certificate_validity(self._certificate, self.cert_path)
        ssl_context = build_client_ssl_context(
            self.cert_path, self.key_path, self.server_ca_path, self._certificate
        )

        self._api = httpx.Client(
            base_url=self.base_url,
            verify=ssl_context,
            transport=api_transport,
            timeout=timeout,
            headers={"User-Agent": "petvault-sim"},
            # Ignore proxy and .netrc settings from the environment, so the connection
            # goes straight to the server and carries no extra Authorization header.
            trust_env=False,
        )
        self._storage = httpx.Client(
            transport=storage_transport,
            timeout=timeout,
            headers={"User-Agent": "petvault-sim"},
        )

    @property
    def certificate_not_after(self) -> datetime:
        """Expiry (notAfter, UTC) of the device certificate."""
        return self._certificate.not_valid_after_utc

    @property
    def certificate_common_name(self) -> str | None:
        """Subject CN of the device certificate, which petvault sets to the device id."""
        return certificate_common_name(self._certificate)

    def close(self) -> None:
        """Close the API and storage connection pools."""
        self._api.close()
        self._storage.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- petvault API -----------------------------------------------------------------

    def me(self) -> DeviceIdentity:
        """Fetch the device identity that the server derives from the certificate."""
        response = self._request("GET", "/v1/me")
        return parse_identity(_json_body(response, "GET /v1/me"), "GET /v1/me")

    def create_recording(self, content_type: str, data: bytes) -> CreatedRecording:
        """Announce a recording and return its id and the presigned POST for the upload.

        The request carries the content type, size and SHA-256 of `data`, which the
        server later checks against the stored object in `complete`.
        """
        if not content_type:
            raise SimulatorError("content type must not be empty")

        body = {
            "content_type": content_type,
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        response = self._request("POST", "/v1/recordings", json=body, expected=(201, 200))
        where = "POST /v1/recordings"
        return parse_created_recording(_json_body(response, where), where)

    def complete(self, recording_id: str) -> RecordingMetadata:
        """Ask the server to verify the uploaded object and mark the recording available."""
        path = f"/v1/recordings/{_quote_id(recording_id)}/complete"
        response = self._request("POST", path)
        where = "POST /v1/recordings/{id}/complete"
        return parse_recording(_json_body(response, where), where)

    def list_recordings(self, limit: int | None = None, cursor: str | None = None) -> RecordingPage:
        """Fetch one page of this device's recordings, newest first.

        Args:
            limit: Maximum number of recordings on the page. The server default
                applies when None.
            cursor: `next_cursor` of the previous page, or None for the first page.
        """
        params: dict[str, str | int] = {}
        if limit is not None:
            if limit < 1:
                raise SimulatorError(f"limit must be at least 1 (got {limit})")
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor

        response = self._request("GET", "/v1/recordings", params=params)
        where = "GET /v1/recordings"
        return parse_recording_page(_json_body(response, where), where)

    def iter_recordings(self, page_size: int | None = None) -> Iterator[RecordingMetadata]:
        """Yield all of this device's recordings, newest first, following `next_cursor`.

        Raises:
            SimulatorError: the server returned the same cursor twice, which would
                otherwise loop forever.
        """
        seen_cursors: set[str] = set()
        cursor: str | None = None
        while True:
            page = self.list_recordings(limit=page_size, cursor=cursor)
            yield from page["recordings"]

            cursor = page["next_cursor"]
            if cursor is None:
                return
            if cursor in seen_cursors:
                raise SimulatorError("GET /v1/recordings returned a cursor it had returned before")
            seen_cursors.add(cursor)

    def get_recording(self, recording_id: str) -> RecordingWithDownload:
        """Fetch a recording's metadata and a fresh presigned GET URL for it."""
        response = self._request("GET", f"/v1/recordings/{_quote_id(recording_id)}")
        where = "GET /v1/recordings/{id}"
        return parse_recording_with_download(_json_body(response, where), where)

    def delete(self, recording_id: str) -> None:
        """Delete a recording. The server returns 404 if it is missing or not this device's."""
        self._request("DELETE", f"/v1/recordings/{_quote_id(recording_id)}", expected=(204, 200))

    # --- S3 through presigned URLs ---------------------------------------------------

    def upload(
        self,
        upload_spec: UploadSpec,
        data: bytes,
        content_type: str,
        *,
        filename: str = "recording",
    ) -> None:
        """Send `data` to S3 with the presigned POST from `create_recording`.

        Raises:
            StorageError: S3 could not be reached or did not return 200, 201 or 204.
        """
        post_presigned_form(self._storage, upload_spec, data, content_type, filename)

    def download(self, recording: RecordingMetadata | RecordingWithDownload) -> bytes:
        """Download a recording through its presigned GET URL and verify size and SHA-256.

        Args:
            recording: Metadata from `get_recording`. If it carries no ``download``
                entry (for example an item from `list_recordings`), a fresh presigned
                URL is fetched first.

        Returns:
            The recording bytes, which match the metadata's `size_bytes` and `sha256`.

        Raises:
            StorageError: S3 could not be reached or did not return 200.
            DigestMismatchError: the bytes differ from the metadata in size or SHA-256.
        """
        recording_id = recording["recording_id"]
        if "download" in recording:
            with_download = cast(RecordingWithDownload, recording)
        else:
            with_download = self.get_recording(recording_id)
        expected_size = with_download["size_bytes"]
        expected_sha256 = with_download["sha256"]

        data = get_presigned(self._storage, with_download["download"]["url"], expected_size)

        if len(data) > expected_size:
            raise DigestMismatchError(
                recording_id, "size", f"{expected_size} bytes", f"more than {expected_size} bytes"
            )
        if len(data) < expected_size:
            raise DigestMismatchError(
                recording_id, "size", f"{expected_size} bytes", f"{len(data)} bytes"
            )
        actual_sha256 = hashlib.sha256(data).hexdigest()
        if actual_sha256 != expected_sha256:
            raise DigestMismatchError(recording_id, "sha256", expected_sha256, actual_sha256)

        return data

    # --- request plumbing --------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str | int] | None = None,
        expected: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        # A long-running client can outlive its certificate, so check before each request.
        check_certificate_validity(self._certificate, self.cert_path)

        try:
            response = self._api.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise SimulatorError(
                _describe_api_transport_error(exc, self.base_url, self.timeout)
            ) from exc

        logger.debug("%s %s -> HTTP %d", method, path, response.status_code)
        if response.status_code >= 400:
            raise _api_error(response)
        if response.status_code not in expected:
            raise SimulatorError(
                f"unexpected HTTP {response.status_code} from {method} {path} "
                f"(expected {' or '.join(str(status) for status in expected)})"
            )
        return response


def _normalize_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.netloc:
        raise SimulatorError(
            f"server URL {base_url!r} is invalid; petvault needs https://HOST:PORT "
            "because devices authenticate with mutual TLS"
        )
    return base_url.rstrip("/")


def _quote_id(recording_id: str) -> str:
    # Quote every reserved character, so that an id such as "../me" stays one path segment.
    if not recording_id:
        raise SimulatorError("recording id must not be empty")
    return quote(recording_id, safe="")


def _json_body(response: httpx.Response, where: str) -> object:
    try:
        return response.json()
    except ValueError:
        raise SimulatorError(f"invalid response from {where}: body is not JSON") from None


def _parse_retry_after(value: str | None) -> int | None:
    """Return the Retry-After delay in whole seconds, from delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value)

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int((moment - datetime.now(UTC)).total_seconds() + 0.999))


def _api_error(response: httpx.Response) -> ApiError:
    status = response.status_code
    retry_after = _parse_retry_after(response.headers.get("Retry-After"))

    code = f"http_{status}"
    message = response.reason_phrase or "no message"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)

    logger.debug("petvault API error HTTP %d code=%s", status, code)
    return ApiError(status, code, message, retry_after=retry_after)


def _describe_api_transport_error(exc: httpx.HTTPError, base_url: str, timeout: float) -> str:
    ssl_error = find_cause(exc, ssl.SSLError)
    if ssl_error is not None:
        return f"{describe_tls_failure(ssl_error)} (server {base_url})"

    if isinstance(exc, httpx.ConnectTimeout):
        return f"server unreachable: connecting to {base_url} timed out after {timeout:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"server at {base_url} did not respond within {timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        if find_cause(exc, ConnectionRefusedError) is not None:
            return f"server unreachable: connection to {base_url} refused (is petvault running?)"
        return f"server unreachable: cannot connect to {base_url} ({exc})"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        # With TLS 1.3 the client finishes its handshake before the server checks the
        # client certificate, so a rejection arrives as a closed connection on the
        # first read, not always as a TLS alert.
        return (
            f"connection to {base_url} closed before a response; the server may have "
            "rejected the device certificate (unknown CA, expired or revoked)"
        )
    return f"request to {base_url} failed: {type(exc).__name__}: {exc}"

"""Transfers to and from S3 through presigned URLs, without ever revealing the URLs.

A presigned URL is a bearer credential until it expires, so errors here name the step
and the HTTP status, never the URL. Importing this module also installs a filter on
the ``httpx`` logger, which otherwise logs every request URL at INFO level, presigned
query string included.
"""

from __future__ import annotations

import logging
import re
import ssl

import httpx

from device_sim.errors import StorageError, find_cause
from device_sim.responses import UploadSpec

logger = logging.getLogger(__name__)

UPLOAD_STEP = "upload to S3 (presigned POST)"
DOWNLOAD_STEP = "download from S3 (presigned GET)"

# S3 responds to a presigned POST with 204 by default, or with 200 or 201 when the
# policy sets success_action_status.
_UPLOAD_SUCCESS_STATUSES = (200, 201, 204)

# Maximum bytes of an S3 error body searched for its <Code> element.
_MAX_ERROR_BODY = 4096
_S3_ERROR_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,64})</Code>")

# Query parameters that make a URL a presigned credential: SigV4 and the older SigV2.
_PRESIGNED_QUERY = re.compile(r"(?i)(x-amz-signature|x-amz-credential|signature)=")


class PresignedUrlRedactor(logging.Filter):
    """Logging filter that replaces the query of a presigned URL with ``<redacted>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        record.msg = _redact(record.msg)
        return True


def _redact(value: object) -> object:
    if not isinstance(value, httpx.URL | str):
        return value
    text = str(value)
    base, separator, query = text.partition("?")
    if separator and _PRESIGNED_QUERY.search(query):
        return f"{base}?<redacted>"
    return value


def install_log_redaction() -> None:
    """Add PresignedUrlRedactor to the ``httpx`` logger once per process."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(existing, PresignedUrlRedactor) for existing in httpx_logger.filters):
        httpx_logger.addFilter(PresignedUrlRedactor())


install_log_redaction()


def post_presigned_form(
    http: httpx.Client,
    upload_spec: UploadSpec,
    data: bytes,
    content_type: str,
    filename: str,
) -> None:
    """Upload `data` as the ``file`` field of a presigned POST form.

    httpx writes the `data` form fields before `files`, and S3 requires that order
    because it ignores fields that follow the file.

    Raises:
        StorageError: S3 could not be reached or did not return 200, 201 or 204.
    """
    try:
        response = http.post(
            upload_spec["url"],
            data=upload_spec["fields"],
            files={"file": (filename, data, content_type)},
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StorageError(UPLOAD_STEP, _describe_transport_error(exc, http.timeout)) from exc

    if response.status_code not in _UPLOAD_SUCCESS_STATUSES:
        raise _status_error(UPLOAD_STEP, response.status_code, response.content)
    logger.debug("presigned POST accepted with HTTP %d (%d bytes)", response.status_code, len(data))


def get_presigned(http: httpx.Client, url: str, max_bytes: int) -> bytes:
    """Download through a presigned GET URL, reading at most `max_bytes` + 1 bytes.

    The body is cut one byte past `max_bytes`, so a caller that expects `max_bytes`
    detects an oversized object without reading an endless body into memory.

    Raises:
        StorageError: S3 could not be reached or did not return 200.
    """
    chunks: list[bytes] = []
    received = 0
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise _status_error(DOWNLOAD_STEP, response.status_code, response.read())

            for chunk in response.iter_bytes():
                chunks.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    break
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StorageError(DOWNLOAD_STEP, _describe_transport_error(exc, http.timeout)) from exc

    return b"".join(chunks)[: max_bytes + 1]


def _describe_transport_error(exc: Exception, timeout: httpx.Timeout) -> str:
    # Only fixed phrases here. httpx messages are usually socket errors without the
    # URL, but str(exc) is not guaranteed to stay that way.
    ssl_error = find_cause(exc, ssl.SSLError)
    if ssl_error is not None:
        return f"TLS handshake with the S3 endpoint failed ({ssl_error.reason or 'TLS error'})"
    if isinstance(exc, httpx.TimeoutException):
        return f"the S3 endpoint did not respond within {timeout.read} s"
    if isinstance(exc, httpx.ConnectError):
        return "the S3 endpoint is unreachable (connection failed)"
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return "the presigned URL from the server is invalid"
    return f"transfer failed ({type(exc).__name__})"


def _status_error(step: str, status: int, body: bytes) -> StorageError:
    head = body[:_MAX_ERROR_BODY]
    detail = f"S3 returned HTTP {status}"

    match = _S3_ERROR_CODE.search(head)
    if match:
        detail += f" {match.group(1).decode('ascii')}"
    # S3 returns 403 AccessDenied with "Request has expired" for an expired presigned URL.
    if status == 403 and b"expired" in head.lower():
        detail += " (the presigned URL expired; request a new one)"

    return StorageError(step, detail, status=status)

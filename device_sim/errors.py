"""Exceptions that the device simulator raises, each with a one-line message for the CLI.

`SimulatorError` is the base class, so the CLI and `petvault demo` can catch every
expected failure with one clause. Messages end up on terminals and in CI logs, so the
simulator puts no presigned URL or key material into them, and server-supplied text
is cut to one line.
"""

from __future__ import annotations

from typing import TypeVar

_ExceptionT = TypeVar("_ExceptionT", bound=BaseException)

# Maximum length of server-supplied text in one error message.
_MAX_SERVER_TEXT = 300


def sanitize_server_text(text: str) -> str:
    """Return `text` on one line, without control characters and cut to 300 characters.

    Error codes and messages come from the server, so a hostile or broken server could
    otherwise put extra lines or ANSI escape sequences on the operator's terminal.
    """
    printable = "".join(char if char.isprintable() else " " for char in text)
    collapsed = " ".join(printable.split())
    if len(collapsed) > _MAX_SERVER_TEXT:
        return collapsed[: _MAX_SERVER_TEXT - 3] + "..."
    return collapsed


def find_cause(exc: BaseException, kind: type[_ExceptionT]) -> _ExceptionT | None:
    """Return `exc` or the first exception of type `kind` in its cause and context chain.

    httpx wraps socket and ssl errors twice (httpcore, then httpx), so the original
    ConnectionRefusedError or ssl.SSLError sits a few links down the chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class SimulatorError(Exception):
    """An expected failure: bad configuration, a refused request or a failed transfer."""


class ApiError(SimulatorError):
    """A 4xx or 5xx response from the petvault API.

    Attributes:
        status: HTTP status code.
        code: The `error.code` of the JSON error body, or `http_<status>` when the body
            is not petvault's error envelope (for example from a proxy).
        message: The `error.message` of the body, sanitized to one line.
        retry_after: Seconds from the Retry-After header, if the server sent one.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        self.status = status
        self.code = sanitize_server_text(code)
        self.message = sanitize_server_text(message)
        self.retry_after = retry_after
        super().__init__(str(self))

    def explanation(self) -> str:
        """Return what the status means for this device and what to do next."""
        status = self.status
        if status == 401 and self.code == "certificate_revoked":
            # Revocation is permanent, so registering the same certificate again fails.
            return (
                "the device certificate is revoked; the device needs a new key and "
                "certificate (petvault-sim keygen, then enrollment by an operator)"
            )

        if status == 401:
            return (
                "the server does not accept this device certificate as a registered device; "
                "register the device (or its new certificate) with an operator"
            )
        if status == 403:
            if "suspend" in self.code or "suspend" in self.message.lower():
                return "the device is suspended; an operator must reinstate it"
            return "the device is not allowed to do this (it may be suspended or revoked)"
        if status == 404:
            return "not found (the recording does not exist or belongs to another device)"
        if status == 409:
            return "the request conflicts with the recording's current state"
        if status == 413:
            return "request rejected because the recording is too large"
        if status in (400, 415, 422):
            return "request rejected as invalid"
        if status == 429:
            if self.retry_after is not None:
                return f"rate limited; retry after {self.retry_after} s"
            return "rate limited; retry later"
        if status == 503:
            return "the service is unavailable (server-side problem); retry later"
        if status >= 500:
            return "server-side error; retry later or ask an operator to check the service log"
        return "request rejected"

    def __str__(self) -> str:
        return f"{self.explanation()} (HTTP {self.status} {self.code}: {self.message})"


class StorageError(SimulatorError):
    """A failed transfer to or from S3 through a presigned URL.

    The message names the step and the HTTP status or transport failure, never the
    URL, because a presigned URL is a bearer credential until it expires.
    """

    def __init__(self, step: str, detail: str, *, status: int | None = None) -> None:
        self.step = step
        self.status = status
        self.detail = detail
        super().__init__(f"{step} failed: {detail}")


class DigestMismatchError(SimulatorError):
    """Downloaded bytes whose size or SHA-256 differs from the recording metadata.

    Attributes:
        recording_id: The recording that failed verification.
        field: "size" or "sha256".
        expected: The value from the metadata.
        actual: The value computed from the downloaded bytes.
    """

    def __init__(self, recording_id: str, field: str, expected: str, actual: str) -> None:
        self.recording_id = recording_id
        self.field = field
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"downloaded recording {recording_id} failed verification: "
            f"{field} is {actual}, expected {expected}"
        )

"""Inspecting certificate files: who issued what, and when it stops being valid.

`check_certificates` is the pure part. It takes certificates and the current
time and returns one `CertificateStatus` per certificate. `inspect_files`
loads PEM files or bundles, prints a block per certificate and returns the
exit code of ``petvault certs inspect``.

Names from a certificate are untrusted text. Control characters, including
newlines and terminal escape sequences, are printed as backslash escapes, so a
crafted subject cannot forge extra output lines or recolor the terminal.
"""

from __future__ import annotations

import datetime
import enum
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.x509.oid import NameOID

from certs.clock import format_utc

DEFAULT_WARN_DAYS = 30

EXIT_OK = 0
EXIT_INVALID_CERTIFICATE = 1  # a certificate is expired or not yet valid
EXIT_FILE_ERROR = 2  # a file is missing, unreadable or not PEM

_PEM_CERTIFICATE_HEADER = b"-----BEGIN CERTIFICATE-----"

# Longer names are cut in the output. RFC 5280 caps a CN at 64 characters,
# but a parsed certificate may break that cap.
_MAX_SHOWN_NAME_CHARACTERS = 200


class Validity(enum.Enum):
    """The position of ``now`` relative to a certificate's validity period."""

    VALID = "OK"
    EXPIRING = "EXPIRING"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT YET VALID"


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate's names, serial, validity period and its state at a given time."""

    subject: str
    issuer: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    validity: Validity
    days_left: int  # whole days from the check time to not_after, negative once expired

    @property
    def flag(self) -> str:
        """The status text: OK, EXPIRED, NOT YET VALID or EXPIRES IN N DAYS."""
        if self.validity is Validity.EXPIRING:
            unit = "DAY" if self.days_left == 1 else "DAYS"
            return f"EXPIRES IN {self.days_left} {unit}"
        return self.validity.value

    @property
    def is_invalid(self) -> bool:
        """True if the certificate is expired or not yet valid."""
        return self.validity in (Validity.EXPIRED, Validity.NOT_YET_VALID)


class CertificateFileError(Exception):
    """Raised when a certificate file is missing, unreadable or not PEM."""


def check_certificate(
    certificate: x509.Certificate,
    *,
    now: datetime.datetime,
    warn_days: int = DEFAULT_WARN_DAYS,
) -> CertificateStatus:
    """Classify one certificate at ``now``.

    Both ends of the validity period count as valid, as in RFC 5280.

    Args:
        certificate: The certificate to check.
        now: Timezone-aware time to check against.
        warn_days: A valid certificate that expires within this many days is
            `Validity.EXPIRING`. Zero turns the warning off.
    """
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    remaining = not_after - now

    if now < not_before:
        validity = Validity.NOT_YET_VALID
    elif now > not_after:
        validity = Validity.EXPIRED
    elif remaining <= datetime.timedelta(days=warn_days):
        validity = Validity.EXPIRING
    else:
        validity = Validity.VALID

    return CertificateStatus(
        subject=display_name(certificate.subject),
        issuer=display_name(certificate.issuer),
        serial=f"{certificate.serial_number:x}",
        not_before=not_before,
        not_after=not_after,
        validity=validity,
        days_left=remaining // datetime.timedelta(days=1),
    )


def check_certificates(
    certificates: Iterable[x509.Certificate],
    *,
    now: datetime.datetime,
    warn_days: int = DEFAULT_WARN_DAYS,
) -> list[CertificateStatus]:
    """Classify each certificate at ``now``, in order. See `check_certificate`."""
    return [check_certificate(cert, now=now, warn_days=warn_days) for cert in certificates]


def load_certificate_file(path: Path) -> list[x509.Certificate]:
    """Load every certificate from a PEM file or bundle.

    Other PEM blocks, such as private keys, are skipped.

    Raises:
        CertificateFileError: The file is missing or unreadable, contains no
            PEM certificate, or contains a malformed one.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CertificateFileError(f"failed to read {path}: {error.strerror}") from None

    if _PEM_CERTIFICATE_HEADER not in data:
        raise CertificateFileError(
            f"{path} contains no PEM certificate "
            f"(expected a '{_PEM_CERTIFICATE_HEADER.decode()}' block)"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise CertificateFileError(f"{path} contains a malformed certificate: {error}") from None


def display_name(name: x509.Name) -> str:
    """Return the name to show for a subject or issuer, safe to print.

    That is the CN when there is exactly one, otherwise the full RFC 4514
    string, for example ``O=Acme,C=DE``. An empty name shows as ``(empty)``.
    """
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) == 1:
        text = str(common_names[0].value)
    else:
        text = name.rfc4514_string()

    if not text:
        return "(empty)"
    if len(text) > _MAX_SHOWN_NAME_CHARACTERS:
        text = f"{text[:_MAX_SHOWN_NAME_CHARACTERS]}... ({len(text)} characters)"
    return _escape_control_characters(text)


def format_status(status: CertificateStatus) -> str:
    """Format one status as an indented block of labelled lines."""
    return "\n".join(
        [
            f"  subject     {status.subject}",
            f"  issuer      {status.issuer}",
            f"  serial      {status.serial}",
            f"  not before  {format_utc(status.not_before)}",
            f"  not after   {format_utc(status.not_after)}",
            f"  status      {status.flag}",
        ]
    )


def inspect_files(
    paths: Iterable[Path],
    *,
    now: datetime.datetime,
    warn_days: int = DEFAULT_WARN_DAYS,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the status of every certificate in ``paths`` and return the exit code.

    A file that fails to load gets one error line on ``err``, and the other
    files are still inspected. ``out`` and ``err`` default to the current
    ``sys.stdout`` and ``sys.stderr``.

    Returns:
        `EXIT_FILE_ERROR` if any file failed to load, else
        `EXIT_INVALID_CERTIFICATE` if any certificate is expired or not yet
        valid, else `EXIT_OK`.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    file_failed = False
    any_invalid = False

    for path in paths:
        shown_path = _escape_control_characters(str(path))
        try:
            certificates = load_certificate_file(path)
        except CertificateFileError as error:
            print(f"error: {_escape_control_characters(str(error))}", file=err)
            file_failed = True
            continue

        statuses = check_certificates(certificates, now=now, warn_days=warn_days)
        for index, status in enumerate(statuses, start=1):
            print(f"{shown_path} [certificate {index} of {len(statuses)}]", file=out)
            print(format_status(status), file=out)
            any_invalid = any_invalid or status.is_invalid

    if file_failed:
        return EXIT_FILE_ERROR
    if any_invalid:
        return EXIT_INVALID_CERTIFICATE
    return EXIT_OK


def _escape_control_characters(text: str) -> str:
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )

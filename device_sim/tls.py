"""Client side of mutual TLS: the device certificate and key, and the trusted server CA.

The device trusts only the petvault server CA, never the system trust store, so a
certificate from a public CA cannot impersonate the service. Files are checked with
`cryptography` before `ssl` loads them, because OpenSSL's own errors ("[SSL] PEM lib")
do not say which file is wrong.
"""

from __future__ import annotations

import logging
import ssl
import stat
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from device_sim.errors import SimulatorError

logger = logging.getLogger(__name__)

# ssl.SSLError.reason values for the TLS alerts that a server sends when it rejects the
# client certificate. The names are OpenSSL's reason codes for those alerts.
_CLIENT_CERT_REJECTED = {
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the CA that issued the device certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the server reports that the device certificate expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the server reports that the device certificate is revoked",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the device certificate as invalid",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server rejected the device certificate type",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server rejected the device certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "the server denied access to the device certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
}


def format_utc(moment: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with a `Z` suffix, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_pem_file(path: Path, what: str) -> bytes:
    """Read a PEM file, raising SimulatorError that names `what` and `path` on failure.

    Args:
        path: File to read.
        what: Role of the file in messages, such as "device certificate".
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SimulatorError(f"{what} file {path} is missing") from None
    except PermissionError:
        raise SimulatorError(f"{what} file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise SimulatorError(f"{what} file {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise SimulatorError(f"cannot read {what} file {path}: {exc.strerror}") from None


def load_device_certificate(cert_path: Path) -> x509.Certificate:
    """Load the device certificate, the first certificate of a PEM file or chain."""
    data = read_pem_file(cert_path, "device certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SimulatorError(
            f"device certificate file {cert_path} contains no valid PEM certificate"
        ) from None

    return certificates[0]


def certificate_common_name(certificate: x509.Certificate) -> str | None:
    """Return the subject CN of `certificate`, or None if it has none."""
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_certificate_validity(
    certificate: x509.Certificate, cert_path: Path, now: datetime | None = None
) -> None:
    """Raise SimulatorError if the device certificate is expired or not yet valid.

    The server would reject such a certificate in the handshake with a bare TLS alert,
    so checking locally first gives a message that names the date and the file.
    """
    now = now or datetime.now(UTC)
    common_name = certificate_common_name(certificate) or "no CN"

    not_after = certificate.not_valid_after_utc
    if now > not_after:
        raise SimulatorError(
            f"device certificate expired at {format_utc(not_after)} "
            f"(device {common_name}, file {cert_path}); enroll the device again for a new one"
        )

    not_before = certificate.not_valid_before_utc
    if now < not_before:
        raise SimulatorError(
            f"device certificate is not valid before {format_utc(not_before)} "
            f"(device {common_name}, file {cert_path}); check the system clock"
        )


def _check_private_key(key_path: Path, certificate: x509.Certificate, cert_path: Path) -> None:
    data = read_pem_file(key_path, "device key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when a password is required but not given.
        raise SimulatorError(
            f"device key file {key_path} is encrypted; the simulator needs an unencrypted key"
        ) from None
    except ValueError:
        raise SimulatorError(f"device key file {key_path} is not a valid PEM private key") from None

    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise SimulatorError(
            f"device key {key_path} does not match the public key of certificate {cert_path}"
        )

    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "device key %s is accessible by group or others (mode %o); run chmod 600 on it",
            key_path,
            stat.S_IMODE(mode),
        )


def _check_server_ca(server_ca_path: Path) -> None:
    data = read_pem_file(server_ca_path, "server CA")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SimulatorError(
            f"server CA file {server_ca_path} contains no valid PEM certificate"
        ) from None


def build_client_ssl_context(
    cert_path: Path, key_path: Path, server_ca_path: Path, certificate: x509.Certificate
) -> ssl.SSLContext:
    """Build a TLS context that presents the device certificate and trusts only the server CA.

    Args:
        cert_path: PEM device certificate, optionally followed by its chain.
        key_path: Unencrypted PEM private key of the device certificate.
        server_ca_path: PEM bundle of the CA(s) that issue petvault server certificates.
        certificate: The parsed device certificate, used to check that the key matches.

    Returns:
        A client context with hostname checking, TLS 1.2 or newer, and no system CAs.

    Raises:
        SimulatorError: a file is missing, unreadable or invalid, or the key does not
            match the certificate.
    """
    _check_private_key(key_path, certificate, cert_path)
    _check_server_ca(server_ca_path)

    try:
        # create_default_context loads the system trust store only when no cafile,
        # capath or cadata is given, so this context trusts server_ca_path alone.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_ca_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except ssl.SSLError as exc:
        raise SimulatorError(
            f"cannot load the TLS credentials ({cert_path}, {key_path}, {server_ca_path}): "
            f"{exc.reason or exc}"
        ) from None

    return context


def describe_tls_failure(error: ssl.SSLError) -> str:
    """Explain a failed TLS handshake with the petvault server in one line."""
    if isinstance(error, ssl.SSLCertVerificationError):
        # CPython's _ssl.c words these as "Hostname mismatch, ..." and
        # "IP address mismatch, ...": the chain is trusted but the name is wrong.
        if "mismatch" in error.verify_message:
            return (
                "TLS handshake failed: the server certificate is not valid for the server "
                f"address ({error.verify_message}); check --server"
            )
        return (
            "TLS handshake failed: the server certificate is not trusted by the server CA "
            f"({error.verify_message}); check --ca and --server"
        )

    reason = error.reason or ""
    if reason in _CLIENT_CERT_REJECTED:
        return f"TLS handshake failed: {_CLIENT_CERT_REJECTED[reason]} ({reason})"
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
        return (
            "TLS handshake failed: the server rejected the handshake "
            "(no common TLS parameters, or the device certificate was not accepted)"
        )
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the server does not speak TLS on this port"
    return f"TLS handshake failed: {reason or error}"

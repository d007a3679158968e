"""Operator identity: how a client certificate on the admin listener becomes an operator.

The admin listener's TLS handshake accepts only certificates that chain to the
operator CA, so every request that reaches the admin app already carries one.
Operators need no registry: the operator CA is the allow-list. The certificate still
has to name exactly one operator, in its SAN URI (`urn:petvault:operator:<name>`) and
in its CN, and that name and the certificate's SHA-256 fingerprint go into every
audit entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import Request

from certs.naming import OPERATOR_URI_PREFIX, InvalidNameError, validate_operator_name
from service.config import ConfigError, Settings
from service.errors import ApiError
from service.identity import fingerprint_of, single_common_name, single_uri_suffix
from service.transport import client_certificate_from_scope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorIdentity:
    """The operator named by a verified client certificate on the admin listener."""

    name: str
    fingerprint: str  # SHA-256 of the certificate's DER encoding, lowercase hex

    def as_actor(self) -> dict[str, Any]:
        """Return the audit log's actor for this operator."""
        return {"type": "operator", "name": self.name, "fingerprint": self.fingerprint}


def _operator_name_from(certificate: x509.Certificate) -> str | None:
    common_name = single_common_name(certificate)
    name = single_uri_suffix(certificate, OPERATOR_URI_PREFIX)
    if common_name is None or name is None:
        return None
    if name != common_name:
        return None
    try:
        return validate_operator_name(name)
    except InvalidNameError:
        return None


def fingerprint_of_pem(pem: str) -> str | None:
    """Return the SHA-256 fingerprint of a PEM certificate, or None when it cannot be parsed."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeError, TypeError):
        return None
    return fingerprint_of(certificate.public_bytes(Encoding.DER))


def read_operator_certificate(pem: str) -> OperatorIdentity | None:
    """Parse an operator certificate defensively; return None unless it names one operator.

    A certificate without exactly one CN and one `urn:petvault:operator:` SAN URI,
    with the two disagreeing, or with a name that breaks the naming rule yields None,
    never an exception.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        der = certificate.public_bytes(Encoding.DER)
    except (ValueError, UnicodeError, TypeError):
        return None

    # cryptography decodes names and extensions lazily and raises on malformed ones.
    try:
        name = _operator_name_from(certificate)
    except (ValueError, UnicodeError, TypeError, x509.DuplicateExtension):
        return None
    if name is None:
        return None
    return OperatorIdentity(name=name, fingerprint=fingerprint_of(der))


async def current_operator(request: Request) -> OperatorIdentity:
    """Authenticate the request's client certificate as an operator.

    Raises:
        ApiError: 401 when the request carries no certificate or the certificate
            names no single valid operator.
    """
    pem = client_certificate_from_scope(request.scope)
    if pem is None:
        # The handshake requires a certificate, so this means a misconfigured listener.
        logger.error("request without a client certificate reached the admin API")
        raise ApiError(401, "client_certificate_required", "a client certificate is required")

    operator = read_operator_certificate(pem)
    if operator is None:
        logger.warning(
            "admin request with an invalid operator certificate rejected: fingerprint=%s..",
            (fingerprint_of_pem(pem) or "unparseable")[:16],
        )
        raise ApiError(
            401, "invalid_operator_certificate",
            "the client certificate must carry one CN and one matching "
            "urn:petvault:operator: SAN URI",
        )
    request.state.operator = operator
    return operator


def check_client_cas_are_separate(settings: Settings) -> None:
    """Reject a configuration in which the device CA file also trusts an operator CA.

    If the two listeners trusted a common CA, a device certificate would pass the
    admin listener's handshake, which only the operator name check would then stop.

    Raises:
        ConfigError: a certificate appears in both PETVAULT_DEVICE_CA and
            PETVAULT_OPERATOR_CA, or a file cannot be read.
    """
    device_cas = _certificate_fingerprints(settings.device_ca_path, "PETVAULT_DEVICE_CA")
    operator_cas = _certificate_fingerprints(settings.operator_ca_path, "PETVAULT_OPERATOR_CA")
    if device_cas & operator_cas:
        raise ConfigError(
            f"PETVAULT_OPERATOR_CA {str(settings.operator_ca_path)!r} contains a CA that "
            f"PETVAULT_DEVICE_CA {str(settings.device_ca_path)!r} contains too; "
            "devices and operators need separate CAs"
        )


def _certificate_fingerprints(path: Path, setting: str) -> set[str]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{setting} {str(path)!r} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{setting} {str(path)!r} is not a PEM certificate bundle") from exc
    return {fingerprint_of(certificate.public_bytes(Encoding.DER)) for certificate in certificates}

"""Signing device certificate signing requests (CSRs) with the device CA.

This is the production path for device enrollment: the device generates its
key pair and sends only a CSR, so the private key never leaves the device.

**A CSR is untrusted input.** Its signature proves only that the sender has
the private key. Everything else in it (subject, requested extensions) was
chosen by the sender, so the issued certificate takes the public key from the
CSR and nothing more. The device id, validity and extensions come from the
caller and the device certificate profile.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs.authority import CertificateAuthority
from certs.clock import utc_now
from certs.leaf import DEFAULT_LEAF_VALIDITY_DAYS, build_device_certificate
from certs.naming import validate_device_id

# A CSR for a 16384-bit RSA key carries two 2048-byte values (key and
# signature), about 6 KiB as PEM. Anything far larger is rejected unparsed.
MAX_CSR_PEM_BYTES = 64 * 1024

MIN_RSA_KEY_BITS = 2048
ALLOWED_EC_CURVES = (ec.SECP256R1.name, ec.SECP384R1.name)

_ACCEPTED_KEYS = "use ECDSA P-256/P-384 or RSA >= 2048"
_ACCEPTED_KEYS_RSA_FIRST = "use RSA >= 2048 or ECDSA P-256/P-384"

_KEY_TYPE_NAMES: dict[type, str] = {
    ed25519.Ed25519PublicKey: "Ed25519",
    ed448.Ed448PublicKey: "Ed448",
    dsa.DSAPublicKey: "DSA",
}


class CsrRejectedError(ValueError):
    """Raised when a CSR cannot be signed. The message names the reason."""


def sign_device_csr(
    csr_pem: bytes,
    device_id: str,
    ca: CertificateAuthority,
    *,
    validity_days: int = DEFAULT_LEAF_VALIDITY_DAYS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Verify a device CSR and issue a device certificate for its public key.

    Args:
        csr_pem: The CSR in PEM form (``-----BEGIN CERTIFICATE REQUEST-----``).
        device_id: The id to certify. It replaces whatever subject the CSR has.
        ca: The device CA.
        validity_days: Days from ``now`` until the certificate expires.
        now: Timezone-aware issue time, the current time by default.

    Returns:
        A certificate with the device profile: CN and SAN URI from
        ``device_id``, clientAuth EKU only.

    Raises:
        InvalidNameError: ``device_id`` breaks the naming rule.
        CsrRejectedError: The PEM is malformed or oversized, the key type or
            size is not accepted, or the CSR signature is invalid.
        ValidityError: The validity period is invalid or outlives the CA.
    """
    validate_device_id(device_id)

    csr = _parse_csr(csr_pem)
    public_key = _accepted_public_key(csr)
    _verify_signature(csr)

    return build_device_certificate(
        ca,
        public_key,
        device_id,
        validity_days=validity_days,
        now=utc_now() if now is None else now,
    )


def _parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if len(csr_pem) > MAX_CSR_PEM_BYTES:
        raise CsrRejectedError(
            f"CSR is {len(csr_pem)} bytes, more than the maximum of {MAX_CSR_PEM_BYTES}"
        )
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        # cryptography's message here describes ASN.1 internals rather than a
        # fix, so the error states only what was expected.
        raise CsrRejectedError(
            "CSR is not a valid PEM certificate signing request "
            "(expected a '-----BEGIN CERTIFICATE REQUEST-----' block)"
        ) from None


def _accepted_public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrRejectedError(
            f"CSR public key uses an unsupported algorithm; {_ACCEPTED_KEYS}"
        ) from None
    return check_device_public_key(public_key)


def check_device_public_key(public_key: CertificatePublicKeyTypes) -> CertificatePublicKeyTypes:
    """Accept ECDSA P-256/P-384 and RSA keys of at least 2048 bits; reject anything else.

    Returns:
        The key unchanged.

    Raises:
        CsrRejectedError: The key type, curve or size is not accepted.
    """
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_EC_CURVES:
            raise CsrRejectedError(
                f"ECDSA curve {public_key.curve.name} is not accepted; {_ACCEPTED_KEYS}"
            )
        return public_key

    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_KEY_BITS:
            raise CsrRejectedError(
                f"RSA key of {public_key.key_size} bits is too weak; {_ACCEPTED_KEYS_RSA_FIRST}"
            )
        return public_key

    raise CsrRejectedError(f"{_key_type_name(public_key)} keys are not accepted; {_ACCEPTED_KEYS}")


def _key_type_name(public_key: CertificatePublicKeyTypes) -> str:
    # The key classes are abstract bases, so the lookup needs isinstance.
    for base, name in _KEY_TYPE_NAMES.items():
        if isinstance(public_key, base):
            return name
    return type(public_key).__name__


def _verify_signature(csr: x509.CertificateSigningRequest) -> None:
    try:
        valid = csr.is_signature_valid
    except UnsupportedAlgorithm:
        raise CsrRejectedError("CSR signature uses an unsupported algorithm") from None
    if not valid:
        raise CsrRejectedError("CSR signature is invalid")

"""Certificate authorities: creating the development CAs and loading any CA.

petvault runs three CAs, each with one job: the device CA signs device client
certificates, the operator CA signs operator client certificates, and the
server CA signs the server certificate that devices trust. A development CA
carries the organization `DEV_PKI_ORGANIZATION` in its subject, so production
mode can detect and reject it with `is_development_ca`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DEV_PKI_ORGANIZATION = "petvault development PKI"

CA_VALIDITY_DAYS = 3650

# Certificates start this long before the moment they are made, so a peer whose
# clock runs a few minutes behind still accepts a fresh certificate.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)

CaPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateAuthorityError(ValueError):
    """Raised when a CA certificate or key is missing, unreadable or unusable."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with the private key that matches it."""

    certificate: x509.Certificate
    private_key: CaPrivateKey

    @property
    def common_name(self) -> str:
        """The CN of the CA subject, or the full RFC 4514 subject if it has none."""
        names = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names:
            return str(names[0].value)
        return self.certificate.subject.rfc4514_string()


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """Generate an ECDSA P-256 key, the key type of every key petvault creates."""
    return ec.generate_private_key(ec.SECP256R1())


def create_dev_ca(common_name: str, *, now: datetime.datetime) -> CertificateAuthority:
    """Create a self-signed development CA with a fresh P-256 key.

    The CA may sign leaf certificates only (path length 0) and is valid for
    `CA_VALIDITY_DAYS`.

    Args:
        common_name: Subject CN, for example ``"petvault development device CA"``.
        now: Timezone-aware current time. Validity starts shortly before it.
    """
    private_key = generate_private_key()
    public_key = private_key.public_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_PKI_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    not_before = now - CLOCK_SKEW_ALLOWANCE

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,  # sign certificates
                crl_sign=True,  # sign revocation lists
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    certificate = builder.sign(private_key, hashes.SHA256())
    return CertificateAuthority(certificate=certificate, private_key=private_key)


def is_development_ca(certificate: x509.Certificate) -> bool:
    """Tell whether a certificate comes from ``petvault certs init``.

    Returns:
        True if any organization (O) in the subject is `DEV_PKI_ORGANIZATION`.
    """
    organizations = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any(attribute.value == DEV_PKI_ORGANIZATION for attribute in organizations)


def load_certificate_authority(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """Load a CA certificate and its private key from PEM files.

    The key must be an unencrypted ECDSA or RSA key that matches the
    certificate, and the certificate must be a CA (BasicConstraints ca=True).

    Raises:
        CertificateAuthorityError: A file is missing or unreadable, or the pair
            is unusable. The message names the file and the problem.
    """
    certificate = _load_ca_certificate(cert_path)
    private_key = _load_ca_private_key(key_path)

    if private_key.public_key() != certificate.public_key():
        raise CertificateAuthorityError(
            f"CA private key {key_path} does not match the certificate {cert_path}"
        )

    return CertificateAuthority(certificate=certificate, private_key=private_key)


def _load_ca_certificate(path: Path) -> x509.Certificate:
    pem = _read_ca_file(path, "CA certificate")
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise CertificateAuthorityError(
            f"CA certificate {path} is not a valid PEM certificate: {error}"
        ) from None

    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        raise CertificateAuthorityError(
            f"{path} is not a CA certificate: it has no BasicConstraints extension"
        ) from None
    if not constraints.value.ca:
        raise CertificateAuthorityError(
            f"{path} is not a CA certificate: BasicConstraints ca=False"
        )

    return certificate


def _load_ca_private_key(path: Path) -> CaPrivateKey:
    pem = _read_ca_file(path, "CA private key")
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # NOTE: encrypted CA keys are not supported yet. cryptography raises
        # TypeError when a key needs a password and none is given.
        raise CertificateAuthorityError(
            f"CA private key {path} is encrypted; petvault reads only unencrypted keys"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CertificateAuthorityError(
            f"CA private key {path} is not a valid PEM private key: {error}"
        ) from None

    if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateAuthorityError(
            f"CA private key {path} is a {type(private_key).__name__}; "
            "petvault signs only with ECDSA or RSA CA keys"
        )
    return private_key


def _read_ca_file(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateAuthorityError(
            f"{kind} {path} not found; create a development PKI with 'petvault certs init'"
        ) from None
    except OSError as error:
        raise CertificateAuthorityError(f"failed to read {kind} {path}: {error.strerror}") from None

"""Leaf certificates: the builder and the device, operator and server profiles.

Each profile is narrow on purpose. A device or operator certificate has the
clientAuth EKU only, and the server certificate has serverAuth only, so a
client certificate fails verification as a server certificate and the reverse.
Devices and operators are distinguished by their issuing CA and their SAN URI
(``urn:petvault:device:<id>`` or ``urn:petvault:operator:<name>``). The CN
repeats the id or name for people reading the certificate.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from certs.authority import CLOCK_SKEW_ALLOWANCE, CertificateAuthority
from certs.clock import format_utc
from certs.naming import (
    DEVICE_URI_PREFIX,
    OPERATOR_URI_PREFIX,
    validate_device_id,
    validate_operator_name,
)

DEFAULT_LEAF_VALIDITY_DAYS = 365

SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


class ValidityError(ValueError):
    """Raised when a requested validity period is invalid or outlives its CA."""


def build_leaf_certificate(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    *,
    subject: x509.Name,
    san: list[x509.GeneralName],
    eku: list[ObjectIdentifier],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """Build and sign an end-entity certificate with exactly the given contents.

    This builder checks nothing about the validity period, so tests can make
    expired and not-yet-valid certificates with it. The profile functions
    below (`build_device_certificate` and the others) add those checks.

    Args:
        ca: The issuing CA. Its subject becomes the issuer, and its key signs
            with SHA-256.
        public_key: The subject's public key.
        subject: Subject name, for example ``x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, "toy-42")])``.
        san: SubjectAlternativeName entries. An empty list omits the extension.
        eku: ExtendedKeyUsage OIDs, for example ``[ExtendedKeyUsageOID.CLIENT_AUTH]``.
        not_before: Start of validity, timezone-aware.
        not_after: End of validity, timezone-aware.

    Returns:
        The signed certificate, with a random serial, BasicConstraints
        ca=False, KeyUsage digitalSignature, SKI and AKI.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,  # the TLS handshake signature
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)

    return builder.sign(ca.private_key, hashes.SHA256())


def build_device_certificate(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    device_id: str,
    *,
    validity_days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    """Build a device client certificate: CN and SAN URI carry the device id.

    Raises:
        InvalidNameError: ``device_id`` breaks the naming rule.
        ValidityError: The validity period is invalid or outlives the CA.
    """
    validate_device_id(device_id)
    return _build_client_certificate(
        ca, public_key, device_id, DEVICE_URI_PREFIX, validity_days=validity_days, now=now
    )


def build_operator_certificate(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    name: str,
    *,
    validity_days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    """Build an operator client certificate: CN and SAN URI carry the name.

    Raises:
        InvalidNameError: ``name`` breaks the naming rule.
        ValidityError: The validity period is invalid or outlives the CA.
    """
    validate_operator_name(name)
    return _build_client_certificate(
        ca, public_key, name, OPERATOR_URI_PREFIX, validity_days=validity_days, now=now
    )


def _build_client_certificate(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    name: str,
    uri_prefix: str,
    *,
    validity_days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    # Devices and operators share one profile: the name in the CN and in a SAN URI,
    # and the clientAuth EKU only.
    not_before, not_after = leaf_validity(ca, validity_days, now=now)
    return build_leaf_certificate(
        ca,
        public_key,
        subject=_common_name_only(name),
        san=[x509.UniformResourceIdentifier(uri_prefix + name)],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def build_server_certificate(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    *,
    validity_days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    """Build the development server certificate for localhost, 127.0.0.1 and ::1.

    Raises:
        ValidityError: The validity period is invalid or outlives the CA.
    """
    not_before, not_after = leaf_validity(ca, validity_days, now=now)
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_DNS_NAMES]
    san += [x509.IPAddress(address) for address in SERVER_IP_ADDRESSES]
    return build_leaf_certificate(
        ca,
        public_key,
        subject=_common_name_only(SERVER_DNS_NAMES[0]),
        san=san,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def leaf_validity(
    ca: CertificateAuthority, validity_days: int, *, now: datetime.datetime
) -> tuple[datetime.datetime, datetime.datetime]:
    """Compute (not_before, not_after) for a leaf that ``ca`` issues at ``now``.

    The period starts `CLOCK_SKEW_ALLOWANCE` before ``now`` (but not before
    the CA's own start) and must end no later than the CA certificate does,
    because a chain is only valid while every certificate in it is.

    Raises:
        ValidityError: ``validity_days`` is below 1, the CA is not valid at
            ``now``, or the leaf would outlive the CA.
    """
    if validity_days < 1:
        raise ValidityError(f"validity must be at least 1 day, got {validity_days}")

    ca_not_before = ca.certificate.not_valid_before_utc
    ca_not_after = ca.certificate.not_valid_after_utc
    if now > ca_not_after:
        raise ValidityError(
            f"CA {ca.common_name!r} expired at {format_utc(ca_not_after)}; create a new CA"
        )
    if now < ca_not_before:
        raise ValidityError(f"CA {ca.common_name!r} is not valid until {format_utc(ca_not_before)}")

    not_before = max(now - CLOCK_SKEW_ALLOWANCE, ca_not_before)
    not_after = now + datetime.timedelta(days=validity_days)
    if not_after > ca_not_after:
        raise ValidityError(_outlives_ca_message(ca, validity_days, now=now))

    return not_before, not_after


def _outlives_ca_message(
    ca: CertificateAuthority, validity_days: int, *, now: datetime.datetime
) -> str:
    ca_not_after = ca.certificate.not_valid_after_utc
    days_left = (ca_not_after - now).days
    problem = (
        f"a validity of {validity_days} days would outlive CA {ca.common_name!r}, "
        f"which expires at {format_utc(ca_not_after)}"
    )
    if days_left < 1:
        return f"{problem}; create a new CA"
    return f"{problem}; request at most {days_left} days"


def _common_name_only(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _authority_key_identifier(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    # Reuse the CA's own SKI so the two match byte for byte. A CA made by
    # another tool may compute its SKI differently from cryptography.
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

"""Client certificates for hostile-input tests, signed by a real CA of the test PKI.

`certs.leaf.build_leaf_certificate` builds any subject, SAN and validity period.
cryptography rejects some broken values (a PrintableString with `@`, a
UTF8String with invalid bytes), so `resign_with_replaced_bytes` patches the signed
part of a certificate and signs it again with the CA key.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.authority import CertificateAuthority, generate_private_key
from certs.files import write_private_key
from certs.leaf import build_leaf_certificate
from certs.naming import DEVICE_URI_PREFIX
from service.identity import fingerprint_of


@dataclass(frozen=True)
class ClientCredentials:
    """A certificate and its key, written to PEM files for `ssl.SSLContext.load_cert_chain`.

    `der` is the certificate as sent to the server. It may not parse with cryptography
    (see `resign_with_replaced_bytes`), so the serial and expiry come from the builder.
    """

    der: bytes
    serial: str
    not_after: datetime.datetime
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.der)


def common_name(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def device_uri(device_id: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)


def issue_client_certificate(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    *,
    subject: list[x509.NameAttribute],
    san: list[x509.GeneralName],
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    replace: tuple[bytes, bytes] | None = None,
) -> ClientCredentials:
    """Sign a clientAuth certificate with exactly these contents and write it to `directory`.

    Args:
        ca: The issuing CA.
        directory: Where `<name>.pem` and `<name>.key` are written.
        name: File name stem.
        subject: Subject attributes, in order. An empty list gives an empty subject.
        san: SubjectAlternativeName entries. An empty list omits the extension.
        not_before: Start of validity, one hour ago by default.
        not_after: End of validity, one day from now by default.
        replace: `(old, new)` bytes to swap in the signed part before signing again,
            for encodings that cryptography rejects. Both must have one length.
    """
    now = datetime.datetime.now(datetime.UTC)
    key = generate_private_key()
    certificate = build_leaf_certificate(
        ca,
        key.public_key(),
        subject=x509.Name(subject),
        san=san,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before or now - datetime.timedelta(hours=1),
        not_after=not_after or now + datetime.timedelta(days=1),
    )
    der = certificate.public_bytes(Encoding.DER)
    if replace is not None:
        der = resign_with_replaced_bytes(certificate, ca, *replace)

    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    write_private_key(key_path, key, force=True)
    cert_path.write_text(ssl.DER_cert_to_PEM_cert(der))
    return ClientCredentials(
        der=der,
        serial=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc,
        cert_path=cert_path,
        key_path=key_path,
    )


def resign_with_replaced_bytes(
    certificate: x509.Certificate, ca: CertificateAuthority, old: bytes, new: bytes
) -> bytes:
    """Replace `old` with `new` once in the to-be-signed bytes, sign again, return the DER.

    The result keeps the original signature algorithm (ECDSA with SHA-256, as every
    petvault CA signs). The DER is assembled here rather than by cryptography, which
    rejects invalid string encodings even when parsing, so the patched value reaches
    the peer byte for byte.
    """
    if len(old) != len(new):
        raise ValueError("old and new must have the same length, so no DER length changes")
    tbs = certificate.tbs_certificate_bytes
    if tbs.count(old) != 1:
        raise ValueError(f"{old!r} must occur exactly once in the certificate")
    patched = tbs.replace(old, new)

    assert isinstance(ca.private_key, ec.EllipticCurvePrivateKey)
    signature = ca.private_key.sign(patched, ec.ECDSA(hashes.SHA256()))
    der = certificate.public_bytes(Encoding.DER)
    algorithm = _signature_algorithm_der(der, len(tbs))
    body = patched + algorithm + _der(0x03, b"\x00" + signature)
    return _der(0x30, body)


def _signature_algorithm_der(certificate_der: bytes, tbs_length: int) -> bytes:
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    header_length = _header_length(certificate_der, 0)
    start = header_length + tbs_length
    end = start + _header_length(certificate_der, start) + _content_length(certificate_der, start)
    return certificate_der[start:end]


def _header_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    return 2 if first < 0x80 else 2 + (first & 0x7F)


def _content_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    if first < 0x80:
        return first
    count = first & 0x7F
    return int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content

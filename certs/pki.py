"""The petvault PKI directory: its layout, the development PKI and issuing.

A PKI directory (``certs/dev`` by default) contains::

    device-ca.pem    device-ca.key      signs device client certificates
    operator-ca.pem  operator-ca.key    signs operator client certificates
    server-ca.pem    server-ca.key      signs the server certificate
    server.pem       server.key         TLS server certificate for localhost
    devices/<id>.pem     devices/<id>.key
    operators/<name>.pem operators/<name>.key

Devices trust only ``server-ca.pem``. The server trusts the device CA and the
operator CA for client certificates. Keys are ECDSA P-256, certificates are
signed with SHA-256, and key files are created with mode 0600.

This module also re-exports the public names of the other ``certs`` modules,
so callers can import the whole PKI interface from ``certs.pki``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs.authority import (
    DEV_PKI_ORGANIZATION,
    CertificateAuthority,
    CertificateAuthorityError,
    create_dev_ca,
    generate_private_key,
    is_development_ca,
    load_certificate_authority,
)
from certs.clock import utc_now
from certs.csr import CsrRejectedError, sign_device_csr
from certs.files import (
    OutputFileExistsError,
    check_not_exists,
    make_private_directory,
    write_certificate,
    write_private_key,
)
from certs.leaf import (
    DEFAULT_LEAF_VALIDITY_DAYS,
    ValidityError,
    build_device_certificate,
    build_leaf_certificate,
    build_operator_certificate,
    build_server_certificate,
)
from certs.naming import validate_device_id, validate_operator_name

__all__ = [
    "DEV_PKI_ORGANIZATION",
    "CertificateAuthority",
    "CertificateAuthorityError",
    "CsrRejectedError",
    "OutputFileExistsError",
    "PkiLayout",
    "ValidityError",
    "build_leaf_certificate",
    "init_dev_pki",
    "is_development_ca",
    "issue_device_certificate",
    "issue_operator_certificate",
    "load_certificate_authority",
    "sign_device_csr",
    "write_certificate",
    "write_private_key",
]

DEVICE_CA_COMMON_NAME = "petvault development device CA"
OPERATOR_CA_COMMON_NAME = "petvault development operator CA"
SERVER_CA_COMMON_NAME = "petvault development server CA"


class _ClientCertificateBuilder(Protocol):
    """A client certificate profile from certs.leaf, such as `build_device_certificate`."""

    def __call__(
        self,
        ca: CertificateAuthority,
        public_key: CertificatePublicKeyTypes,
        name: str,
        /,
        *,
        validity_days: int,
        now: datetime.datetime,
    ) -> x509.Certificate: ...


@dataclass(frozen=True)
class PkiLayout:
    """File paths inside one PKI directory.

    The per-device and per-operator paths validate the id or name first, so
    no value can point outside ``devices/`` or ``operators/``.
    """

    directory: Path

    @property
    def device_ca_cert(self) -> Path:
        return self.directory / "device-ca.pem"

    @property
    def device_ca_key(self) -> Path:
        return self.directory / "device-ca.key"

    @property
    def operator_ca_cert(self) -> Path:
        return self.directory / "operator-ca.pem"

    @property
    def operator_ca_key(self) -> Path:
        return self.directory / "operator-ca.key"

    @property
    def server_ca_cert(self) -> Path:
        return self.directory / "server-ca.pem"

    @property
    def server_ca_key(self) -> Path:
        return self.directory / "server-ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def devices_dir(self) -> Path:
        return self.directory / "devices"

    @property
    def operators_dir(self) -> Path:
        return self.directory / "operators"

    def device_cert(self, device_id: str) -> Path:
        return self.devices_dir / f"{validate_device_id(device_id)}.pem"

    def device_key(self, device_id: str) -> Path:
        return self.devices_dir / f"{validate_device_id(device_id)}.key"

    def operator_cert(self, name: str) -> Path:
        return self.operators_dir / f"{validate_operator_name(name)}.pem"

    def operator_key(self, name: str) -> Path:
        return self.operators_dir / f"{validate_operator_name(name)}.key"

    def dev_pki_files(self) -> list[Path]:
        """List the files that `init_dev_pki` writes, CA files first."""
        return [
            self.device_ca_cert,
            self.device_ca_key,
            self.operator_ca_cert,
            self.operator_ca_key,
            self.server_ca_cert,
            self.server_ca_key,
            self.server_cert,
            self.server_key,
        ]


def init_dev_pki(directory: Path, *, force: bool = False) -> PkiLayout:
    """Create a development PKI: three CAs and a server certificate.

    Every CA subject carries O = `DEV_PKI_ORGANIZATION`, which
    `is_development_ca` detects. The server certificate covers localhost,
    127.0.0.1 and ::1.

    Args:
        directory: The PKI directory. It is created with mode 0700 if missing.
        force: Replace existing files. Replacing the CAs invalidates every
            certificate they issued before.

    Returns:
        The layout of ``directory``.

    Raises:
        OutputFileExistsError: A PKI file exists and ``force`` is false.
            Nothing is written in that case.
    """
    layout = PkiLayout(directory)
    if not force:
        check_not_exists(layout.dev_pki_files())

    now = utc_now()
    device_ca = create_dev_ca(DEVICE_CA_COMMON_NAME, now=now)
    operator_ca = create_dev_ca(OPERATOR_CA_COMMON_NAME, now=now)
    server_ca = create_dev_ca(SERVER_CA_COMMON_NAME, now=now)
    server_key = generate_private_key()
    server_cert = build_server_certificate(
        server_ca,
        server_key.public_key(),
        validity_days=DEFAULT_LEAF_VALIDITY_DAYS,
        now=now,
    )

    make_private_directory(directory)
    _write_ca(layout.device_ca_cert, layout.device_ca_key, device_ca, force=force)
    _write_ca(layout.operator_ca_cert, layout.operator_ca_key, operator_ca, force=force)
    _write_ca(layout.server_ca_cert, layout.server_ca_key, server_ca, force=force)
    write_private_key(layout.server_key, server_key, force=force)
    write_certificate(layout.server_cert, server_cert, force=force)
    return layout


def issue_device_certificate(
    directory: Path,
    device_id: str,
    *,
    force: bool = False,
    validity_days: int = DEFAULT_LEAF_VALIDITY_DAYS,
) -> tuple[Path, Path]:
    """Generate a key for a device and issue its certificate from the device CA.

    This suits development and tests. In production the device generates its
    own key and sends a CSR for `sign_device_csr`.

    Returns:
        ``(certificate_path, key_path)`` under ``DIRECTORY/devices/``.

    Raises:
        InvalidNameError: ``device_id`` breaks the naming rule.
        CertificateAuthorityError: The device CA is missing or unusable.
        OutputFileExistsError: The certificate or key exists and ``force`` is false.
        ValidityError: The validity period is invalid or outlives the CA.
    """
    layout = PkiLayout(directory)
    return _issue_client_certificate(
        ca_files=(layout.device_ca_cert, layout.device_ca_key),
        outputs=(layout.device_cert(device_id), layout.device_key(device_id)),
        build=build_device_certificate,
        name=device_id,
        force=force,
        validity_days=validity_days,
    )


def issue_operator_certificate(
    directory: Path,
    name: str,
    *,
    force: bool = False,
    validity_days: int = DEFAULT_LEAF_VALIDITY_DAYS,
) -> tuple[Path, Path]:
    """Generate a key for an operator and issue its certificate from the operator CA.

    Returns:
        ``(certificate_path, key_path)`` under ``DIRECTORY/operators/``.

    Raises:
        InvalidNameError: ``name`` breaks the naming rule.
        CertificateAuthorityError: The operator CA is missing or unusable.
        OutputFileExistsError: The certificate or key exists and ``force`` is false.
        ValidityError: The validity period is invalid or outlives the CA.
    """
    layout = PkiLayout(directory)
    return _issue_client_certificate(
        ca_files=(layout.operator_ca_cert, layout.operator_ca_key),
        outputs=(layout.operator_cert(name), layout.operator_key(name)),
        build=build_operator_certificate,
        name=name,
        force=force,
        validity_days=validity_days,
    )


def _issue_client_certificate(
    *,
    ca_files: tuple[Path, Path],
    outputs: tuple[Path, Path],
    build: _ClientCertificateBuilder,
    name: str,
    force: bool,
    validity_days: int,
) -> tuple[Path, Path]:
    cert_path, key_path = outputs
    ca = load_certificate_authority(*ca_files)
    if not force:
        check_not_exists([cert_path, key_path])

    private_key = generate_private_key()
    certificate = build(
        ca, private_key.public_key(), name, validity_days=validity_days, now=utc_now()
    )

    make_private_directory(cert_path.parent)
    write_private_key(key_path, private_key, force=force)
    write_certificate(cert_path, certificate, force=force)
    return cert_path, key_path


def _write_ca(cert_path: Path, key_path: Path, ca: CertificateAuthority, *, force: bool) -> None:
    write_private_key(key_path, ca.private_key, force=force)
    write_certificate(cert_path, ca.certificate, force=force)

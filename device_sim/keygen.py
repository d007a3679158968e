"""Device-side enrollment: generate the device key and a CSR for the petvault CA.

This is the production path. The private key is generated on the device and never
leaves it. Only the CSR goes to an operator, who has the CA sign it. The CA decides
the certificate's final extensions, so the extensions requested here are a hint.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import naming
from device_sim.errors import SimulatorError

KEY_FILE_MODE = 0o600
CSR_FILE_MODE = 0o644


@dataclass(frozen=True)
class EnrollmentFiles:
    """Paths written by `generate_device_key_and_csr`, and the key's fingerprint."""

    key_path: Path
    csr_path: Path
    public_key_sha256: str  # hex SHA-256 of the DER SubjectPublicKeyInfo


def validate_device_id(device_id: str) -> str:
    """Return `device_id` if it follows `certs.naming.DEVICE_ID_RULE`, else raise SimulatorError.

    The simulator applies the rule of the CA and the service, so an id that it
    accepts can also be enrolled, and the other way round.
    """
    try:
        return naming.validate_device_id(device_id)
    except naming.InvalidNameError as exc:
        raise SimulatorError(str(exc)) from None


def generate_device_key_and_csr(
    device_id: str, out_dir: Path, *, force: bool = False
) -> EnrollmentFiles:
    """Generate an ECDSA P-256 key and a CSR with CN=`device_id`, and write both files.

    Writes ``OUT_DIR/DEVICE_ID.key`` (unencrypted PKCS#8 PEM, mode 0600) and
    ``OUT_DIR/DEVICE_ID.csr`` (PEM). The key file is created with O_EXCL, so it is
    never readable by others, not even briefly, and a symlink planted at its path is
    not followed.

    Args:
        device_id: The device id, also the CSR's subject CN.
        out_dir: Directory for both files. Created with mode 0700 if missing.
        force: Replace existing files. Without it, an existing key or CSR is an error.

    Raises:
        SimulatorError: the device id is invalid, a file exists and `force` is False,
            or a file cannot be written.
    """
    validate_device_id(device_id)
    key_path = out_dir / f"{device_id}.key"
    csr_path = out_dir / f"{device_id}.csr"

    existing = [path for path in (key_path, csr_path) if os.path.lexists(path)]
    if existing and not force:
        names = " and ".join(str(path) for path in existing)
        raise SimulatorError(f"{names} already exists; pass --force to replace the key and CSR")

    key = ec.generate_private_key(ec.SECP256R1())
    csr = _build_csr(device_id, key)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        # NOTE: a real toy keeps the key in a secure element. The simulator stores it
        # unencrypted and relies on the file mode alone.
        serialization.NoEncryption(),
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM)

    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in existing:
            path.unlink()
        _write_new_file(key_path, key_pem, KEY_FILE_MODE)
        try:
            _write_new_file(csr_path, csr_pem, CSR_FILE_MODE)
        except OSError:
            key_path.unlink(missing_ok=True)  # no key without its CSR
            raise
    except FileExistsError as exc:
        # Another process created the file between the check above and the write.
        raise SimulatorError(
            f"{exc.filename} was created by another process during keygen; run keygen again"
        ) from None
    except OSError as exc:
        raise SimulatorError(f"cannot write {exc.filename or out_dir}: {exc.strerror}") from None

    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return EnrollmentFiles(
        key_path=key_path,
        csr_path=csr_path,
        public_key_sha256=hashlib.sha256(public_der).hexdigest(),
    )


def _build_csr(device_id: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,  # ECDSA signature in the TLS handshake
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
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),  # device certs: client only
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL fails on any existing path, a symlink included, so nothing is overwritten
    # or followed. fchmod sets the exact mode whatever the umask.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
    except OSError:
        path.unlink(missing_ok=True)  # leave no partial file behind
        raise

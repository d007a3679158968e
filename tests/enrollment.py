"""Keys, CSRs and registry snapshots for the admin API tests."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.harness import RunningServer


def csr_pem(device_id: str, key: CertificateIssuerPrivateKeyTypes | None = None) -> str:
    """Return a PEM CSR for `device_id`, signed by `key` (a new P-256 key by default)."""
    signing_key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(signing_key, algorithm)
    )
    return csr.public_bytes(Encoding.PEM).decode("ascii")


def csr_with_broken_signature(device_id: str) -> str:
    """Return a well-formed CSR whose signature does not match its content."""
    csr = x509.load_pem_x509_csr(csr_pem(device_id).encode())
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-5] ^= 0x01  # inside the ECDSA signature's last integer
    broken = x509.load_der_x509_csr(bytes(der))
    return broken.public_bytes(Encoding.PEM).decode("ascii")


def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be rejected


def registry_snapshot(server: RunningServer) -> dict[str, list[dict[str, Any]]]:
    """Return every device and certificate document, to show that nothing changed."""
    store = server.runtime.store

    async def read() -> dict[str, list[dict[str, Any]]]:
        return {
            "devices": [doc async for doc in store.devices.find({}).sort("_id")],
            "certificates": [doc async for doc in store.certificates.find({}).sort("_id")],
        }

    return server.loop.run(read())


def serial_of(pem: str | bytes) -> str:
    data = pem.encode() if isinstance(pem, str) else pem
    return format(x509.load_pem_x509_certificate(data).serial_number, "x")

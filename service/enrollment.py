"""Device enrollment: turn a CSR or a certificate from elsewhere into a registrable certificate.

Two paths lead to the same registry entry:

- **CSR**: the device generated its key and sent a certificate signing request. The
  device CA signs it with `certs.csr.sign_device_csr`, which takes only the public
  key from the CSR.
- **Certificate**: another issuer (a factory line, a cloud CA) already produced a
  certificate. It must chain to the device CA, be valid now, carry the clientAuth EKU,
  and name the enrolled device id in its CN and SAN URI.

Both paths apply one key rule (ECDSA P-256/P-384 or RSA >= 2048) and raise
`EnrollmentRejectedError` with the reason, before anything is written.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import CertificateAuthority
from certs.clock import utc_now
from certs.csr import CsrRejectedError, check_device_public_key, sign_device_csr
from certs.leaf import ValidityError
from certs.naming import OPERATOR_URI_PREFIX
from service.identity import fingerprint_of, public_key_sha256_of, read_presented_certificate
from service.runtime import Runtime
from service.storage.registry import DeviceRegistry, DeviceView, NewCertificate

logger = logging.getLogger(__name__)

# A device certificate with a 16384-bit RSA key and a short chain stays far below this.
MAX_CERTIFICATE_PEM_BYTES = 64 * 1024


class EnrollmentRejectedError(ValueError):
    """The CSR or certificate cannot be enrolled. The message names the reason.

    Attributes:
        code: `invalid_csr` or `invalid_certificate`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeviceCaUnusableError(Exception):
    """The device CA cannot sign now, e.g. because it expires before the new certificate."""


def sign_csr(csr_pem: str, device_id: str, ca: CertificateAuthority) -> x509.Certificate:
    """Verify a device CSR and issue its certificate with the device CA.

    Raises:
        EnrollmentRejectedError: the CSR is oversized, malformed, has a bad signature
            or a key type or size that is not accepted.
        DeviceCaUnusableError: the device CA cannot issue a certificate right now.
    """
    try:
        return sign_device_csr(csr_pem.encode("utf-8"), device_id, ca)
    except CsrRejectedError as exc:
        raise EnrollmentRejectedError("invalid_csr", f"csr_pem rejected: {exc}") from None
    except ValidityError as exc:
        raise DeviceCaUnusableError(str(exc)) from None


def verify_device_certificate(
    cert_pem: str, device_id: str, device_ca_bundle: list[x509.Certificate], now: datetime
) -> x509.Certificate:
    """Check that a certificate issued elsewhere may be registered for `device_id`.

    Args:
        cert_pem: The PEM certificate. Only the first certificate of a bundle counts.
        device_id: The device id in the enrollment request.
        device_ca_bundle: The trusted device CA certificate(s).
        now: The time at which the certificate must be valid.

    Raises:
        EnrollmentRejectedError: the PEM is oversized or malformed, the key is not
            accepted, the certificate does not verify against the device CA at `now`
            for client authentication, or it names another device.
    """
    certificate = _parse_certificate(cert_pem)

    try:
        check_device_public_key(certificate.public_key())
    except (CsrRejectedError, ValueError, UnsupportedAlgorithm) as exc:
        raise EnrollmentRejectedError("invalid_certificate", f"cert_pem rejected: {exc}") from None

    _verify_chain(certificate, device_ca_bundle, now)

    presented = read_presented_certificate(certificate.public_bytes(Encoding.PEM).decode("ascii"))
    if presented is None or presented.device_id is None:
        problem = presented.problem if presented is not None else "certificate cannot be parsed"
        raise EnrollmentRejectedError("invalid_certificate", f"cert_pem rejected: {problem}")
    if presented.device_id != device_id:
        raise EnrollmentRejectedError(
            "invalid_certificate",
            "cert_pem names another device: its CN and SAN URI must name device_id",
        )
    return certificate


def _parse_certificate(cert_pem: str) -> x509.Certificate:
    if len(cert_pem) > MAX_CERTIFICATE_PEM_BYTES:
        raise EnrollmentRejectedError(
            "invalid_certificate",
            f"cert_pem is {len(cert_pem)} characters, more than the maximum of "
            f"{MAX_CERTIFICATE_PEM_BYTES}",
        )
    try:
        return x509.load_pem_x509_certificate(cert_pem.encode("utf-8"))
    except ValueError:
        raise EnrollmentRejectedError(
            "invalid_certificate",
            "cert_pem is not a valid PEM certificate "
            "(expected a '-----BEGIN CERTIFICATE-----' block)",
        ) from None


def _verify_chain(
    certificate: x509.Certificate, device_ca_bundle: list[x509.Certificate], now: datetime
) -> None:
    try:
        problem = _describe_chain_problem(certificate, device_ca_bundle, now)
    except (ValueError, x509.DuplicateExtension):
        problem = None  # a malformed extension: the verifier below rejects it
    if problem is not None:
        raise EnrollmentRejectedError("invalid_certificate", f"cert_pem {problem}")

    # cryptography's RFC 5280 path validation checks the signature, the validity
    # period at `now`, the CA's constraints and the clientAuth EKU.
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(device_ca_bundle))
        .time(now)
        .build_client_verifier()
    )
    try:
        verifier.verify(certificate, [])
    except verification.VerificationError as exc:
        # The verifier's text quotes the certificate's subject, which the client chose,
        # so it goes to the log only.
        logger.info("enrollment certificate failed path validation: %r", str(exc))
        raise EnrollmentRejectedError(
            "invalid_certificate",
            "cert_pem does not verify against the device CA for client authentication "
            "(RFC 5280 path validation failed)",
        ) from None


def _describe_chain_problem(
    certificate: x509.Certificate, device_ca_bundle: list[x509.Certificate], now: datetime
) -> str | None:
    """Name the first common reason why `certificate` is not a device certificate.

    The verifier checks all of these too, but its messages do not say which rule
    failed in words an operator can act on, such as "candidates exhausted" for a
    certificate from another CA.
    """
    if now < certificate.not_valid_before_utc or now > certificate.not_valid_after_utc:
        return (
            f"is not valid now: valid from {certificate.not_valid_before_utc.isoformat()} "
            f"to {certificate.not_valid_after_utc.isoformat()}"
        )

    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.value.ca:
            return "is a CA certificate; enroll the device's own (end-entity) certificate"

    if _names_an_operator(certificate):
        return "is an operator certificate, not a device certificate"

    issuers = [ca for ca in device_ca_bundle if ca.subject == certificate.issuer]
    if not issuers:
        return "was not issued by the device CA; enroll a device certificate that it issued"
    if not any(_is_signed_by(certificate, ca) for ca in issuers):
        return "names the device CA as issuer, but its signature does not verify with the CA's key"

    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return "does not allow client authentication (its extended key usage lacks clientAuth)"
    return None


def _names_an_operator(certificate: x509.Certificate) -> bool:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return any(uri.startswith(OPERATOR_URI_PREFIX) for uri in uris)


def _is_signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def new_certificate_record(certificate: x509.Certificate) -> NewCertificate:
    """Describe a verified certificate for `DeviceRegistry.enroll`."""
    return NewCertificate(
        serial=format(certificate.serial_number, "x"),
        fingerprint=fingerprint_of(certificate.public_bytes(Encoding.DER)),
        public_key_sha256=public_key_sha256_of(certificate),
        not_after=certificate.not_valid_after_utc,
    )



async def enroll_device(
    runtime: Runtime,
    *,
    device_id: str,
    household_id: str,
    csr_pem: str | None,
    cert_pem: str | None,
) -> tuple[DeviceView, x509.Certificate]:
    """Sign or verify the device's certificate, then register it.

    Every check runs before the first write, so a rejected enrollment leaves the
    registry unchanged.

    Raises:
        EnrollmentRejectedError: the CSR or certificate is not acceptable.
        DeviceCaUnusableError: the device CA cannot sign or cannot be read.
        RegistryConflictError: the device, certificate or key is already registered.
        StoreUnavailableError: MongoDB cannot be reached.
    """
    now = utc_now()
    if csr_pem is not None:
        if runtime.device_ca is None:
            raise DeviceCaUnusableError(
                "the device CA key is not available, so CSRs cannot be signed; "
                "set PETVAULT_DEVICE_CA_KEY or enroll with cert_pem"
            )
        certificate = sign_csr(csr_pem, device_id, runtime.device_ca)
    elif cert_pem is not None:
        bundle = _load_device_ca_bundle(runtime.settings.device_ca_path)
        certificate = verify_device_certificate(cert_pem, device_id, bundle, now)
    else:
        raise EnrollmentRejectedError("invalid_request", "give exactly one of csr_pem and cert_pem")

    record = new_certificate_record(certificate)
    view = await DeviceRegistry(runtime.store).enroll(
        device_id=device_id, household_id=household_id, certificate=record, now=now
    )
    # The device may have tried to connect before, so this instance's cache may
    # contain a "not registered" result for the new fingerprint.
    runtime.identity.invalidate([record.fingerprint])
    logger.info("device enrolled: device=%s household=%s serial=%s via=%s", device_id,
                household_id, record.serial, "csr" if csr_pem is not None else "certificate")
    return view, certificate


def _load_device_ca_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise DeviceCaUnusableError(f"device CA {path} cannot be read: {exc.strerror}") from None
    except ValueError:
        raise DeviceCaUnusableError(f"device CA {path} is not a PEM certificate bundle") from None

"""The device CA's certificate revocation list (CRL): building, signing and publishing.

Revocations live in MongoDB, so every instance signs the same list of serials. Each
instance keeps its latest CRL in memory for `GET /admin/v1/crl`, and writes it as PEM
to `PETVAULT_CRL_PATH` when that is set, for nginx `ssl_crl` or a load balancer's
trust store. A CRL is signed again:

- on every revocation, by the instance that handled it, before the operator gets
  the response;
- when the list of revoked serials in MongoDB differs from the signed one, checked
  on every CRL request and every `CHECK_INTERVAL_SECONDS` in the background, which
  picks up revocations made through other instances;
- when half of its validity (nextUpdate - thisUpdate) has passed, so relying parties
  never see a CRL close to expiry.

A CRL whose nextUpdate has passed is stale: it is logged as an error and shown by
the health endpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certs.authority import (
    CertificateAuthority,
    CertificateAuthorityError,
    load_certificate_authority,
)
from certs.clock import format_utc, utc_now
from certs.files import write_new_file
from service.config import Settings
from service.storage.mongo import StoreUnavailableError
from service.storage.registry import DeviceRegistry, RevokedCertificate

logger = logging.getLogger(__name__)

# The revocation reasons an operator may give, by their RFC 5280 (section 5.3.1) names.
# petvault never lifts a revocation, so certificateHold is permanent here too, and
# removeFromCRL is never used. A reversible block is a suspension instead.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
}

CHECK_INTERVAL_SECONDS = 30.0
CRL_FILE_MODE = 0o644

# Health values of `CrlPublisher.health`.
CRL_OK = "ok"
CRL_STALE = "stale"
CRL_NOT_SIGNED = "not_signed"


def load_device_ca(settings: Settings) -> CertificateAuthority | None:
    """Load the device CA with its private key, or return None with a warning.

    Without the key the service still serves devices, but cannot sign CSRs or CRLs.
    """
    try:
        return load_certificate_authority(settings.device_ca_path, settings.device_ca_key_path)
    except CertificateAuthorityError as exc:
        logger.warning("device CA key unavailable, so CSR enrollment and the CRL are disabled: %s",
                       exc)
        return None


@dataclass(frozen=True)
class SignedCrl:
    """One signed CRL in both encodings, with the facts that decide when to sign again."""

    der: bytes
    pem: bytes
    number: int
    this_update: datetime
    next_update: datetime
    serials: tuple[str, ...]  # revoked serials, lowercase hex, ascending


def build_crl(
    authority: CertificateAuthority,
    revoked: list[RevokedCertificate],
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """Build and sign a CRL for `authority` listing `revoked`.

    It carries the CRL number and authority key identifier extensions that RFC 5280
    requires of a conforming CRL issuer. An `unspecified` reason is expressed by
    leaving out the reasonCode entry extension, as RFC 5280 section 5.3.1 recommends.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_identifier(authority), critical=False)
    )
    for entry in revoked:
        revoked_builder = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(entry.revoked_at)
        )
        reason = REVOCATION_REASONS.get(entry.reason, x509.ReasonFlags.unspecified)
        if reason is not x509.ReasonFlags.unspecified:
            revoked_builder = revoked_builder.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(revoked_builder.build())
    return builder.sign(authority.private_key, hashes.SHA256())


def _authority_key_identifier(authority: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public_key = authority.private_key.public_key()
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


class CrlPublisher:
    """The publisher of one instance's CRL, kept current in memory and in the optional file.

    Args:
        authority: The device CA, with its private key.
        registry: Where revoked certificates are read.
        validity: nextUpdate - thisUpdate of each CRL.
        path: PEM file written (by atomic rename) after each signing, or None.
        clock: Returns the current aware UTC time; tests pass a fake one.
    """

    def __init__(
        self,
        authority: CertificateAuthority,
        registry: DeviceRegistry,
        *,
        validity: timedelta,
        path: Path | None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.authority = authority
        self._registry = registry
        self.validity = validity
        self.path = path
        self.clock = clock
        self._lock = asyncio.Lock()
        self._stale_logged = False
        self.current: SignedCrl | None = None

    async def publish(self) -> SignedCrl:
        """Read the revoked certificates and sign a new CRL now.

        Raises:
            StoreUnavailableError: MongoDB cannot be reached. The previous CRL stays.
        """
        async with self._lock:
            revoked = await self._registry.revoked_certificates()
            return self._sign(revoked)

    async def ensure_current(self) -> SignedCrl:
        """Return the current CRL, signing a new one if revocations changed or it aged.

        Raises:
            StoreUnavailableError: MongoDB cannot be reached.
        """
        async with self._lock:
            revoked = await self._registry.revoked_certificates()
            current = self.current
            serials = tuple(entry.serial for entry in revoked)
            if current is not None and current.serials == serials and not self._due(current):
                return current
            return self._sign(revoked)

    def _due(self, crl: SignedCrl) -> bool:
        return self.clock() >= crl.this_update + (crl.next_update - crl.this_update) / 2

    def _sign(self, revoked: list[RevokedCertificate]) -> SignedCrl:
        this_update = self.clock().replace(microsecond=0)
        next_update = this_update + self.validity
        crl = build_crl(
            self.authority,
            revoked,
            number=self._next_number(this_update),
            this_update=this_update,
            next_update=next_update,
        )
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        signed = SignedCrl(
            der=crl.public_bytes(Encoding.DER),
            pem=crl.public_bytes(Encoding.PEM),
            number=number,
            this_update=this_update,
            next_update=next_update,
            serials=tuple(entry.serial for entry in revoked),
        )
        self.current = signed
        self._stale_logged = False
        logger.info("CRL %d signed: %d revoked serial(s), nextUpdate %s", number, len(revoked),
                    format_utc(next_update))
        self._write_file(signed)
        return signed

    def _next_number(self, this_update: datetime) -> int:
        # Milliseconds since the epoch: instances that share MongoDB sign independently
        # and still produce increasing numbers, as long as their clocks roughly agree.
        # Within one instance the number always increases.
        number = int(this_update.timestamp() * 1000)
        if self.current is not None and number <= self.current.number:
            number = self.current.number + 1
        return number

    def _write_file(self, signed: SignedCrl) -> None:
        if self.path is None:
            return
        try:
            write_new_file(self.path, signed.pem, mode=CRL_FILE_MODE, force=True)
        except OSError as exc:
            logger.error("writing the CRL to %s failed: %s", self.path, exc.strerror or exc)

    def health(self) -> str:
        """Return `ok`, `stale` (nextUpdate has passed) or `not_signed`."""
        current = self.current
        if current is None:
            return CRL_NOT_SIGNED
        if self.clock() >= current.next_update:
            return CRL_STALE
        return CRL_OK

    def log_if_stale(self) -> None:
        """Log an error once each time the CRL goes stale."""
        if self.health() != CRL_STALE or self._stale_logged:
            return
        assert self.current is not None
        logger.error("CRL %d is stale: nextUpdate %s has passed, so relying parties reject it",
                     self.current.number, format_utc(self.current.next_update))
        self._stale_logged = True

    async def run(self, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """Keep the CRL current until cancelled. A MongoDB outage delays signing, never ends it."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.ensure_current()
            except StoreUnavailableError as exc:
                logger.error("CRL refresh failed, MongoDB unreachable: %s", exc)
            self.log_if_stale()

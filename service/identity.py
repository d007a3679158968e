"""Identity: the mapping from a client certificate to a registered device.

The identity is the registered certificate, not its subject text: the SHA-256
fingerprint of the DER bytes selects a device record, and the device id that the
certificate carries (SAN URI and CN) must agree with that record.

Lookups go through `IdentityCache`, so a request normally costs no database round
trip. A background task re-reads every cached entry several times a second, and an
entry that has not been confirmed within `max_staleness` seconds is never served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from certs.naming import DEVICE_URI_PREFIX, InvalidNameError, validate_device_id
from service.storage.mongo import DeviceRecord, MetadataStore, StoreUnavailableError

logger = logging.getLogger(__name__)

# Parsing gives up on subjects or SAN lists beyond these sizes; real device
# certificates carry one CN and one URI.
_MAX_NAME_ATTRIBUTES = 32
_MAX_SAN_ENTRIES = 16

# Invalidation marks only matter while a query that started earlier is in flight;
# they are pruned after this long once there are many of them.
_INVALIDATION_MARK_SECONDS = 60.0
_MAX_INVALIDATION_MARKS = 10_000


@dataclass(frozen=True)
class PresentedCertificate:
    """The fields read from a client certificate before any lookup."""

    fingerprint: str  # SHA-256 of the DER encoding, lowercase hex
    serial: str  # lowercase hex
    device_id: str | None  # None when the certificate carries no single valid id
    problem: str | None  # why device_id is None


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def public_key_sha256_of(certificate: x509.Certificate) -> str:
    """Return the SHA-256 of the DER SubjectPublicKeyInfo: one value per key, in any certificate."""
    der = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def single_common_name(certificate: x509.Certificate) -> str | None:
    """Return the subject's only CN, or None for zero, several or a non-string CN."""
    subject = certificate.subject
    if len(subject) > _MAX_NAME_ATTRIBUTES:
        return None
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        return None
    return names[0].value


def single_uri_suffix(certificate: x509.Certificate, prefix: str) -> str | None:
    """Return what follows `prefix` in the only SAN URI that starts with it, or None."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) > _MAX_SAN_ENTRIES:
        return None
    matching = [uri for uri in uris if uri.startswith(prefix)]
    if len(matching) != 1:
        return None
    return matching[0][len(prefix) :]


def read_presented_certificate(pem: str) -> PresentedCertificate | None:
    """Parse a client certificate defensively; return None when it cannot be parsed.

    A hostile certificate (several CNs, no CN, wrongly encoded strings, a huge
    subject, duplicate extensions) yields `device_id=None` with a `problem`, never
    an exception.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        der = certificate.public_bytes(Encoding.DER)
    except (ValueError, UnicodeError, TypeError):
        return None

    fingerprint = fingerprint_of(der)
    serial = format(certificate.serial_number, "x")

    # cryptography decodes names and extensions lazily and raises ValueError (or
    # UnicodeError) on malformed strings and duplicate extensions.
    try:
        common_name = single_common_name(certificate)
        uri_id = single_uri_suffix(certificate, DEVICE_URI_PREFIX)
    except (ValueError, UnicodeError, TypeError, x509.DuplicateExtension):
        return PresentedCertificate(fingerprint, serial, None, "certificate names cannot be parsed")

    if common_name is None or uri_id is None:
        problem = "certificate must carry exactly one CN and one urn:petvault:device: SAN URI"
        return PresentedCertificate(fingerprint, serial, None, problem)
    if common_name != uri_id:
        return PresentedCertificate(
            fingerprint, serial, None, "certificate CN and SAN URI disagree"
        )
    try:
        device_id = validate_device_id(uri_id)
    except InvalidNameError:
        return PresentedCertificate(
            fingerprint, serial, None, "certificate device id breaks the id rule"
        )
    return PresentedCertificate(fingerprint, serial, device_id, None)


@dataclass
class _CacheEntry:
    record: DeviceRecord | None  # None caches "not registered"
    confirmed_at: float  # monotonic time at which the query that produced it started
    last_used: float


class IdentityCache:
    """An in-process cache of fingerprint lookups with a hard staleness bound.

    `lookup` serves an entry only while it was confirmed by the database less than
    `max_staleness` seconds ago; otherwise it queries MongoDB itself. `run_refresher`
    re-confirms every recently used entry in one batch every `max_staleness / 4`
    seconds. A request therefore waits for the database only on a fingerprint's first
    lookup, or when the refresher has fallen behind (for example during an outage).
    """

    def __init__(
        self,
        store: MetadataStore,
        *,
        max_staleness: float = 1.0,
        max_entries: int = 100_000,
        idle_eviction_seconds: float = 300.0,
    ) -> None:
        self._store = store
        self.max_staleness = max_staleness
        self.refresh_interval = max_staleness / 4
        self._max_entries = max_entries
        self._idle_eviction_seconds = idle_eviction_seconds
        self._entries: OrderedDict[str, _CacheEntry] = OrderedDict()
        # Monotonic time of the last `invalidate` per fingerprint (and for all), so a
        # query that was already in flight cannot cache its outdated result.
        self._invalidated_at: dict[str, float] = {}
        self._all_invalidated_at = float("-inf")
        self.database_lookups = 0  # counted for tests and benchmarks

    async def lookup(self, fingerprint: str) -> DeviceRecord | None:
        """Return the registered device for a fingerprint, or None when unregistered.

        Raises:
            StoreUnavailableError: the entry is stale and MongoDB cannot be reached.
        """
        now = time.monotonic()
        entry = self._entries.get(fingerprint)
        if entry is not None and now - entry.confirmed_at < self.max_staleness:
            entry.last_used = now
            self._entries.move_to_end(fingerprint)
            return entry.record

        self.database_lookups += 1
        record = await self._store.find_device_by_fingerprint(fingerprint)
        self._remember(fingerprint, record, confirmed_at=now)
        return record

    def invalidate(self, fingerprints: list[str] | None = None) -> None:
        """Drop entries (all when `fingerprints` is None) so the next lookup reads MongoDB.

        Results of queries that started before this call are not cached.
        """
        now = time.monotonic()
        if fingerprints is None:
            self._entries.clear()
            self._invalidated_at.clear()
            self._all_invalidated_at = now
            return
        if len(self._invalidated_at) > _MAX_INVALIDATION_MARKS:
            self._invalidated_at = {
                fingerprint: moment
                for fingerprint, moment in self._invalidated_at.items()
                if now - moment < _INVALIDATION_MARK_SECONDS
            }
        for fingerprint in fingerprints:
            self._entries.pop(fingerprint, None)
            self._invalidated_at[fingerprint] = now

    def _remember(
        self, fingerprint: str, record: DeviceRecord | None, *, confirmed_at: float
    ) -> None:
        entry = self._entries.get(fingerprint)
        if entry is not None and entry.confirmed_at > confirmed_at:
            return  # a newer result arrived while this query was in flight
        invalidated_at = max(
            self._invalidated_at.get(fingerprint, float("-inf")), self._all_invalidated_at
        )
        if confirmed_at < invalidated_at:
            return  # the record changed while this query was in flight
        self._entries[fingerprint] = _CacheEntry(record, confirmed_at, last_used=time.monotonic())
        self._entries.move_to_end(fingerprint)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def refresh_once(self) -> None:
        """Re-confirm every recently used entry with one batched query."""
        started = time.monotonic()
        for fingerprint in [
            fp
            for fp, entry in self._entries.items()
            if started - entry.last_used > self._idle_eviction_seconds
        ]:
            del self._entries[fingerprint]

        fingerprints = list(self._entries)
        if not fingerprints:
            return
        records = await self._store.find_devices_by_fingerprints(fingerprints)
        for fingerprint in fingerprints:
            entry = self._entries.get(fingerprint)
            if entry is not None and entry.confirmed_at < started:
                entry.record = records.get(fingerprint)
                entry.confirmed_at = started

    async def run_refresher(self) -> None:
        """Refresh forever; on a database outage, entries expire and requests get 503."""
        outage_logged = False
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh_once()
            except StoreUnavailableError as exc:
                if not outage_logged:
                    logger.error("identity cache refresh failed, MongoDB unreachable: %s", exc)
                    outage_logged = True
                continue
            if outage_logged:
                logger.info("identity cache refresh recovered")
                outage_logged = False

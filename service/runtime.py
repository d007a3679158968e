"""The objects one petvault process shares between its listeners, and their lifetime.

`open_runtime` creates the MongoDB client, the S3 client, the identity cache, the
audit log and the rate limits inside a running event loop, and closes them on exit.
Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.authority import CertificateAuthority
from service.audit import AuditLog
from service.config import ConfigError, Settings, check_mongodb_uri_escaping
from service.crl import CrlPublisher, load_device_ca
from service.identity import (
    IdentityCache,
    fingerprint_of,
    public_key_sha256_of,
    read_presented_certificate,
)
from service.limits import DeviceRateLimits, open_rate_limits
from service.storage.mongo import DuplicateError, MetadataStore
from service.storage.registry import DeviceRegistry
from service.storage.s3 import ObjectStore

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: MetadataStore
    objects: ObjectStore
    identity: IdentityCache
    audit: AuditLog
    rate_limits: DeviceRateLimits
    background_tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # None when the device CA key is not readable: no CSR signing and no CRL then.
    device_ca: CertificateAuthority | None = None
    crl: CrlPublisher | None = None


def create_mongo_client(settings: Settings) -> Any:
    """Create the MongoDB client for the configured URI, or the embedded stand-in."""
    if settings.uses_embedded_mongodb:
        if settings.env == "production":
            raise ConfigError("the embedded MongoDB stand-in is not allowed in production")
        from mongomock_motor import AsyncMongoMockClient

        logger.warning(
            "using the embedded in-memory MongoDB stand-in (mongomock): data is lost at exit "
            "and no authentication is enforced; set PETVAULT_MONGODB_URI for a real server"
        )
        return AsyncMongoMockClient(tz_aware=True)

    check_mongodb_uri_escaping(settings.mongodb_uri)
    from pymongo import AsyncMongoClient
    from pymongo.errors import ConfigurationError, InvalidURI

    try:
        return AsyncMongoClient(
            settings.mongodb_uri,
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
            connectTimeoutMS=settings.mongodb_timeout_ms,
            appname="petvault",
        )
    except (ConfigurationError, InvalidURI, ValueError) as exc:
        # PyMongo's message names the URI part at fault but not the credentials.
        raise ConfigError(f"PETVAULT_MONGODB_URI is invalid: {exc}") from exc


async def register_certificates_from(
    store: MetadataStore, directory: Path, household_id: str
) -> list[str]:
    """Register every `*.pem` device certificate in `directory`; return the device ids.

    A development shortcut for the embedded store, which starts empty. Certificates
    already registered are skipped.

    Raises:
        ConfigError: `directory` is not a directory, or a `*.pem` file in it is not
            a PEM certificate.
    """
    registered = []
    for path, certificate in _read_certificates(directory):
        presented = read_presented_certificate(certificate.public_bytes(Encoding.PEM).decode())
        if presented is None or presented.device_id is None:
            logger.warning("skipping %s: not a petvault device certificate", path.name)
            continue
        try:
            await store.register_device_certificate(
                device_id=presented.device_id,
                household_id=household_id,
                fingerprint=fingerprint_of(certificate.public_bytes(Encoding.DER)),
                serial=presented.serial,
                not_after=certificate.not_valid_after_utc,
                now=datetime.now(UTC),
                public_key_sha256=public_key_sha256_of(certificate),
            )
        except DuplicateError:
            pass
        registered.append(presented.device_id)
    return registered


def _read_certificates(directory: Path) -> list[tuple[Path, x509.Certificate]]:
    """Read every `*.pem` file in `directory` as a certificate, in file name order."""
    if not directory.is_dir():
        raise ConfigError(f"PETVAULT_REGISTER_DEVICES_FROM {directory} is not a directory")
    certificates = []
    for path in sorted(directory.glob("*.pem")):
        try:
            certificates.append((path, x509.load_pem_x509_certificate(path.read_bytes())))
        except ValueError:
            raise ConfigError(
                f"PETVAULT_REGISTER_DEVICES_FROM: {path} is not a PEM certificate; "
                "remove it or replace it with a device certificate"
            ) from None
    return certificates


@asynccontextmanager
async def open_runtime(settings: Settings, *, mongo_client: Any = None) -> AsyncIterator[Runtime]:
    """Open every client the service needs and close them on exit.

    Args:
        settings: The service settings.
        mongo_client: An existing client to share, e.g. one embedded store between two
            server instances in a test. The caller keeps ownership of it.
    """
    owns_client = mongo_client is None
    client = mongo_client if mongo_client is not None else create_mongo_client(settings)
    try:
        store = MetadataStore(client[settings.mongodb_database])
        await store.ensure_indexes()
        await DeviceRegistry(store).ensure_indexes()
        if settings.register_devices_from is not None:
            device_ids = await register_certificates_from(
                store, settings.register_devices_from, settings.register_household_id
            )
            logger.info("registered %d device certificate(s) from %s", len(device_ids),
                        settings.register_devices_from)

        if not settings.s3_bucket:
            raise ConfigError("PETVAULT_S3_BUCKET is not set; name the recordings bucket")
        objects = ObjectStore(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            addressing_style=settings.s3_addressing_style,
        )
        identity = IdentityCache(store, max_staleness=settings.identity_cache_max_staleness_seconds)
        audit = AuditLog(store)
        runtime = Runtime(
            settings=settings,
            store=store,
            objects=objects,
            identity=identity,
            audit=audit,
            rate_limits=await open_rate_limits(settings, audit),
        )
        runtime.background_tasks.append(asyncio.create_task(identity.run_refresher()))
        try:
            await _start_crl_publisher(runtime)
            yield runtime
        finally:
            for task in runtime.background_tasks:
                task.cancel()
            for task in runtime.background_tasks:
                with suppress(asyncio.CancelledError):
                    await task
            await runtime.rate_limits.close()
    finally:
        if owns_client:
            result = client.close()
            if asyncio.iscoroutine(result):
                await result


async def _start_crl_publisher(runtime: Runtime) -> None:
    """Load the device CA, sign the first CRL and keep it current in the background."""
    settings = runtime.settings
    runtime.device_ca = load_device_ca(settings)
    if runtime.device_ca is None:
        return
    runtime.crl = CrlPublisher(
        runtime.device_ca,
        DeviceRegistry(runtime.store),
        validity=timedelta(hours=settings.crl_next_update_hours),
        path=settings.crl_path,
    )
    await runtime.crl.publish()
    runtime.background_tasks.append(asyncio.create_task(runtime.crl.run()))

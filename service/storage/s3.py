"""Recording objects in S3: presigned uploads and downloads, and the checks at `complete`.

The service never proxies audio. It signs URLs locally (no network call) and touches
S3 itself only to verify and delete objects. boto3 is synchronous, so those calls run
in a worker thread and never block the event loop.

An upload form stays valid for its whole TTL, and its policy cannot limit how often it
is used. So on a versioned bucket a download URL names the version that `complete`
hashed, and a later post to the same key never changes what a device downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 256 * 1024
_MISSING_OBJECT_CODES = {"404", "NoSuchKey", "NotFound"}


class ObjectStoreUnavailableError(Exception):
    """S3 could not be reached or failed on its side."""


@dataclass(frozen=True)
class PresignedPost:
    url: str
    fields: dict[str, str]
    expires_at: datetime


@dataclass(frozen=True)
class PresignedGet:
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class StoredObject:
    size_bytes: int
    content_type: str
    sha256: str
    # The S3 version that was read, or None when the bucket does not version objects.
    version_id: str | None


class ObjectStore:
    """One boto3 S3 client for the process, signing with SigV4 in an explicit region."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint_url: str | None = None,
        addressing_style: str = "auto",
        session: boto3.session.Session | None = None,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self._session = session or boto3.session.Session()
        config = BotoConfig(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        self.client: BaseClient = self._session.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._warned_unversioned = False

    def _credential_expiry(self) -> datetime | None:
        """Return when the signing credentials expire, or None for static credentials."""
        credentials = self._session.get_credentials()
        # NOTE: botocore has no public accessor for the expiry of refreshable
        # credentials (IAM roles, SSO); `_expiry_time` is the attribute it uses itself.
        expiry = getattr(credentials, "_expiry_time", None)
        if isinstance(expiry, datetime):
            return expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)
        return None

    @staticmethod
    def _signing_time() -> datetime:
        # SigV4 stamps X-Amz-Date and the POST policy expiration in whole seconds, taken
        # from the clock when botocore signs, after this call. Counting the TTL from the
        # same whole second keeps expires_at from outliving the URL by a fraction.
        return datetime.now(UTC).replace(microsecond=0)

    def _true_expiry(self, now: datetime, ttl_seconds: int) -> datetime:
        # A URL stops working when its signing credentials expire, even before its TTL.
        expires_at = now + timedelta(seconds=ttl_seconds)
        credential_expiry = self._credential_expiry()
        if credential_expiry is not None and credential_expiry < expires_at:
            return credential_expiry
        return expires_at

    def presign_upload(
        self, key: str, *, content_type: str, size_bytes: int, ttl_seconds: int
    ) -> PresignedPost:
        """Sign a POST policy that accepts exactly one object: this key, type and size.

        Args:
            key: The raw object key. boto3 encodes it; never pass it pre-encoded.
            content_type: The only Content-Type the policy accepts.
            size_bytes: The only size the policy accepts (content-length-range min = max).
            ttl_seconds: How long the form stays valid.
        """
        now = self._signing_time()
        post = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", size_bytes, size_bytes],
            ],
            ExpiresIn=ttl_seconds,
        )
        return PresignedPost(
            url=post["url"],
            fields=dict(post["fields"]),
            expires_at=self._true_expiry(now, ttl_seconds),
        )

    def presign_download(
        self, key: str, *, ttl_seconds: int, version_id: str | None = None
    ) -> PresignedGet:
        """Sign a GET for one object. The URL is a bearer credential: never log or store it.

        Args:
            key: The raw object key.
            ttl_seconds: How long the URL stays valid, at most.
            version_id: The S3 version to serve. The signature covers it, so later
                writes to the key do not change what the URL returns. None serves
                whatever version is current when the URL is used.
        """
        now = self._signing_time()
        expires_at = self._true_expiry(now, ttl_seconds)
        # Sign no longer than the credentials live, so the URL's own expiry is the true one.
        effective_ttl = max(1, int((expires_at - now).total_seconds()))
        params = {"Bucket": self.bucket, "Key": key}
        if version_id is not None:
            params["VersionId"] = version_id
        url = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=min(ttl_seconds, effective_ttl)
        )
        return PresignedGet(url=url, expires_at=expires_at)

    def _inspect_object_sync(self, key: str) -> StoredObject | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_OBJECT_CODES:
                return None
            raise ObjectStoreUnavailableError(
                f"GetObject failed: {code or 'unknown error'}"
            ) from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailableError(
                f"GetObject failed: {exc.__class__.__name__}"
            ) from exc

        digest = hashlib.sha256()
        body = response["Body"]
        try:
            for chunk in body.iter_chunks(_READ_CHUNK_BYTES):
                digest.update(chunk)
        except BotoCoreError as exc:
            raise ObjectStoreUnavailableError(
                f"reading the object failed: {exc.__class__.__name__}"
            ) from exc
        finally:
            body.close()

        version_id = _version_id_of(response)
        if version_id is None:
            self._warn_unversioned_once()
        return StoredObject(
            size_bytes=int(response["ContentLength"]),
            content_type=str(response.get("ContentType", "")),
            sha256=digest.hexdigest(),
            version_id=version_id,
        )

    async def inspect_object(self, key: str) -> StoredObject | None:
        """Read the current object's size, Content-Type, SHA-256 and version.

        Returns:
            What was read, all from one version of the object, or None when the key
            has no current object (never written, or behind a delete marker).
        """
        return await asyncio.to_thread(self._inspect_object_sync, key)

    def _warn_unversioned_once(self) -> None:
        if self._warned_unversioned:
            return
        self._warned_unversioned = True
        logger.warning(
            "S3 bucket %s returned no version id for a recording, so its downloads serve "
            "whatever object the key holds when the URL is used, and a still-valid upload "
            "form can replace the verified bytes; enable versioning on the bucket "
            "(logged once per process)", self.bucket,
        )

    def _delete_object_sync(self, key: str) -> None:
        try:
            # No VersionId: on a versioned bucket this adds a delete marker, so an
            # operator can still restore the previous version.
            # NOTE: a still-valid upload form can write the key again after this
            # delete. No recording serves that object, but it stays in the bucket
            # until a lifecycle rule expires it.
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise ObjectStoreUnavailableError(
                f"DeleteObject failed: {code or 'unknown error'}"
            ) from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailableError(
                f"DeleteObject failed: {exc.__class__.__name__}"
            ) from exc

    async def delete_object(self, key: str) -> None:
        await asyncio.to_thread(self._delete_object_sync, key)

    def _head_bucket_sync(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectStoreUnavailableError(
                f"HeadBucket failed: {exc.__class__.__name__}"
            ) from exc

    async def check_bucket(self) -> None:
        await asyncio.to_thread(self._head_bucket_sync)

    def _bucket_versioning_sync(self) -> str:
        try:
            response = self.client.get_bucket_versioning(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise ObjectStoreUnavailableError(
                f"GetBucketVersioning failed: {code or 'unknown error'}"
            ) from exc
        except BotoCoreError as exc:
            raise ObjectStoreUnavailableError(
                f"GetBucketVersioning failed: {exc.__class__.__name__}"
            ) from exc
        # S3 leaves Status out for a bucket that never had versioning enabled.
        return str(response.get("Status", "never enabled"))

    async def log_versioning_status(self) -> None:
        """Log whether the bucket versions objects, with a warning unless it does.

        Downloads are pinned to the verified version only on a versioned bucket. The
        service still runs without versioning, so this only logs, and an S3 error is
        logged rather than raised.
        """
        try:
            status = await asyncio.to_thread(self._bucket_versioning_sync)
        except ObjectStoreUnavailableError as exc:
            logger.warning("could not check versioning of S3 bucket %s: %s", self.bucket, exc)
            return
        if status == "Enabled":
            logger.info("S3 bucket %s has versioning enabled", self.bucket)
            return
        logger.warning(
            "S3 bucket %s does not have versioning enabled (status: %s), so a still-valid "
            "upload form can replace a verified recording; enable versioning on the bucket",
            self.bucket, status,
        )


def _version_id_of(response: dict[str, Any]) -> str | None:
    # S3 gives the version id "null" to objects written while versioning was off or
    # suspended. The next write to the key replaces that version, so it pins nothing.
    version_id = response.get("VersionId")
    if not version_id or version_id == "null":
        return None
    return str(version_id)


def create_private_bucket(client: Any, bucket: str, region: str) -> None:
    """Create a bucket the way petvault expects one: private, versioned and encrypted.

    Used by the demo and the tests against the embedded S3 stand-in. Production buckets
    are created by infrastructure code; the README lists the same settings.
    """
    if region == "us-east-1":
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )
    client.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    client.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )

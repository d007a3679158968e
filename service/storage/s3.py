"""Recording objects in S3: presigned uploads and downloads, and the checks at `complete`.

The service never proxies audio. It signs URLs locally (no network call) and touches
S3 itself only to verify and delete objects. boto3 is synchronous, so those calls run
in a worker thread and never block the event loop.
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

    def presign_download(self, key: str, *, ttl_seconds: int) -> PresignedGet:
        """Sign a GET for one object. The URL is a bearer credential: never log or store it."""
        now = self._signing_time()
        expires_at = self._true_expiry(now, ttl_seconds)
        # Sign no longer than the credentials live, so the URL's own expiry is the true one.
        effective_ttl = max(1, int((expires_at - now).total_seconds()))
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=min(ttl_seconds, effective_ttl),
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
        return StoredObject(
            size_bytes=int(response["ContentLength"]),
            content_type=str(response.get("ContentType", "")),
            sha256=digest.hexdigest(),
        )

    async def inspect_object(self, key: str) -> StoredObject | None:
        """Read the stored object's size, Content-Type and SHA-256; None when it is missing."""
        return await asyncio.to_thread(self._inspect_object_sync, key)

    def _delete_object_sync(self, key: str) -> None:
        try:
            # No VersionId: on a versioned bucket this adds a delete marker, so an
            # operator can still restore the previous version.
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

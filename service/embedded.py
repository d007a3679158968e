"""The embedded S3 stand-in for the demo and the tests: moto's server on loopback.

**Not for production.** moto accepts any credentials and does not check presigned
signatures, expiry or POST policy conditions, so a URL it honours proves nothing
about real S3. The in-memory MongoDB stand-in lives in `service.runtime`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import boto3

from service.storage.s3 import create_private_bucket

logger = logging.getLogger(__name__)

EMBEDDED_S3_WARNING = (
    "embedded S3 stand-in (moto): it does NOT enforce presigned signatures, expiry or "
    "POST policy limits, and its data is lost at exit; never use it in production"
)

# moto accepts any key pair. Fixed dummy values keep real credentials from the
# environment from ever being sent to it.
_DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "petvault-embedded",
    "AWS_SECRET_ACCESS_KEY": "petvault-embedded-secret",  # noqa: S105 - not a secret
}


class EmbeddedS3:
    """moto's threaded S3 server on 127.0.0.1 with one private, versioned bucket."""

    def __init__(self, bucket: str = "petvault-demo", region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.region = region
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> EmbeddedS3:
        from moto.server import ThreadedMotoServer

        for name, value in _DUMMY_CREDENTIALS.items():
            os.environ[name] = value
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        logger.warning(EMBEDDED_S3_WARNING)

        client = boto3.client("s3", region_name=self.region, endpoint_url=self.endpoint_url)
        create_private_bucket(client, self.bucket, self.region)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

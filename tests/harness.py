"""Test harness: real petvault servers with real TLS on loopback, in a background loop.

`ServerLoop` owns one event loop in a daemon thread. Any number of `PetvaultServer`
instances can run in it, sharing one embedded MongoDB client when a test needs two
instances with separate caches on one store.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx

from certs.pki import PkiLayout
from device_sim.client import DeviceClient
from service.config import EMBEDDED_MONGODB_URI, Settings
from service.embedded import EmbeddedS3
from service.server import PetvaultServer

_T = TypeVar("_T")


class ServerLoop:
    """An asyncio loop in a daemon thread, for servers the tests talk to synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 30) -> _T:
        """Run a coroutine on the server loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start_server(self, settings: Settings, *, mongo_client: Any = None) -> RunningServer:
        server = PetvaultServer(settings, mongo_client=mongo_client)
        future = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)

        async def wait_started() -> None:
            while not server.started.is_set():
                if future.done():
                    return
                await asyncio.sleep(0.01)

        self.run(wait_started())
        if future.done():
            future.result()  # re-raises the startup error
        return RunningServer(server, future, self)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


class RunningServer:
    def __init__(self, server: PetvaultServer, future: Future[None], loop: ServerLoop) -> None:
        self.server = server
        self.future = future
        self.loop = loop

    @property
    def port(self) -> int:
        return self.server.device_port

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_port(self) -> int:
        return self.server.admin_port

    @property
    def admin_url(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    @property
    def runtime(self) -> Any:
        return self.server.runtime

    def stop(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.server.stop)
        self.future.result(timeout=15)


def make_settings(pki_dir: Path, s3: EmbeddedS3, **overrides: Any) -> Settings:
    """Settings for a test server on ephemeral ports with the embedded stand-ins."""
    values: dict[str, Any] = {
        "env": "development",
        "port": 0,
        "admin_port": 0,
        "health_port": 0,
        "certs_dir": pki_dir,
        "mongodb_uri": EMBEDDED_MONGODB_URI,
        "s3_bucket": s3.bucket,
        "s3_region": s3.region,
        "s3_endpoint_url": s3.endpoint_url,
        "s3_addressing_style": "path",
        "register_devices_from": pki_dir / "devices",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def operator_client(layout: PkiLayout, name: str, url: str) -> httpx.Client:
    """Return an httpx client for the admin listener that presents operator `name`'s certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(layout.server_ca_cert))
    context.load_cert_chain(str(layout.operator_cert(name)), str(layout.operator_key(name)))
    return httpx.Client(base_url=url, verify=context, trust_env=False, timeout=10)


def device_client(layout: PkiLayout, device_id: str, url: str) -> DeviceClient:
    return DeviceClient(
        layout.device_cert(device_id), layout.device_key(device_id), layout.server_ca_cert, url
    )

"""Run petvault's listeners in one event loop around one shared runtime.

- device listener: mutual TLS against the device CA, public-facing;
- admin listener: mutual TLS against the operator CA, on loopback or a private address;
- health listener: plain HTTP `/healthz`, always on 127.0.0.1, for container probes.

Sockets are bound here rather than by uvicorn, so port 0 works and the bound port
is known before the first request (tests rely on that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.admin_app import create_admin_app
from service.app import create_device_app, create_health_app
from service.config import Settings
from service.operators import check_client_cas_are_separate
from service.runtime import Runtime, open_runtime
from service.transport import (
    MAX_REQUEST_HEAD_BYTES,
    ClientCertH11Protocol,
    ssl_context_factory_for,
)

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `PetvaultServer`.

    Several uvicorn servers in one loop would each replace the others' handlers.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets
    # whose proto is IPPROTO_TCP, and without it Nagle's algorithm holds back the
    # response body behind the client's delayed ACK, about 40 ms per request on Linux.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_config(
    app: FastAPI, settings: Settings, *, ssl_factory: Any = None, http: Any = "h11"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=http,
        ssl_context_factory=ssl_factory,
        lifespan="on",
        # Client addresses come from the TCP peer; no proxy header is trusted.
        proxy_headers=False,
        server_header=False,
        log_config=None,
        # ClientCertH11Protocol uses this as the request head deadline as well: an idle
        # keep-alive connection and a half-sent request head get the same time.
        timeout_keep_alive=settings.request_header_timeout_seconds,
        limit_concurrency=settings.max_connections,
        # Stated, rather than left to the default, because ClientCertH11Protocol also
        # applies it to heads that arrive complete in one read.
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        ws="none",
    )


class PetvaultServer:
    """All listeners of one petvault instance.

    Args:
        settings: Service settings; `port`, `admin_port` and `health_port` may be 0.
        mongo_client: Share an existing MongoDB client (tests run two instances on one
            embedded store this way). The caller keeps ownership.
        health: Start the loopback health listener.
    """

    def __init__(
        self, settings: Settings, *, mongo_client: Any = None, health: bool = True
    ) -> None:
        self.settings = settings
        self._mongo_client = mongo_client
        self._health = health
        self.runtime: Runtime | None = None
        self._servers: list[_Server] = []
        self._sockets: dict[str, socket.socket] = {}
        self.started = asyncio.Event()

    @property
    def device_port(self) -> int:
        return int(self._sockets["device"].getsockname()[1])

    @property
    def admin_port(self) -> int:
        return int(self._sockets["admin"].getsockname()[1])

    @property
    def health_port(self) -> int:
        return int(self._sockets["health"].getsockname()[1])

    def _listeners(self, runtime: Runtime) -> Iterator[tuple[str, str, int, FastAPI, Any]]:
        settings = self.settings
        # Checked before any listener starts, so a bad CA setup leaves nothing running.
        check_client_cas_are_separate(settings)
        device_tls = ssl_context_factory_for(
            settings.tls_cert_path, settings.tls_key_path, settings.device_ca_path
        )
        yield (
            "device",
            settings.host,
            settings.port,
            create_device_app(settings, runtime),
            device_tls,
        )

        admin_tls = ssl_context_factory_for(
            settings.tls_cert_path, settings.tls_key_path, settings.operator_ca_path
        )
        admin_app = create_admin_app(runtime)
        yield "admin", settings.admin_host, settings.admin_port, admin_app, admin_tls
        if self._health:
            health_app = create_health_app(lambda: self.runtime)
            yield "health", "127.0.0.1", settings.health_port, health_app, None

    async def serve(self) -> None:
        """Open the runtime, serve until `stop()`, then close everything."""
        async with open_runtime(self.settings, mongo_client=self._mongo_client) as runtime:
            self.runtime = runtime
            tasks = []
            try:
                listeners = list(self._listeners(runtime))
                # Bind every socket before serving any, so a port in use stops startup
                # with nothing left running.
                for name, host, port, _app, _tls in listeners:
                    self._sockets[name] = bind_socket(host, port)
                for name, host, _port, app, tls in listeners:
                    sock = self._sockets[name]
                    http = ClientCertH11Protocol if tls is not None else "h11"
                    server = _Server(
                        _uvicorn_config(app, self.settings, ssl_factory=tls, http=http)
                    )
                    self._servers.append(server)
                    tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
                    scheme = "https (mutual TLS)" if tls is not None else "http"
                    logger.info(
                        "%s listener on %s://%s:%d",
                        name,
                        scheme.split()[0],
                        host,
                        sock.getsockname()[1],
                    )

                while not all(server.started for server in self._servers):
                    if any(task.done() for task in tasks):
                        break
                    await asyncio.sleep(0.01)
                self.started.set()
                # In the background, so a slow or unreachable S3 delays neither startup
                # nor shutdown.
                versioning_check = asyncio.create_task(runtime.objects.log_versioning_status())
                try:
                    await asyncio.gather(*tasks)
                finally:
                    versioning_check.cancel()
            finally:
                for sock in self._sockets.values():
                    sock.close()

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)


def run_forever(
    settings: Settings, *, on_started: Callable[[PetvaultServer], None] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM."""

    async def main() -> None:
        server = PetvaultServer(settings)
        server.install_signal_handlers()
        serving = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if server.started.is_set() and on_started is not None:
            on_started(server)
        await serving

    asyncio.run(main())

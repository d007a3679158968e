"""A real redis-server on a free loopback port, which tests can pause, kill and restart.

`.ci/ensure-redis` installs Debian's redis-server. Without the binary the tests that
need it are skipped with that reason, unless PETVAULT_REQUIRE_REDIS=1 (set by
`.ci/run`) turns the skip into a failure, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_BINARY = shutil.which("redis-server")
REDIS_REQUIRED = os.environ.get("PETVAULT_REQUIRE_REDIS") == "1"
SKIP_REASON = "redis-server is not installed; run .ci/ensure-redis (Debian, as root)"


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process without persistence, bound to 127.0.0.1 only."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_loopback_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_BINARY is not None, SKIP_REASON
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
            [
                REDIS_BINARY,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def command(self, *words: str) -> bytes:
        """Send one command in the inline protocol and return the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(65536)

    def flush(self) -> None:
        assert self.command("FLUSHALL") == b"+OK\r\n"

    def pause(self) -> None:
        """Freeze the process: connections stay open, but no reply comes (a hung Redis)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the process (a Redis that is down); `start` brings it back on the same port."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None

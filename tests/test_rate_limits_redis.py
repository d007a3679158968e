"""Rate limits on a real redis-server: shared budgets, outages, and the window edge.

The tests start redis-server themselves on free loopback ports; without the binary
they are skipped (`.ci/ensure-redis` installs it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.harness import RunningServer, ServerLoop, make_settings
from tests.redis_server import (
    REDIS_BINARY,
    REDIS_REQUIRED,
    SKIP_REASON,
    RedisServer,
    free_loopback_port,
)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(REDIS_BINARY is None and not REDIS_REQUIRED, reason=SKIP_REASON),
]

StartServer = Callable[..., RunningServer]
# Short bound on each rate-limit check, so outage tests get their 503 quickly.
STORAGE_TIMEOUT = 0.3


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis(session_redis: RedisServer) -> RedisServer:
    """The session's Redis with no counters left from earlier tests."""
    session_redis.flush()
    return session_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis for this test alone, which it may pause, kill and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def start_server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[StartServer]:
    running: list[RunningServer] = []

    def start(**overrides: Any) -> RunningServer:
        server = server_loop.start_server(make_settings(pki.directory, s3, **overrides))
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


def device_context(pki: PkiLayout, device_id: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    context.load_cert_chain(pki.device_cert(device_id), pki.device_key(device_id))
    return context


def device_http(pki: PkiLayout, device_id: str, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=device_context(pki, device_id), trust_env=False,
                        timeout=10)


# --- Shared budget ---------------------------------------------------------------------


def test_two_instances_share_one_budget(
    pki: PkiLayout, start_server: StartServer, redis: RedisServer
) -> None:
    first = start_server(rate_limits="6/minute", rate_limit_storage=redis.url)
    second = start_server(rate_limits="6/minute", rate_limit_storage=redis.url)

    statuses = []
    with device_http(pki, "toy-1", first.url) as one, device_http(pki, "toy-1", second.url) as two:
        for _ in range(6):
            statuses.append(one.get("/v1/me").status_code)
            statuses.append(two.get("/v1/me").status_code)

    assert statuses.count(200) == 6
    assert statuses.count(429) == 6


def _uvicorn_log_config(path: Path) -> Path:
    # The process id on every line shows which worker served each request.
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"pid": {"format": "%(process)d %(name)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "pid",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "INFO"},
        },
    }
    path.write_text(json.dumps(config))
    return path


def _wait_for_workers(log_path: Path, workers: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        started = re.findall(r"^(\d+) uvicorn.error Application startup complete",
                             log_path.read_text(), re.MULTILINE)
        if len(set(started)) >= workers:
            return
        time.sleep(0.1)
    raise AssertionError(f"uvicorn workers did not start:\n{log_path.read_text()}")


def _access_log_pids(log_path: Path) -> list[tuple[str, int]]:
    return [
        (pid, int(status))
        for pid, status in re.findall(r'^(\d+) uvicorn.access .*" (\d{3})$',
                                      log_path.read_text(), re.MULTILINE)
    ]


def test_two_uvicorn_workers_share_one_budget(
    pki: PkiLayout, s3: EmbeddedS3, redis: RedisServer, tmp_path: Path
) -> None:
    budget = 8
    port = free_loopback_port()
    log_path = tmp_path / "uvicorn.log"
    env = {
        **os.environ,
        "PETVAULT_ENV": "development",
        "PETVAULT_CERTS_DIR": str(pki.directory),
        "PETVAULT_S3_BUCKET": s3.bucket,
        "PETVAULT_S3_ENDPOINT_URL": s3.endpoint_url,
        "PETVAULT_S3_ADDRESSING_STYLE": "path",
        # Each worker's embedded store starts empty and registers the same devices.
        "PETVAULT_REGISTER_DEVICES_FROM": str(pki.devices_dir),
        "PETVAULT_RATE_LIMITS": f"{budget}/minute",
        "PETVAULT_RATE_LIMIT_STORAGE": redis.url,
    }
    command = [
        sys.executable, "-m", "uvicorn", "service.app:create_app_from_env", "--factory",
        "--workers", "2",
        "--host", "127.0.0.1", "--port", str(port),
        "--http", "service.transport:ClientCertH11Protocol",
        "--ssl-certfile", str(pki.server_cert), "--ssl-keyfile", str(pki.server_key),
        "--ssl-ca-certs", str(pki.device_ca_cert), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED)),
        "--log-config", str(_uvicorn_log_config(tmp_path / "log.json")),
        "--no-server-header",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=log)  # noqa: S603
    try:
        _wait_for_workers(log_path, 2, process)
        context = device_context(pki, "toy-1")
        url = f"https://127.0.0.1:{port}/v1/me"

        def one_request(_: int) -> int:
            # A new connection per request lets the kernel hand it to either worker.
            return httpx.get(url, verify=context, trust_env=False, timeout=10).status_code

        statuses: list[int] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):  # rounds until both workers have served requests
                statuses += pool.map(one_request, range(16))
                time.sleep(0.3)
                if len({pid for pid, _ in _access_log_pids(log_path)}) == 2:
                    break
    finally:
        process.terminate()
        process.wait(timeout=30)

    served = _access_log_pids(log_path)
    assert len({pid for pid, _ in served}) == 2, "every request went to one worker"
    assert statuses.count(200) == budget
    assert statuses.count(429) == len(statuses) - budget


# --- Outages ---------------------------------------------------------------------------


def _outage_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records
            if record.name == "service.limit_storage" and "unavailable" in record.getMessage()]


def test_hung_redis_answers_503_without_stalling(
    pki: PkiLayout, start_server: StartServer, own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.limit_storage")
    server = start_server(rate_limits="100/minute", rate_limit_storage=own_redis.url,
                          rate_limit_storage_timeout_seconds=1.0)

    with device_http(pki, "toy-1", server.url) as client:
        assert client.get("/v1/me").status_code == 200
        own_redis.pause()
        try:
            # While one request waits on the frozen Redis, the event loop keeps serving.
            hung: dict[str, Any] = {}
            waiting = threading.Thread(
                target=lambda: hung.update(response=client.get("/v1/me"),
                                           finished=time.monotonic()))
            started = time.monotonic()
            waiting.start()
            time.sleep(0.2)
            with httpx.Client(base_url=server.url, trust_env=False,
                              verify=device_context(pki, "toy-2")) as other:
                unlimited_started = time.monotonic()
                security_txt = other.get("/.well-known/security.txt")
                unlimited_elapsed = time.monotonic() - unlimited_started
            waiting.join(timeout=10)
            later = [client.get("/v1/me") for _ in range(3)]
        finally:
            own_redis.resume()
        recovered = client.get("/v1/me")

    assert security_txt.status_code == 200
    assert unlimited_elapsed < 0.5
    assert hung["response"].status_code == 503
    assert hung["response"].json()["error"]["code"] == "rate_limiter_unavailable"
    assert hung["finished"] - started < 2.5  # the 1 s bound, plus TLS and scheduling
    assert [response.status_code for response in later] == [503, 503, 503]
    assert recovered.status_code == 200
    assert len(_outage_records(caplog)) == 1


def test_stopped_redis_answers_503_then_recovers(
    pki: PkiLayout, start_server: StartServer, own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.limit_storage")
    server = start_server(rate_limits="100/minute", rate_limit_storage=own_redis.url,
                          rate_limit_storage_timeout_seconds=STORAGE_TIMEOUT)

    with device_http(pki, "toy-1", server.url) as client:
        assert client.get("/v1/me").status_code == 200
        own_redis.stop()
        started = time.monotonic()
        down = [client.get("/v1/me") for _ in range(5)]
        elapsed = time.monotonic() - started
        own_redis.start()  # the same port
        recovered = client.get("/v1/me")

    assert [response.status_code for response in down] == [503] * 5
    assert {response.json()["error"]["code"] for response in down} == {"rate_limiter_unavailable"}
    assert "RateLimit-Limit" not in down[0].headers
    assert elapsed < 5 * (STORAGE_TIMEOUT + 0.5)
    assert recovered.status_code == 200
    assert recovered.headers["RateLimit-Limit"] == "100"
    assert len(_outage_records(caplog)) == 1
    assert any("recovered" in record.getMessage() for record in caplog.records)


def test_fail_open_passes_requests_during_outage(
    pki: PkiLayout, start_server: StartServer, own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.limit_storage")
    server = start_server(rate_limits="100/minute", rate_limit_storage=own_redis.url,
                          rate_limit_storage_timeout_seconds=STORAGE_TIMEOUT,
                          rate_limit_fail_open=True)

    with device_http(pki, "toy-1", server.url) as client:
        own_redis.pause()
        try:
            paused = [client.get("/v1/me") for _ in range(2)]
        finally:
            own_redis.resume()
        between = client.get("/v1/me")
        own_redis.stop()
        down = [client.get("/v1/me") for _ in range(3)]
        own_redis.start()
        recovered = client.get("/v1/me")

    assert [response.status_code for response in paused + down] == [200] * 5
    assert "RateLimit-Limit" not in down[0].headers
    assert between.headers["RateLimit-Limit"] == "100"
    assert recovered.headers["RateLimit-Limit"] == "100"
    warnings = [record for record in _outage_records(caplog) if record.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per outage: the pause, then the stop
    assert "WITHOUT rate limits" in warnings[0].getMessage()


# --- Window boundary -------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_window_edge_never_exceeds_budget(
    pki: PkiLayout, start_server: StartServer, redis: RedisServer, storage: str
) -> None:
    budget, window = 5, 2.0
    server = start_server(
        rate_limits=f"{budget}/2 seconds",
        rate_limit_storage=redis.url if storage == "redis" else "memory://",
    )
    # (sent, received, status) per request, in order on one connection.
    log: list[tuple[float, float, int]] = []

    with device_http(pki, "toy-3", server.url) as client:
        def send() -> None:
            sent = time.monotonic()
            status = client.get("/v1/me").status_code
            log.append((sent, time.monotonic(), status))

        start = time.monotonic()
        send()  # opens the window
        time.sleep(max(0.0, start + window - 0.3 - time.monotonic()))
        for _ in range(budget - 1):  # just before the edge: fills the budget
            send()
        time.sleep(max(0.0, start + window + 0.3 - time.monotonic()))
        for _ in range(budget):  # just after the edge: a fixed window would allow all five
            send()
        while time.monotonic() < start + 2 * window + 0.5:  # steady traffic across more edges
            send()
            time.sleep(0.05)

    after_edge = [status for _, _, status in log[budget:2 * budget]]
    assert after_edge.count(200) == 1  # only the first request's slot has expired

    # The moving window's bound: no interval of `window` seconds contains more than
    # `budget` allowed requests. For the allowed requests i < j = i + budget, the
    # server accepted j more than `window` after i, and each acceptance happened
    # between the client's send and receive times.
    allowed = [(sent, received) for sent, received, status in log if status == 200]
    for earlier, later in zip(allowed, allowed[budget:], strict=False):
        assert later[1] - earlier[0] > window

"""Measure what per-device rate limiting adds to a request: `GET /v1/me` over mutual TLS.

Runs three `petvault serve` processes side by side on this machine, with limits off,
with in-memory counters and with Redis counters, and measures each the same way:

- latency: sequential requests over one keep-alive connection at a time;
- throughput: several client processes at once, each sending sequential requests over
  its own keep-alive connections. The clients run on the same machine as the servers,
  so on a small machine they compete with them for CPU.

The measurements take turns between the three servers in rounds, so background load
on a shared machine affects each configuration about equally.

A last table times one rate-limit check alone, in this process, without HTTP or TLS:
the default policy's three windows against memory and Redis, spread over 1000 devices
so that every check is allowed and records the request.

The servers apply the default policy (60/minute, 200/hour, 400/day). Each device
sends `REQUESTS_PER_DEVICE` requests, below its minute limit, so no request is
rejected and each device's stored windows stay as small as in production. The
counter storage slows down as those windows grow, so one device hammered with a huge
limit would overstate the cost.

Usage: python benchmarks/rate_limit_overhead.py [--requests N] [--markdown FILE]
Needs redis-server on PATH (`.ci/ensure-redis` installs it) for the Redis run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from certs.pki import PkiLayout, init_dev_pki, issue_device_certificate
from service.embedded import EmbeddedS3
from service.limit_storage import open_limiter
from service.limits import parse_rate_limits

# Below the default 60/minute, so no request is rejected. The first request on each
# connection (its TLS handshake) is not measured.
REQUESTS_PER_DEVICE = 50
READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Result:
    name: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    sequential_rps: float
    parallel_rps: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device_ssl_context(layout: PkiLayout, device_id: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(layout.server_ca_cert))
    context.load_cert_chain(layout.device_cert(device_id), layout.device_key(device_id))
    return context


def device_ids(prefix: str, requests: int) -> list[str]:
    """Name enough devices to send `requests` measured requests within their budgets."""
    count = -(-requests // (REQUESTS_PER_DEVICE - 1))  # ceiling division
    return [f"bench-{prefix}-{number}" for number in range(count)]


def timed_requests(url: str, layout: PkiLayout, devices: list[str], requests: int) -> list[float]:
    """Send `requests` measured requests, `REQUESTS_PER_DEVICE - 1` per device connection."""
    latencies: list[float] = []
    for device_id in devices:
        with httpx.Client(base_url=url, verify=device_ssl_context(layout, device_id)) as client:
            client.get("/v1/me").raise_for_status()  # TLS handshake, not measured
            for _ in range(min(REQUESTS_PER_DEVICE - 1, requests - len(latencies))):
                started = time.perf_counter()
                response = client.get("/v1/me")
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
    if len(latencies) < requests:
        raise RuntimeError(f"{len(devices)} devices sent {len(latencies)} of {requests} requests")
    return latencies


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; run .ci/ensure-redis first")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"redis-server did not answer on port {port}")


def start_server(
    env: dict[str, str], layout: PkiLayout, probe_device: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    petvault = Path(sys.executable).with_name("petvault")
    process = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
        [str(petvault), "--log-level", "WARNING", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    context = device_ssl_context(layout, probe_device)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"petvault serve exited with {process.returncode}")
        try:
            httpx.get(f"{url}/v1/me", verify=context, timeout=2).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    sys.exit("petvault serve did not become ready")


def _client_process(url: str, directory: str, devices: list[str], requests: int,
                    start: Any, done: Any) -> None:
    layout = PkiLayout(Path(directory))
    start.wait()
    timed_requests(url, layout, devices, requests)
    done.release()


def measure_parallel(url: str, layout: PkiLayout, devices: list[str], requests: int,
                     clients: int) -> float:
    """Return requests per second with `clients` processes sending at once."""
    context = multiprocessing.get_context("spawn")
    start, done = context.Event(), context.Semaphore(0)
    per_client = requests // clients
    shares = [devices[index::clients] for index in range(clients)]
    processes = [
        context.Process(target=_client_process,
                        args=(url, str(layout.directory), share, per_client, start, done))
        for share in shares
    ]
    for process in processes:
        process.start()
    time.sleep(3.0)  # let every client process import its modules
    started = time.perf_counter()
    start.set()
    for _ in processes:
        done.acquire()
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(timeout=30)
        if process.exitcode != 0:
            sys.exit(f"a client process failed with exit code {process.exitcode}")
    return per_client * clients / elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(urls: dict[str, str], layout: PkiLayout, requests: int, clients: int,
            rounds: int) -> list[Result]:
    """Measure every server in turns; each round sends each server the same devices."""
    # The servers keep separate counters, so one device set serves all of them.
    per_round = requests // rounds
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    for round_number in range(rounds):
        devices = device_ids(f"seq{round_number}", per_round)
        for name, url in urls.items():
            latencies[name] += timed_requests(url, layout, devices, per_round)

    rates: dict[str, list[float]] = {name: [] for name in urls}
    for round_number in range(rounds):
        # Every client process gets devices of its own, so its share stays within budget.
        devices = device_ids(f"par{round_number}", per_round + clients * 49)
        for name, url in urls.items():
            rates[name].append(measure_parallel(url, layout, devices, per_round, clients))

    return [
        Result(
            name=name,
            p50_ms=statistics.median(latencies[name]) * 1000,
            p95_ms=percentile(latencies[name], 0.95) * 1000,
            p99_ms=percentile(latencies[name], 0.99) * 1000,
            sequential_rps=len(latencies[name]) / sum(latencies[name]),
            parallel_rps=statistics.median(rates[name]),
        )
        for name in urls
    ]


async def time_limiter_checks(storage_url: str, devices: int, checks: int) -> float:
    """Return the mean microseconds of one default-policy check, spread over `devices`."""
    limiter = open_limiter(storage_url, timeout=5.0, fail_open=False)
    items = parse_rate_limits("60/minute;200/hour;400/day", "default policy")
    try:
        for number in range(devices):  # every device starts with one recorded request
            await limiter.hit(items, ("bench", "default", f"device-{number}"))
        started = time.perf_counter()
        for number in range(checks):
            # Fewer than 60 checks per device and minute, so none is rejected.
            await limiter.hit(items, ("bench", "default", f"device-{number % devices}"))
        return (time.perf_counter() - started) / checks * 1e6
    finally:
        await limiter.close()


def render_check_table(redis_url: str, devices: int = 1000, checks: int = 10000) -> str:
    lines = [f"| storage | one check over {devices} devices, µs |", "| --- | ---: |"]
    for name, url in (("memory", "memory://"), ("redis", redis_url)):
        if url.startswith("redis"):
            asyncio.run(_flush_redis(url))
        micros = asyncio.run(time_limiter_checks(url, devices, checks))
        lines.append(f"| {name} | {micros:.0f} |")
    return "\n".join(lines)


async def _flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True, text=True, check=False,
    ).stdout.split(" sha=")[0]
    return (f"{os.cpu_count()} CPU(s), {cpu}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; {redis_version}")


def render_table(results: list[Result], baseline: Result, clients: int) -> str:
    lines = [
        "| rate limiting | p50 ms | p95 ms | p99 ms | added p50 ms | sequential req/s "
        f"| {clients} clients req/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.p50_ms:.2f} | {result.p95_ms:.2f} | {result.p99_ms:.2f} "
            f"| {result.p50_ms - baseline.p50_ms:+.2f} | {result.sequential_rps:.0f} "
            f"| {result.parallel_rps:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per measurement (default: 3000)")
    parser.add_argument("--clients", type=int, default=2,
                        help="client processes in the throughput run (default: 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns between the servers (default: 3)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table and the machine to this file")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="petvault-bench-") as scratch:
        directory = Path(scratch)
        layout = init_dev_pki(directory / "pki")
        per_round = args.requests // args.rounds
        for round_number in range(args.rounds):
            for device_id in (device_ids(f"seq{round_number}", per_round)
                              + device_ids(f"par{round_number}", per_round + args.clients * 49)):
                issue_device_certificate(layout.directory, device_id)
        redis_process, redis_url = start_redis(directory)
        try:
            with EmbeddedS3(bucket="petvault-bench") as s3:
                base_env = {
                    **os.environ,
                    "PETVAULT_ENV": "development",
                    "PETVAULT_CERTS_DIR": str(layout.directory),
                    "PETVAULT_S3_BUCKET": s3.bucket,
                    "PETVAULT_S3_ENDPOINT_URL": s3.endpoint_url,
                    "PETVAULT_S3_ADDRESSING_STYLE": "path",
                    "PETVAULT_REGISTER_DEVICES_FROM": str(layout.devices_dir),
                    "PETVAULT_HEALTH_PORT": "0",
                    "PETVAULT_ADMIN_PORT": "0",
                }
                configurations = [
                    ("off", {"PETVAULT_RATE_LIMIT_ENABLED": "false"}),
                    ("memory", {"PETVAULT_RATE_LIMIT_STORAGE": "memory://"}),
                    ("redis", {"PETVAULT_RATE_LIMIT_STORAGE": redis_url}),
                ]
                servers = {
                    name: start_server({**base_env, **extra_env}, layout, "bench-seq0-0")
                    for name, extra_env in configurations
                }
                try:
                    results = measure({name: url for name, (_, url) in servers.items()},
                                      layout, args.requests, args.clients, args.rounds)
                finally:
                    for process, _ in servers.values():
                        process.terminate()
                        process.wait(timeout=15)
            print("timing single rate-limit checks ...", file=sys.stderr)
            check_table = render_check_table(redis_url)
        finally:
            redis_process.kill()
            redis_process.wait(timeout=10)

    machine = machine_description()
    machine += f"; load average before the run {load_before:.2f}"
    table = render_table(results, results[0], args.clients)
    print(f"GET /v1/me, {args.requests} requests per measurement in {args.rounds} rounds; "
          f"{machine}\n")
    print(table)
    print(f"\nOne rate-limit check alone, in process:\n\n{check_table}")
    if args.markdown is not None:
        args.markdown.write_text(
            f"Machine: {machine}\n\nCommand: `python benchmarks/rate_limit_overhead.py "
            f"--requests {args.requests} --clients {args.clients} --rounds {args.rounds}`"
            f"\n\n{table}\n\nOne rate-limit check alone, in process:\n\n{check_table}\n"
        )


if __name__ == "__main__":
    main()

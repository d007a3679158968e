"""Shared fixtures: one development PKI, one embedded S3 server, real TLS servers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from certs.pki import (
    PkiLayout,
    init_dev_pki,
    issue_device_certificate,
    issue_operator_certificate,
)
from service.embedded import EmbeddedS3
from tests.harness import RunningServer, ServerLoop, make_settings, operator_client

# Registered at server start by every test server.
REGISTERED_DEVICES = ("toy-1", "toy-2", "toy-3")
# The operator certificate that admin tests present, issued by the operator CA.
OPERATOR = "ops-1"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    directory = tmp_path_factory.mktemp("pki")
    layout = init_dev_pki(directory)
    for device_id in REGISTERED_DEVICES:
        issue_device_certificate(directory, device_id)
    issue_operator_certificate(directory, OPERATOR)
    return layout


@pytest.fixture(scope="session")
def s3() -> Iterator[EmbeddedS3]:
    with EmbeddedS3(bucket="petvault-test") as server:
        yield server


@pytest.fixture(scope="session")
def server_loop() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """A fresh server (empty embedded MongoDB) with toy-1..toy-3 registered."""
    running = server_loop.start_server(make_settings(pki.directory, s3))
    yield running
    running.stop()


@pytest.fixture
def admin(pki: PkiLayout, server: RunningServer) -> Iterator[httpx.Client]:
    """An httpx client on `server`'s admin listener with the operator certificate."""
    with operator_client(pki, OPERATOR, server.admin_url) as client:
        yield client

"""Smoke test: the harness starts a real mTLS server and a device reaches /v1/me."""

from __future__ import annotations

from certs.pki import PkiLayout
from tests.harness import RunningServer, device_client


def test_me_returns_registered_device(pki: PkiLayout, server: RunningServer) -> None:
    with device_client(pki, "toy-1", server.url) as client:
        identity = client.me()
    assert identity["device_id"] == "toy-1"

"""S3 or MongoDB unreachable: requests get 503 with the JSON envelope, and no data is lost.

S3 is "down" when the server's endpoint is a closed loopback port. MongoDB goes down
mid-run: the store's collections are pointed at a real PyMongo client for a closed
port, so the driver's own error path runs, and are restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from tests.clients import add_available_recording, api_client, closed_port, declare_recording
from tests.harness import RunningServer, ServerLoop, make_settings

AUDIO = b"RIFF outage test audio"


def _health(server: RunningServer) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.server.health_port}/healthz")


# --- S3 unreachable ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_down_server(
    pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop
) -> Iterator[RunningServer]:
    settings = make_settings(pki.directory, s3, s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
                             rate_limit_enabled=False)
    running = server_loop.start_server(settings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pending_when_s3_down(pki: PkiLayout, s3_down_server: RunningServer) -> dict[str, Any]:
    """A pending recording, then a complete and a delete that both fail to reach S3."""
    with api_client(pki, "toy-1", s3_down_server.url) as client:
        # Presigning is local signing, so declaring works without S3.
        recording_id = declare_recording(client, AUDIO)["recording_id"]
        complete = client.post(f"/v1/recordings/{recording_id}/complete")
        delete = client.delete(f"/v1/recordings/{recording_id}")
        after = client.get(f"/v1/recordings/{recording_id}")
    return {"complete": complete, "delete": delete, "after": after}


@pytest.mark.parametrize("step", ["complete", "delete"])
def test_s3_down_gets_503(step: str, pending_when_s3_down: dict[str, Any]) -> None:
    response = pending_when_s3_down[step]

    assert response.status_code == 503
    assert response.json() == {"error": {"code": "object_store_unavailable",
                                         "message": "object store unavailable; retry later"}}


def test_s3_down_keeps_recording_pending(pending_when_s3_down: dict[str, Any]) -> None:
    after = pending_when_s3_down["after"]

    assert after.status_code == 200
    assert after.json()["status"] == "pending"


def test_s3_down_health_degraded(s3_down_server: RunningServer) -> None:
    response = _health(s3_down_server)

    assert response.status_code == 503
    assert response.json()["checks"]["s3"] == "unavailable"


# --- MongoDB unreachable -------------------------------------------------------------

_COLLECTIONS = ("devices", "certificates", "recordings", "audit")


@contextmanager
def mongodb_unreachable(server: RunningServer) -> Iterator[None]:
    """Point the server's store at a MongoDB port where nothing listens, then restore it."""
    store = server.runtime.store
    saved = {name: getattr(store, name) for name in ("database", *_COLLECTIONS)}

    async def connect() -> Any:
        return AsyncMongoClient(f"mongodb://127.0.0.1:{closed_port()}/",
                                serverSelectionTimeoutMS=200, connectTimeoutMS=200)

    dead_client = server.loop.run(connect())
    dead_database = dead_client["petvault"]
    store.database = dead_database
    for name in _COLLECTIONS:
        setattr(store, name, dead_database[name])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(store, name, value)
        server.loop.run(dead_client.close())


def test_mongodb_down_gets_503_then_recovers(pki: PkiLayout, server: RunningServer) -> None:
    with api_client(pki, "toy-1", server.url) as client:
        recording_id = add_available_recording(client, AUDIO)

        with mongodb_unreachable(server):
            read = client.get(f"/v1/recordings/{recording_id}")
            listed = client.get("/v1/recordings")
            created = client.post("/v1/recordings", json={
                "content_type": "audio/wav", "size_bytes": 1, "sha256": "0" * 64})
            health = _health(server)
            # Cached identities are never served past the staleness bound.
            time.sleep(server.runtime.identity.max_staleness + 0.1)
            me = client.get("/v1/me")

        recovered = client.get(f"/v1/recordings/{recording_id}")

    during = {"read": read, "list": listed, "create": created, "me after staleness bound": me}
    statuses = {name: response.status_code for name, response in during.items()}
    codes = {name: response.json()["error"]["code"] for name, response in during.items()}
    assert statuses == dict.fromkeys(during, 503)
    assert codes == dict.fromkeys(during, "metadata_store_unavailable")
    assert health.json()["checks"]["mongodb"] == "unavailable"
    assert recovered.status_code == 200
    assert recovered.json()["status"] == "available"
    assert httpx.get(recovered.json()["download"]["url"]).content == AUDIO

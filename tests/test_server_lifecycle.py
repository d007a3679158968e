"""A stopped server releases everything it built, so test runs stay small."""

from __future__ import annotations

import gc

from certs.pki import PkiLayout
from service.embedded import EmbeddedS3
from service.server import PetvaultServer
from service.storage.s3 import ObjectStore
from tests.harness import ServerLoop, make_settings


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def test_stopped_servers_are_collected(
    pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop
) -> None:
    servers_before = _alive(PetvaultServer)
    stores_before = _alive(ObjectStore)

    for _ in range(3):
        running = server_loop.start_server(make_settings(pki.directory, s3))
        running.stop()
        del running

    assert _alive(PetvaultServer) <= servers_before
    assert _alive(ObjectStore) <= stores_before

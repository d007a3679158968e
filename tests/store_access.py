"""Direct reads and writes of a test server's metadata store, run on the server's loop.

Tests use these to see what the API does not show (object keys, rejected uploads) and
to change state behind the API's back (a status set by another instance).
"""

from __future__ import annotations

from typing import Any

from tests.harness import RunningServer


def stored_recording(server: RunningServer, recording_id: str) -> dict[str, Any]:
    """Return the recording document, whatever its owner or status."""
    document = server.loop.run(server.runtime.store.recordings.find_one({"_id": recording_id}))
    assert document is not None, f"recording {recording_id} is not in the store"
    return dict(document)


def update_one(server: RunningServer, collection: str, query: dict[str, Any],
               changes: dict[str, Any]) -> None:
    """Apply `$set: changes` to the one document of `collection` that matches `query`."""
    result = server.loop.run(
        server.runtime.store.database[collection].update_one(query, {"$set": changes})
    )
    assert result.matched_count == 1, f"no document in {collection} matches {query}"

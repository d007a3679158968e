"""The append-only audit log of operator actions and security events.

Entries are only ever inserted; no code path updates or deletes one. Security events
that an attacker can trigger at will (unregistered certificates, ownership denials)
are coalesced. The first event per actor, action and target in a window is written.
Later ones only raise an in-memory repeat count, which the next entry reports.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from service.storage.mongo import MetadataStore, StoreUnavailableError

logger = logging.getLogger(__name__)


class AuditLog:
    """Writes audit entries to MongoDB; failures are logged, never raised to the caller."""

    def __init__(self, store: MetadataStore, *, coalesce_seconds: float = 60.0) -> None:
        self._store = store
        self._coalesce_seconds = coalesce_seconds
        self._last_written: dict[tuple[str, str, str], float] = {}
        self._suppressed: dict[tuple[str, str, str], int] = {}

    async def record(
        self,
        *,
        action: str,
        actor: dict[str, Any],
        target: str | None,
        source_ip: str | None,
        result: str,
        details: dict[str, Any] | None = None,
        coalesce: bool = False,
    ) -> None:
        """Append one entry.

        Args:
            action: What happened, e.g. `device.revoke` or `auth.certificate_not_registered`.
            actor: Who did it: `{"type": "operator", "name", "fingerprint"}` or
                `{"type": "device", "device_id"}` or `{"type": "certificate", "fingerprint"}`.
            target: The device id, serial or recording id acted upon.
            source_ip: The peer address of the TLS connection.
            result: `success`, `rejected` or `failed`.
            details: Extra fields; never credentials, key material or presigned URLs.
            coalesce: Write at most one entry per actor, action and target per window.
        """
        key = (action, repr(sorted(actor.items())), target or "")
        now = time.monotonic()
        if coalesce:
            last = self._last_written.get(key)
            if last is not None and now - last < self._coalesce_seconds:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last_written[key] = now
            if len(self._last_written) > 100_000:
                self._last_written.clear()  # bound memory under a flood of distinct actors

        entry: dict[str, Any] = {
            "_id": f"{time.time_ns():020d}-{secrets.token_hex(4)}",
            "time": datetime.now(UTC),
            "actor": actor,
            "action": action,
            "target": target,
            "source_ip": source_ip,
            "result": result,
        }
        if details:
            entry["details"] = details
        repeats = self._suppressed.pop(key, 0)
        if repeats:
            entry["repeats_since_last_entry"] = repeats

        try:
            await self._store.append_audit(entry)
        except StoreUnavailableError as exc:
            logger.error("audit entry not written (action=%s target=%s): %s", action, target, exc)

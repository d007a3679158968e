"""The current time and its display: timezone-aware UTC throughout.

Certificate validity is compared with `datetime` objects that carry a UTC
offset (cryptography's ``not_valid_before_utc`` and ``not_valid_after_utc``),
so no naive local time enters a comparison.
"""

from __future__ import annotations

import datetime


def utc_now() -> datetime.datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.datetime.now(datetime.UTC)


def format_utc(moment: datetime.datetime) -> str:
    """Format a timezone-aware time as ISO 8601 UTC, for example ``2026-01-02T00:00:00Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Rate-limit counters in memory or Redis, checked with the moving-window strategy.

**Strategy.** The moving window of the `limits` library: a request is allowed while
fewer than N requests were recorded in the last W seconds. No interval of W seconds
ever contains more than N allowed requests, wherever it starts, so no window boundary
lets a burst through. The cost is one stored timestamp per allowed request and
window (at most N per key and limit), against two counters for the sliding window
counter, which can allow close to 2N in one interval when the earlier requests bunch
at the end of its fixed window.

**Storage.** `memory://` keeps the counters in this process: correct for one worker
only. `redis://` shares them between every worker and instance. With Redis, the
timestamps come from each worker's clock, so instances need synchronized clocks
(NTP); a skew of S seconds lengthens or shortens a window by up to S.

**Failures.** Each check has a hard time bound. When the storage fails or times out,
`RateLimiter.hit` raises `RateLimiterUnavailableError` (fail-closed), or returns None
when fail-open. An outage is logged when it starts and when it ends, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

logger = logging.getLogger(__name__)

# Prefix of every key in Redis, so the counters are easy to find and to flush.
_REDIS_KEY_PREFIX = "petvault"
# Connections one process may open to Redis. A check that finds none free waits, up to
# the storage timeout, instead of opening more.
_REDIS_MAX_CONNECTIONS = 100


def check_storage_url(url: str) -> None:
    """Reject a rate-limit storage URL with an unsupported scheme, without echoing it."""
    scheme = urlsplit(url).scheme
    if scheme not in ("memory", "redis", "rediss"):
        raise ValueError(
            f"PETVAULT_RATE_LIMIT_STORAGE has the unsupported scheme {scheme!r}; "
            "use memory:// or redis://HOST:PORT/DB (rediss:// for TLS)"
        )


def redact_storage_url(url: str) -> str:
    """Return the storage URL without credentials or query, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return "memory://"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    port = f":{parts.port}" if parts.port else ""
    hidden = " (credentials hidden)" if parts.password or parts.username or parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{hidden}"


# --- Decisions and checks ------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitDecision:
    """The outcome of one check, and what the RateLimit headers report.

    The headers describe the limit closest to exhaustion. `reset_seconds` is the time
    until that limit's oldest recorded request leaves the moving window, which is when
    its next request can pass.
    """

    allowed: bool
    limit: RateLimitItem  # the limit that the headers describe
    remaining: int
    reset_seconds: int
    retry_after: int | None = None  # whole seconds; set only when the request is rejected

    def headers(self) -> dict[str, str]:
        # Delta-seconds, as RateLimit-Reset in draft-ietf-httpapi-ratelimit-headers-06.
        return {
            "RateLimit-Limit": str(self.limit.amount),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


@dataclass(frozen=True)
class _WindowState:
    item: RateLimitItem
    remaining: int  # before this request
    reset_after: float  # seconds until the oldest request in the window expires


class RateLimiterUnavailableError(Exception):
    """The limit storage failed or timed out, and the limiter is fail-closed."""


class _OutageLog:
    """Logs a storage outage once when it starts and once when it ends, not per request."""

    def __init__(self, storage_description: str, *, fail_open: bool) -> None:
        self._storage_description = storage_description
        self._fail_open = fail_open
        self.failed_checks = 0

    def record_failure(self, exc: BaseException) -> None:
        self.failed_checks += 1
        if self.failed_checks > 1:
            return
        cause = exc.storage_error if isinstance(exc, StorageError) else exc
        reason = f"{type(cause).__name__}: {cause}".rstrip(": ")
        if self._fail_open:
            logger.warning(
                "rate-limit storage %s unavailable (%s); PETVAULT_RATE_LIMIT_FAIL_OPEN is true, "
                "so requests pass WITHOUT rate limits until it recovers",
                self._storage_description, reason,
            )
        else:
            logger.error(
                "rate-limit storage %s unavailable (%s); responding with 503 "
                "rate_limiter_unavailable until it recovers", self._storage_description, reason,
            )

    def record_success(self) -> None:
        if self.failed_checks:
            logger.info("rate-limit storage %s recovered after %d failed check(s)",
                        self._storage_description, self.failed_checks)
            self.failed_checks = 0


class RateLimiter:
    """Moving-window checks against `limits.aio` storage, each within a time bound.

    Args:
        storage: Memory or Redis storage from `limits.aio`.
        description: The storage URL without credentials, for logs.
        timeout: Seconds one check may take before it counts as a storage failure.
        fail_open: On storage failure let requests through instead of raising.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        description: str,
        timeout: float,
        fail_open: bool,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._strategy = MovingWindowRateLimiter(storage)
        self._storage = storage
        self.description = description
        self.shared = not isinstance(storage, MemoryStorage)
        self._timeout = timeout
        self._fail_open = fail_open
        self._close = close
        self._outage = _OutageLog(description, fail_open=fail_open)
        # Everything the storage client raises for a failed or timed-out call.
        self._storage_errors: tuple[type[BaseException], ...] = (
            StorageError, TimeoutError, OSError, *_as_tuple(storage.base_exceptions),
        )

    async def hit(
        self, items: tuple[RateLimitItem, ...], identifiers: tuple[str, ...]
    ) -> RateLimitDecision | None:
        """Record one request against every limit in `items`, unless one is exhausted.

        The windows are read first, in one concurrent round. A request that finds any
        of them full is rejected without being recorded in the others, so a device
        that hits its minute limit keeps its hour and day budgets. Otherwise the
        request is recorded in every window, in a second round. Each record is atomic
        in the storage, so concurrent requests never exceed a limit. A request that
        loses a race for the last slot may stay recorded in the other windows, which
        counts against the device, never in its favor.

        Returns:
            The decision, or None when the storage failed and the limiter is fail-open.

        Raises:
            RateLimiterUnavailableError: the storage failed or timed out (fail-closed).
        """
        try:
            async with asyncio.timeout(self._timeout):
                decision = await self._hit(items, identifiers)
        except self._storage_errors as exc:
            self._outage.record_failure(exc)
            if self._fail_open:
                return None
            raise RateLimiterUnavailableError(str(exc)) from exc
        self._outage.record_success()
        return decision

    async def _hit(
        self, items: tuple[RateLimitItem, ...], identifiers: tuple[str, ...]
    ) -> RateLimitDecision:
        states = await self._read_windows(items, identifiers)

        exhausted = [state for state in states if state.remaining < 1]
        if exhausted:
            return _rejection(exhausted)

        recorded = await asyncio.gather(
            *(self._strategy.hit(item, *identifiers) for item in items)
        )
        lost_race = [state for state, ok in zip(states, recorded, strict=True) if not ok]
        if lost_race:
            return _rejection(lost_race)

        after = [replace(state, remaining=state.remaining - 1) for state in states]
        # Report the limit closest to exhaustion; on a tie, the one that resets last.
        reported = min(after, key=lambda state: (state.remaining, -state.reset_after))
        return RateLimitDecision(
            allowed=True,
            limit=reported.item,
            remaining=reported.remaining,
            reset_seconds=_whole_seconds(reported.reset_after, reported.item),
        )

    async def _read_windows(
        self, items: tuple[RateLimitItem, ...], identifiers: tuple[str, ...]
    ) -> list[_WindowState]:
        stats = await asyncio.gather(
            *(self._strategy.get_window_stats(item, *identifiers) for item in items)
        )
        now = time.time()
        states = []
        for item, window in zip(items, stats, strict=True):
            if window.remaining >= item.amount:
                # An empty window: the request about to be recorded becomes its oldest.
                reset_after = float(item.get_expiry())
            else:
                reset_after = max(0.0, window.reset_time - now)
            states.append(_WindowState(item, window.remaining, reset_after))
        return states

    async def record_once_per_window(
        self, item: RateLimitItem, identifiers: tuple[str, ...]
    ) -> bool:
        """Return True for the first call per `item`'s window length and identifiers.

        Every worker and instance that shares the storage gets the same result, which
        keeps rejections to one audit entry per device and window. Storage failures
        return False.
        """
        once = type(item)(1, item.multiples, namespace="ONCE")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._strategy.hit(once, *identifiers)
        except self._storage_errors as exc:
            self._outage.record_failure(exc)
            return False

    async def check_reachable(self) -> bool:
        """Ping the storage once; log and return False when it cannot be reached."""
        try:
            async with asyncio.timeout(self._timeout):
                reachable = await self._storage.check()
        except self._storage_errors as exc:
            self._outage.record_failure(exc)
            return False
        if not reachable:
            # limits' Redis check returns False on any error and drops the reason.
            self._outage.record_failure(ConnectionError("PING failed"))
        return reachable

    async def close(self) -> None:
        if self._close is not None:
            await self._close()


def _rejection(states: list[_WindowState]) -> RateLimitDecision:
    # The request can pass once every full window has room again.
    blocking = max(states, key=lambda state: state.reset_after)
    retry_after = max(1, _whole_seconds(blocking.reset_after, blocking.item))
    return RateLimitDecision(
        allowed=False,
        limit=blocking.item,
        remaining=0,
        reset_seconds=retry_after,
        retry_after=retry_after,
    )


def _whole_seconds(seconds: float, item: RateLimitItem) -> int:
    # Round up, so a client that waits this long finds room. Clock skew between the
    # workers that recorded the timestamps must not push the value past the window.
    return min(math.ceil(seconds), item.get_expiry())


def _as_tuple(
    exceptions: type[BaseException] | tuple[type[BaseException], ...],
) -> tuple[type[BaseException], ...]:
    return exceptions if isinstance(exceptions, tuple) else (exceptions,)


# --- Opening the storage -----------------------------------------------------------


def open_limiter(url: str, *, timeout: float, fail_open: bool) -> RateLimiter:
    """Create the limiter on `memory://` or `redis[s]://` storage. Connects lazily."""
    description = redact_storage_url(url)
    if urlsplit(url).scheme == "memory":
        return RateLimiter(MemoryStorage(), description=description, timeout=timeout,
                           fail_open=fail_open)

    from limits.aio.storage import RedisStorage
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # redis-py 8 retries a failed command 10 times with backoff by default, which would
    # stretch an outage far past the timeout. One immediate retry on connection errors
    # only replaces a pooled connection that a Redis restart closed; a timeout is never
    # retried. The socket timeouts bound each call, and `RateLimiter.hit` bounds the
    # whole check.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=_REDIS_MAX_CONNECTIONS,
        timeout=timeout,  # waiting for a free connection
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    # `limits` types extra options as scalars but hands `connection_pool` to redis-py.
    client_options: dict[str, Any] = {"connection_pool": pool}
    storage = RedisStorage(
        f"async+{url}",
        implementation="redispy",
        wrap_exceptions=True,
        key_prefix=_REDIS_KEY_PREFIX,
        **client_options,
    )
    return RateLimiter(storage, description=description, timeout=timeout, fail_open=fail_open,
                       close=pool.aclose)

"""Rate-limit settings, policies, decisions and headers, without a TLS server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError

from service.config import Settings, production_problems
from service.errors import ApiError, install_error_handlers
from service.limit_storage import open_limiter, redact_storage_url
from service.limits import (
    DEFAULT,
    DOWNLOAD,
    UPLOAD,
    RateLimitHeadersMiddleware,
    RateLimitPolicies,
    parse_rate_limits,
)
from service.storage.mongo import stored_rate_limit_override


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, s3_bucket="petvault-test", **values)  # type: ignore[call-arg]


# --- Limit lists -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/minute;200/hour;400/day", [(60, 60), (200, 3600), (400, 86400)]),
        ("5/2 seconds", [(5, 2)]),
        ("10 per hour", [(10, 3600)]),
        (" 60/minute , 200/hour ", [(60, 60), (200, 3600)]),
    ],
)
def test_parse_rate_limits_accepts(text: str, expected: list[tuple[int, int]]) -> None:
    items = parse_rate_limits(text, "PETVAULT_RATE_LIMITS")
    assert [(item.amount, item.get_expiry()) for item in items] == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "invalid rate limit list"),
        ("   ", "invalid rate limit list"),
        ("sixty per minute", "invalid rate limit list"),
        ("60/minit", "invalid rate limit list"),
        ("-1/minute", "invalid rate limit list"),
        ("0/minute", "allows no request"),
        ("60/minute;60/minute", "same limit twice"),
        ("60/minute;1/second;60 per 1 minute", "same limit twice"),
    ],
)
def test_parse_rate_limits_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        parse_rate_limits(text, "PETVAULT_RATE_LIMITS")
    assert "PETVAULT_RATE_LIMITS" in str(raised.value)


@pytest.mark.parametrize(
    "field", ["rate_limits", "rate_limits_upload", "rate_limits_download", "rate_limit_failed_auth"]
)
def test_settings_name_invalid_limit_variable(field: str) -> None:
    with pytest.raises(ValidationError, match=f"PETVAULT_{field.upper()}"):
        settings(**{field: "lots/minute"})


def test_settings_read_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETVAULT_RATE_LIMITS", "5/minute")
    monkeypatch.setenv("PETVAULT_RATE_LIMIT_OVERRIDES", '{"toy-9": "600/minute"}')
    monkeypatch.setenv("PETVAULT_RATE_LIMIT_STORAGE", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PETVAULT_RATE_LIMIT_FAIL_OPEN", "true")

    loaded = settings()

    assert loaded.rate_limits == "5/minute"
    assert loaded.rate_limit_overrides == {"toy-9": {"default": "600/minute"}}
    assert loaded.rate_limit_storage == "redis://127.0.0.1:6379/0"
    assert loaded.rate_limit_fail_open is True


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ('{"toy-9": ', "not valid JSON"),
        ('["toy-9"]', "valid dictionary"),
        ('{"toy 9": "5/minute"}', "invalid device id"),
        ('{"toy-9": {"uploads": "5/minute"}}', "unknown route class 'uploads'"),
        ('{"toy-9": {"download": "fast"}}', "invalid rate limit list"),
        ('{"toy-9": {}}', "names no route class"),
    ],
)
def test_settings_reject_bad_overrides(
    monkeypatch: pytest.MonkeyPatch, overrides: str, reason: str
) -> None:
    monkeypatch.setenv("PETVAULT_RATE_LIMIT_OVERRIDES", overrides)
    with pytest.raises(ValidationError, match=reason):
        settings()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "memcached://127.0.0.1", "mongodb://u:hunter2@db/0"]
)
def test_settings_reject_storage_scheme_without_echoing(url: str) -> None:
    with pytest.raises(ValidationError, match="unsupported scheme") as raised:
        settings(rate_limit_storage=url)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:hunter2@cache.internal:6380/1",
         "redis://cache.internal:6380/1 (credentials hidden)"),
        ("rediss://limits:hunter2@[::1]:6379/0", "rediss://[::1]:6379/0 (credentials hidden)"),
        ("redis://cache.internal/0?password=hunter2",
         "redis://cache.internal/0 (credentials hidden)"),
    ],
)
def test_redact_storage_url(url: str, expected: str) -> None:
    assert redact_storage_url(url) == expected


def test_production_rejects_disabled_limits() -> None:
    problems = production_problems(settings(env="production", rate_limit_enabled=False))
    assert any("PETVAULT_RATE_LIMIT_ENABLED" in problem for problem in problems)


# --- Policies --------------------------------------------------------------------------


def test_policy_route_classes_share_default_budget() -> None:
    policy = RateLimitPolicies.from_settings(settings(rate_limits="9/minute")).fleet

    assert policy.budget(UPLOAD)[0] == DEFAULT
    assert policy.budget(DOWNLOAD)[0] == DEFAULT
    assert [str(item) for item in policy.budget(UPLOAD)[1]] == ["9 per 1 minute"]


def test_policy_route_class_with_own_limits() -> None:
    policies = RateLimitPolicies.from_settings(
        settings(rate_limits="9/minute", rate_limits_download="30/minute")
    )
    budget, items = policies.fleet.budget(DOWNLOAD)

    assert budget == DOWNLOAD
    assert [str(item) for item in items] == ["30 per 1 minute"]
    assert policies.fleet.budget(UPLOAD)[0] == DEFAULT


def test_override_replaces_only_named_classes() -> None:
    policies = RateLimitPolicies.from_settings(
        settings(
            rate_limits="9/minute",
            rate_limits_upload="2/minute",
            rate_limit_overrides={"toy-9": {"download": "600/minute"}},
        )
    )
    toy9 = policies.policy_for("toy-9")

    assert [str(item) for item in toy9.budget(DOWNLOAD)[1]] == ["600 per 1 minute"]
    assert [str(item) for item in toy9.budget(UPLOAD)[1]] == ["2 per 1 minute"]
    assert [str(item) for item in toy9.budget(DEFAULT)[1]] == ["9 per 1 minute"]
    assert policies.policy_for("toy-1") is policies.fleet


def _limits(items: Any) -> list[str]:
    return [str(item) for item in items]


def test_admin_override_beats_configured_override() -> None:
    policies = RateLimitPolicies.from_settings(
        settings(rate_limits="9/minute", rate_limit_overrides={"toy-9": "5/minute"})
    )
    toy9 = policies.policy_for("toy-9", (("default", "2/minute"),))

    assert _limits(toy9.default) == ["2 per 1 minute"]


def test_admin_override_replaces_only_named_classes() -> None:
    policies = RateLimitPolicies.from_settings(
        settings(
            rate_limits="9/minute",
            rate_limits_download="30/minute",
            rate_limit_overrides={"toy-9": {"default": "5/minute"}},
        )
    )
    toy9 = policies.policy_for("toy-9", (("upload", "1/minute"),))

    assert _limits(toy9.default) == ["5 per 1 minute"]
    assert _limits(toy9.budget(UPLOAD)[1]) == ["1 per 1 minute"]
    assert _limits(toy9.budget(DOWNLOAD)[1]) == ["30 per 1 minute"]


def test_admin_override_of_unconfigured_device() -> None:
    policies = RateLimitPolicies.from_settings(settings(rate_limits="9/minute"))
    toy1 = policies.policy_for("toy-1", (("default", "600/minute;2000/hour"),))

    assert _limits(toy1.default) == ["600 per 1 minute", "2000 per 1 hour"]
    assert policies.policy_for("toy-2") is policies.fleet


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param((("default", "fast"),), id="unparseable"),
        pytest.param((("default", "0/minute"),), id="zero requests"),
        pytest.param((("uploads", "1/minute"),), id="unknown route class"),
    ],
)
def test_invalid_stored_override_skipped(stored: tuple[tuple[str, str], ...]) -> None:
    policies = RateLimitPolicies.from_settings(settings(rate_limits="9/minute"))

    policy = policies.policy_for("toy-1", stored)

    assert policy == policies.fleet


def test_invalid_stored_entry_keeps_valid_ones() -> None:
    policies = RateLimitPolicies.from_settings(settings(rate_limits="9/minute"))

    policy = policies.policy_for("toy-1", (("default", "fast"), ("upload", "1/minute")))

    assert _limits(policy.default) == ["9 per 1 minute"]
    assert _limits(policy.budget(UPLOAD)[1]) == ["1 per 1 minute"]


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(None, (), id="missing"),
        pytest.param("600/minute", (), id="string"),
        pytest.param(["default", "600/minute"], (), id="list"),
        pytest.param({"default": 600}, (), id="number"),
        pytest.param({"upload": "1/minute", "default": "5/minute"},
                     (("default", "5/minute"), ("upload", "1/minute")), id="sorted"),
        pytest.param({"default": "5/minute", "upload": None}, (("default", "5/minute"),),
                     id="null class dropped"),
    ],
)
def test_stored_override_read_from_document(stored: object, expected: object) -> None:
    assert stored_rate_limit_override(stored) == expected


# --- Decisions -------------------------------------------------------------------------


def test_memory_limiter_decisions_count_down_then_reject() -> None:
    async def run() -> list[Any]:
        limiter = open_limiter("memory://", timeout=1.0, fail_open=False)
        items = parse_rate_limits("3/minute;10/hour", "TEST")
        return [await limiter.hit(items, ("device", "default", "toy-1")) for _ in range(4)]

    decisions = asyncio.run(run())

    assert [decision.allowed for decision in decisions] == [True, True, True, False]
    assert [decision.remaining for decision in decisions] == [2, 1, 0, 0]
    assert {decision.limit.amount for decision in decisions} == {3}
    assert [decision.retry_after for decision in decisions[:3]] == [None, None, None]
    assert 1 <= decisions[3].retry_after <= 60
    assert decisions[3].reset_seconds == decisions[3].retry_after


def test_memory_limiter_keys_are_independent() -> None:
    async def run() -> tuple[Any, Any]:
        limiter = open_limiter("memory://", timeout=1.0, fail_open=False)
        items = parse_rate_limits("1/minute", "TEST")
        await limiter.hit(items, ("device", "default", "toy-1"))
        return (await limiter.hit(items, ("device", "default", "toy-1")),
                await limiter.hit(items, ("device", "default", "toy-2")))

    same, other = asyncio.run(run())

    assert same.allowed is False
    assert other.allowed is True


def test_unreachable_redis_raises_within_timeout() -> None:
    from service.limit_storage import RateLimiterUnavailableError

    async def run() -> None:
        # Port 1 on loopback is closed: connection refused at once.
        limiter = open_limiter("redis://127.0.0.1:1/0", timeout=0.5, fail_open=False)
        try:
            await limiter.hit(parse_rate_limits("5/minute", "TEST"), ("device", "d", "toy-1"))
        finally:
            await limiter.close()

    with pytest.raises(RateLimiterUnavailableError):
        asyncio.run(asyncio.wait_for(run(), timeout=5))


def test_unreachable_redis_fails_startup_check(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> bool:
        limiter = open_limiter("redis://127.0.0.1:1/0", timeout=0.5, fail_open=False)
        try:
            return await limiter.check_reachable()
        finally:
            await limiter.close()

    assert asyncio.run(run()) is False
    assert any("unavailable" in record.getMessage() for record in caplog.records)


# --- Headers ---------------------------------------------------------------------------


def _app_with_decision() -> FastAPI:
    async def decide(request: Request) -> None:
        async def run() -> Any:
            limiter = open_limiter("memory://", timeout=1.0, fail_open=False)
            return await limiter.hit(parse_rate_limits("5/minute", "TEST"), ("device", "x"))

        request.state.rate_limit = await run()

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RateLimitHeadersMiddleware)

    @app.get("/plain-dict", dependencies=[Depends(decide)])
    async def plain_dict() -> dict[str, str]:
        return {"hello": "device"}

    @app.get("/raises", dependencies=[Depends(decide)])
    async def raises() -> dict[str, str]:
        raise ApiError(404, "not_found", "recording not found")

    @app.get("/unlimited")
    async def unlimited() -> dict[str, str]:
        return {}

    return app


@pytest.mark.parametrize(("path", "status"), [("/plain-dict", 200), ("/raises", 404)])
def test_headers_middleware_on_dict_and_error(path: str, status: int) -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app_with_decision())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    response = asyncio.run(run())

    assert response.status_code == status
    assert response.headers["RateLimit-Limit"] == "5"
    assert response.headers["RateLimit-Remaining"] == "4"
    assert response.headers["RateLimit-Reset"] == "60"


def test_headers_middleware_skips_unlimited_route() -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app_with_decision())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/unlimited")

    assert "RateLimit-Limit" not in asyncio.run(run()).headers

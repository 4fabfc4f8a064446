"""Settings: BUTTRESS_* variables with nesting, .env, and start-up errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from buttress.config import (
    BreakerSettings,
    Settings,
    hash_api_key,
    load_settings,
)
from buttress.errors import ConfigurationError
from buttress.resilience import CircuitBreaker, RateLimiter, Registry, Retry


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test sees only the variables it sets, and no .env of the checkout."""
    import os

    for name in list(os.environ):
        if name.startswith("BUTTRESS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_the_defaults_are_the_embedded_safe_ones() -> None:
    """With nothing set: localhost, a local SQLite queue, a memory cache, no keys, a rate limit."""
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.queue_url == "sqlite:///buttress.db"
    assert settings.cache_urls == ["memory://"]  # memory only
    assert settings.api_keys == {}
    assert settings.api_rate_limit is not None


def test_nested_variables_configure_each_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    """`BUTTRESS_<KIND>__<NAME>__<FIELD>` variables configure each named dependency."""
    monkeypatch.setenv("BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD", "3")
    monkeypatch.setenv("BUTTRESS_BREAKERS__OPENAI__RECOVERY_TIMEOUT", "12.5")
    monkeypatch.setenv("BUTTRESS_RETRIES__OPENAI__ATTEMPTS", "5")
    monkeypatch.setenv("BUTTRESS_RATE_LIMITS__OPENAI__RATE", "50")
    monkeypatch.setenv(
        "BUTTRESS_CACHE_URL", "redis://127.0.0.1:6379/0, memcached://127.0.0.1:11211"
    )
    settings = load_settings()
    assert settings.breakers["openai"].failure_threshold == 3
    assert settings.breakers["openai"].recovery_timeout == 12.5
    assert settings.retries["openai"].attempts == 5
    assert settings.rate_limits["openai"].rate == 50
    assert settings.cache_urls == ["redis://127.0.0.1:6379/0", "memcached://127.0.0.1:11211"]

    registry = Registry()
    breaker = settings.breakers["openai"].build("openai", registry=registry)
    retry = settings.retries["openai"].build("openai", registry=registry)
    limiter = settings.rate_limits["openai"].build("openai", registry=registry)
    assert registry.get("openai", CircuitBreaker) is breaker
    assert registry.get("openai", Retry) is retry
    assert registry.get("openai", RateLimiter) is limiter
    assert limiter.metrics().rate == 50


def test_a_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A `.env` file is read, and the environment overrides it."""
    (tmp_path / ".env").write_text("BUTTRESS_PORT=9001\nBUTTRESS_LOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("BUTTRESS_LOG_LEVEL", "WARNING")
    settings = load_settings()
    assert settings.port == 9001
    assert settings.log_level == "WARNING"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD", "three"),
        ("BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD", "0"),
        ("BUTTRESS_PORT", "70000"),
        ("BUTTRESS_QUEUE_URL", "mysql://db/x"),
        ("BUTTRESS_CACHE_URL", "mongodb://x"),
        ("BUTTRESS_LOG_LEVEL", "LOUD"),
        ("BUTTRESS_API_KEYS", "not json"),
        ("BUTTRESS_RATE_LIMITS__API__RATE", "-1"),
    ],
)
def test_an_invalid_setting_fails_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """An invalid setting stops start-up with an error naming its variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert variable in str(raised.value)


def test_api_keys_are_kept_as_digests_and_short_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """API keys are kept as digests, default to the user role, and must be long enough."""
    key = "k" * 32
    monkeypatch.setenv("BUTTRESS_API_KEYS", f'{{"{key}": {{"owner": "alice"}}}}')
    settings = load_settings()
    assert list(settings.api_keys) == [hash_api_key(key)]
    assert settings.api_keys[hash_api_key(key)].role == "user"
    assert key not in repr(settings) + settings.model_dump_json()

    monkeypatch.setenv("BUTTRESS_API_KEYS", '{"short": {"owner": "alice"}}')
    with pytest.raises(ConfigurationError, match="BUTTRESS_API_KEYS") as raised:
        load_settings()
    assert "short" not in str(raised.value).replace("too short", "")


def test_a_count_window_must_be_whole() -> None:
    """A count window must be a whole number; a time window need not be."""
    with pytest.raises(ValueError, match="whole number"):
        BreakerSettings(window=2.5)
    assert BreakerSettings(window=2.5, window_type="time").window == 2.5
    breaker = BreakerSettings(window=20).build("w", registry=Registry())
    assert breaker.name == "w"


def test_settings_are_frozen() -> None:
    """Settings can't be changed once loaded."""
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_the_api_rate_limit_can_be_turned_off_or_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    """`BUTTRESS_API_RATE_LIMIT` turns the API's rate limit off (`null`) or tunes it."""
    monkeypatch.setenv("BUTTRESS_API_RATE_LIMIT", "null")
    assert load_settings().api_rate_limit is None
    monkeypatch.setenv("BUTTRESS_API_RATE_LIMIT", '{"rate": 5, "burst": 10}')
    limit = load_settings().api_rate_limit
    assert limit is not None
    assert (limit.rate, limit.per, limit.burst) == (5, 1.0, 10)


def test_a_key_may_be_given_already_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sha256:<digest>`` keeps the key itself out of the environment entirely."""
    digest = hash_api_key("a-long-random-token-0123")
    monkeypatch.setenv("BUTTRESS_API_KEYS", f'{{"sha256:{digest}": {{"owner": "ops"}}}}')
    assert list(load_settings().api_keys) == [digest]
    monkeypatch.setenv("BUTTRESS_API_KEYS", '{"sha256:abc": {"owner": "ops"}}')
    with pytest.raises(ConfigurationError, match="64 lowercase hex"):
        load_settings()


def test_every_cache_url_the_cache_takes_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The setting accepts what `Cache.from_url` does (a Redis socket too), no less."""
    monkeypatch.setenv("BUTTRESS_CACHE_URL", "unix:///run/redis.sock,memcached://127.0.0.1:11211")
    assert load_settings().cache_urls == ["unix:///run/redis.sock", "memcached://127.0.0.1:11211"]


def test_a_bad_retry_combination_is_reported_without_internal_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry's own check runs at start-up, and its message names no stand-in."""
    monkeypatch.setenv("BUTTRESS_RETRIES__X__WAIT_INITIAL", "5")
    monkeypatch.setenv("BUTTRESS_RETRIES__X__WAIT_MAX", "1")
    with pytest.raises(ConfigurationError, match="BUTTRESS_RETRIES__X") as raised:
        load_settings()
    assert "settings-check" not in str(raised.value)
    assert "wait_max" in str(raised.value)

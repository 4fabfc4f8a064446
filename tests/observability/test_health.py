"""Health checks: concurrency, timeouts, grading, and the queue, cache and breaker checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buttress.cache import Cache, MemoryCache, RedisStore
from buttress.clock import ManualClock
from buttress.observability._health import (
    ComponentHealth,
    Health,
    HealthCheck,
    HealthStatus,
    breakers_check,
    cache_check,
    queue_check,
)
from buttress.resilience import CircuitBreaker, Registry
from buttress.tasks import Queue
from servers import RedisServer

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY


def returning(status: HealthStatus, **detail: object) -> HealthCheck:
    async def check() -> ComponentHealth:
        return ComponentHealth(status, detail=dict(detail))

    return check


def raising(exc: Exception) -> HealthCheck:
    async def check() -> ComponentHealth:
        raise exc

    return check


def never() -> HealthCheck:
    async def check() -> ComponentHealth:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return check


@pytest.fixture
async def sqlite_queue(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Queue]:
    queue = Queue.from_url(f"sqlite:///{tmp_path}/queue.db", clock=clock)
    yield queue
    queue.close()


async def test_all_healthy_is_healthy_and_json_able(clock: ManualClock) -> None:
    """Every component healthy: the report is healthy and to_dict() is plain JSON."""
    health = Health(clock=clock)
    health.add("a", returning(HEALTHY, size=3))
    health.add("b", returning(HEALTHY))
    report = await health.check()
    assert HEALTHY == report.status
    assert ["a", "b"] == list(report.components)
    data = json.loads(json.dumps(report.to_dict()))
    assert "healthy" == data["status"]
    assert {"status": "healthy", "latency_seconds": 0.0, "detail": {"size": 3}, "error": None} == (
        data["components"]["a"]
    )
    assert report.checked_at.isoformat() == data["checked_at"]


async def test_no_checks_is_healthy() -> None:
    """An empty Health reports healthy with no components."""
    report = await Health().check()
    assert HEALTHY == report.status
    assert {} == report.components


async def test_grading_critical_and_non_critical_components(clock: ManualClock) -> None:
    """Critical unhealthy -> unhealthy; otherwise anything not healthy -> degraded."""
    health = Health(clock=clock)
    health.add("optional", returning(UNHEALTHY))
    health.add("slowish", returning(DEGRADED), critical=True)
    assert DEGRADED == (await health.check()).status
    health.add("database", raising(ConnectionError("refused")), critical=True)
    report = await health.check()
    assert UNHEALTHY == report.status
    assert DEGRADED == report.components["slowish"].status


async def test_checks_run_concurrently(clock: ManualClock) -> None:
    """Two checks that each wait for the other to have started can only finish together."""
    first_in, second_in = asyncio.Event(), asyncio.Event()

    def waiting_for(mine: asyncio.Event, theirs: asyncio.Event) -> HealthCheck:
        async def check() -> ComponentHealth:
            mine.set()
            await theirs.wait()
            return ComponentHealth(HEALTHY)

        return check

    health = Health(clock=clock)
    health.add("first", waiting_for(first_in, second_in))
    health.add("second", waiting_for(second_in, first_in))
    report = await asyncio.wait_for(health.check(), 5)  # a deadlock guard, not timing
    assert HEALTHY == report.status


async def test_a_check_past_its_timeout_is_unhealthy(clock: ManualClock) -> None:
    """A check that never answers is cut off when the timeout passes on the clock."""
    health = Health(timeout=2.0, clock=clock)
    health.add("stuck", never(), critical=True)
    health.add("quick", returning(HEALTHY))
    running = asyncio.ensure_future(health.check())
    await clock.advance_async(1.9)
    assert not running.done()
    await clock.advance_async(0.1)
    report = await running
    assert UNHEALTHY == report.status
    stuck = report.components["stuck"]
    assert UNHEALTHY == stuck.status
    assert "timed out after 2 s" == stuck.error
    assert 2.0 == stuck.latency_seconds
    assert HEALTHY == report.components["quick"].status
    assert 0 == clock.sleepers  # the timers of finished checks are gone


async def test_a_per_check_timeout_overrides_the_default(clock: ManualClock) -> None:
    """add(timeout=) sets that check's own limit."""
    health = Health(timeout=10.0, clock=clock)
    health.add("stuck", never(), timeout=0.5)
    running = asyncio.ensure_future(health.check())
    await clock.advance_async(0.5)
    report = await running
    assert "timed out after 0.5 s" == report.components["stuck"].error


async def test_a_real_timeout_on_the_system_clock() -> None:
    """Without a manual clock the timeout is real time (short here: 0.05 s)."""
    health = Health(timeout=0.05)
    health.add("stuck", never())
    report = await health.check()
    assert DEGRADED == report.status
    assert UNHEALTHY == report.components["stuck"].status


async def test_errors_name_the_exception_and_hide_secrets(clock: ManualClock) -> None:
    """A raising check's error is its type and message, with secrets redacted."""
    health = Health(clock=clock)
    health.add(
        "redis",
        raising(ConnectionError("redis://app:hunter2@cache:6379 refused password=hunter2")),
    )
    error = (await health.check()).components["redis"].error
    assert error is not None
    assert error.startswith("ConnectionError: redis://app:")
    assert "hunter2" not in error


async def test_a_check_returning_the_wrong_type_is_unhealthy(clock: ManualClock) -> None:
    """A check must return ComponentHealth; anything else is reported, not raised."""

    async def sloppy() -> ComponentHealth:
        return "ok"  # type: ignore[return-value]

    def not_async() -> ComponentHealth:
        return ComponentHealth(HEALTHY)

    health = Health(clock=clock)
    health.add("sloppy", sloppy)
    health.add("sync", not_async)  # type: ignore[arg-type]
    report = await health.check()
    assert "the check returned str, not ComponentHealth" == report.components["sloppy"].error
    assert UNHEALTHY == report.components["sync"].status
    assert (report.components["sync"].error or "").startswith("TypeError:")


def test_bad_arguments_are_refused() -> None:
    """Duplicate names, bad timeouts and non-callables get clear errors."""
    with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
        Health(timeout=0)
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        Health(timeout=float("nan"))
    health = Health()
    health.add("a", returning(HEALTHY))
    with pytest.raises(ValueError, match="'a' is already added"):
        health.add("a", returning(HEALTHY))
    with pytest.raises(ValueError, match="non-empty string"):
        health.add("", returning(HEALTHY))
    with pytest.raises(TypeError, match="async callable"):
        health.add("b", "check")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="True or False"):
        health.add("c", returning(HEALTHY), critical="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Health\.add: timeout"):
        health.add("d", returning(HEALTHY), timeout=-1)
    assert ["a"] == health.names


async def test_queue_check_reads_the_backend(sqlite_queue: Queue) -> None:
    """A working queue is healthy, with its counts in the detail."""

    @sqlite_queue.task
    async def job() -> None:
        return None

    await job.enqueue()
    result = await queue_check(sqlite_queue)()
    assert HEALTHY == result.status
    assert 1 == result.detail["queued"]
    assert 0 == result.detail["dead"]


async def test_a_closed_queue_makes_a_critical_check_unhealthy(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A queue whose backend fails is unhealthy, and, as critical, so is the service."""
    queue = Queue.from_url(f"sqlite:///{tmp_path}/closed.db", clock=clock)
    queue.close()
    health = Health(clock=clock)
    health.add("queue", queue_check(queue), critical=True)
    report = await health.check()
    assert UNHEALTHY == report.status
    assert (report.components["queue"].error or "").startswith("RuntimeError:")


@pytest.fixture
async def redis_cache(fresh_redis: RedisServer, clock: ManualClock) -> AsyncIterator[Cache]:
    cache = Cache(
        [MemoryCache(10, clock=clock), RedisStore(fresh_redis.url)],
        name="pages",
        clock=clock,
        coherence=False,
        tier_failure_threshold=1,
    )
    yield cache
    await cache.close()


async def test_cache_check_is_healthy_with_every_tier_up(redis_cache: Cache) -> None:
    """Memory and a live Redis: healthy, with the tiers listed."""
    result = await cache_check(redis_cache)()
    assert HEALTHY == result.status
    assert {"tiers": ["memory", "redis"]} == result.detail


async def test_cache_check_pings_a_redis_that_died_unnoticed(
    redis_cache: Cache, fresh_redis: RedisServer
) -> None:
    """A killed Redis the cache has not called yet still looks available: the ping finds it."""
    await redis_cache.set("k", "v")
    fresh_redis.kill()
    assert redis_cache.stats().tier("redis").available
    result = await cache_check(redis_cache)()
    assert DEGRADED == result.status
    assert ["redis"] == result.detail["unavailable"]
    assert "redis" in result.detail["errors"]
    # The probe went to the store, not through the cache: no error counted, no breaker trip.
    assert 0 == redis_cache.stats().tier("redis").errors
    assert redis_cache.stats().tier("redis").available


async def test_cache_check_reports_a_tier_behind_an_open_breaker(
    redis_cache: Cache, fresh_redis: RedisServer
) -> None:
    """Once the cache's breaker skips Redis, the check is degraded without pinging."""
    fresh_redis.kill()
    assert "loaded" == await redis_cache.get_or_set("x", lambda: "loaded")
    assert not redis_cache.stats().tier("redis").available
    health = Health()
    health.add("cache", cache_check(redis_cache.sync))  # either face works
    report = await health.check()
    assert DEGRADED == report.status
    assert "opened its breaker" in report.components["cache"].detail["errors"]["redis"]


async def test_cache_check_of_a_dead_port(clock: ManualClock) -> None:
    """A Redis tier pointing at a closed port is degraded."""
    cache = Cache(
        [MemoryCache(10, clock=clock), RedisStore("redis://127.0.0.1:1/0")],
        clock=clock,
        coherence=False,
    )
    try:
        result = await cache_check(cache)()
        assert DEGRADED == result.status
        assert ["redis"] == result.detail["unavailable"]
    finally:
        await cache.close()


def test_cache_check_refuses_a_non_cache() -> None:
    """cache_check names what it needs."""
    with pytest.raises(TypeError, match="Cache or SyncCache"):
        cache_check(object())  # type: ignore[arg-type]


async def test_breakers_check(clock: ManualClock) -> None:
    """Healthy while all breakers are closed; degraded, naming them, when open or half-open."""
    registry = Registry()
    payments = CircuitBreaker("payments", recovery_timeout=10, clock=clock, registry=registry)
    search = CircuitBreaker("search", clock=clock, registry=registry)
    check = breakers_check(registry)
    result = await check()
    assert HEALTHY == result.status
    assert {"breakers": 2, "open": [], "half_open": []} == result.detail
    payments.force_open()
    result = await check()
    assert DEGRADED == result.status
    assert ["payments"] == result.detail["open"]
    payments.reset()

    def refused() -> None:
        raise ConnectionError("refused")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            payments.call(refused)
    clock.advance(10)
    result = await check()
    assert DEGRADED == result.status
    assert ["payments"] == result.detail["half_open"]
    health = Health(clock=clock)
    health.add("breakers", check, critical=True)
    assert DEGRADED == (await health.check()).status  # an open breaker never fails readiness
    assert "closed" == search.state.value
    with pytest.raises(TypeError, match="buttress Registry"):
        breakers_check(object())  # type: ignore[arg-type]

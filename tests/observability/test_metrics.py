"""Prometheus metrics read from real primitives, caches, queues and workers."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from buttress.cache import Cache, MemoryCache, RedisStore
from buttress.clock import ManualClock
from buttress.errors import BulkheadFullError, CircuitOpenError
from buttress.observability._metrics import Metrics
from buttress.resilience import Bulkhead, CircuitBreaker, RateLimiter, Registry, ResilienceEvent
from buttress.tasks import Queue
from buttress.tasks._queue import Backoff
from buttress.tasks._worker import Worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of a render, keyed by name and labels, as Prometheus parses it."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(found: Samples, metric: str, /, **labels: str) -> float:
    return found[(metric, frozenset(labels.items()))]


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
async def sqlite_queue(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Queue]:
    queue = Queue.from_url(f"sqlite:///{tmp_path}/queue.db", clock=clock)
    yield queue
    queue.close()


def test_a_private_prometheus_registry_by_default(registry: Registry) -> None:
    """Each Metrics has its own CollectorRegistry unless one is given."""
    first, second = Metrics(registry), Metrics(registry)
    assert first.prometheus_registry is not second.prometheus_registry
    shared = CollectorRegistry()
    assert Metrics(registry, prometheus_registry=shared).prometheus_registry is shared


def test_bad_arguments_are_refused(registry: Registry) -> None:
    """A registry that is not a buttress Registry, or a non-queue, is named in the error."""
    with pytest.raises(TypeError, match="buttress Registry"):
        Metrics(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CollectorRegistry"):
        Metrics(registry, prometheus_registry=object())  # type: ignore[arg-type]
    metrics = Metrics(registry)
    with pytest.raises(TypeError, match="Cache or SyncCache"):
        metrics.watch_cache(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        metrics.watch_queue(object(), name="")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a Queue"):
        metrics.watch_queue(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a Worker"):
        metrics.watch_worker(object())  # type: ignore[arg-type]


def test_breaker_state_and_calls_are_read_at_scrape_time(
    registry: Registry, clock: ManualClock
) -> None:
    """A breaker's state is one-hot across the three states; calls are counted by outcome."""
    breaker = CircuitBreaker("payments", failure_threshold=2, clock=clock, registry=registry)
    metrics = Metrics(registry)
    breaker.call(lambda: 1)

    def boom() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    found = samples(metrics)
    assert 1.0 == value(found, "buttress_circuit_breaker_state", name="payments", state="open")
    assert 0.0 == value(found, "buttress_circuit_breaker_state", name="payments", state="closed")
    assert 0.0 == value(found, "buttress_circuit_breaker_state", name="payments", state="half_open")
    calls = "buttress_circuit_breaker_calls_total"
    assert 1.0 == value(found, calls, name="payments", outcome="success")
    assert 2.0 == value(found, calls, name="payments", outcome="failure")
    assert 0.0 == value(found, calls, name="payments", outcome="ignored")
    assert 1.0 == value(found, calls, name="payments", outcome="rejected")
    assert 0.0 == value(found, "buttress_circuit_breaker_slow_calls_total", name="payments")
    clock.advance(30)  # past the recovery timeout: the next scrape sees half-open
    found = samples(metrics)
    assert 1.0 == value(found, "buttress_circuit_breaker_state", name="payments", state="half_open")


def test_bulkhead_gauges_and_rejections(registry: Registry) -> None:
    """A bulkhead shows its running calls while they run, its limits and its rejections."""
    bulkhead = Bulkhead(1, name="db", registry=registry)
    metrics = Metrics(registry)
    during: list[Samples] = []

    def inside() -> None:
        during.append(samples(metrics))
        with pytest.raises(BulkheadFullError):
            bulkhead.call(lambda: None)

    bulkhead.call(inside)
    assert 1.0 == value(during[0], "buttress_bulkhead_active", name="db")
    assert 0.0 == value(during[0], "buttress_bulkhead_queued", name="db")
    found = samples(metrics)
    assert 0.0 == value(found, "buttress_bulkhead_active", name="db")
    assert 1.0 == value(found, "buttress_bulkhead_max_concurrent", name="db")
    assert 0.0 == value(found, "buttress_bulkhead_max_queue", name="db")
    assert 1.0 == value(found, "buttress_bulkhead_rejected_total", name="db")


def test_rate_limiter_decisions(registry: Registry, clock: ManualClock) -> None:
    """Allowed and rejected decisions are counted under one metric, by decision."""
    limiter = RateLimiter(2, per=1, name="api", clock=clock, registry=registry)
    metrics = Metrics(registry)
    outcomes = [limiter.try_acquire("u1") for _ in range(3)]
    assert [True, True, False] == outcomes
    found = samples(metrics)
    decisions = "buttress_rate_limiter_decisions_total"
    assert 2.0 == value(found, decisions, name="api", decision="allowed")
    assert 1.0 == value(found, decisions, name="api", decision="rejected")
    assert 1.0 == value(found, "buttress_rate_limiter_keys", name="api")


def test_a_dropped_primitive_leaves_the_output(registry: Registry) -> None:
    """The buttress registry is weak: a breaker the program dropped is no longer exposed."""
    breaker = CircuitBreaker("temporary", registry=registry)
    metrics = Metrics(registry)
    state = "buttress_circuit_breaker_state"
    assert (state, frozenset({("name", "temporary"), ("state", "closed")})) in samples(metrics)
    del breaker
    gc.collect()
    assert not any(name == state for name, _ in samples(metrics))


async def test_a_memory_cache_is_exposed_per_tier(registry: Registry, clock: ManualClock) -> None:
    """Hits, misses, loads and availability of a watched memory-only cache."""
    cache = Cache([MemoryCache(10, clock=clock)], name="users", clock=clock)
    metrics = Metrics(registry)
    metrics.watch_cache(cache)
    await cache.set("a", 1)
    assert 1 == await cache.get("a")
    assert None is await cache.get("b")
    assert 2 == await cache.get_or_set("c", lambda: 2)
    found = samples(metrics)
    tier = {"cache": "users", "tier": "memory"}
    stats = cache.stats().tier("memory")
    assert 1.0 == value(found, "buttress_cache_hits_total", **tier)
    assert stats.misses >= 2
    assert stats.misses == value(found, "buttress_cache_misses_total", **tier)
    assert 0.0 == value(found, "buttress_cache_errors_total", **tier)
    assert 1.0 == value(found, "buttress_cache_tier_available", **tier)
    assert 1.0 == value(found, "buttress_cache_loads_total", cache="users")
    await cache.close()


async def test_a_lost_redis_tier_shows_errors_and_unavailability(
    fresh_redis: Any, registry: Registry, clock: ManualClock
) -> None:
    """With Redis killed, the cache counts the tier's errors and marks it unavailable."""
    cache = Cache(
        [MemoryCache(10, clock=clock), RedisStore(fresh_redis.url)],
        name="pages",
        clock=clock,
        coherence=False,
        tier_failure_threshold=1,
    )
    metrics = Metrics(registry)
    metrics.watch_cache(cache)
    await cache.set("k", "v")
    found = samples(metrics)
    assert 1.0 == value(found, "buttress_cache_tier_available", cache="pages", tier="redis")
    fresh_redis.kill()
    assert "loaded" == await cache.get_or_set("other", lambda: "loaded")
    found = samples(metrics)
    redis_tier = {"cache": "pages", "tier": "redis"}
    assert 0.0 == value(found, "buttress_cache_tier_available", **redis_tier)
    assert 1.0 <= value(found, "buttress_cache_errors_total", **redis_tier)
    assert 1.0 == value(found, "buttress_cache_tier_available", cache="pages", tier="memory")
    await cache.close()


async def test_a_watched_cache_is_held_weakly_through_any_face(
    registry: Registry, clock: ManualClock
) -> None:
    """Watching ``cache.sync`` keeps the cache exposed while it lives, and not after."""
    cache = Cache([MemoryCache(10, clock=clock)], name="faces", clock=clock)
    metrics = Metrics(registry)
    metrics.watch_cache(cache.sync)  # a face made on the spot and dropped at once
    gc.collect()
    loads = "buttress_cache_loads_total"
    assert 0.0 == value(samples(metrics), loads, cache="faces")
    await cache.close()
    del cache
    gc.collect()
    assert loads not in names(samples(metrics))


async def test_queue_refresh_exposes_every_status_and_priority(
    sqlite_queue: Queue, registry: Registry, clock: ManualClock
) -> None:
    """After refresh() the queue gauges hold the backend's counts, zeros included."""

    @sqlite_queue.task
    async def job() -> None:
        return None

    await sqlite_queue.enqueue(job, priority="high")
    await sqlite_queue.enqueue(job)
    await sqlite_queue.enqueue(job, delay=60)
    metrics = Metrics(registry)
    metrics.watch_queue(sqlite_queue, name="main")
    assert "buttress_queue_up" not in names(samples(metrics))  # nothing read yet
    clock.advance(5)
    await metrics.refresh()
    found = samples(metrics)
    assert 1.0 == value(found, "buttress_queue_up", queue="main")
    tasks = "buttress_queue_tasks"
    assert 2.0 == value(found, tasks, queue="main", status="queued")
    assert 1.0 == value(found, tasks, queue="main", status="scheduled")
    for status in ("running", "succeeded", "failed", "dead", "cancelled"):
        assert 0.0 == value(found, tasks, queue="main", status=status)
    waiting = "buttress_queue_waiting"
    assert 1.0 == value(found, waiting, queue="main", priority="high")
    assert 2.0 == value(found, waiting, queue="main", priority="normal")
    for priority in ("critical", "low", "bulk"):
        assert 0.0 == value(found, waiting, queue="main", priority=priority)
    assert 0.0 == value(found, "buttress_queue_dead_letters", queue="main")
    assert 5.0 == value(found, "buttress_queue_oldest_waiting_seconds", queue="main")


async def test_a_failing_queue_keeps_its_last_numbers_and_reports_down(
    tmp_path: Path, registry: Registry, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """refresh() never raises: a broken backend is logged, its snapshot kept, up set to 0."""
    queue = Queue.from_url(f"sqlite:///{tmp_path}/broken.db", clock=clock)

    @queue.task
    async def job() -> None:
        return None

    await queue.enqueue(job)
    metrics = Metrics(registry, clock=clock)
    metrics.watch_queue(queue)
    await metrics.refresh()
    queue.close()  # every backend call raises from now on
    clock.advance(metrics.refresh_interval)
    with caplog.at_level(logging.ERROR, logger="buttress.observability"):
        await metrics.refresh()
    assert "reading the stats of queue 'default' failed" in caplog.text
    found = samples(metrics)
    assert 0.0 == value(found, "buttress_queue_up", queue="default")
    assert 1.0 == value(found, "buttress_queue_tasks", queue="default", status="queued")


async def test_queue_stats_are_read_at_most_once_per_interval_however_hard_scraped(
    sqlite_queue: Queue, registry: Registry, clock: ManualClock
) -> None:
    """/metrics answers anyone: a burst of scrapes costs one stats query per interval."""

    @sqlite_queue.task
    async def job() -> None:
        return None

    metrics = Metrics(registry, refresh_interval=1.0, clock=clock)
    metrics.watch_queue(sqlite_queue)
    await metrics.refresh()
    await job.enqueue()
    for _ in range(5):
        await metrics.refresh()
    assert 0.0 == value(samples(metrics), "buttress_queue_tasks", queue="default", status="queued")
    clock.advance(1.0)
    await metrics.refresh()
    assert 1.0 == value(samples(metrics), "buttress_queue_tasks", queue="default", status="queued")
    with pytest.raises(ValueError, match="refresh_interval"):
        Metrics(registry, refresh_interval=-1)


async def test_dead_letters_are_counted(
    sqlite_queue: Queue, registry: Registry, clock: ManualClock
) -> None:
    """A task out of retries shows in the dead-letter gauge after a refresh."""

    @sqlite_queue.task
    async def broken() -> None:
        raise ValueError("nope")

    await broken.enqueue()
    await Worker(sqlite_queue, schedule=False).run(until_empty=True)
    metrics = Metrics(registry)
    metrics.watch_queue(sqlite_queue)
    await metrics.refresh()
    found = samples(metrics)
    assert 1.0 == value(found, "buttress_queue_dead_letters", queue="default")
    assert 1.0 == value(found, "buttress_queue_tasks", queue="default", status="dead")


async def test_worker_runs_feed_the_task_histogram(
    sqlite_queue: Queue, registry: Registry, clock: ManualClock
) -> None:
    """Succeeded, retried and dead attempts are counted and timed on the worker's clock."""

    @sqlite_queue.task
    async def slow() -> None:
        clock.advance(0.3)  # the task "runs" 0.3 s on the queue's clock

    @sqlite_queue.task(retries=1, backoff=Backoff(base=0))
    async def failing() -> None:
        clock.advance(2)
        raise RuntimeError("always")

    await slow.enqueue()
    await slow.enqueue()
    await failing.enqueue()
    worker = Worker(sqlite_queue, concurrency=1, schedule=False)
    metrics = Metrics(registry)
    metrics.watch_worker(worker)
    await worker.run(until_empty=True)
    found = samples(metrics)
    total, hist = "buttress_tasks_total", "buttress_task_duration_seconds"
    assert 2.0 == value(found, total, task="slow", outcome="succeeded")
    assert 1.0 == value(found, total, task="failing", outcome="retried")
    assert 1.0 == value(found, total, task="failing", outcome="dead")
    assert 2.0 == value(found, hist + "_count", task="slow", outcome="succeeded")
    assert pytest.approx(0.6) == value(found, hist + "_sum", task="slow", outcome="succeeded")
    assert 0.0 == value(found, hist + "_bucket", task="slow", outcome="succeeded", le="0.25")
    assert 2.0 == value(found, hist + "_bucket", task="slow", outcome="succeeded", le="0.5")
    assert pytest.approx(2.0) == value(found, hist + "_sum", task="failing", outcome="dead")


async def test_a_worker_listener_that_raises_never_breaks_the_worker(
    sqlite_queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """Worker.add_listener: a failing listener is logged and the task still succeeds;
    ``kinds`` narrows what a listener hears, as for the resilience strategies."""
    seen: list[tuple[str, str, object]] = []

    def broken(event: ResilienceEvent) -> None:
        raise RuntimeError("listener bug")

    def recording(event: ResilienceEvent) -> None:
        seen.append((event.kind, event.attributes["task"].name, event.attributes["seconds"]))

    @sqlite_queue.task
    async def job() -> int:
        return 1

    task = await job.enqueue()
    worker = Worker(sqlite_queue, schedule=False)
    worker.add_listener(broken)
    worker.add_listener(recording, kinds=["succeeded"])
    with caplog.at_level(logging.ERROR):
        await worker.run(until_empty=True)
    assert "succeeded" == (await sqlite_queue.get(task.id)).status.value
    assert [("succeeded", "job", 0.0)] == seen
    assert "listener bug" in caplog.text
    worker.remove_listener(recording)
    with pytest.raises(ValueError, match="not a listener"):
        worker.remove_listener(recording)
    with pytest.raises(TypeError, match="callable"):
        worker.add_listener("not callable")  # type: ignore[arg-type]


def test_http_requests_are_counted_and_timed(registry: Registry) -> None:
    """observe_request counts by method, route and status, and times by method and route."""
    metrics = Metrics(registry)
    metrics.observe_request("GET", "/api/v1/tasks/{id}", 200, 0.02)
    metrics.observe_request("GET", "/api/v1/tasks/{id}", 200, 0.2)
    metrics.observe_request("GET", "/api/v1/tasks/{id}", 404, 0.001)
    found = samples(metrics)
    route = "/api/v1/tasks/{id}"
    requests = "buttress_http_requests_total"
    assert 2.0 == value(found, requests, method="GET", route=route, status="200")
    assert 1.0 == value(found, requests, method="GET", route=route, status="404")
    duration = "buttress_http_request_duration_seconds"
    assert 3.0 == value(found, duration + "_count", method="GET", route=route)
    assert pytest.approx(0.221) == value(found, duration + "_sum", method="GET", route=route)
    assert 1.0 == value(found, duration + "_bucket", method="GET", route=route, le="0.005")


def test_metric_names_follow_prometheus_conventions(registry: Registry) -> None:
    """Counters end in _total, durations are in seconds, and all share the buttress_ prefix."""
    CircuitBreaker("b", registry=registry)
    metrics = Metrics(registry)
    metrics.observe_request("GET", "/", 200, 0.1)
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        assert family.name.startswith("buttress_")
        if family.type == "histogram":
            assert family.name.endswith("_seconds")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name

"""The tiered cache's logic on a memory tier alone: no server needed to prove it."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from buttress.cache import MISSING, Cache, MemoryCache, SyncCache, cached
from buttress.clock import ManualClock
from buttress.errors import DependencyFailureError


def memory_cache(clock: ManualClock, **options: Any) -> Cache:
    return Cache([MemoryCache(1000, clock=clock)], clock=clock, **options)


async def test_set_then_get_returns_the_value_and_a_miss_returns_the_default(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock)
    await cache.set("a", {"x": 1})
    assert {"x": 1} == await cache.get("a")
    assert await cache.get("b") is None
    assert "fallback" == await cache.get("b", "fallback")


async def test_a_stored_none_is_a_hit_not_a_miss(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set("none", None)
    assert await cache.get("none", MISSING) is None
    assert await cache.get("absent", MISSING) is MISSING
    assert await cache.contains("none")
    assert not await cache.contains("absent")


async def test_entries_expire_after_their_ttl_then_the_default_ttl(clock: ManualClock) -> None:
    cache = memory_cache(clock, ttl=100)
    await cache.set("short", 1, ttl=10)
    await cache.set("default", 2)
    clock.advance(10)
    assert await cache.get("short") is None
    assert 2 == await cache.get("default")
    clock.advance(90)
    assert await cache.get("default") is None


async def test_category_ttls_apply_and_an_unknown_category_is_refused(clock: ManualClock) -> None:
    cache = memory_cache(clock, ttl=1000, ttls={"agent_response": 1800, "analytics": 600})
    await cache.set("report", 1, category="analytics")
    await cache.set("answer", 2, category="agent_response")
    clock.advance(600)
    assert await cache.get("report") is None
    assert 2 == await cache.get("answer")
    with pytest.raises(ValueError, match="unknown cache category 'nope'"):
        await cache.set("x", 1, category="nope")


async def test_zero_ttl_stores_nothing_and_removes_the_old_value(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set("k", 1)
    await cache.set("k", 2, ttl=0)
    assert await cache.get("k") is None


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (42, TypeError, "cache key must be a str, got int"),
        (b"bytes", TypeError, "cache key must be a str, got bytes"),
        ("", ValueError, "cache key must not be empty"),
    ],
)
async def test_a_bad_key_gets_a_clear_error(
    clock: ManualClock, key: Any, error: type[Exception], message: str
) -> None:
    cache = memory_cache(clock)
    with pytest.raises(error, match=message):
        await cache.set(key, 1)
    with pytest.raises(error, match=message):
        await cache.get(key)


async def test_a_negative_ttl_raises_value_error_and_stores_nothing(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    with pytest.raises(ValueError, match="ttl must be >= 0"):
        await cache.set("k", 1, ttl=-1)
    assert await cache.get("k", MISSING) is MISSING


async def test_bad_options_name_the_option() -> None:
    with pytest.raises(ValueError, match="namespace"):
        Cache([MemoryCache(10)], namespace="has space")
    with pytest.raises(ValueError, match="stale_ttl"):
        Cache([MemoryCache(10)], stale_ttl=-1)
    with pytest.raises(ValueError, match="refresh_ahead"):
        Cache([MemoryCache(10)], refresh_ahead=1.5)
    with pytest.raises(ValueError, match="only be the first tier"):
        Cache([MemoryCache(10), MemoryCache(10)])
    with pytest.raises(ValueError, match="at least one tier"):
        Cache([])
    with pytest.raises(ValueError, match=r"writer= .* or write_behind="):
        Cache([MemoryCache(10)], writer=lambda k, v: None, write_behind=lambda items: None)
    with pytest.raises(ValueError, match="unsupported cache URL"):
        Cache.from_url("ftp://example")


async def test_get_many_and_set_many(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set_many({"a": 1, "b": 2}, ttl=5)
    assert {"a": 1, "b": 2} == await cache.get_many(["a", "b", "c"])
    clock.advance(5)
    assert {} == await cache.get_many(["a", "b"])


async def test_delete_removes_keys(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set_many({"a": 1, "b": 2, "c": 3})
    await cache.delete("a", "b")
    assert {"c": 3} == await cache.get_many(["a", "b", "c"])


async def test_delete_pattern_and_clear(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set_many({"user:1": 1, "user:2": 2, "order:1": 3})
    assert 2 == await cache.delete_pattern("user:*")
    assert {"order:1": 3} == await cache.get_many(["user:1", "user:2", "order:1"])
    await cache.clear()
    assert await cache.get("order:1") is None


async def test_get_or_set_loads_once_and_then_serves_the_cached_value(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        return f"v{calls}"

    assert "v1" == await cache.get_or_set("k", loader, ttl=10)
    assert "v1" == await cache.get_or_set("k", loader, ttl=10)
    clock.advance(10)
    assert "v2" == await cache.get_or_set("k", loader, ttl=10)
    assert 2 == calls


async def test_a_hundred_concurrent_misses_run_the_loader_once(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    calls = 0
    release = asyncio.Event()

    async def loader() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 7

    tasks = [asyncio.ensure_future(cache.get_or_set("hot", loader)) for _ in range(100)]
    await asyncio.sleep(0)
    release.set()
    assert [7] * 100 == await asyncio.gather(*tasks)
    assert 1 == calls
    assert 99 == cache.stats().coalesced


async def test_single_flight_shares_a_failure_then_forgets_the_key(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    release = asyncio.Event()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ConnectionError("upstream down")

    tasks = [asyncio.ensure_future(cache.get_or_set("k", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert 1 == calls

    async def working() -> int:
        return 1

    assert 1 == await cache.get_or_set("k", working)  # the failed flight is gone


async def test_a_cancelled_caller_does_not_cancel_the_load_others_wait_for(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock)
    release = asyncio.Event()

    async def loader() -> int:
        await release.wait()
        return 5

    first = asyncio.ensure_future(cache.get_or_set("k", loader))
    second = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert 5 == await second
    assert first.cancelled()
    assert 0 == cache._core.async_runtime.flights_in_progress()


async def test_when_every_caller_gives_up_the_load_is_cancelled_and_forgotten(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock)
    cancelled = asyncio.Event()

    async def loader() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    task = asyncio.ensure_future(cache.get_or_set("k", loader))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    await asyncio.sleep(0)
    assert 0 == cache._core.async_runtime.flights_in_progress()


async def test_stale_if_error_serves_the_expired_value_marked_stale(clock: ManualClock) -> None:
    cache = memory_cache(clock, stale_ttl=60)
    await cache.set("k", "old", ttl=10)
    clock.advance(15)

    def broken() -> str:
        raise ConnectionError("upstream down")

    result = await cache.load("k", broken)
    assert ("old", True, "stale") == (result.value, result.stale, result.source)
    assert 1 == cache.stats().stale_served
    assert await cache.get("k") is None  # a plain read never returns a stale value
    clock.advance(60)  # past the grace period: the error surfaces
    with pytest.raises(ConnectionError):
        await cache.load("k", broken)


async def test_refresh_ahead_reloads_in_the_background_and_serves_the_current_value(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock, refresh_ahead=0.2)
    version = 0

    async def loader() -> int:
        nonlocal version
        version += 1
        return version

    assert 1 == await cache.get_or_set("k", loader, ttl=100)
    clock.advance(50)
    assert 1 == await cache.get_or_set("k", loader, ttl=100)  # early in the TTL: no refresh
    await asyncio.sleep(0)
    assert 1 == version
    clock.advance(35)  # in the last 20 %
    assert 1 == await cache.get_or_set("k", loader, ttl=100)  # callers keep the current value
    await cache._core.async_runtime.drain()
    assert 2 == version
    assert 2 == await cache.get("k")
    assert 1 == cache.stats().refreshes


async def test_xfetch_recomputes_an_expensive_value_before_it_expires(clock: ManualClock) -> None:
    cache = memory_cache(clock, early_expiration=1.0)

    async def slow() -> str:
        clock.advance(5)  # the loader takes 5 s of cache time
        return "v"

    await cache.get_or_set("k", slow, ttl=100)
    loads = cache.stats().loads
    clock.advance(99.9)  # 0.1 s before expiry, with delta 5 s: almost surely early
    for _ in range(20):
        await cache.get_or_set("k", slow, ttl=100)
        if cache.stats().loads > loads:
            break
    assert cache.stats().loads > loads


async def test_tags_invalidate_every_entry_carrying_them(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set("profile:1", "p1", tags=["user:1"])
    await cache.set("orders:1", "o1", tags=["user:1", "orders"])
    await cache.set("profile:2", "p2", tags=["user:2"])
    await cache.invalidate_tags(["user:1"])
    assert {"profile:2": "p2"} == await cache.get_many(["profile:1", "orders:1", "profile:2"])
    with pytest.raises(TypeError, match="not one string"):
        await cache.invalidate_tags("user:2")


async def test_write_through_writes_the_backing_store_first(clock: ManualClock) -> None:
    written: list[tuple[str, Any]] = []

    async def writer(key: str, value: Any) -> None:
        if value == "bad":
            raise ValueError("rejected by the database")
        written.append((key, value))

    cache = memory_cache(clock, writer=writer)
    await cache.set("k", "good")
    assert [("k", "good")] == written
    with pytest.raises(ValueError, match="rejected"):
        await cache.set("k", "bad")
    assert "good" == await cache.get("k")  # a failed write leaves the cache as it was


async def test_write_around_writes_then_invalidates(clock: ManualClock) -> None:
    written: list[tuple[str, Any]] = []
    cache = memory_cache(clock, writer=lambda k, v: written.append((k, v)))
    await cache.set("k", "cached")
    await cache.write_around("k", "new")
    assert ("k", "new") == written[-1]
    assert await cache.get("k") is None


async def test_read_through_calls_the_cache_loader_with_the_key(clock: ManualClock) -> None:
    seen: list[str] = []

    def loader(key: str) -> str:
        seen.append(key)
        return key.upper()

    cache = memory_cache(clock, loader=loader)
    assert "ABC" == await cache.get("abc")
    assert "ABC" == await cache.get("abc")
    assert ["abc"] == seen


async def test_write_behind_flushes_by_batch_size(clock: ManualClock) -> None:
    batches: list[list[tuple[str, Any]]] = []
    cache = memory_cache(clock, write_behind=batches.append, write_behind_batch=3)
    await cache.set("a", 1)
    await cache.set("b", 2)
    assert [] == batches
    await cache.set("c", 3)
    await cache._core.async_runtime.drain()
    assert [[("a", 1), ("b", 2), ("c", 3)]] == batches
    assert 1 == await cache.get("a")  # the cache had it at once
    await cache.close()


async def test_write_behind_flushes_by_interval_and_on_close(clock: ManualClock) -> None:
    batches: list[list[tuple[str, Any]]] = []
    cache = memory_cache(clock, write_behind=batches.append, write_behind_interval=1.0)
    await cache.set("a", 1)
    await cache.set("a", 2)  # the last write of a key wins
    await clock.advance_async(1.0)
    assert [[("a", 2)]] == batches
    await cache.set("b", 3)
    await cache.close()
    assert [("b", 3)] == batches[-1]


async def test_a_failed_write_behind_flush_is_kept_retried_and_reported(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[list[tuple[str, Any]]] = []
    healthy = False

    def writer(items: list[tuple[str, Any]]) -> None:
        attempts.append(items)
        if not healthy:
            raise ConnectionError("database down")

    cache = memory_cache(clock, write_behind=writer, write_behind_interval=1.0)
    await cache.set("a", 1)
    assert not await cache.flush()
    assert 1 == cache.stats().write_behind_pending
    assert 1 == cache.stats().write_behind_failures
    assert "kept for retry" in caplog.text
    healthy = True
    assert await cache.flush()
    assert [("a", 1)] == attempts[-1]
    assert 0 == cache.stats().write_behind_pending
    await cache.close()


async def test_close_raises_when_write_behind_cannot_be_written_and_keeps_the_writes(
    clock: ManualClock,
) -> None:
    def writer(items: list[tuple[str, Any]]) -> None:
        raise ConnectionError("database down")

    clock = ManualClock(autojump=True)
    cache = memory_cache(clock, write_behind=writer)
    await cache.set("a", 1)
    with pytest.raises(DependencyFailureError, match="could not write 1 cache entries"):
        await cache.close()
    assert 1 == cache.stats().write_behind_pending


async def test_warm_loads_missing_keys_in_batches_with_bounded_concurrency(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock)
    await cache.set("k0", "cached")
    running = 0
    peak = 0
    batches: list[list[str]] = []

    async def loader(keys: list[str]) -> dict[str, str]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        batches.append(keys)
        await asyncio.sleep(0)
        running -= 1
        return {key: key.upper() for key in keys}

    report = await cache.warm([f"k{i}" for i in range(10)], loader, batch_size=3, concurrency=2)
    assert (9, 1, 0) == (report.loaded, report.skipped, report.failed)
    assert peak <= 2
    assert all(len(batch) <= 3 for batch in batches)
    assert "K5" == await cache.get("k5")
    assert "cached" == await cache.get("k0")


async def test_warm_reports_a_failed_batch_and_loads_the_others(clock: ManualClock) -> None:
    cache = memory_cache(clock)

    def loader(keys: list[str]) -> dict[str, int]:
        if "bad" in keys:
            raise ConnectionError("down")
        return dict.fromkeys(keys, 1)

    report = await cache.warm(["a", "b", "bad", "c"], loader, batch_size=2)
    assert (2, 0, 2) == (report.loaded, report.skipped, report.failed)


async def test_hot_keys_report_the_most_read_keys_without_the_namespace(
    clock: ManualClock,
) -> None:
    cache = memory_cache(clock)
    await cache.set_many({"hot": 1, "cold": 2})
    for _ in range(50):
        await cache.get("hot")
    await cache.get("cold")
    hot = cache.hot_keys(1)
    assert "hot" == hot[0][0]


async def test_sync_twin_shares_the_same_state(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    await cache.set("a", 1)
    assert 1 == cache.sync.get("a")
    cache.sync.set("b", 2)
    assert 2 == await cache.get("b")
    assert "b" in cache.sync


def test_sync_cache_single_flight_across_threads(clock: ManualClock) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock)
    calls = 0
    started = threading.Event()
    release = threading.Event()

    def loader() -> int:
        nonlocal calls
        calls += 1
        started.set()
        release.wait(5)
        return 3

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_set("k", loader)))
        for _ in range(20)
    ]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    while cache.stats().coalesced < 19:
        threading.Event().wait(0.001)
    release.set()
    for thread in threads:
        thread.join(5)
    assert [3] * 20 == results
    assert 1 == calls


def test_sync_cache_refuses_an_async_loader(clock: ManualClock) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock)

    async def loader() -> int:
        return 1

    with pytest.raises(TypeError, match="use the async Cache"):
        _ = cache.get_or_set("k", loader)


async def test_cached_decorator_memoises_by_arguments_and_invalidates(clock: ManualClock) -> None:
    cache = memory_cache(clock)
    calls: list[tuple[int, str]] = []

    @cached(cache, ttl=60, tags=["user:{user_id}"])
    async def profile(user_id: int, view: str = "full") -> str:
        calls.append((user_id, view))
        return f"{user_id}-{view}"

    assert "1-full" == await profile(1)
    assert "1-full" == await profile(user_id=1)  # same call, same key
    assert "1-short" == await profile(1, "short")
    assert [(1, "full"), (1, "short")] == calls
    await profile.invalidate(1)
    await profile(1)
    assert 3 == len(calls)
    await cache.invalidate_tags(["user:1"])
    await profile(1, "short")
    assert 4 == len(calls)


def test_cached_key_names_the_function_and_depends_only_on_the_bound_arguments(
    clock: ManualClock,
) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock)

    @cached(cache)
    def double(x: int, scale: int = 2) -> int:
        return scale * x

    key = double.cache_key(3)
    assert key.startswith("fn:")
    assert ".double:" in key
    assert key == double.cache_key(x=3)
    assert key == double.cache_key(3, 2)
    assert key != double.cache_key(4)
    assert 6 == double(3)


_DIGEST_SCRIPT = """
import sys
from buttress.cache._decorator import _digest
def f(): pass
print(_digest(f, [("tags", {"b", "a", "c"}), ("opts", {"z": 1, "a": (1, 2)})]))
"""


def test_cached_keys_are_the_same_in_every_process() -> None:
    import subprocess
    import sys

    digests = {
        subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT],
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert 1 == len(digests)


def test_cached_refuses_an_argument_without_a_stable_key(clock: ManualClock) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock)

    class Opaque:
        pass

    @cached(cache)
    def f(x: object) -> int:
        return 1

    with pytest.raises(TypeError, match="no stable key"):
        f(Opaque())


def test_cached_method_does_not_keep_self_alive(clock: ManualClock) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock)

    class Repo:
        def __init__(self, shard: int) -> None:
            self.shard = shard

        def __cache_key__(self) -> int:
            return self.shard

        @cached(cache, ttl=60)
        def find(self, item: int) -> tuple[int, int]:
            return (self.shard, item)

    repo = Repo(1)
    assert (1, 5) == repo.find(5)
    assert (2, 5) == Repo(2).find(5)  # a different instance key, a different entry
    ref = weakref.ref(repo)
    del repo
    gc.collect()
    assert ref() is None


async def test_an_early_reload_that_fails_serves_the_fresh_value_not_marked_stale(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    # XFetch draws a random number: make this draw one that reloads early.
    monkeypatch.setattr(random, "random", lambda: 0.999)
    cache = memory_cache(clock, early_expiration=1000.0)
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("upstream down")
        clock.advance(1)  # a slow loader: XFetch reloads it well before expiry
        return "v"

    await cache.get_or_set("k", loader, ttl=100)
    result = await cache.load("k", loader, ttl=100)
    assert 2 == calls  # XFetch did try to reload early
    assert ("v", False) == (result.value, result.stale)
    assert 0 == cache.stats().stale_served


async def test_warm_counts_a_batch_with_a_bad_key_as_failed(clock: ManualClock) -> None:
    cache = memory_cache(clock)

    def loader(keys: list[str]) -> Any:
        return {42: 1}  # not a str: not a key this cache can hold

    report = await cache.warm(["a"], loader)
    assert (0, 0, 1) == (report.loaded, report.skipped, report.failed)


async def test_writes_after_close_are_refused_not_lost(clock: ManualClock) -> None:
    written: list[tuple[str, Any]] = []
    cache = memory_cache(clock, write_behind=written.extend)
    await cache.close()
    with pytest.raises(RuntimeError, match="closed"):
        await cache.set("k", 1)
    assert await cache.get("k") is None  # refused before anything was cached


def test_sync_refresh_ahead_reloads_on_a_background_thread(clock: ManualClock) -> None:
    cache = SyncCache([MemoryCache(100, clock=clock)], clock=clock, refresh_ahead=0.5)
    versions = iter(range(1, 10))
    assert 1 == cache.get_or_set("k", lambda: next(versions), ttl=10)
    clock.advance(6)  # in the last half of the TTL
    assert 1 == cache.get_or_set("k", lambda: next(versions), ttl=10)
    cache.close()  # waits for background work
    assert 2 == cache.get("k")

"""The tiered cache on real Redis and memcached servers: tiers, tags, outages, coherence."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from buttress.cache import (
    MISSING,
    Cache,
    MemcachedStore,
    MemoryCache,
    RedisStore,
    SyncCache,
)
from buttress.cache._core import CacheCore
from buttress.clock import ManualClock
from servers import RedisServer


def raw_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def command_calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def eventually(check: Callable[[], Any], within: float = 5.0) -> None:
    """Wait for something another thread or process does (not for time logic)."""
    deadline = time.monotonic() + within
    while not await _call(check):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _call(check: Callable[[], Any]) -> bool:
    result = check()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


@pytest.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.close()


@pytest.fixture(autouse=True)
async def _close_every_cache(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Close the connections of every cache a test made, as an application would."""
    cores: list[CacheCore] = []
    original = CacheCore.__init__

    def recording(self: CacheCore, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        cores.append(self)

    monkeypatch.setattr(CacheCore, "__init__", recording)
    yield
    for core in cores:
        core.close_subscription()
        for tier in core.remotes:
            await tier.store.aclose()


def l2_only(url: str, clock: ManualClock, **options: Any) -> Cache:
    return Cache([RedisStore(url)], clock=clock, **options)


async def test_l2_round_trip_stores_an_envelope_with_the_ttl_plus_grace(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock, stale_ttl=30)
    await cache.set("user:1", {"name": "Ada", "tags": ("a", "b")}, ttl=60)
    assert {"name": "Ada", "tags": ("a", "b")} == await cache.get("user:1")
    client = raw_redis(redis_url)
    assert client.exists("buttress:user:1")
    assert 85_000 < client.pttl("buttress:user:1") <= 90_000
    await cache.set("plain", None)
    assert await cache.get("plain", MISSING) is None


async def test_logical_expiry_follows_the_cache_clock_not_redis(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock)
    await cache.set("k", 1, ttl=60)
    clock.advance(60)
    assert await cache.get("k", MISSING) is MISSING


async def test_a_read_from_l2_backfills_l1_and_never_outlives_its_source(
    redis_url: str, clock: ManualClock, caches: list[Cache]
) -> None:
    writer = l2_only(redis_url, clock)
    await writer.set("k", "v", ttl=100)
    l1: MemoryCache[str, Any] = MemoryCache(100, clock=clock)
    reader = Cache([l1, RedisStore(redis_url)], clock=clock, coherence=False)
    caches.append(reader)
    clock.advance(60)
    assert "v" == await reader.get("k")
    assert "buttress:k" in l1
    raw_redis(redis_url).delete("buttress:k")
    assert "v" == await reader.get("k")  # served from L1 now
    clock.advance(40)
    assert await reader.get("k") is None  # 100 s after the write, not 100 s after the copy
    assert "buttress:k" not in l1


async def test_get_many_takes_one_round_trip_and_backfills(
    redis_url: str, clock: ManualClock
) -> None:
    writer = l2_only(redis_url, clock)
    await writer.set_many({f"k{i}": i for i in range(50)})
    client = raw_redis(redis_url)
    client.config_resetstat()
    reader = Cache([MemoryCache(100, clock=clock), RedisStore(redis_url)], clock=clock)
    keys = [f"k{i}" for i in range(60)]
    assert {f"k{i}": i for i in range(50)} == await reader.get_many(keys)
    assert 1 == command_calls(client, "mget")
    assert 0 == command_calls(client, "get")
    client.config_resetstat()
    assert 50 == len(await reader.get_many(keys))
    assert 1 == command_calls(client, "mget")  # only the ten misses went down
    await reader.close()


async def test_tags_invalidate_on_redis_and_in_other_processes_l1(
    redis_url: str, clock: ManualClock, caches: list[Cache]
) -> None:
    a = Cache([MemoryCache(100, clock=clock), RedisStore(redis_url)], clock=clock)
    b = Cache([MemoryCache(100, clock=clock), RedisStore(redis_url)], clock=clock)
    caches += [a, b]
    await a.set("profile:1", "p1", tags=["user:1"])
    await a.set("profile:2", "p2", tags=["user:2"])
    assert "p1" == await b.get("profile:1")  # now in b's L1 too
    await a.invalidate_tags(["user:1"])
    no_l1 = l2_only(redis_url, clock)
    assert await no_l1.get("profile:1") is None  # the version on Redis is gone
    assert "p2" == await no_l1.get("profile:2")
    await eventually(lambda: _is_missing(b, "profile:1"))
    assert "p2" == await b.get("profile:2")


async def _is_missing(cache: Cache, key: str) -> bool:
    return await cache.get(key, MISSING) is MISSING


async def test_an_invalidation_during_a_load_makes_the_loaded_entry_invalid(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock)

    async def loader() -> str:
        # Another process invalidates the tag while this value is computed
        # from data that is now out of date.
        await l2_only(redis_url, clock).invalidate_tags(["user:1"])
        return "computed before the invalidation"

    assert "computed before the invalidation" == await cache.get_or_set(
        "k", loader, tags=["user:1"]
    )
    assert await cache.get("k", MISSING) is MISSING


async def test_tag_versions_do_not_outlive_their_entries(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock, stale_ttl=5)
    await cache.set("short", 1, ttl=10, tags=["t"])
    client = raw_redis(redis_url)
    pttl = client.pttl("buttress:__tag__:t")
    assert 0 < pttl <= 15_000  # the tag index expires with the entries that use it
    await cache.set("long", 1, ttl=100, tags=["t"])
    assert 100_000 < client.pttl("buttress:__tag__:t") <= 105_000


async def test_delete_pattern_uses_scan_never_keys(redis_url: str, clock: ManualClock) -> None:
    cache = Cache([MemoryCache(100, clock=clock), RedisStore(redis_url)], clock=clock)
    await cache.set_many({"user:1": 1, "user:2": 2, "order:1": 3})
    client = raw_redis(redis_url)
    client.config_resetstat()
    assert 2 == await cache.delete_pattern("user:*")
    assert command_calls(client, "scan") >= 1
    assert 0 == command_calls(client, "keys")
    assert not client.exists("buttress:user:1", "buttress:user:2")
    assert {"order:1": 3} == await cache.get_many(["user:1", "user:2", "order:1"])
    await cache.clear()
    assert not client.exists("buttress:order:1")
    await cache.close()


async def test_namespaces_keep_caches_apart(redis_url: str, clock: ManualClock) -> None:
    a = Cache([RedisStore(redis_url)], namespace="app-a", clock=clock)
    b = Cache([RedisStore(redis_url)], namespace="app-b", clock=clock)
    await a.set("k", "a")
    await b.set("k", "b")
    await b.clear()
    assert "a" == await a.get("k")
    assert await b.get("k") is None


async def test_an_unserializable_value_raises_type_error_and_stores_nothing(
    redis_url: str, clock: ManualClock
) -> None:
    l1: MemoryCache[str, Any] = MemoryCache(10, clock=clock)
    cache = Cache([l1, RedisStore(redis_url)], clock=clock)

    class Opaque:
        pass

    with pytest.raises(TypeError, match="Opaque"):
        await cache.set("k", Opaque())
    assert "buttress:k" not in l1
    assert not raw_redis(redis_url).exists("buttress:k")
    await cache.close()


async def test_a_corrupt_entry_is_a_counted_miss_not_an_error(
    redis_url: str, clock: ManualClock
) -> None:
    raw_redis(redis_url).set("buttress:k", b"not an envelope")
    cache = l2_only(redis_url, clock)
    assert await cache.get("k", MISSING) is MISSING
    assert 1 == cache.stats().tier("redis").errors
    assert "fresh" == await cache.get_or_set("k", lambda: "fresh")


async def test_redis_outage_is_invisible_to_callers_and_recovery_is_automatic(
    fresh_redis: RedisServer, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    l1: MemoryCache[str, Any] = MemoryCache(100, clock=clock)
    cache = Cache(
        [l1, RedisStore(fresh_redis.url)],
        clock=clock,
        coherence=False,
        tier_failure_threshold=2,
        tier_recovery_timeout=10,
    )
    await cache.set("cached", "in L1 and L2")
    fresh_redis.kill()
    # Nobody sees an exception: L1 answers, the loader answers, writes go to L1.
    assert "in L1 and L2" == await cache.get("cached")
    assert "loaded" == await cache.get_or_set("new", lambda: "loaded")
    await cache.set("written", 1)
    assert 1 == await cache.get("written")
    assert {"cached": "in L1 and L2", "written": 1} == await cache.get_many(
        ["cached", "written", "absent"]
    )
    await cache.delete("cached")
    await cache.invalidate_tags(["t"])
    await cache.delete_pattern("x*")
    stats = cache.stats().tier("redis")
    assert stats.errors >= 2
    assert not stats.available
    assert "tier cache.cache.redis is failing" in caplog.text
    fresh_redis.start()
    clock.advance(10)  # the breaker lets a probe through
    await cache.set("after", "recovered")
    assert b"recovered" in (raw_redis(fresh_redis.url).get("buttress:after") or b"")
    assert cache.stats().tier("redis").available
    await cache.close()


async def test_a_slow_redis_costs_a_timeout_not_an_error(
    fresh_redis: RedisServer, clock: ManualClock
) -> None:
    cache = Cache(
        [MemoryCache(10, clock=clock), RedisStore(fresh_redis.url, timeout=0.05)],
        clock=clock,
        coherence=False,
    )
    await cache.set("k", 1)
    fresh_redis.pause()
    try:
        started = time.monotonic()
        assert "loaded" == await cache.get_or_set("other", lambda: "loaded")
        assert time.monotonic() - started < 2.0
        assert cache.stats().tier("redis").errors >= 1
    finally:
        fresh_redis.resume()
    await cache.close()


async def test_losing_the_invalidation_channel_flushes_l1(
    fresh_redis: RedisServer, clock: ManualClock
) -> None:
    l1: MemoryCache[str, Any] = MemoryCache(10, clock=clock)
    cache = Cache([l1, RedisStore(fresh_redis.url)], clock=clock)
    await cache.set("k", 1)
    assert 1 == len(l1)
    fresh_redis.kill()
    await eventually(lambda: len(l1) == 0)
    fresh_redis.start()
    await cache.close()


_OTHER_PROCESS = """
import sys
from buttress.cache import SyncCache
cache = SyncCache.from_url(sys.argv[1])
cache.set("shared", "from the other process")
cache.close()
"""


async def test_a_write_in_another_process_invalidates_this_processes_l1(
    redis_url: str, caches: list[Cache]
) -> None:
    cache = Cache.from_url(redis_url)
    caches.append(cache)
    await cache.set("shared", "mine")
    assert "mine" == await cache.get("shared")  # an L1 hit from here on
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _OTHER_PROCESS, redis_url], check=True
    )
    await eventually(lambda: _equals(cache, "shared", "from the other process"))


async def _equals(cache: Cache, key: str, value: object) -> bool:
    return bool(await cache.get(key) == value)


async def test_without_coherence_l1_would_have_kept_the_old_value(
    redis_url: str, caches: list[Cache]
) -> None:
    # The control for the test above: it is the channel that makes the difference.
    cache = Cache.from_url(redis_url, coherence=False)
    caches.append(cache)
    await cache.set("shared", "mine")
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _OTHER_PROCESS, redis_url], check=True
    )
    assert "mine" == await cache.get("shared")


async def test_a_lease_makes_concurrent_misses_in_several_processes_load_once(
    redis_url: str, caches: list[Cache]
) -> None:
    # Separate caches stand for separate processes: they share nothing but Redis.
    members = [Cache.from_url(redis_url, lease=5) for _ in range(4)]
    caches += members
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return "v"

    results = await asyncio.gather(*(c.get_or_set("k", loader) for c in members))
    assert ["v"] * 4 == results
    assert 1 == calls


async def test_memcached_l3_backfills_redis_and_memory(
    redis_url: str, memcached_url: str, clock: ManualClock
) -> None:
    only_l3 = Cache([MemcachedStore(memcached_url)], clock=clock)
    await only_l3.set("k", "deep", ttl=100)
    clock.advance(40)
    l1: MemoryCache[str, Any] = MemoryCache(10, clock=clock)
    cache = Cache(
        [l1, RedisStore(redis_url), MemcachedStore(memcached_url)], clock=clock, coherence=False
    )
    assert "deep" == await cache.get("k")
    assert "buttress:k" in l1
    assert 0 < raw_redis(redis_url).pttl("buttress:k") <= 60_000  # what was left, no more
    stats = cache.stats()
    assert (0, 1) == (stats.tier("redis").hits, stats.tier("redis").misses)
    assert 1 == stats.tier("memcached").hits
    await cache.close()


async def test_memcached_key_rules_get_clear_errors(memcached_url: str, clock: ManualClock) -> None:
    cache = Cache([MemcachedStore(memcached_url)], clock=clock)
    with pytest.raises(ValueError, match="at most 250"):
        await cache.set("x" * 300, 1)
    with pytest.raises(ValueError, match="whitespace or control"):
        await cache.set("has space", 1)
    await cache.set("ok", 1)
    assert 1 == await cache.get("ok")


def test_sync_cache_on_redis_and_memcached(redis_url: str, memcached_url: str) -> None:
    with SyncCache.from_url(redis_url, memcached_url) as cache:
        cache.set("a", 1, tags=["t"])
        cache.set_many({"b": 2, "c": 3})
        assert {"a": 1, "b": 2, "c": 3} == cache.get_many(["a", "b", "c"])
        assert 5 == cache.get_or_set("d", lambda: 5)
        cache.invalidate_tags(["t"])
        assert cache.get("a") is None
        assert ("memory", "redis", "memcached") == cache.tiers


async def test_stats_count_hits_misses_and_latency_per_tier(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock)
    await cache.set("k", 1)
    await cache.get("k")
    await cache.get("absent")
    stats = cache.stats().tier("redis")
    assert (1, 1, 0) == (stats.hits, stats.misses, stats.errors)
    assert stats.latency_seconds > 0


async def test_deletes_missed_during_an_outage_are_replayed_before_the_tier_is_read(
    fresh_redis: RedisServer, clock: ManualClock
) -> None:
    store = RedisStore(fresh_redis.url)
    cache = Cache(
        [MemoryCache(10, clock=clock), store],
        clock=clock,
        coherence=False,
        tier_failure_threshold=1,
        tier_recovery_timeout=5,
    )
    await cache.set_many({"deleted": "old", "overwritten": "old", "tagged": "old"})
    await cache.set("tagged", "old", tags=["t"])
    fresh_redis.pause()  # slow, then down: the writes below never reach Redis
    try:
        await cache.delete("deleted")
        await cache.set("overwritten", "new")
        await cache.invalidate_tags(["t"])
    finally:
        fresh_redis.resume()
    clock.advance(5)
    # Another process (no L1) sees what Redis holds after the replay.
    other = Cache([RedisStore(fresh_redis.url)], clock=clock, coherence=False)
    assert "old" == await other.get("overwritten")  # not replayed yet: nothing read it
    cache._core.l1_flush()
    assert await cache.get("deleted") is None  # the replay ran before this read
    assert await other.get("deleted") is None
    assert await other.get("overwritten") is None  # the stale old value is gone
    assert await other.get("tagged") is None
    assert not cache._core.remotes[0].owed


async def test_concurrent_single_key_reads_share_round_trips(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock)
    await cache.set_many({f"k{i}": i for i in range(50)})
    client = raw_redis(redis_url)
    client.config_resetstat()
    values = await asyncio.gather(*(cache.get(f"k{i}") for i in range(50)))
    assert list(range(50)) == values
    round_trips = command_calls(client, "get") + command_calls(client, "mget")
    assert round_trips <= 4  # two went out alone; the rest rode along in one MGET
    client.config_resetstat()
    assert 7 == await cache.get("k7")  # a lone read goes straight out as a GET
    assert (1, 0) == (command_calls(client, "get"), command_calls(client, "mget"))


async def test_large_values_are_compressed_on_the_wire_and_read_back(
    redis_url: str, clock: ManualClock
) -> None:
    cache = l2_only(redis_url, clock)
    big = {"text": "lorem ipsum " * 1000, "n": list(range(100))}
    await cache.set("big", big)
    assert big == await cache.get("big")
    stored = raw_redis(redis_url).get("buttress:big")
    assert stored is not None
    assert len(stored) < 2000  # 12 kB of text, zstd-compressed


def test_a_finished_event_loop_is_not_kept_alive_by_the_read_coalescer(redis_url: str) -> None:
    import gc
    import weakref

    cache = Cache([RedisStore(redis_url)])
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def read() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await cache.get("k")

    asyncio.run(read())
    asyncio.run(read())  # a second loop replaces the first as the tier's last one
    gc.collect()
    assert loops[0]() is None
    cache.sync.close()

"""Races and edge cases of the tiered cache: in-flight reads and loads never resurrect a
deleted or invalidated value, cancelled loads, key limits, write-behind and @cached keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from buttress.cache import (
    Cache,
    MemcachedStore,
    MemoryCache,
    RedisStore,
    SyncCache,
    cached,
)


@pytest.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.close()


class GatedRedis(RedisStore):
    """A real RedisStore whose async reads can be held *after* the server answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await super().aget_many(keys)
        if self.gate is not None and not any("__tag__" in key for key in keys):
            self.read_done.set()
            await self.gate.wait()
        return values


class GatedMemcached(MemcachedStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await super().aget_many(keys)
        if self.gate is not None:
            self.read_done.set()
            await self.gate.wait()
        return values


# --- 1. tag invalidation that lands during a load is lost in L1 ----------------------


async def test_tag_invalidated_during_load_is_not_served_from_l1(
    redis_url: str, caches: list[Cache]
) -> None:
    cache = Cache([MemoryCache(100), RedisStore(redis_url)], coherence=False)
    caches.append(cache)
    started, release = asyncio.Event(), asyncio.Event()

    async def loader() -> str:
        started.set()
        await release.wait()
        return "read before the invalidation"

    load = asyncio.create_task(cache.get_or_set("user:1", loader, tags=["user:1"]))
    await started.wait()
    await cache.invalidate_tags(["user:1"])  # lands while the loader runs
    release.set()
    await load
    # Redis already treats the entry as invalid (its tag version was read before
    # loading), but L1 keeps serving it until its TTL.
    assert await cache.get("user:1") is None


# --- 2. a local delete racing a remote read: L1 resurrects the deleted value ----------


async def test_delete_during_remote_read_does_not_resurrect_value_in_l1(
    redis_url: str, caches: list[Cache]
) -> None:
    other = Cache([RedisStore(redis_url)])
    caches.append(other)
    await other.set("k", "old")

    store = GatedRedis(redis_url)
    cache = Cache([MemoryCache(100), store])
    caches.append(cache)
    store.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get("k"))
    await store.read_done.wait()  # Redis answered "old"; the answer is in flight
    await cache.delete("k")  # same process, same cache: L1 and Redis deleted
    store.gate.set()
    await reader
    store.gate = None
    # The reader's in-flight answer was backfilled into L1 after the delete.
    assert await cache.get("k") is None


async def test_set_during_remote_read_is_not_overwritten_in_l1_by_older_value(
    redis_url: str, caches: list[Cache]
) -> None:
    other = Cache([RedisStore(redis_url)])
    caches.append(other)
    await other.set("k", "old")

    store = GatedRedis(redis_url)
    cache = Cache([MemoryCache(100), store])
    caches.append(cache)
    store.gate = asyncio.Event()
    reader = asyncio.create_task(cache.get("k"))
    await store.read_done.wait()  # Redis answered "old"; the answer is in flight
    await cache.set("k", "new")  # same process: Redis and L1 now hold "new"
    store.gate.set()
    await reader
    store.gate = None
    # The in-flight "old" was copied into L1 over "new": L1 and Redis disagree until the TTL.
    assert await cache.get("k") == "new"


# --- 3. backfill from L3 into L2 outlives a delete of its source -----------------------


async def test_backfill_into_l2_does_not_resurrect_deleted_value(
    redis_url: str, memcached_url: str, caches: list[Cache]
) -> None:
    writer = Cache([RedisStore(redis_url), MemcachedStore(memcached_url)])
    caches.append(writer)
    await writer.set("k", "old")
    # Only memcached holds it now (as after an L2 eviction or restart).
    redis_only = Cache([RedisStore(redis_url)])
    caches.append(redis_only)
    await redis_only.delete("k")

    l3 = GatedMemcached(memcached_url)
    reader = Cache([RedisStore(redis_url), l3])
    caches.append(reader)
    l3.gate = asyncio.Event()
    read = asyncio.create_task(reader.get("k"))
    await l3.read_done.wait()  # memcached answered "old"
    await writer.delete("k")  # another process deletes it from every tier
    l3.gate.set()
    await read
    # The reader copied "old" into Redis after the delete: every process now reads it.
    fresh = Cache([RedisStore(redis_url), MemcachedStore(memcached_url)])
    caches.append(fresh)
    assert await fresh.get("k") is None


# --- 4. a caller that was never cancelled gets CancelledError -------------------------


async def test_new_caller_joining_a_cancelled_flight_is_not_cancelled() -> None:
    cache = Cache([MemoryCache(100)])
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    first = asyncio.create_task(cache.get_or_set("k", slow))
    await started.wait()
    first.cancel()  # its only caller gives up: the load is cancelled...
    await asyncio.sleep(0)
    # ...and a new caller arriving before that cancellation completes joins it.
    try:
        value = await cache.get_or_set("k", lambda: "fresh")
    except asyncio.CancelledError:
        pytest.fail("get_or_set raised CancelledError into a caller that was not cancelled")
    assert value == "fresh"
    assert first.cancelled()


# --- 5. bad input reaches memcached instead of a clear error, and trips its breaker ---


async def test_tag_too_long_for_memcached_is_rejected(
    memcached_url: str, caches: list[Cache]
) -> None:
    cache = Cache([MemoryCache(100), MemcachedStore(memcached_url)])
    caches.append(cache)
    with pytest.raises(ValueError, match="tag"):
        await cache.set("k", 1, tags=["t" * 250])


async def test_lease_key_for_a_valid_key_does_not_break_memcached(
    memcached_url: str, caches: list[Cache]
) -> None:
    cache = Cache([MemoryCache(100), MemcachedStore(memcached_url)], lease=1.0)
    caches.append(cache)
    for i in range(3):
        key = f"{i}" + "x" * 239  # accepted by the key check (249 bytes with namespace)
        assert await cache.get_or_set(key, lambda: "v") == "v"
    # Each load's lease key ("buttress:__lease__:" + key) is 259 bytes: memcached
    # refuses it, the tier counts an error, and the lease is silently skipped.
    assert cache.stats().tier("memcached").errors == 0


# --- 6. write-behind --------------------------------------------------------------------


async def test_flush_does_not_report_success_while_the_write_is_failing() -> None:
    release = asyncio.Event()

    async def writer(items: list[tuple[str, Any]]) -> None:
        await release.wait()
        raise ConnectionError("database down")

    cache = Cache([MemoryCache(100)], write_behind=writer, write_behind_batch=1)
    await cache.set("k", 1)  # full batch: a background flush starts and hangs
    await asyncio.sleep(0)
    flushing = asyncio.create_task(cache.flush())
    await asyncio.sleep(0.01)
    pending = cache.stats().write_behind_pending
    release.set()
    ok = await asyncio.wait_for(flushing, 5)
    await cache._core.async_runtime.drain()
    # flush() must not say True ("written") while the in-flight write failed.
    assert not ok, f"flush() returned True while the write was in flight ({pending=}); it failed"


async def test_write_accepted_after_close_is_not_silently_dropped() -> None:
    written: list[tuple[str, Any]] = []
    cache = Cache([MemoryCache(100)], write_behind=written.extend)
    await cache.close()
    try:
        await cache.set("k", 1)
    except Exception:
        return  # refusing the write is fine
    await asyncio.sleep(0)
    # Accepted, buffered, and never flushed by anyone: lost.
    assert written == [("k", 1)] or cache.stats().write_behind_pending == 0


# --- 7. @cached ----------------------------------------------------------------------


def test_cached_keys_of_different_dicts_do_not_collide() -> None:
    cache = SyncCache([MemoryCache(100)])

    @cached(cache)
    def describe(mapping: dict[Any, str]) -> str:
        return repr(mapping)

    assert describe({1: "a"}) == "{1: 'a'}"
    assert describe({"1": "a"}) == "{'1': 'a'}"  # served {1: 'a'}'s result


def test_cached_method_invalidate_via_instance() -> None:
    cache = SyncCache([MemoryCache(100)])
    calls = []

    class Users:
        @cached(cache, noself=True)
        def get(self, user_id: int) -> int:
            calls.append(user_id)
            return user_id

    users = Users()
    users.get(1)
    users.get.invalidate(1)
    users.get(1)
    assert calls == [1, 1]


# --- 8. the L1 tag index rescans itself on every tagged write -------------------------


class CountingMemory(MemoryCache[Any, Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contains_calls = 0

    def __contains__(self, key: object) -> bool:
        self.contains_calls += 1
        return super().__contains__(key)


def test_tag_index_pruning_is_amortised_not_per_write() -> None:
    l1 = CountingMemory(600, policy="lru")
    cache = SyncCache([l1])
    for i in range(600):
        cache.set(f"k{i}", i, tags=[f"t{i}-{j}" for j in range(5)])
    l1.contains_calls = 0
    writes = 100
    for i in range(600, 600 + writes):
        cache.set(f"k{i}", i, tags=[f"t{i}-{j}" for j in range(5)])
    # 5 tags per live key keep the index above 2*len(L1)+1024 for good, so every
    # write rescans all of it: O(index) per write under tag_lock, not amortised O(1).
    assert l1.contains_calls <= 50 * writes

"""memcached's limits: item size and waiting for a turn, as the cache relies on them."""

from __future__ import annotations

import asyncio
import time

import pytest

from buttress.cache._memcached import MemcachedStore
from servers import MemcachedServer


def test_memcached_a_value_over_the_item_size_limit_is_not_a_tier_failure(
    memcached_url: str,
) -> None:
    """A value over memcached's item size (1 MiB) is not stored and its old copy is
    gone; the rest of the batch is stored, and nothing raises (which the cache
    would count against the whole tier)."""
    store = MemcachedStore(memcached_url, timeout=2.0)
    try:
        store.set_many([("big", b"old", None)])
        store.set_many([("big", b"x" * (2 << 20), None), ("small", b"s", None)])
        assert store.get_many(["big", "small"]) == [None, b"s"]
    finally:
        store.close()


async def test_memcached_async_calls_wait_at_most_timeout_for_a_turn(
    fresh_memcached: MemcachedServer,
) -> None:
    """Async calls wait for a pool thread: that wait counts against `timeout` as a
    wait for a connection does, so a stalled server doesn't queue callers for
    many timeouts in a row."""
    store = MemcachedStore(fresh_memcached.url, timeout=0.2, max_connections=2)
    store.set_many([("a", b"1", None)])
    fresh_memcached.pause()
    try:

        async def timed() -> float:
            started = time.monotonic()
            with pytest.raises((TimeoutError, OSError)):
                await store.aget_many(["a"])
            return time.monotonic() - started

        durations = await asyncio.gather(*(timed() for _ in range(20)))
        # slot wait + connect + one read: three timeouts at most, plus slack
        assert max(durations) < 4 * 0.2 + 0.3, sorted(durations)
    finally:
        fresh_memcached.resume()
        await store.aclose()

"""MemoryCache, the in-process L1: API, expiry, weights, stats, hooks, errors, threads."""

from __future__ import annotations

import logging
import math
import random
import threading
from datetime import timedelta
from typing import Any

import pytest

from buttress.cache._memory import CacheStats, MemoryCache, RemovalCause
from buttress.cache._missing import MISSING
from buttress.clock import ManualClock

POLICIES = ["tinylfu", "lru", "lfu", "fifo"]

Removal = tuple[Any, Any, RemovalCause]


def recorder() -> tuple[list[Removal], Any]:
    removals: list[Removal] = []

    def on_removal(key: Any, value: Any, cause: RemovalCause) -> None:
        removals.append((key, value, cause))

    return removals, on_removal


# -- the basic contract -------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_set_get_delete_contains_len(policy: str, clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, policy=policy, clock=clock)
    cache.set("a", 1)
    cache.set("b", 2)
    assert 1 == cache.get("a")
    assert "b" in cache
    assert "c" not in cache
    assert 2 == len(cache)
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.get("a") is None
    assert 1 == len(cache)
    assert [] == cache._audit()


def test_a_miss_is_told_from_a_stored_none(clock: ManualClock) -> None:
    cache: MemoryCache[str, None] = MemoryCache(10, clock=clock)
    cache.set("none", None)
    assert cache.get("none", MISSING) is None
    assert cache.get("absent", MISSING) is MISSING
    assert "sentinel" == cache.get("absent", "sentinel")


def test_keys_are_any_hashable(clock: ManualClock) -> None:
    cache: MemoryCache[object, str] = MemoryCache(10, clock=clock)
    for key in (1, 2.5, ("tuple", 3), frozenset({1}), "text", None):
        cache.set(key, repr(key))
    assert "('tuple', 3)" == cache.get(("tuple", 3))
    assert "None" == cache.get(None)
    assert 6 == len(cache)


def test_set_replaces_the_value_and_reports_the_old_one(clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[str, str] = MemoryCache(10, clock=clock, on_removal=on_removal)
    cache.set("k", "old")
    cache.set("k", "new")
    assert "new" == cache.get("k")
    assert [("k", "old", RemovalCause.REPLACED)] == removals
    assert 1 == len(cache)


def test_get_many_returns_only_live_keys_and_set_many_stores_all(clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, clock=clock)
    cache.set_many({"a": 1, "b": 2, "short": 3}, ttl=60)
    cache.set("short", 3, ttl=1)
    assert {"a": 1, "b": 2, "short": 3} == cache.get_many(["a", "b", "short", "nope"])
    clock.advance(1)
    assert {"a": 1, "b": 2} == cache.get_many(["a", "b", "short", "nope"])
    clock.advance(59)
    assert {} == cache.get_many(["a", "b"])
    stats = cache.stats()
    assert (5, 5) == (stats.hits, stats.misses)


# -- expiry --------------------------------------------------------------------------------


def test_the_default_ttl_applies_unless_a_set_says_otherwise(clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, ttl=10, clock=clock)
    cache.set("default", 1)
    cache.set("longer", 2, ttl=timedelta(seconds=30))
    cache.set("forever", 3, ttl=math.inf)
    clock.advance(9.999)
    assert 1 == cache.get("default")
    clock.advance(0.001)
    assert cache.get("default", MISSING) is MISSING
    assert 2 == cache.get("longer")
    clock.advance(20)
    assert cache.get("longer", MISSING) is MISSING
    clock.advance(10**9)
    assert 3 == cache.get("forever")


def test_a_new_set_replaces_the_deadline(clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, clock=clock)
    cache.set("k", 1, ttl=5)
    cache.set("k", 2)  # no default TTL: never expires now
    clock.advance(100)
    assert 2 == cache.get("k")
    cache.set("k", 3, ttl=1)
    clock.advance(1)
    assert "k" not in cache
    assert [] == cache._audit()


@pytest.mark.parametrize("policy", POLICIES)
def test_an_expired_entry_is_never_returned(policy: str, clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, policy=policy, clock=clock)
    cache.set("k", 1, ttl=2.5)
    clock.advance(2.4)
    assert 1 == cache.get("k")
    clock.advance(0.1)  # exactly at the deadline: gone
    assert cache.get("k", MISSING) is MISSING
    assert "k" not in cache
    assert {} == cache.get_many(["k"])
    assert 0 == len(cache)


def test_ttl_zero_stores_nothing_and_drops_the_old_value(clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[str, str] = MemoryCache(10, clock=clock, on_removal=on_removal)
    cache.set("k", "old")
    cache.set("k", "new", ttl=0)
    assert cache.get("k", MISSING) is MISSING
    assert 0 == len(cache)
    assert [("k", "old", RemovalCause.REPLACED), ("k", "new", RemovalCause.EXPIRED)] == removals
    assert 1 == cache.stats().expirations


def test_expired_entries_are_reclaimed_without_being_read(clock: ManualClock) -> None:
    """The timer wheel hands back what expired; nobody has to read the keys."""
    removals, on_removal = recorder()
    cache: MemoryCache[str, int] = MemoryCache(1000, clock=clock, on_removal=on_removal)
    for i in range(100):
        cache.set(f"k{i}", i, ttl=10 + i)
    cache.set("forever", -1)
    clock.advance(10 + 49.5)
    cache.cleanup()
    assert sorted((f"k{i}", i, RemovalCause.EXPIRED) for i in range(50)) == sorted(removals)
    assert 50 == cache.stats().expirations
    assert 51 == len(cache)
    assert 51 == len(cache._data)  # reclaimed, not merely hidden
    clock.advance(1000)
    cache.set("other", 0)  # any write does the maintenance too
    assert 100 == cache.stats().expirations
    assert {"forever", "other"} == set(cache._data)
    assert 0 == len(cache._wheel)  # nothing left to expire
    assert [] == cache._audit()


def test_reads_alone_reclaim_expired_entries(clock: ManualClock) -> None:
    """A cache that is only read still hands back its dead: each full read buffer does
    the maintenance, and so does a read that finds its entry expired."""
    removals, on_removal = recorder()
    cache: MemoryCache[str, int] = MemoryCache(10, clock=clock, on_removal=on_removal)
    cache.set("short", 1, ttl=1)
    cache.set("read", 2, ttl=10)
    cache.set("kept", 3)
    clock.advance(1)
    for _ in range(500):
        assert 3 == cache.get("kept")
    assert [("short", 1, RemovalCause.EXPIRED)] == removals
    clock.advance(9)
    assert cache.get("read", MISSING) is MISSING
    assert ("read", 2, RemovalCause.EXPIRED) == removals[-1]
    assert {"kept"} == set(cache._data)


def test_len_and_stats_count_live_entries_exactly(clock: ManualClock) -> None:
    cache: MemoryCache[int, int] = MemoryCache(1000, clock=clock)
    for i in range(10):
        cache.set(i, i, ttl=0.5 + i / 10)  # all due within the same second
    clock.advance(0.95)
    assert 5 == len(cache)  # 0.5 … 0.9 are due, 1.0 … 1.4 are not
    assert 5 == cache.stats().size
    clock.advance(0.05)
    assert 4 == len(cache)


@pytest.mark.parametrize(
    "ttl", [0.001, 0.5, 1, 1.5, 63, 64, 65, 4095, 4096, 5000, 262_143, 300_000, 2e7, 3e9]
)
def test_entries_expire_exactly_at_their_deadline_on_every_wheel_level(
    ttl: float, clock: ManualClock
) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[str, str] = MemoryCache(10, clock=clock, on_removal=on_removal)
    clock.advance(0.3)  # not on a bucket boundary
    deadline = clock.now() + ttl
    cache.set("k", "v", ttl=ttl)
    for fraction in (0.25, 0.5, 0.75, 0.99):
        clock.advance(0.3 + ttl * fraction - clock.now())
        assert 1 == len(cache)
        assert [] == removals
    clock.advance(deadline - clock.now())  # exactly the deadline
    assert 0 == len(cache)
    assert [("k", "v", RemovalCause.EXPIRED)] == removals


def test_a_huge_clock_jump_expires_everything_due(clock: ManualClock) -> None:
    cache: MemoryCache[int, int] = MemoryCache(10_000, clock=clock)
    rng = random.Random(7)
    ttls = {i: rng.choice([0.5, 3, 70, 5000, 300_000, 3e7]) for i in range(2000)}
    for key, ttl in ttls.items():
        cache.set(key, key, ttl=ttl)
    clock.advance(100)
    assert sum(ttl > 100 for ttl in ttls.values()) == len(cache)
    clock.advance(1e8)
    assert 0 == len(cache)
    assert [] == cache._audit()


# -- weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_weigher_bounds_the_total_weight(policy: str, clock: ManualClock) -> None:
    cache: MemoryCache[int, bytes] = MemoryCache(
        1000, policy=policy, weigher=lambda key, value: len(value), clock=clock
    )
    rng = random.Random(3)
    for i in range(500):
        cache.set(i % 150, b"x" * rng.randint(0, 120))
        cache.get(rng.randrange(150))
        assert cache.stats().weight <= 1000
    stats = cache.stats()
    assert stats.weight == sum(len(v) for v in cache.get_many(range(150)).values())
    assert stats.size < 150
    assert [] == cache._audit()


def test_an_entry_heavier_than_the_capacity_is_not_stored(clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[str, str] = MemoryCache(
        10, weigher=lambda key, value: len(value), clock=clock, on_removal=on_removal
    )
    cache.set("k", "small")
    cache.set("k", "x" * 11)
    assert cache.get("k", MISSING) is MISSING
    assert [
        ("k", "small", RemovalCause.REPLACED),
        ("k", "x" * 11, RemovalCause.EVICTED),
    ] == removals
    assert (0, 1) == (cache.stats().weight, cache.stats().evictions)


def test_a_heavier_update_evicts_others(clock: ManualClock) -> None:
    cache: MemoryCache[str, str] = MemoryCache(
        10, policy="lru", weigher=lambda key, value: len(value), clock=clock
    )
    cache.set("a", "aaa")
    cache.set("b", "bbb")
    cache.set("b", "b" * 8)  # 3 + 8 > 10: "a", the least recent, goes
    assert "a" not in cache
    assert "b" * 8 == cache.get("b")
    assert 8 == cache.stats().weight


@pytest.mark.parametrize(
    ("weight", "error", "message"),
    [(-1, ValueError, "weigher must return a weight >= 0"), ("3", TypeError, "weigher must")],
)
def test_a_bad_weight_is_refused(weight: object, error: type[Exception], message: str) -> None:
    cache: MemoryCache[str, str] = MemoryCache(10, weigher=lambda key, value: weight)  # type: ignore[arg-type,return-value]
    with pytest.raises(error, match=message):
        cache.set("k", "v")
    assert 0 == len(cache)


# -- statistics and hot keys ----------------------------------------------------------------


def test_stats_count_hits_misses_evictions_and_expirations(clock: ManualClock) -> None:
    cache: MemoryCache[int, int] = MemoryCache(3, policy="lru", clock=clock)
    assert CacheStats(0, 0, 0, 0, 0, 0, 3) == cache.stats()
    assert 0.0 == cache.stats().hit_ratio
    for i in range(5):
        cache.set(i, i, ttl=10 if i == 4 else None)
    for key in (0, 1, 2, 3, 4, 4):
        cache.get(key)
    clock.advance(10)
    stats = cache.stats()
    assert (4, 2, 2, 1, 2, 2) == (
        stats.hits,
        stats.misses,
        stats.evictions,
        stats.expirations,
        stats.size,
        stats.weight,
    )
    assert pytest.approx(4 / 6) == stats.hit_ratio
    assert 6 == stats.requests


@pytest.mark.parametrize("policy", POLICIES)
def test_hot_keys_ranks_the_most_accessed_keys_first(policy: str, clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, policy=policy, clock=clock)
    for i in range(20):
        cache.set(f"k{i}", i)
    for i in range(20):
        for _ in range(i):
            cache.get(f"k{i}")
    hot = cache.hot_keys(5)
    assert ["k19", "k18", "k17", "k16", "k15"] == [key for key, _ in hot]
    counts = [count for _, count in hot]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] >= 19
    assert [] == cache.hot_keys(0)
    assert 20 == len(cache.hot_keys())


def test_hot_keys_leaves_out_expired_keys(clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(100, clock=clock)
    cache.set("hot", 1, ttl=1)
    cache.set("warm", 2)
    for _ in range(10):
        cache.get("hot")
    clock.advance(1)
    assert ["warm"] == [key for key, _ in cache.hot_keys()]


# -- pattern delete, clear, resize -----------------------------------------------------------


def test_delete_pattern_matches_string_keys_with_globs(clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[object, int] = MemoryCache(100, clock=clock, on_removal=on_removal)
    for key in ("user:1", "user:2", "user:10", "User:3", "session:1", "userx"):
        cache.set(key, 0)
    cache.set(("user:", 1), 0)
    cache.set("user:9", 0, ttl=1)
    clock.advance(1)  # an expired match is not counted
    assert 3 == cache.delete_pattern("user:*")
    assert {"User:3", "session:1", "userx", ("user:", 1)} == set(cache._data)
    assert 0 == cache.delete_pattern("user:*")
    assert 1 == cache.delete_pattern("[Ss]ession:?")
    assert 1 == cache.delete_pattern("[!a-z]*")
    assert {"user:1", "user:2", "user:10", "session:1", "User:3"} == {
        key for key, _, cause in removals if cause is RemovalCause.EXPLICIT
    }


def test_clear_removes_everything_and_says_why(clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[str, int] = MemoryCache(100, clock=clock, on_removal=on_removal)
    cache.set("a", 1)
    cache.set("b", 2, ttl=1)
    cache.get("a")
    clock.advance(1)
    cache.clear()
    assert 0 == len(cache)
    assert [("b", 2, RemovalCause.EXPIRED), ("a", 1, RemovalCause.CLEARED)] == removals
    cache.set("a", 3)
    assert 3 == cache.get("a")
    assert 2 == cache.stats().hits  # counters survive a clear
    assert [] == cache._audit()


@pytest.mark.parametrize("policy", POLICIES)
def test_resize_evicts_down_to_the_new_capacity(policy: str, clock: ManualClock) -> None:
    removals, on_removal = recorder()
    cache: MemoryCache[int, int] = MemoryCache(
        100, policy=policy, clock=clock, on_removal=on_removal
    )
    for i in range(100):
        cache.set(i, i)
    cache.resize(10)
    assert 10 == len(cache)
    assert 10 == cache.max_size
    assert 90 == len(removals)
    assert all(cause is RemovalCause.EVICTED for _, _, cause in removals)
    cache.resize(20)
    for i in range(100, 130):
        cache.set(i, i)
    assert 20 == len(cache)
    assert [] == cache._audit()


def test_a_zero_capacity_cache_stores_nothing(clock: ManualClock) -> None:
    cache: MemoryCache[str, int] = MemoryCache(0, clock=clock)
    cache.set("k", 1)
    assert 0 == len(cache)
    assert 1 == cache.stats().evictions


# -- the removal callback -------------------------------------------------------------------


def test_a_failing_callback_is_logged_not_raised(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(key: str, value: int, cause: RemovalCause) -> None:
        raise RuntimeError("listener bug")

    cache: MemoryCache[str, int] = MemoryCache(1, clock=clock, on_removal=boom)
    with caplog.at_level(logging.ERROR, logger="buttress.cache"):
        cache.set("secret-token-key", 1)
        cache.set("b", 2)  # evicts the first
    assert "b" in cache or "secret-token-key" in cache
    assert 1 == len(caplog.records)
    assert "on_removal" in caplog.text
    assert "secret-token-key" not in caplog.text  # keys can carry secrets


def test_the_callback_runs_outside_the_lock(clock: ManualClock) -> None:
    """A callback may use the cache itself (the tiered cache does) without deadlock."""
    seen: list[object] = []

    def on_removal(key: str, value: int, cause: RemovalCause) -> None:
        seen.append((key, cache.get("c"), len(cache)))
        if key == "a":
            cache.set("from-callback", 0)

    cache: MemoryCache[str, int] = MemoryCache(2, policy="lru", clock=clock, on_removal=on_removal)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)
    assert [("a", 3, 2), ("b", 3, 2)] == seen
    assert {"c", "from-callback"} == set(cache._data)


# -- bad options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_size": -1}, "max_size must be >= 0"),
        ({"max_size": 1.5}, "max_size must be an integer"),
        ({"max_size": True}, "max_size must be an integer"),
        ({"policy": "arc"}, "policy must be one of 'tinylfu', 'lru', 'lfu', 'fifo'"),
        ({"policy": None}, "policy must be one of"),
        ({"ttl": -1}, "ttl must be >= 0"),
        ({"ttl": float("nan")}, "ttl must be a number of seconds"),
        ({"ttl": "60"}, "ttl must be a number of seconds"),
        ({"weigher": 3}, "weigher must be callable"),
        ({"on_removal": "log"}, "on_removal must be callable"),
        ({"clock": object()}, "clock must be a Clock"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryCache(**options)


@pytest.mark.parametrize("ttl", [-0.5, timedelta(seconds=-1), float("nan"), True])
def test_a_bad_ttl_on_set_is_refused(ttl: Any) -> None:
    cache: MemoryCache[str, int] = MemoryCache(10)
    with pytest.raises(ValueError, match="MemoryCache: ttl must"):
        cache.set("k", 1, ttl=ttl)
    with pytest.raises(ValueError, match="MemoryCache: ttl must"):
        cache.set_many({"k": 1}, ttl=ttl)
    assert 0 == len(cache)


def test_bad_arguments_of_other_methods_are_refused() -> None:
    cache: MemoryCache[str, int] = MemoryCache(10)
    with pytest.raises(ValueError, match="n must be >= 0"):
        cache.hot_keys(-1)
    with pytest.raises(ValueError, match="max_size must be >= 0"):
        cache.resize(-5)
    with pytest.raises(ValueError, match="pattern must be a glob string"):
        cache.delete_pattern(b"user:*")  # type: ignore[arg-type]


def test_the_system_clock_is_the_default() -> None:
    cache: MemoryCache[str, int] = MemoryCache(10, ttl=60)
    cache.set("k", 1)
    assert 1 == cache.get("k")
    assert "MemoryCache(policy='tinylfu', entries=1, max_size=10)" == repr(cache)


# -- threads --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_threads_hammering_one_cache_keep_it_consistent(policy: str) -> None:
    """8 threads of reads, writes, deletes and expiries: right values, bounded, coherent."""
    clock = ManualClock()
    removals: list[Removal] = []
    cache: MemoryCache[int, tuple[int, int]] = MemoryCache(
        64, policy=policy, clock=clock, on_removal=lambda k, v, c: removals.append((k, v, c))
    )
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(3000):
                key = int(rng.paretovariate(1.2)) % 300
                op = rng.random()
                if op < 0.6:
                    value = cache.get(key, MISSING)
                    assert value is MISSING or value[0] == key
                elif op < 0.85:
                    cache.set(key, (key, seed), ttl=rng.choice([None, 0.5, 5]))
                elif op < 0.9:
                    found = cache.get_many([key, key + 1])
                    assert all(value[0] == k for k, value in found.items())
                elif op < 0.95:
                    cache.delete(key)
                else:
                    assert len(cache) <= 64
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    for _ in range(50):
        clock.advance(0.2)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert [] == errors
    cache.cleanup()
    assert len(cache) <= 64
    assert [] == cache._audit()
    assert all(key == value[0] for key, value, _ in removals)


def test_reads_never_wait_for_a_busy_lock_and_the_buffer_stays_bounded() -> None:
    cache: MemoryCache[int, int] = MemoryCache(100)
    for i in range(10):
        cache.set(i, i)
    with cache._lock:  # a writer holds the lock for a long time
        for i in range(10_000):
            assert i % 10 == cache.get(i % 10)
        assert len(cache._reads) < 2048
    stats = cache.stats()
    assert 10_000 == stats.hits  # dropped reads still count as hits
    assert [] == cache._audit()

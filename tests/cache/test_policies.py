"""Eviction policies, the frequency sketch and the timer wheel, each on its own and in a cache."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

import pytest

from buttress.cache._memory import MemoryCache
from buttress.cache._missing import MISSING
from buttress.cache._policies import DEAD, POLICIES, Node, TinyLfuPolicy, make_policy
from buttress.cache._sketch import MAX_FREQUENCY, FrequencySketch
from buttress.cache._timerwheel import TimerWheel
from buttress.clock import ManualClock


def run(cache: MemoryCache[int, int], keys: Iterable[int]) -> float:
    """Cache-aside over ``keys``: the hit ratio."""
    hits = requests = 0
    for key in keys:
        requests += 1
        if cache.get(key, MISSING) is MISSING:
            cache.set(key, key)
        else:
            hits += 1
    return hits / requests


# -- the classic policies --------------------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    cache: MemoryCache[str, int] = MemoryCache(3, policy="lru", clock=ManualClock())
    for key in "abc":
        cache.set(key, 0)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # order of use, oldest first: c, b, a
    cache.set("d", 0)
    assert {"a", "b", "d"} == set(cache._data)
    cache.set("e", 0)
    assert {"a", "d", "e"} == set(cache._data)


def test_lru_counts_a_rewrite_as_a_use() -> None:
    cache: MemoryCache[str, int] = MemoryCache(2, policy="lru", clock=ManualClock())
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("a", 3)
    cache.set("c", 4)
    assert {"a", "c"} == set(cache._data)


def test_fifo_evicts_in_insertion_order_whatever_is_read() -> None:
    cache: MemoryCache[str, int] = MemoryCache(3, policy="fifo", clock=ManualClock())
    for key in "abc":
        cache.set(key, 0)
    for _ in range(10):
        cache.get("a")
    cache.set("a", 1)  # a rewrite does not move it either
    cache.set("d", 0)
    assert {"b", "c", "d"} == set(cache._data)


def test_lfu_keeps_the_frequent_keys() -> None:
    cache: MemoryCache[str, int] = MemoryCache(3, policy="lfu", clock=ManualClock())
    for key, reads in (("a", 5), ("b", 1), ("c", 3)):
        cache.set(key, 0)
        for _ in range(reads):
            cache.get(key)
    cache.set("d", 0)  # b is the least frequent
    assert {"a", "c", "d"} == set(cache._data)
    cache.set("e", 0)  # d and e tie at one use: the older, d, goes
    assert {"a", "c", "e"} == set(cache._data)


def test_lfu_takes_new_keys_even_when_everything_else_is_hot() -> None:
    cache: MemoryCache[str, int] = MemoryCache(2, policy="lfu", clock=ManualClock())
    cache.set("hot", 0)
    for _ in range(50):
        cache.get("hot")
    cache.set("x", 0)
    cache.set("y", 0)  # x, not y, the one being added, makes room
    assert {"hot", "y"} == set(cache._data)


def test_lfu_adapts_when_the_workload_shifts() -> None:
    """Counts age: after a shift the new hot set takes over; without aging it never would."""
    capacity = 100
    rng = random.Random(5)
    old = [rng.randrange(100) for _ in range(20_000)]  # 100 keys hammered
    new = [1000 + rng.randrange(100) for _ in range(40_000)]  # then 100 others
    cache: MemoryCache[int, int] = MemoryCache(capacity, policy="lfu", clock=ManualClock())
    run(cache, old)
    run(cache, new[:20_000])
    assert run(cache, new[20_000:]) > 0.95
    assert all(key >= 1000 for key in cache._data)


# -- W-TinyLFU --------------------------------------------------------------------------------


def test_tinylfu_keeps_the_hot_set_through_a_scan_of_one_time_keys() -> None:
    """A long scan flushes an LRU; W-TinyLFU refuses the one-hit wonders at the door."""
    rng = random.Random(11)
    hot = [rng.randrange(80) for _ in range(5_000)]
    scan = list(range(10_000, 20_000))
    ratios = {}
    for policy in ("tinylfu", "lru"):
        cache: MemoryCache[int, int] = MemoryCache(100, policy=policy, clock=ManualClock())
        run(cache, hot)
        run(cache, scan)
        ratios[policy] = run(cache, hot)
        if policy == "tinylfu":
            assert sum(key < 80 for key in cache._data) >= 75
            assert cache.stats().evictions >= 9_900  # the scan went through the window
    assert ratios["tinylfu"] > 0.98
    assert ratios["lru"] < ratios["tinylfu"] - 0.01


def test_tinylfu_favours_the_incumbent_on_a_tie() -> None:
    """A newcomer seen as often as the victim does not displace it (no churn on scans)."""
    cache: MemoryCache[int, int] = MemoryCache(100, clock=ManualClock())
    for i in range(200):
        cache.set(i, i)  # everything seen once
    assert 99 == sum(key < 100 for key in cache._data)  # the window holds the newest
    assert 199 in cache


def test_tinylfu_admits_a_key_once_it_is_popular() -> None:
    """A key refused at first gets in once the sketch has seen it often enough."""
    cache: MemoryCache[str, int] = MemoryCache(100, clock=ManualClock())
    for i in range(100):
        cache.set(f"k{i}", i)
        cache.get(f"k{i}")
        cache.get(f"k{i}")
    admitted_after = None
    for attempt in range(1, 20):
        cache.set("newcomer", 0)
        for i in range(5):
            cache.set(f"noise{attempt}-{i}", 0)  # push the newcomer out of the window
        if "newcomer" in cache:
            admitted_after = attempt
            break
    assert admitted_after is not None
    assert admitted_after > 1  # not on its first visit


def test_tinylfu_beats_lru_on_a_skewed_workload() -> None:
    rng = random.Random(2)
    weights = [1 / (i + 1) for i in range(5_000)]
    trace = rng.choices(range(5_000), weights=weights, k=60_000)
    ratios = {
        policy: run(MemoryCache(200, policy=policy, clock=ManualClock()), trace)
        for policy in ("tinylfu", "lru", "fifo")
    }
    assert ratios["tinylfu"] > ratios["lru"] + 0.03
    assert ratios["lru"] > ratios["fifo"]


def test_tinylfu_climbs_toward_the_window_size_that_hits_more() -> None:
    """The hill climber keeps moving the window while the hit rate improves, and turns back
    when it drops."""
    policy = make_policy("tinylfu", 1000, weighted=False)
    assert isinstance(policy, TinyLfuPolicy)
    for i in range(1000):
        policy.add(Node(i, i, None, 1))
        policy.evict(policy.weight - 1000)
    sample = policy._climb_at

    def feed(hit_rate: float) -> int:
        policy._hits_in_sample = int(sample * hit_rate)
        policy._misses_in_sample = sample - policy._hits_in_sample
        policy.evict(0)
        return policy._window_max

    assert 10 == policy._window_max
    assert 1 == feed(0.20)  # better than nothing: keep going (Caffeine shrinks first)
    assert 63 == feed(0.10)  # worse: turn round, grow
    assert 125 == feed(0.30)  # better: keep growing
    assert 187 == feed(0.36)
    assert 249 == feed(0.37)  # a small gain: same way, and smaller steps from now on
    assert 305 == feed(0.38)
    assert 255 == feed(0.20)  # a drop: back
    assert 10 + 792 == policy._window_max + policy._protected_max  # moved, not made
    assert policy._window_max == policy._window_weight  # the window filled from main
    assert 1000 == policy.count


def test_tinylfu_keeps_an_entry_too_heavy_for_protected_in_probation() -> None:
    cache: MemoryCache[str, str] = MemoryCache(
        100, weigher=lambda key, value: len(value), clock=ManualClock()
    )
    policy = cache._policy
    assert isinstance(policy, TinyLfuPolicy)
    cache.set("heavy", "x" * 90)  # heavier than the window (1 of 100): on to probation
    cache.set("light", "y")
    assert cache._data["heavy"].queue is policy._probation
    for _ in range(3):
        assert "x" * 90 == cache.get("heavy")
    cache.cleanup()
    assert cache._data["heavy"].queue is policy._probation  # 90 > protected's 79
    assert [] == cache._audit()


def test_tinylfu_regions_keep_their_proportions() -> None:
    policy = make_policy("tinylfu", 1000, weighted=False)
    assert isinstance(policy, TinyLfuPolicy)
    assert (10, 792) == (policy._window_max, policy._protected_max)
    small = make_policy("tinylfu", 1, weighted=False)
    assert isinstance(small, TinyLfuPolicy)
    assert (1, 0) == (small._window_max, small._protected_max)


# -- every policy: invariants under random use -------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("weighted", [False, True])
def test_random_use_keeps_every_policy_coherent(policy: str, weighted: bool) -> None:
    clock = ManualClock()
    cache: MemoryCache[int, str] = MemoryCache(
        50,
        policy=policy,
        clock=clock,
        weigher=(lambda key, value: len(value)) if weighted else None,
    )
    rng = random.Random(policy)
    for step in range(5_000):
        key = rng.randrange(120)
        roll = rng.random()
        if roll < 0.5:
            cache.get(key)
        elif roll < 0.85:
            cache.set(key, "x" * rng.randint(0, 9), ttl=rng.choice([None, 1, 5]))
        elif roll < 0.9:
            cache.delete(key)
        elif roll < 0.95:
            clock.advance(0.5)
        elif roll < 0.96:
            cache.resize(rng.choice([20, 50, 80]))
        if step % 250 == 0:
            assert [] == cache._audit()
            assert cache.stats().weight <= cache.max_size
    assert [] == cache._audit()


def test_a_dead_node_ignores_late_reads() -> None:
    policy = make_policy("lru", 10, weighted=False)
    node = Node("k", 1, None, 1)
    policy.add(node)
    policy.remove(node)
    assert node.queue is DEAD
    policy.record([node])  # a read buffered before the removal
    assert 0 == policy.count
    assert [] == list(policy.nodes())


def test_lfu_aging_halves_counts_and_merges_buckets() -> None:
    policy = make_policy("lfu", 4, weighted=False)
    nodes = [Node(i, i, None, 1) for i in range(4)]
    for node in nodes:
        policy.add(node)
    for node, reads in zip(nodes, (0, 1, 2, 5), strict=True):
        policy.record([node] * reads)
    assert [1, 2, 3, 6] == [node.freq for node in nodes]
    policy._age()
    assert [0, 1, 1, 3] == [node.freq for node in nodes]
    assert [0, 1, 2, 3] == [node.key for node in policy.nodes()]  # by count, older first
    assert [nodes[0]] == policy.evict(1)


# -- the sketch --------------------------------------------------------------------------------


def test_the_sketch_estimates_saturates_and_ages() -> None:
    sketch = FrequencySketch(1000)
    keys = [f"key:{i}" for i in range(1000)]
    for i, key in enumerate(keys):
        sketch.raise_to(key, i % 16)
    exact = sum(sketch.frequency(key) == i % 16 for i, key in enumerate(keys))
    assert exact >= 990  # count-min: collisions may only overstate, and rarely do
    assert all(sketch.frequency(key) >= i % 16 for i, key in enumerate(keys))
    sketch.raise_to("hot", 100)
    assert MAX_FREQUENCY == sketch.frequency("hot")
    sketch.raise_to("hot", 3)  # never lowers
    assert MAX_FREQUENCY == sketch.frequency("hot")
    sketch.halve()
    assert 7 == sketch.frequency("hot")
    assert 0 == sketch.frequency("never seen")


def test_the_sketch_spreads_small_integer_keys() -> None:
    """hash(i) == i: without mixing, consecutive ints would share counters in some rows."""
    sketch = FrequencySketch(4096)
    for key in range(4096):
        sketch.raise_to(key, 1)
    assert sum(sketch.frequency(key) for key in range(4096, 8192)) < 200


# -- the timer wheel --------------------------------------------------------------------------


def timed(key: object, expire: float) -> Node:
    return Node(key, None, expire, 1)


def test_the_wheel_expires_exactly_what_is_due() -> None:
    rng = random.Random(9)
    start = 12_345.67
    wheel = TimerWheel(start)
    deadlines = {}
    for i in range(3_000):
        expire = start + rng.choice([0.1, 0.9, 1, 30, 64, 100, 4_000, 5_000, 3e5, 2e7, 1e9]) * (
            rng.random() + 0.5
        )
        node = timed(i, expire)
        deadlines[i] = expire
        wheel.schedule(node)
    now, gone = start, set()
    while now < start + 2e9:
        now += rng.choice([0.05, 0.7, 3, 90, 7_000, 4e5, 3e7, 1e9])
        assert now >= wheel.due or wheel.advance(now) == []
        for node in wheel.advance(now):
            assert node.expire is not None
            assert node.expire <= now
            assert node.key not in gone
            gone.add(node.key)
        assert {key for key, expire in deadlines.items() if expire <= now} == gone
    assert 0 == len(wheel)


def test_the_wheel_forgets_descheduled_nodes() -> None:
    wheel = TimerWheel(0.0)
    soon, later, current = timed("soon", 10.0), timed("later", 5_000.0), timed("now", 0.5)
    for node in (soon, later, current):
        wheel.schedule(node)
    for node in (soon, later, current):
        wheel.deschedule(node)
        assert node.timer is None
    assert 0 == len(wheel)
    assert [] == wheel.advance(1e6)


def test_the_wheel_compacts_its_heap_of_stale_entries() -> None:
    wheel = TimerWheel(0.0)
    nodes = [timed(i, 0.5) for i in range(1_000)]
    for node in nodes:
        wheel.schedule(node)
    for node in nodes[:900]:
        wheel.deschedule(node)
    assert len(wheel._heap) < 500
    assert {node.key for node in nodes[900:]} == {node.key for node in wheel.advance(0.5)}


def test_the_wheel_stays_exact_when_a_caller_lags_behind() -> None:
    """A thread's clock reading may be older than the last advance: harmless."""
    wheel = TimerWheel(0.0)
    node = timed("k", 100.5)
    wheel.schedule(node)
    assert [] == wheel.advance(100.0)
    assert [] == wheel.advance(99.0)
    assert wheel.due <= 100.5
    assert ["k"] == [n.key for n in wheel.advance(100.5)]
    assert math.isclose(wheel.due, 101.0)

"""MemoryCache, driven by random operation sequences, against a dict and a clock.

With room for every key the cache must *be* the reference: same answers to
every read, same length. With a small capacity it may forget (that is what
eviction is), but whatever it returns must be the reference's value, never
an expired one, and it never holds more than its capacity.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from buttress.cache._memory import MemoryCache, RemovalCause
from buttress.cache._missing import MISSING
from buttress.clock import ManualClock

KEYS = st.sampled_from([f"k{i}" for i in range(8)] + ["user:1", "user:22", "x"])
VALUES = st.integers(min_value=0, max_value=1000)
TTLS = st.sampled_from([None, None, 0, 0.25, 0.5, 1, 1.5, 3, 64, 100, 5000, math.inf])
STEPS = st.sampled_from([0, 0.1, 0.25, 0.5, 1, 1.25, 3, 63, 70, 4000, 10**6])
PATTERNS = st.sampled_from(["k*", "k[0-3]", "user:?", "user:*", "*", "x", "nothing*"])
DISTINCT_KEYS = 11


class CacheModel(RuleBasedStateMachine):
    """The reference is ``{key: (value, deadline or None)}``; the clock is shared."""

    capacity = DISTINCT_KEYS
    exact = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start=1_000.3)
        self.entries: dict[str, tuple[int, float | None]] = {}
        self.removed: list[tuple[str, int, RemovalCause]] = []
        self.cache: MemoryCache[str, int] = MemoryCache(0)

    @initialize(
        policy=st.sampled_from(["tinylfu", "lru", "lfu", "fifo"]),
        default_ttl=st.sampled_from([None, 2, 50]),
    )
    def make(self, policy: str, default_ttl: float | None) -> None:
        self.default_ttl = default_ttl
        self.cache = MemoryCache(
            self.capacity,
            policy=policy,
            ttl=default_ttl,
            clock=self.clock,
            on_removal=lambda k, v, c: self.removed.append((k, v, c)),
        )

    # -- the reference ---------------------------------------------------------------------

    def live(self, key: str) -> int | object:
        found = self.entries.get(key)
        if found is None:
            return MISSING
        value, deadline = found
        if deadline is not None and deadline <= self.clock.now():
            del self.entries[key]
            return MISSING
        return value

    def live_keys(self) -> set[str]:
        return {key for key in list(self.entries) if self.live(key) is not MISSING}

    def check_read(self, key: str, got: object) -> None:
        expected = self.live(key)
        if self.exact:
            assert expected == got
        else:  # may have been evicted, never stale
            assert got is MISSING or got == expected

    # -- rules -----------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def set(self, key: str, value: int, ttl: float | None) -> None:
        self.cache.set(key, value, ttl=ttl)
        seconds = self.default_ttl if ttl is None else ttl
        if seconds == 0:
            self.entries.pop(key, None)
            return
        deadline = None if seconds is None or seconds == math.inf else self.clock.now() + seconds
        self.entries[key] = (value, deadline)

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=4), ttl=TTLS)
    def set_many(self, items: dict[str, int], ttl: float | None) -> None:
        self.cache.set_many(items, ttl=ttl)
        for key, value in items.items():
            seconds = self.default_ttl if ttl is None else ttl
            if seconds == 0:
                self.entries.pop(key, None)
            else:
                deadline = None if seconds in (None, math.inf) else self.clock.now() + seconds
                self.entries[key] = (value, deadline)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        self.check_read(key, self.cache.get(key, MISSING))

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        self.check_read(key, self.cache.get(key, MISSING) if key in self.cache else MISSING)

    @rule(keys=st.lists(KEYS, max_size=5))
    def get_many(self, keys: list[str]) -> None:
        found = self.cache.get_many(keys)
        for key in keys:
            self.check_read(key, found.get(key, MISSING))

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        removed = self.cache.delete(key)
        expected = self.live(key) is not MISSING
        if self.exact:
            assert expected == removed
        else:
            assert not removed or expected
        self.entries.pop(key, None)

    @rule(pattern=PATTERNS)
    def delete_pattern(self, pattern: str) -> None:
        count = self.cache.delete_pattern(pattern)
        matching = {key for key in self.live_keys() if fnmatch.fnmatchcase(key, pattern)}
        if self.exact:
            assert len(matching) == count
        else:
            assert count <= len(matching)
        for key in matching:
            del self.entries[key]

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.entries) > 0)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.entries.clear()

    @rule(n=st.integers(min_value=0, max_value=12))
    def hot_keys(self, n: int) -> None:
        hot = self.cache.hot_keys(n)
        assert len(hot) <= n
        live = self.live_keys()
        assert all(key in live for key, _ in hot)
        counts = [count for _, count in hot]
        assert counts == sorted(counts, reverse=True)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def size(self) -> None:
        size = len(self.cache)
        assert size <= self.capacity
        if self.exact:
            assert len(self.live_keys()) == size
            assert self.cache.stats().size == size

    @invariant()
    def coherent(self) -> None:
        assert [] == self.cache._audit()

    @invariant()
    def removals_say_what_left(self) -> None:
        for key, value, cause in self.removed:
            assert isinstance(value, int)
            assert key in {f"k{i}" for i in range(8)} | {"user:1", "user:22", "x"}
            if self.exact:
                assert cause is not RemovalCause.EVICTED
        self.removed.clear()


class SmallCacheModel(CacheModel):
    capacity = 3
    exact = False


TestMemoryCacheWithRoom = CacheModel.TestCase
TestMemoryCacheWithRoom.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestSmallMemoryCache = SmallCacheModel.TestCase
TestSmallMemoryCache.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_the_model_agrees_with_itself_on_a_known_sequence() -> None:
    """A fixed run through the machine, so a broken model cannot pass vacuously."""
    machine: Any = CacheModel()
    machine.make(policy="lru", default_ttl=2)
    machine.set(key="k1", value=1, ttl=None)
    machine.set(key="k2", value=2, ttl=math.inf)
    machine.advance(seconds=2)
    assert MISSING is machine.live("k1")
    assert 2 == machine.live("k2")
    assert MISSING is machine.cache.get("k1", MISSING)
    machine.size()
    machine.teardown()

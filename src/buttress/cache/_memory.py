"""The in-process (L1) cache: bounded, expiring, thread-safe, and reads take no lock.

    >>> from buttress.cache import MISSING, MemoryCache
    >>> cache = MemoryCache(max_size=10_000, ttl=300)      # W-TinyLFU by default
    >>> cache.set("user:1", {"name": "Ada"})
    >>> cache.get("user:1")
    {'name': 'Ada'}
    >>> cache.get("user:2", MISSING) is MISSING            # a miss, told from a stored None
    True
    >>> cache.set("page:/", "<html>", ttl=5)               # a TTL per entry
    >>> cache.delete_pattern("user:*")
    1

Policies: ``"tinylfu"`` (the default: best hit ratio on most workloads, and a
scan of one-time keys cannot flush the hot set), ``"lru"``, ``"lfu"``, ``"fifo"``
(see :mod:`buttress.cache._policies`). With ``weigher=`` the capacity
``max_size`` bounds the total weight (say bytes) rather than the entry count.

How it stays fast and safe (Caffeine's design, in Python):

- **Reads take no lock.** A ``get`` is a dict lookup, an expiry check and an
  append of the node to a read buffer. The buffer is applied to the policy in a
  batch under the lock when it fills (if the lock is free; if it stays busy the
  buffer drops reads: recency is advice, not data) or before the next write.
- **Writes take the lock**, then do all pending maintenance: apply buffered
  reads, reclaim expired entries, evict. Every operation is O(1) amortised
  except :meth:`MemoryCache.delete_pattern`, which scans.
- **Expired entries are never returned** (each read checks the deadline) and
  are reclaimed by a hierarchical timer wheel during maintenance, with no scan.
  ``len()`` and :meth:`MemoryCache.stats` reclaim first, so they count live
  entries exactly.
- ``on_removal(key, value, cause)`` runs outside the lock, on the thread whose
  call caused the removal, before that call returns; an exception in it is
  logged, never raised.

Statistics are exact in single-threaded use. Under contention a few hits may
go uncounted (reads dropped from a full buffer are still counted, but two
threads can race on a miss count); they are for dashboards, not billing.
"""

from __future__ import annotations

import enum
import fnmatch
import heapq
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload

from buttress.cache._policies import DEAD, POLICIES, LfuPolicy, Node, TinyLfuPolicy, make_policy
from buttress.cache._timerwheel import TimerWheel
from buttress.clock import Clock, SystemClock
from buttress.resilience._common import (
    Duration,
    check_callable,
    check_int,
    check_seconds,
    resolve_clock,
)

__all__ = ["CacheStats", "MemoryCache", "RemovalCause"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_NAME = "MemoryCache"
_READ_BATCH = 128  # buffered reads applied to the policy at once
_READ_LIMIT = 16 * _READ_BATCH  # while the lock stays busy, reads beyond this are dropped
_log = logging.getLogger("buttress.cache")


class RemovalCause(enum.Enum):
    """Why an entry left the cache, as passed to ``on_removal``."""

    EXPLICIT = "explicit"
    """:meth:`MemoryCache.delete` or :meth:`MemoryCache.delete_pattern`."""
    REPLACED = "replaced"
    """:meth:`MemoryCache.set` stored a new value under the key (the old value is passed)."""
    EXPIRED = "expired"
    """Its TTL ran out (also a value set with ``ttl=0``, which is never stored)."""
    EVICTED = "evicted"
    """The policy evicted it to respect ``max_size`` (also a value heavier than ``max_size``)."""
    CLEARED = "cleared"
    """:meth:`MemoryCache.clear`."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters (cumulative since creation) and its fill."""

    hits: int
    misses: int
    evictions: int
    """Entries evicted for size."""
    expirations: int
    """Entries reclaimed because their TTL ran out."""
    size: int
    """Live entries now."""
    weight: int
    """Their total weight (equals ``size`` without a weigher)."""
    max_size: int
    hit_ratio: float = field(init=False)
    """``hits / (hits + misses)``, 0.0 before any request."""

    def __post_init__(self) -> None:
        requests = self.hits + self.misses
        object.__setattr__(self, "hit_ratio", self.hits / requests if requests else 0.0)

    @property
    def requests(self) -> int:
        return self.hits + self.misses


def _ttl_seconds(value: Duration) -> float | None:
    """Validated seconds; infinity means "never expires" (``None``)."""
    seconds = check_seconds(_NAME, "ttl", value)
    return None if seconds == math.inf else seconds


def _freq(node: Node) -> int:
    return node.freq


class MemoryCache(Generic[K, V]):
    """A bounded in-process cache with per-entry TTLs and a choice of eviction policy.

    ``max_size`` is the capacity: entries, or total weight with ``weigher``
    (a ``weigher(key, value) -> int >= 0``, called outside the lock; an entry
    heavier than ``max_size`` is not stored). ``ttl`` is the default time to
    live (seconds or a ``timedelta``; ``None``: no expiry); ``set(..., ttl=)``
    overrides it per entry, ``ttl=0`` expires at once and ``math.inf`` never.
    ``clock`` is where time comes from (:class:`~buttress.clock.ManualClock` in
    tests). ``on_removal(key, value, cause)`` hears of every entry that leaves,
    with a :class:`RemovalCause`.

    Keys are any hashable; :meth:`delete_pattern` matches only ``str`` keys.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_data",
        "_dropped",
        "_evictions",
        "_expirations",
        "_hits",
        "_listener",
        "_lock",
        "_max_size",
        "_misses",
        "_now",
        "_pending",
        "_policy",
        "_reads",
        "_ttl",
        "_weigher",
        "_wheel",
    )

    def __init__(
        self,
        max_size: int = 10_000,
        *,
        policy: str = "tinylfu",
        ttl: Duration | None = None,
        weigher: Callable[[K, V], int] | None = None,
        clock: Clock | None = None,
        on_removal: Callable[[K, V, RemovalCause], object] | None = None,
    ) -> None:
        self._max_size = check_int(_NAME, "max_size", max_size, minimum=0)
        if not isinstance(policy, str) or policy not in POLICIES:
            allowed = ", ".join(repr(name) for name in POLICIES)
            raise ValueError(f"{_NAME}: policy must be one of {allowed}, got {policy!r}")
        self._ttl = None if ttl is None else _ttl_seconds(ttl)
        self._weigher = check_callable(_NAME, "weigher", weigher)
        self._listener = check_callable(_NAME, "on_removal", on_removal)
        self._clock = resolve_clock(_NAME, clock)
        # The system clock's now() is a Python call around time.monotonic: call
        # the builtin itself. Any other clock is asked through its bound method,
        # which reads the clock's current time on every call (ManualClock too).
        self._now: Callable[[], float] = (
            time.monotonic if type(self._clock) is SystemClock else self._clock.now
        )
        self._data: dict[Any, Node] = {}
        self._reads: list[Node] = []
        self._lock = threading.Lock()
        self._policy = make_policy(policy, self._max_size, weighted=weigher is not None)
        self._wheel = TimerWheel(self._now())
        self._pending: list[tuple[Any, Any, RemovalCause]] = []
        self._hits = self._misses = self._dropped = 0
        self._evictions = self._expirations = 0

    def __repr__(self) -> str:
        return (
            f"MemoryCache(policy={self._policy.name!r}, entries={len(self._data)}, "
            f"max_size={self._max_size})"
        )

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def policy(self) -> str:
        return self._policy.name

    # -- reads: no lock ------------------------------------------------------------------

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value of ``key``, or ``default`` if it is absent or expired."""
        node = self._data.get(key)
        if node is None:
            self._misses += 1
            return default
        expire = node.expire
        if expire is not None and expire <= self._now():
            self._misses += 1
            self._reads_full()  # reclaim it (and its like) now, if the lock is free
            return default
        reads = self._reads
        reads.append(node)
        if len(reads) >= _READ_BATCH:
            self._reads_full()
        return node.value

    def get_many(self, keys: Iterable[K]) -> dict[K, V]:
        """The values of those ``keys`` that are present and live (one clock reading)."""
        data, reads, now = self._data, self._reads, self._now()
        found: dict[K, V] = {}
        misses = 0
        for key in keys:
            node = data.get(key)
            if node is None or (node.expire is not None and node.expire <= now):
                misses += 1
                continue
            reads.append(node)
            found[key] = node.value
        self._misses += misses
        if len(self._reads) >= _READ_BATCH:
            self._reads_full()
        return found

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present and live. Not an access: the policy does not hear of it."""
        node = self._data.get(key)
        if node is None:
            return False
        expire = node.expire
        return expire is None or expire > self._now()

    def _reads_full(self) -> None:
        lock = self._lock
        if lock.acquire(blocking=False):
            try:
                batch, self._reads = self._reads, []
                self._policy.record(batch)
                self._hits += len(batch)
                now = self._now()
                if now >= self._wheel.due:
                    self._expire(now)
                pending = self._take_pending()
            finally:
                lock.release()
            if pending:
                self._fire(pending)
        elif len(self._reads) >= _READ_LIMIT:
            # The lock has been busy for a long time: drop the reads rather than
            # grow without bound or make a reader wait (they are only advice).
            dropped, self._reads = self._reads, []
            self._dropped += len(dropped)

    # -- writes: under the lock ------------------------------------------------------------

    def set(self, key: K, value: V, ttl: Duration | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` (``None``: the cache's default TTL)."""
        if ttl is None:
            seconds = self._ttl
        elif (type(ttl) is float or type(ttl) is int) and 0 < ttl < math.inf:
            seconds = ttl  # the common cases, already valid
        else:
            seconds = _ttl_seconds(ttl)
        weight = 1 if self._weigher is None else self._weigh(key, value)
        with self._lock:
            now = self._now()
            if self._reads:  # _maintain(now), inline: this is every write
                self._drain_reads()
            if now >= self._wheel.due:
                self._expire(now)
            self._write(key, value, None if seconds is None else now + seconds, weight, now)
            pending = self._take_pending() if self._pending else ()
        if pending:
            self._fire(pending)

    def set_many(self, items: Mapping[K, V], ttl: Duration | None = None) -> None:
        """Store every ``key: value`` of ``items`` for ``ttl``, under one lock acquisition."""
        seconds = self._ttl if ttl is None else _ttl_seconds(ttl)
        pairs = list(items.items())
        weigher = self._weigher
        weights = [1] * len(pairs) if weigher is None else [self._weigh(k, v) for k, v in pairs]
        with self._lock:
            now = self._now()
            self._maintain(now)
            expire = None if seconds is None else now + seconds
            for (key, value), weight in zip(pairs, weights, strict=True):
                self._write(key, value, expire, weight, now)
            pending = self._take_pending()
        if pending:
            self._fire(pending)

    def delete(self, key: K) -> bool:
        """Remove ``key``; True if a live entry was removed."""
        with self._lock:
            self._maintain(self._now())
            node = self._data.get(key)
            if node is not None:
                self._discard(node, RemovalCause.EXPLICIT)
            pending = self._take_pending()
        if pending:
            self._fire(pending)
        return node is not None

    def delete_pattern(self, pattern: str) -> int:
        """Remove every ``str`` key matching the glob ``pattern``; how many were removed.

        Globs as :func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[abc]``, ``[!abc]``,
        case-sensitive. This one scans the keys, outside the lock (other
        threads read and write meanwhile): the matches come from a snapshot, so
        a key first written during the scan may survive it.
        """
        if not isinstance(pattern, str):
            raise ValueError(f"{_NAME}: pattern must be a glob string, got {pattern!r}")
        match = re.compile(fnmatch.translate(pattern)).match
        with self._lock:
            self._maintain(self._now())
            snapshot = list(self._data.items())
        matches = [node for key, node in snapshot if isinstance(key, str) and match(key)]
        if not matches:
            return 0
        removed = 0
        with self._lock:
            self._maintain(self._now())
            for node in matches:
                if node.queue is not DEAD:  # not gone meanwhile
                    self._discard(node, RemovalCause.EXPLICIT)
                    removed += 1
            pending = self._take_pending()
        if pending:
            self._fire(pending)
        return removed

    def clear(self) -> None:
        """Remove every entry (``on_removal`` hears ``CLEARED``, or ``EXPIRED`` for the dead)."""
        with self._lock:
            self._maintain(self._now())
            nodes = list(self._data.values())
            for node in nodes:
                node.queue, node.timer = DEAD, None  # buffered reads of them are now ignored
            self._data.clear()
            self._policy.clear()
            self._wheel.clear()
            if self._listener is not None:
                self._pending.extend((node.key, node.value, RemovalCause.CLEARED) for node in nodes)
            pending = self._take_pending()
        if pending:
            self._fire(pending)

    def resize(self, max_size: int) -> None:
        """Change the capacity; entries beyond it are evicted now."""
        max_size = check_int(_NAME, "max_size", max_size, minimum=0)
        with self._lock:
            self._maintain(self._now())
            self._max_size = max_size
            self._policy.resize(max_size)
            self._evict()
            pending = self._take_pending()
        if pending:
            self._fire(pending)

    def cleanup(self) -> None:
        """Do pending maintenance now: apply buffered reads, reclaim expired entries.

        Never needed for correctness (every write does it); useful before
        inspecting the cache, or from a timer in a cache that is only read.
        """
        with self._lock:
            self._maintain(self._now())
            pending = self._take_pending()
        if pending:
            self._fire(pending)

    # -- inspection ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live entries, exactly (expired ones are reclaimed first)."""
        with self._lock:
            now = self._now()
            if now >= self._wheel.due:
                self._expire(now)
            size = len(self._data)
            pending = self._take_pending()
        if pending:
            self._fire(pending)
        return size

    def stats(self) -> CacheStats:
        """Hits, misses, evictions, expirations so far, and the live size and weight."""
        with self._lock:
            self._maintain(self._now())
            stats = CacheStats(
                hits=self._hits + self._dropped,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                size=len(self._data),
                weight=self._policy.weight,
                max_size=self._max_size,
            )
            pending = self._take_pending()
        if pending:
            self._fire(pending)
        return stats

    def hot_keys(self, n: int = 100) -> list[tuple[K, int]]:
        """The ``n`` most accessed live keys, hottest first, with their recent access counts.

        The counts are what the policy keeps (every policy counts): accesses and
        writes, halved every ten capacities' worth of accesses, so they weigh
        the recent past. For warming another cache. Ranks every entry: O(size).
        """
        n = check_int(_NAME, "n", n, minimum=0)
        with self._lock:
            self._maintain(self._now())
            nodes = list(self._data.values())
            pending = self._take_pending()
        if pending:
            self._fire(pending)
        hottest = heapq.nlargest(n, nodes, key=_freq)
        return [(cast(K, node.key), node.freq) for node in hottest]

    # -- maintenance (under the lock) ----------------------------------------------------------

    def _maintain(self, now: float) -> None:
        if self._reads:
            self._drain_reads()
        if now >= self._wheel.due:
            self._expire(now)

    def _drain_reads(self) -> None:
        batch, self._reads = self._reads, []
        self._policy.record(batch)
        self._hits += len(batch)

    def _expire(self, now: float) -> None:
        expired = self._wheel.advance(now)
        if not expired:
            return
        data, policy = self._data, self._policy
        for node in expired:
            del data[node.key]
            policy.remove(node)
        self._expirations += len(expired)
        if self._listener is not None:
            self._pending.extend((node.key, node.value, RemovalCause.EXPIRED) for node in expired)

    def _write(self, key: K, value: V, expire: float | None, weight: int, now: float) -> None:
        node = self._data.get(key)
        if (expire is not None and expire <= now) or weight > self._max_size:
            # Stored and gone at once: the old value is replaced, the new one
            # reported as expired (ttl=0) or evicted (too heavy), as Caffeine does.
            if node is not None:
                self._discard(node, RemovalCause.REPLACED)
            if expire is not None and expire <= now:
                self._expirations += 1
                cause = RemovalCause.EXPIRED
            else:
                self._evictions += 1
                cause = RemovalCause.EVICTED
            if self._listener is not None:
                self._pending.append((key, value, cause))
            return
        if node is None:
            node = Node(key, value, expire, weight)
            self._data[key] = node
            if expire is not None:
                self._wheel.schedule(node)
            self._policy.add(node)
            self._evict()
            return
        old_value, old_weight = node.value, node.weight
        node.value = value
        node.weight = weight
        if expire != node.expire:
            if node.timer is not None:
                self._wheel.deschedule(node)
            node.expire = expire
            if expire is not None:
                self._wheel.schedule(node)
        self._policy.update(node, old_weight)
        if self._listener is not None and old_value is not value:
            self._pending.append((key, old_value, RemovalCause.REPLACED))
        if weight > old_weight:
            self._evict()

    def _evict(self) -> None:
        policy = self._policy
        # Called even with nothing to free: W-TinyLFU moves its window's overflow here.
        victims = policy.evict(policy.weight - self._max_size)
        if not victims:
            return
        data, wheel = self._data, self._wheel
        for node in victims:
            del data[node.key]
            if node.timer is not None:
                wheel.deschedule(node)
        self._evictions += len(victims)
        if self._listener is not None:
            self._pending.extend((node.key, node.value, RemovalCause.EVICTED) for node in victims)

    def _discard(self, node: Node, cause: RemovalCause) -> None:
        del self._data[node.key]
        self._policy.remove(node)
        if node.timer is not None:
            self._wheel.deschedule(node)
        if self._listener is not None:
            self._pending.append((node.key, node.value, cause))

    def _take_pending(self) -> Sequence[tuple[Any, Any, RemovalCause]]:
        """The notifications queued so far (taken under the lock, fired after it).

        Never the live list itself: another thread may append to that as soon
        as the lock is released.
        """
        pending = self._pending
        if not pending:
            return ()
        self._pending = []
        return pending

    def _fire(self, pending: Sequence[tuple[Any, Any, RemovalCause]]) -> None:
        listener = self._listener
        if listener is None:
            return
        for key, value, cause in pending:
            try:
                listener(key, value, cause)
            except Exception:
                # The key is not logged: cache keys can carry tokens or ids.
                _log.exception(
                    "MemoryCache: on_removal %r failed (cause %s)", listener, cause.value
                )

    def _weigh(self, key: K, value: V) -> int:
        weight = self._weigher(key, value)  # type: ignore[misc]
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise TypeError(f"{_NAME}: weigher must return an int, got {weight!r}")
        if weight < 0:
            raise ValueError(f"{_NAME}: weigher must return a weight >= 0, got {weight!r}")
        return weight

    def _audit(self) -> list[str]:
        """Broken invariants, for tests: map, policy and timer wheel must agree."""
        with self._lock:
            return _audit(self)


def _audit(cache: MemoryCache[Any, Any]) -> list[str]:
    problems: list[str] = []
    data, policy, wheel = cache._data, cache._policy, cache._wheel
    held = list(policy.nodes())
    if len(held) != len(data) or {id(n) for n in held} != {id(n) for n in data.values()}:
        problems.append(f"policy holds {len(held)} nodes, the map {len(data)}")
    if policy.count != len(data):
        problems.append(f"policy count {policy.count} != {len(data)} entries")
    weight = sum(node.weight for node in data.values())
    if policy.weight != weight:
        problems.append(f"policy weight {policy.weight} != {weight}")
    timed = 0
    for key, node in data.items():
        if node.key != key or node.queue is DEAD:
            problems.append(f"node {node!r} misfiled under {key!r}")
        if (node.expire is None) != (node.timer is None):
            problems.append(f"node {node!r} expiry and timer disagree")
        if node.expire is not None:
            timed += 1
            timer = node.timer
            if isinstance(timer, set) and node not in timer:
                problems.append(f"node {node!r} not in its timer bucket")
            if isinstance(timer, list) and timer[2] is not node:
                problems.append(f"node {node!r} heap entry is another node's")
    if len(wheel) != timed:
        problems.append(f"timer wheel holds {len(wheel)} nodes, {timed} entries expire")
    if isinstance(policy, TinyLfuPolicy):
        problems += _audit_tinylfu(policy)
    if isinstance(policy, LfuPolicy):
        problems += _audit_lfu(policy)
    return problems


def _audit_tinylfu(policy: TinyLfuPolicy) -> list[str]:
    problems = []
    for name in ("_window", "_probation", "_protected"):
        queue = getattr(policy, name)
        if any(node.queue is not queue for node in queue.values()):
            problems.append(f"a node in {name} thinks it is elsewhere")
    if policy._window_weight != sum(n.weight for n in policy._window.values()):
        problems.append("window weight is off")
    if policy._protected_weight != sum(n.weight for n in policy._protected.values()):
        problems.append("protected weight is off")
    if policy._window_max + policy._protected_max > max(policy.max_size, 0) + 1:
        problems.append("window and protected maxima exceed the capacity")
    return problems


def _audit_lfu(policy: LfuPolicy) -> list[str]:
    problems = []
    bucket, previous = policy._head, None
    while bucket is not None:
        if not bucket.items:
            problems.append(f"empty bucket {bucket.freq}")
        if previous is not None and (bucket.freq <= previous.freq or bucket.prev is not previous):
            problems.append(f"bucket {bucket.freq} out of order")
        if any(n.queue is not bucket or n.freq != bucket.freq for n in bucket.items.values()):
            problems.append(f"a node of bucket {bucket.freq} is misfiled")
        previous, bucket = bucket, bucket.next
    return problems

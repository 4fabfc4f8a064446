"""Eviction policies of the in-process cache: which entry leaves when it is full.

A policy orders the cache's nodes and picks victims; the cache owns the map,
the expiry and the lock, and calls a policy only while holding that lock. Every
operation is O(1) (amortised for the periodic aging):

- ``"lru"``: least recently used leaves first;
- ``"fifo"``: oldest insertion leaves first, reads change nothing;
- ``"lfu"``: least frequently used leaves first (ties: least recent), with
  counts halved every ten capacities' worth of accesses so old favourites fade;
- ``"tinylfu"``: W-TinyLFU as in Caffeine. New entries land in a small LRU
  *window* (1 % of the capacity); the window's overflow must win a popularity
  contest, judged by a :class:`~buttress.cache._sketch.FrequencySketch`, against
  the victim of the *main* region (a segmented LRU: probation, then protected
  after a second hit) to stay. A hill climber resizes the window from the hit
  rate it observes, so recency-heavy traces get a larger window.

Each policy also keeps ``node.freq``, a count of recent accesses (halved on the
same schedule), which :meth:`~buttress.cache.MemoryCache.hot_keys` ranks by::

    >>> policy = make_policy("lru", 2, weighted=False)
    >>> a, b, c = Node("a", 1, None, 1), Node("b", 2, None, 1), Node("c", 3, None, 1)
    >>> for node in (a, b, c):
    ...     policy.add(node)
    >>> policy.record([a])
    >>> [node.key for node in policy.evict(policy.weight - 2)]
    ['b']
"""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any, ClassVar, Final

from buttress.cache._sketch import MAX_FREQUENCY, FrequencySketch

__all__ = [
    "DEAD",
    "POLICIES",
    "FifoPolicy",
    "LfuPolicy",
    "LruPolicy",
    "Node",
    "Policy",
    "TinyLfuPolicy",
    "make_policy",
]

POLICIES: Final = ("tinylfu", "lru", "lfu", "fifo")
"""The policy names :class:`~buttress.cache.MemoryCache` accepts, the default first."""

_SAMPLES_PER_ENTRY = 10  # aging period: ten accesses per entry of capacity, as TinyLFU
_MIN_PERIOD_ENTRIES = 16


class _Dead:
    """The queue of a node that is not (or no longer) in the cache.

    It answers ``move_to_end`` like the ordered maps the live nodes sit in, and
    does nothing: a batch of buffered reads can then be applied with one call
    per node, without asking first whether each node left the cache meanwhile.
    """

    __slots__ = ()

    def move_to_end(self, key: Hashable, last: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "DEAD"


DEAD: Final = _Dead()
"""``node.queue`` of a node outside the cache."""


class Node:
    """One cache entry, shared by the map, the policy and the timer wheel.

    ``queue`` is the policy container the node sits in, :data:`DEAD` once it
    has left the cache: a reader holding a stale node can tell it is dead.
    ``timer`` is where the timer wheel filed it (``None`` when it never expires).
    """

    __slots__ = ("expire", "freq", "key", "queue", "timer", "value", "weight")

    def __init__(self, key: Hashable, value: Any, expire: float | None, weight: int) -> None:
        self.key = key
        self.value = value
        self.expire = expire
        self.weight = weight
        self.freq = 0
        self.queue: Any = DEAD
        self.timer: Any = None

    def __repr__(self) -> str:
        return f"Node({self.key!r}, freq={self.freq}, weight={self.weight}, expire={self.expire})"


def _first(queue: OrderedDict[Hashable, Node]) -> Node:
    return next(iter(queue.values()))


class Policy:
    """What every policy does; the cache calls these under its lock only.

    ``weight`` and ``count`` are the total weight and the number of nodes held.
    ``add`` takes a new node, ``update`` a node whose value was replaced (an
    access), ``remove`` unlinks a node leaving for any reason but eviction,
    ``record`` applies a batch of reads, and ``evict(excess)`` unlinks and
    returns victims until at least ``excess`` weight is freed.
    """

    name: ClassVar[str]
    __slots__ = ("_period", "_samples", "count", "max_size", "weight", "weighted")

    def __init__(self, max_size: int, *, weighted: bool) -> None:
        self.max_size = max_size
        self.weighted = weighted
        self.weight = 0
        self.count = 0
        self._samples = 0
        self._period = self._sample_period()

    def _sample_period(self) -> int:
        entries = self.count if self.weighted else self.max_size
        return _SAMPLES_PER_ENTRY * max(entries, _MIN_PERIOD_ENTRIES)

    def add(self, node: Node) -> None:
        raise NotImplementedError

    def update(self, node: Node, old_weight: int) -> None:
        raise NotImplementedError

    def remove(self, node: Node) -> None:
        raise NotImplementedError

    def record(self, batch: list[Node]) -> None:
        raise NotImplementedError

    def evict(self, excess: int) -> list[Node]:
        raise NotImplementedError

    def nodes(self) -> Iterator[Node]:
        """Every node held, in no particular order."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every node (the cache marks them dead)."""
        self.weight = self.count = self._samples = 0

    def resize(self, max_size: int) -> None:
        """Take a new capacity; the cache evicts any excess next."""
        self.max_size = max_size
        self._period = self._sample_period()

    def _age(self) -> None:
        """Halve every node's count: recent popularity outweighs old."""
        for node in self.nodes():
            node.freq >>= 1
        self._samples = 0
        self._period = self._sample_period()


class LruPolicy(Policy):
    """Least recently used: one ordered map, reads move a node to the young end."""

    name = "lru"
    __slots__ = ("_order",)

    def __init__(self, max_size: int, *, weighted: bool) -> None:
        super().__init__(max_size, weighted=weighted)
        self._order: OrderedDict[Hashable, Node] = OrderedDict()

    def add(self, node: Node) -> None:
        node.freq = 1
        node.queue = self._order
        self._order[node.key] = node
        self.weight += node.weight
        self.count += 1
        self._samples += 1

    def update(self, node: Node, old_weight: int) -> None:
        node.freq += 1
        self._order.move_to_end(node.key)
        self.weight += node.weight - old_weight
        self._samples += 1

    def remove(self, node: Node) -> None:
        del self._order[node.key]
        node.queue = DEAD
        self.weight -= node.weight
        self.count -= 1

    def record(self, batch: list[Node]) -> None:
        for node in batch:
            node.freq += 1
            node.queue.move_to_end(node.key)  # DEAD's does nothing: the node left
        self._samples += len(batch)
        if self._samples >= self._period:
            self._age()

    def evict(self, excess: int) -> list[Node]:
        evicted: list[Node] = []
        order = self._order
        while excess > 0 and order:
            node = order.popitem(last=False)[1]
            node.queue = DEAD
            self.weight -= node.weight
            self.count -= 1
            excess -= node.weight
            evicted.append(node)
        if self._samples >= self._period:
            self._age()
        return evicted

    def nodes(self) -> Iterator[Node]:
        return iter(self._order.values())

    def clear(self) -> None:
        super().clear()
        self._order.clear()


class FifoPolicy(LruPolicy):
    """First in, first out: reads only count (for ``hot_keys``), order is insertion."""

    name = "fifo"
    __slots__ = ()

    def update(self, node: Node, old_weight: int) -> None:
        node.freq += 1
        self.weight += node.weight - old_weight
        self._samples += 1

    def record(self, batch: list[Node]) -> None:
        for node in batch:
            node.freq += 1
        self._samples += len(batch)
        if self._samples >= self._period:
            self._age()


class _Bucket:
    """The nodes of one frequency, least recent first; buckets form a list by frequency."""

    __slots__ = ("freq", "items", "next", "prev")

    def __init__(self, freq: int, prev: _Bucket | None, next: _Bucket | None) -> None:
        self.freq = freq
        self.items: OrderedDict[Hashable, Node] = OrderedDict()
        self.prev = prev
        self.next = next


class LfuPolicy(Policy):
    """Least frequently used, O(1): a linked list of frequency buckets (Shah et al.).

    A read moves a node from its bucket to the next one up; the victim is the
    least recent node of the lowest bucket. Every ten capacities' worth of
    accesses all counts are halved (buckets merge pairwise), so a key that was
    hot an hour ago cannot squat for ever and the policy follows a shifting
    workload. The newest node is never its own insertion's victim.
    """

    name = "lfu"
    __slots__ = ("_head", "_newest")

    def __init__(self, max_size: int, *, weighted: bool) -> None:
        super().__init__(max_size, weighted=weighted)
        self._head: _Bucket | None = None
        self._newest: Node | None = None

    def _bucket_after(self, bucket: _Bucket | None, freq: int) -> _Bucket:
        """The bucket of ``freq``, found or linked in just after ``bucket`` (None: the head)."""
        following = self._head if bucket is None else bucket.next
        while following is not None and following.freq < freq:
            bucket, following = following, following.next
        if following is not None and following.freq == freq:
            return following
        created = _Bucket(freq, bucket, following)
        if bucket is None:
            self._head = created
        else:
            bucket.next = created
        if following is not None:
            following.prev = created
        return created

    def _unlink_bucket(self, bucket: _Bucket) -> None:
        if bucket.prev is None:
            self._head = bucket.next
        else:
            bucket.prev.next = bucket.next
        if bucket.next is not None:
            bucket.next.prev = bucket.prev

    def _touch(self, node: Node, bucket: _Bucket) -> None:
        key = node.key
        target = self._bucket_after(bucket, bucket.freq + 1)
        del bucket.items[key]
        target.items[key] = node
        node.queue = target
        node.freq = target.freq
        if not bucket.items:
            self._unlink_bucket(bucket)

    def add(self, node: Node) -> None:
        bucket = self._bucket_after(None, 1)
        bucket.items[node.key] = node
        node.queue = bucket
        node.freq = 1
        self._newest = node
        self.weight += node.weight
        self.count += 1
        self._samples += 1

    def update(self, node: Node, old_weight: int) -> None:
        self._touch(node, node.queue)
        self.weight += node.weight - old_weight
        self._samples += 1

    def remove(self, node: Node) -> None:
        bucket: _Bucket = node.queue
        del bucket.items[node.key]
        if not bucket.items:
            self._unlink_bucket(bucket)
        node.queue = DEAD
        if node is self._newest:
            self._newest = None
        self.weight -= node.weight
        self.count -= 1

    def record(self, batch: list[Node]) -> None:
        touch = self._touch
        for node in batch:
            bucket = node.queue
            if bucket is not DEAD:
                touch(node, bucket)
        self._samples += len(batch)
        if self._samples >= self._period:
            self._age()

    def _victim(self) -> Node | None:
        head = self._head
        if head is None:
            return None
        for node in head.items.values():
            # The node just added would always lose (its count is 1): skip it
            # once, or a full LFU cache could never take anything new.
            if node is not self._newest:
                return node
        if head.next is not None:
            return _first(head.next.items)
        return self._newest

    def evict(self, excess: int) -> list[Node]:
        evicted: list[Node] = []
        while excess > 0:
            node = self._victim()
            if node is None:
                break
            self.remove(node)
            excess -= node.weight
            evicted.append(node)
        if self._samples >= self._period:
            self._age()
        return evicted

    def nodes(self) -> Iterator[Node]:
        bucket = self._head
        while bucket is not None:
            yield from bucket.items.values()
            bucket = bucket.next

    def clear(self) -> None:
        super().clear()
        self._head = None
        self._newest = None

    def _age(self) -> None:
        # Halving keeps the order of frequencies, so buckets stay sorted; the
        # pairs that meet (2k and 2k+1 both become k) merge, older first.
        bucket = self._head
        kept: _Bucket | None = None
        while bucket is not None:
            following = bucket.next
            freq = bucket.freq >> 1
            if kept is not None and kept.freq == freq:
                for key, node in bucket.items.items():
                    kept.items[key] = node
                    node.queue = kept
                    node.freq = freq
                self._unlink_bucket(bucket)
            else:
                bucket.freq = freq
                for node in bucket.items.values():
                    node.freq = freq
                kept = bucket
            bucket = following
        self._samples = 0
        self._period = self._sample_period()


# W-TinyLFU's shape and hill climber, as in Caffeine.
_PERCENT_MAIN = 0.99
_PERCENT_MAIN_PROTECTED = 0.80
_CLIMB_RESTART_THRESHOLD = 0.05
_CLIMB_STEP_PERCENT = 0.0625
# Three departures from Caffeine, each measured on the OLTP, Zipf and scan
# traces (benchmarks/cache_memory.py): the climber samples at least 5,000
# requests (a small cache's 10 x capacity is so few that it follows noise); its
# step decays faster (0.90, not 0.98), so the window settles instead of
# wandering; and counts age after 10 x capacity samples counted afresh each time
# (Caffeine halves its sample count at each aging, so it ages twice as often).
# As in Caffeine, a sample is an increment of an unsaturated counter: a trace
# dominated by a few hot keys ages more slowly.
_CLIMB_STEP_DECAY = 0.90
_CLIMB_MIN_SAMPLE = 5_000
_CLIMB_SAMPLES_PER_ENTRY = 10
_AGING_SAMPLES_PER_ENTRY = 10
_QUEUE_TRANSFER_LIMIT = 1000
_ADMIT_HASHDOS_THRESHOLD = 6
_INITIAL_SKETCH = 256


class _Probation(OrderedDict[Hashable, Node]):
    """The probation segment, whose ``move_to_end`` (a read) promotes the node.

    Reads are applied as ``node.queue.move_to_end(node.key)`` whatever segment
    the node is in: a C call for the window and protected segments, and for
    probation this method, which moves the node to protected (SLRU's second
    hit); protected's overflow drops back here.
    """

    __slots__ = ("_policy",)

    def __init__(self, policy: TinyLfuPolicy) -> None:
        super().__init__()
        self._policy = policy

    def move_to_end(self, key: Hashable, last: bool = True) -> None:
        policy = self._policy
        node = self[key]
        if node.weight > policy._protected_max:  # could never fit: stays here (as Caffeine)
            super().move_to_end(key)
            return
        del self[key]
        protected = policy._protected
        protected[key] = node
        node.queue = protected
        policy._protected_weight += node.weight
        if policy._protected_weight > policy._protected_max:
            policy._demote()


class TinyLfuPolicy(Policy):
    """W-TinyLFU: an LRU window, a segmented-LRU main region, and a sketch at the door.

    A resident node carries its exact access count (``freq``, aged with the
    sketch), written back to the sketch when the node leaves: reads then cost
    one field increment instead of four hashed counter updates, and the sketch
    holds the history of keys that are *not* resident, which is what it is for.
    Admission compares counts capped at 15, as 4-bit counters would.
    """

    name = "tinylfu"
    __slots__ = (
        "_adjustment",
        "_climb_at",
        "_grow_at",
        "_hits_in_sample",
        "_misses_in_sample",
        "_previous_hit_rate",
        "_probation",
        "_protected",
        "_protected_max",
        "_protected_weight",
        "_sketch",
        "_step",
        "_warm",
        "_window",
        "_window_max",
        "_window_weight",
    )

    def __init__(self, max_size: int, *, weighted: bool) -> None:
        self._window: OrderedDict[Hashable, Node] = OrderedDict()
        self._probation = _Probation(self)
        self._protected: OrderedDict[Hashable, Node] = OrderedDict()
        self._window_weight = 0
        self._protected_weight = 0
        initial = _INITIAL_SKETCH if weighted else min(max_size, _INITIAL_SKETCH)
        self._sketch = FrequencySketch(initial)
        self._window_max = self._protected_max = 0
        self._hits_in_sample = self._misses_in_sample = self._adjustment = 0
        self._previous_hit_rate = self._step = 0.0
        self._warm = False
        self._climb_at = self._grow_at = 0
        super().__init__(max_size, weighted=weighted)
        self._shape(max_size)
        self._sized()

    def _shape(self, max_size: int) -> None:
        window = max_size - int(_PERCENT_MAIN * max_size)
        self._window_max = window
        self._protected_max = int(_PERCENT_MAIN_PROTECTED * (max_size - window))
        self._hits_in_sample = self._misses_in_sample = self._adjustment = 0
        self._step = -_CLIMB_STEP_PERCENT * max_size

    def _capacity(self) -> int:
        """The capacity in entries, as far as the sketch knows (it grows as the cache fills)."""
        capacity = self._sketch.capacity
        return capacity if self.weighted else min(capacity, max(self.max_size, 1))

    def _sample_period(self) -> int:
        return _AGING_SAMPLES_PER_ENTRY * self._capacity()

    def _sized(self) -> None:
        """Recompute what follows from the capacity (kept in fields: checked per write)."""
        self._period = self._sample_period()
        self._climb_at = max(_CLIMB_SAMPLES_PER_ENTRY * self._capacity(), _CLIMB_MIN_SAMPLE)
        capacity = self._sketch.capacity
        growable = self.weighted or capacity < self.max_size
        self._grow_at = capacity if growable else sys.maxsize

    def resize(self, max_size: int) -> None:
        self.max_size = max_size
        self._shape(max_size)
        self._demote()
        self._sized()

    # -- bookkeeping -----------------------------------------------------------------

    def add(self, node: Node) -> None:
        node.freq = self._sketch.frequency(node.key) + 1
        node.queue = self._window
        self._window[node.key] = node
        self._window_weight += node.weight
        self.weight += node.weight
        self.count += 1
        self._misses_in_sample += 1
        self._samples += 1
        if self.count > self._grow_at:
            self._grow_sketch()

    def _grow_sketch(self) -> None:
        # Sized lazily as the cache fills (Caffeine does the same): a cache
        # created with room for millions does not allocate for them up front.
        capacity = 2 * self.count if self.weighted else min(self.max_size, 2 * self.count)
        if capacity > self._sketch.capacity:
            self._sketch.resize(capacity)
        self._sized()

    def update(self, node: Node, old_weight: int) -> None:
        delta = node.weight - old_weight
        queue = node.queue
        if queue is self._window:
            self._window_weight += delta
        elif queue is self._protected:
            self._protected_weight += delta
        self.weight += delta
        self.record([node])

    def remove(self, node: Node) -> None:
        queue = node.queue
        del queue[node.key]
        if queue is self._window:
            self._window_weight -= node.weight
        elif queue is self._protected:
            self._protected_weight -= node.weight
        node.queue = DEAD
        self.weight -= node.weight
        self.count -= 1
        self._sketch.raise_to(node.key, node.freq)

    def record(self, batch: list[Node]) -> None:
        counted = 0
        for node in batch:
            freq = node.freq
            node.freq = freq + 1
            if freq < MAX_FREQUENCY:  # a saturated 4-bit counter would not move: no sample
                counted += 1
            # Window and protected: to the young end. Probation: promoted to
            # protected (see _Probation). Gone since it was read: nothing (DEAD).
            node.queue.move_to_end(node.key)
        self._hits_in_sample += len(batch)
        self._samples += counted
        if self._samples >= self._period:
            self._age()

    def _demote(self) -> None:
        protected, probation = self._protected, self._probation
        while self._protected_weight > self._protected_max and protected:
            key, node = protected.popitem(last=False)
            probation[key] = node
            node.queue = probation
            self._protected_weight -= node.weight

    def _age(self) -> None:
        self._sketch.halve()
        for node in self.nodes():
            freq = node.freq
            node.freq = (freq if freq < MAX_FREQUENCY else MAX_FREQUENCY) >> 1
        self._samples = 0

    def nodes(self) -> Iterator[Node]:
        yield from self._window.values()
        yield from self._probation.values()
        yield from self._protected.values()

    def clear(self) -> None:
        super().clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._window_weight = self._protected_weight = 0

    # -- eviction ----------------------------------------------------------------------

    def evict(self, excess: int) -> list[Node]:
        candidates = self._spill_window() if self._window_weight > self._window_max else None
        evicted = self._evict_main(candidates, excess) if excess > 0 else []
        if self._samples >= self._period:  # insert-only traffic ages the counts too
            self._age()
        if not self._warm:
            # Caffeine starts climbing once its sketch exists, at half full.
            if 2 * self.weight < self.max_size:
                self._hits_in_sample = self._misses_in_sample = 0
                return evicted
            self._warm = True
        if self._adjustment or self._hits_in_sample + self._misses_in_sample >= self._climb_at:
            self._climb()
        return evicted

    def _spill_window(self) -> list[Node]:
        """Move the window's overflow, oldest first, to probation: the candidates."""
        window, probation = self._window, self._probation
        candidates = []
        while self._window_weight > self._window_max and window:
            key, node = window.popitem(last=False)
            probation[key] = node
            node.queue = probation
            self._window_weight -= node.weight
            candidates.append(node)
        return candidates

    def _evict_main(self, candidates: list[Node] | None, excess: int) -> list[Node]:
        """Each window leaver (candidate) duels the probation LRU (victim); the loser goes."""
        window, probation, protected = self._window, self._probation, self._protected
        evicted: list[Node] = []
        pending = iter(candidates or ())
        candidate = next(pending, None)
        while excess > 0:
            while candidate is not None and candidate.queue is not probation:
                candidate = next(pending, None)  # evicted or promoted meanwhile
            duelist = candidate
            if duelist is None and window:
                duelist = next(iter(window.values()))  # no candidate left: the window's LRU
            victim = next(iter(probation.values())) if probation else None
            if victim is None:
                if duelist is not None:
                    loser = duelist
                elif protected:
                    loser = _first(protected)
                else:
                    break
            elif duelist is None or duelist is victim:
                loser = victim
            elif duelist.weight > self.max_size or not self._admit(duelist, victim):
                loser = duelist
            else:
                loser = victim
                if duelist is candidate:
                    candidate = next(pending, None)  # admitted: the next one duels next
            self.remove(loser)
            excess -= loser.weight
            evicted.append(loser)
        return evicted

    @staticmethod
    def _admit(candidate: Node, victim: Node) -> bool:
        # Counts run on between agings (hot_keys ranks by them); 4-bit counters stop
        # at 15. (Comparisons: min() is a slow call, and this runs on every eviction.)
        candidate_freq, victim_freq = candidate.freq, victim.freq
        if candidate_freq > MAX_FREQUENCY:  # noqa: PLR1730
            candidate_freq = MAX_FREQUENCY
        if victim_freq > MAX_FREQUENCY:  # noqa: PLR1730
            victim_freq = MAX_FREQUENCY
        if candidate_freq > victim_freq:
            return True
        if candidate_freq >= _ADMIT_HASHDOS_THRESHOLD:
            # A warm candidate sometimes wins a tie against a hot victim, so an
            # attacker cannot pin the cache by keeping victims artificially hot.
            return random.getrandbits(7) == 0
        return False

    # -- hill climbing -------------------------------------------------------------------

    def _climb(self) -> None:
        """Caffeine's hill climber: move the window size whichever way raised the hit rate."""
        requests = self._hits_in_sample + self._misses_in_sample
        if requests >= self._climb_at:
            hit_rate = self._hits_in_sample / requests
            change = hit_rate - self._previous_hit_rate
            amount = self._step if change >= 0 else -self._step
            if abs(change) >= _CLIMB_RESTART_THRESHOLD:
                self._step = _CLIMB_STEP_PERCENT * self.max_size * (1 if amount >= 0 else -1)
            else:
                self._step = _CLIMB_STEP_DECAY * amount
            self._previous_hit_rate = hit_rate
            self._adjustment = int(amount)
            self._hits_in_sample = self._misses_in_sample = 0
        if self._adjustment > 0:
            self._demote()
            self._increase_window()
        elif self._adjustment < 0:
            self._demote()
            self._decrease_window()

    def _increase_window(self) -> None:
        if self._protected_max == 0:
            return
        quota = min(self._adjustment, self._protected_max)
        self._protected_max -= quota
        self._window_max += quota
        self._demote()
        probation, protected, window = self._probation, self._protected, self._window
        for _ in range(_QUEUE_TRANSFER_LIMIT):
            source: OrderedDict[Hashable, Node] = probation
            if not probation or quota < _first(probation).weight:
                source = protected
            if not source:
                break
            node = _first(source)
            if quota < node.weight:
                break
            quota -= node.weight
            del source[node.key]
            if source is protected:
                self._protected_weight -= node.weight
            window[node.key] = node
            node.queue = window
            self._window_weight += node.weight
        self._protected_max += quota
        self._window_max -= quota
        self._adjustment = quota

    def _decrease_window(self) -> None:
        if self._window_max <= 1:
            return
        quota = min(-self._adjustment, max(0, self._window_max - 1))
        self._protected_max += quota
        self._window_max -= quota
        window, probation = self._window, self._probation
        for _ in range(_QUEUE_TRANSFER_LIMIT):
            if not window:
                break
            node = _first(window)
            if quota < node.weight:
                break
            quota -= node.weight
            del window[node.key]
            self._window_weight -= node.weight
            probation[node.key] = node
            node.queue = probation
        self._protected_max -= quota
        self._window_max += quota
        self._adjustment = -quota


def make_policy(name: str, max_size: int, *, weighted: bool) -> Policy:
    """The policy called ``name`` (one of :data:`POLICIES`) for ``max_size``."""
    classes: dict[str, type[Policy]] = {
        "tinylfu": TinyLfuPolicy,
        "lru": LruPolicy,
        "lfu": LfuPolicy,
        "fifo": FifoPolicy,
    }
    return classes[name](max_size, weighted=weighted)

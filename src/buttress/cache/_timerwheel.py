"""Expiry without scanning: a hierarchical timer wheel, as in Caffeine.

Entries that expire are filed by deadline in buckets of growing width: 64
buckets of one second, 64 of 64 seconds, 64 of about 68 minutes, 64 of about 3
days, and one overflow bucket beyond (~194 days). When the clock passes a
bucket's start, :meth:`TimerWheel.advance` empties it: what is due is returned,
the rest is filed again, lower down. Each entry is therefore touched a handful of
times in its life, never by a scan of the whole cache.

A wheel alone is coarse: an entry due in the current second would sit in the
current bucket until the second is over. Those entries (deadline in the current
second) go to a small heap instead, so ``advance(now)`` removes *exactly* the
entries whose deadline is ``<= now``, and the cache's ``len()`` is exact::

    >>> wheel = TimerWheel(now=0.0)
    >>> node = Node("k", "v", expire=90.5, weight=1)
    >>> wheel.schedule(node)
    >>> wheel.advance(90.0), [n.key for n in wheel.advance(90.5)]
    ([], ['k'])
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

from buttress.cache._policies import Node

__all__ = ["TimerWheel"]

_BITS = 6  # 64 buckets per level
_BUCKETS = 1 << _BITS
_LEVELS = 4  # buckets of 2**0, 2**6, 2**12 and 2**18 seconds
_HEAP_COMPACT_MINIMUM = 64


class TimerWheel:
    """Deadlines of nodes (``node.expire``, seconds on the cache's clock).

    ``due`` is the earliest time :meth:`advance` can have anything to do: the
    cache compares the clock with it and skips the call otherwise. Not
    thread-safe: the cache calls it under its lock.
    """

    __slots__ = ("_heap", "_levels", "_sequence", "_stale", "_tick", "due")

    def __init__(self, now: float) -> None:
        self._tick = math.floor(now)
        self._levels: list[list[set[Node]]] = [
            [set() for _ in range(_BUCKETS)] for _ in range(_LEVELS)
        ]
        self._levels.append([set()])  # overflow, beyond 2**24 s: re-filed as the clock nears
        self._heap: list[list[Any]] = []  # [expire, sequence, node]: this second's deadlines
        self._sequence = itertools.count()
        self._stale = 0
        self.due: float = self._tick + 1

    def __len__(self) -> int:
        live = sum(len(bucket) for level in self._levels for bucket in level)
        return live + len(self._heap) - self._stale

    def schedule(self, node: Node) -> None:
        """File ``node`` by its ``expire`` (a finite number)."""
        expire: float = node.expire  # type: ignore[assignment]
        tick = math.floor(expire)
        delay = tick - self._tick
        if delay <= 0:
            entry: list[Any] = [expire, next(self._sequence), node]
            heapq.heappush(self._heap, entry)
            node.timer = entry
            self.due = min(self.due, expire)
            return
        if delay < 1 << _BITS:
            bucket = self._levels[0][tick & (_BUCKETS - 1)]
        elif delay < 1 << (2 * _BITS):
            bucket = self._levels[1][(tick >> _BITS) & (_BUCKETS - 1)]
        elif delay < 1 << (3 * _BITS):
            bucket = self._levels[2][(tick >> (2 * _BITS)) & (_BUCKETS - 1)]
        elif delay < 1 << (4 * _BITS):
            bucket = self._levels[3][(tick >> (3 * _BITS)) & (_BUCKETS - 1)]
        else:
            bucket = self._levels[_LEVELS][0]
        bucket.add(node)
        node.timer = bucket

    def deschedule(self, node: Node) -> None:
        """Forget ``node``'s deadline (it left the cache, or got a new one)."""
        timer = node.timer
        if timer is None:
            return
        node.timer = None
        if type(timer) is set:
            timer.discard(node)
            return
        # A heap entry cannot be removed cheaply: it is left behind, recognised
        # as stale (node.timer is no longer it) and dropped when popped.
        self._stale += 1
        if self._stale > _HEAP_COMPACT_MINIMUM and 2 * self._stale > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].timer is entry]
            heapq.heapify(self._heap)
            self._stale = 0

    def advance(self, now: float) -> list[Node]:
        """Unfile and return every node whose deadline is ``<= now``."""
        expired: list[Node] = []
        tick = math.floor(now)
        if tick > self._tick:
            previous, self._tick = self._tick, tick
            # The heap held the last current second's deadlines: all are past now.
            for entry in self._heap:
                node: Node = entry[2]
                if node.timer is entry:
                    node.timer = None
                    expired.append(node)
            self._heap = []
            self._stale = 0
            self._turn(previous, tick, now, expired)
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            node = entry[2]
            if node.timer is entry:
                node.timer = None
                expired.append(node)
            else:
                self._stale -= 1
        self.due = self._tick + 1  # not tick: a caller's clock reading may lag another's
        if heap and heap[0][0] < self.due:
            self.due = heap[0][0]
        return expired

    def _turn(self, previous: int, tick: int, now: float, expired: list[Node]) -> None:
        """Empty every bucket the clock passed, level by level (Caffeine's ``expire``).

        The bucket of the previous tick is emptied too: an entry filed a whole
        turn ahead shares its index, and must not wait for another turn.
        """
        for level, buckets in enumerate(self._levels):
            shift = _BITS * level
            start, end = previous >> shift, tick >> shift
            if start == end:
                return  # the coarser levels have not moved either
            mask = len(buckets) - 1
            for step in range(min(end - start + 1, len(buckets))):
                index = (start + step) & mask
                bucket = buckets[index]
                if not bucket:
                    continue
                buckets[index] = set()
                for node in bucket:
                    node.timer = None
                    if node.expire <= now:  # type: ignore[operator]
                        expired.append(node)
                    else:
                        self.schedule(node)

    def clear(self) -> None:
        for level in self._levels:
            for index in range(len(level)):
                level[index] = set()
        self._heap = []
        self._stale = 0
        self.due = self._tick + 1

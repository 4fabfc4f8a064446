"""Sliding windows of call outcomes with O(1) running totals.

A window answers "of the recent calls, how many failed, how many were slow"
without scanning: each record adds to the running totals and subtracts what
falls out of the window.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["CountWindow", "TimeWindow"]


class CountWindow:
    """The last ``size`` calls, counted in tickets.

    The breaker gives every completed call a ticket number. A success needs no
    entry here at all; failures and slow calls are kept as their ticket numbers,
    and numbers older than the last ``size`` tickets drop off the front. So the
    hot path, a success, costs the window nothing.
    """

    __slots__ = ("_failed", "_slow", "size", "start")

    def __init__(self, size: int) -> None:
        self.size = size
        self.start = 0  # tickets up to this one belong to an earlier window
        self._failed: deque[int] = deque()
        self._slow: deque[int] = deque()

    def record(self, now: float, ticket: int, failed: bool, slow: bool) -> None:
        if failed:
            self._failed.append(ticket)
        if slow:
            self._slow.append(ticket)

    def totals(self, now: float, issued: int) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window, ``issued`` tickets given so far."""
        oldest_kept = max(issued - self.size, self.start)
        for numbers in (self._failed, self._slow):
            while numbers and numbers[0] <= oldest_kept:
                numbers.popleft()
        return min(issued - self.start, self.size), len(self._failed), len(self._slow)

    def reset(self, issued: int) -> None:
        self.start = issued
        self._failed.clear()
        self._slow.clear()


class TimeWindow:
    """The calls of the last ``seconds``, in buckets that expire as time moves on.

    Buckets are one second wide for windows of ten seconds or more, and a tenth of
    the window below that. Expiring walks at most one bucket per bucket-width of
    elapsed time, so the cost per call is O(1) amortised.
    """

    __slots__ = ("_buckets", "_count", "_epoch", "_width", "failures", "seconds", "slow", "total")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._count = 10 if seconds < 10 else min(math.ceil(seconds), 3600)
        self._width = seconds / self._count
        # per bucket: [calls, failures, slow]
        self._buckets = [[0, 0, 0] for _ in range(self._count)]
        self._epoch = 0
        self.total = self.failures = self.slow = 0

    def _expire(self, now: float) -> None:
        epoch = int(now // self._width)
        steps = epoch - self._epoch
        if steps <= 0:
            return
        for step in range(1, min(steps, self._count) + 1):
            bucket = self._buckets[(self._epoch + step) % self._count]
            self.total -= bucket[0]
            self.failures -= bucket[1]
            self.slow -= bucket[2]
            bucket[0] = bucket[1] = bucket[2] = 0
        self._epoch = epoch

    def record(self, now: float, ticket: int, failed: bool, slow: bool) -> None:
        self._expire(now)
        bucket = self._buckets[self._epoch % self._count]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.total += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float, issued: int) -> tuple[int, int, int]:
        self._expire(now)
        return self.total, self.failures, self.slow

    def reset(self, issued: int) -> None:
        for bucket in self._buckets:
            bucket[0] = bucket[1] = bucket[2] = 0
        self.total = self.failures = self.slow = 0

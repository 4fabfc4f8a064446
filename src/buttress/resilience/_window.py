"""Sliding windows of call outcomes with O(1) running totals.

A window answers "of the recent calls, how many failed, how many were slow"
without scanning: each record adds to the running totals and subtracts what
falls out of the window.
"""

from __future__ import annotations

import math

__all__ = ["CountWindow", "TimeWindow"]

_FAILED = 1
_SLOW = 2


class CountWindow:
    """The last ``size`` calls, in a ring buffer of outcome codes."""

    __slots__ = ("_index", "_ring", "failures", "size", "slow", "total")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = bytearray(size)
        self._index = 0
        self.total = 0
        self.failures = 0
        self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        index = self._index
        if self.total == self.size:
            old = self._ring[index]
            self.failures -= old & _FAILED
            self.slow -= old >> 1
        else:
            self.total += 1
        self._ring[index] = failed | (slow << 1)
        self.failures += failed
        self.slow += slow
        self._index = index + 1 if index + 1 < self.size else 0

    def totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the window."""
        return self.total, self.failures, self.slow

    def reset(self) -> None:
        self._ring = bytearray(self.size)
        self._index = self.total = self.failures = self.slow = 0


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

    def record(self, now: float, failed: bool, slow: bool) -> None:
        self._expire(now)
        bucket = self._buckets[self._epoch % self._count]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.total += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._expire(now)
        return self.total, self.failures, self.slow

    def reset(self) -> None:
        for bucket in self._buckets:
            bucket[0] = bucket[1] = bucket[2] = 0
        self.total = self.failures = self.slow = 0

"""TinyLFU's memory of popularity: a 4-bit count-min sketch that forgets.

The sketch answers "about how often has this key been seen lately?" for any
key, resident or not, in a few bytes per cache entry. Counters saturate at 15
and every counter is halved together (:meth:`FrequencySketch.halve`) once the
cache has seen about ten times its capacity in samples, so yesterday's favourite
loses to today's::

    >>> sketch = FrequencySketch(capacity=1_000)
    >>> sketch.raise_to("a", 3)
    >>> sketch.frequency("a"), sketch.frequency("b")
    (3, 0)
    >>> sketch.halve()
    >>> sketch.frequency("a")
    1
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["MAX_FREQUENCY", "FrequencySketch"]

MAX_FREQUENCY = 15
"""Counters are 4-bit: they saturate here."""

_MASK64 = (1 << 64) - 1
_HALVE = bytes(i >> 1 for i in range(256))
_COUNTERS_PER_ENTRY = 4  # per row; four rows, so 16 one-byte counters per entry as Caffeine


def _mix(key: Hashable) -> int:
    """A well-spread 64-bit hash (splitmix64's finaliser): ``hash(7) == 7`` is no spread."""
    h = hash(key) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


class FrequencySketch:
    """A count-min sketch of depth 4 with 4-bit (saturating) counters and aging.

    One counter per row is chosen by double hashing; a key's estimate is the
    smallest of its four counters, which may overstate (collisions) but never
    understates what was recorded since the last :meth:`halve`.
    """

    __slots__ = ("_mask", "_row", "_table", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = 0
        self._table = bytearray()
        self._mask = 0
        self._row = 0
        self.resize(capacity)

    def resize(self, capacity: int) -> None:
        """Size the table for ``capacity`` entries; the counts start over."""
        capacity = max(capacity, 1)
        width = 1 << max(4, (capacity * _COUNTERS_PER_ENTRY - 1).bit_length())
        self.capacity = capacity
        self._row = width
        self._mask = width - 1
        self._table = bytearray(4 * width)

    def _slots(self, key: Hashable) -> tuple[int, int, int, int]:
        h = _mix(key)
        a, b, mask, row = h & 0xFFFFFFFF, (h >> 32) | 1, self._mask, self._row
        return (
            a & mask,
            row + ((a + b) & mask),
            2 * row + ((a + 2 * b) & mask),
            3 * row + ((a + 3 * b) & mask),
        )

    def frequency(self, key: Hashable) -> int:
        """The estimated count of ``key``: 0 to :data:`MAX_FREQUENCY`."""
        table = self._table
        i, j, k, m = self._slots(key)
        return min(table[i], table[j], table[k], table[m])

    def raise_to(self, key: Hashable, count: int) -> None:
        """Make ``frequency(key)`` at least ``count`` (capped at 15), touching nothing else.

        The cache keeps the exact count of a resident key on its node and writes
        it back here when the key leaves; raising each counter to the count is a
        conservative update, so other keys' estimates grow as little as possible.
        """
        count = min(count, MAX_FREQUENCY)
        if count <= 0:
            return
        table = self._table
        for slot in self._slots(key):
            if table[slot] < count:
                table[slot] = count

    def halve(self) -> None:
        """Age every counter: halve it (a table lookup per byte, done in C)."""
        self._table = self._table.translate(_HALVE)

    def clear(self) -> None:
        self._table = bytearray(len(self._table))

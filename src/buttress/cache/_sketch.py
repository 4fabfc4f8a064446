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

_MASK28 = (1 << 28) - 1
_HALVE = bytes(i >> 1 for i in range(256))
_COUNTERS_PER_ENTRY = 4  # per row, four rows: 16 one-byte counters per entry, as Caffeine
_MAX_ROW_BITS = 24  # at most 4 x 16 MiB: beyond ~4M entries, more collisions instead


class FrequencySketch:
    """A count-min sketch of depth 4 with 4-bit (saturating) counters and aging.

    A key's four counters, one per row, are picked by double hashing from one
    64-bit hash; its estimate is the smallest of them, which may overstate
    (collisions) but never understates what was recorded since the last
    :meth:`halve`. Counters are bytes rather than packed nibbles: Python pays
    per operation, not per byte.
    """

    __slots__ = ("_mask", "_rows", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = 0
        self._rows: tuple[bytearray, bytearray, bytearray, bytearray] = (
            bytearray(),
            bytearray(),
            bytearray(),
            bytearray(),
        )
        self._mask = 0
        self.resize(capacity)

    def resize(self, capacity: int) -> None:
        """Size the table for ``capacity`` entries; the counts start over."""
        capacity = max(capacity, 1)
        bits = min(_MAX_ROW_BITS, max(4, (capacity * _COUNTERS_PER_ENTRY - 1).bit_length()))
        self.capacity = capacity
        self._mask = (1 << bits) - 1
        self._rows = (
            bytearray(1 << bits),
            bytearray(1 << bits),
            bytearray(1 << bits),
            bytearray(1 << bits),
        )

    def frequency(self, key: Hashable) -> int:
        """The estimated count of ``key``: 0 to :data:`MAX_FREQUENCY`."""
        # Double hashing: row i uses (a + i*b). hash((key,)) mixes in C (hash(key)
        # alone is the identity on small ints); a and b are kept below 2**28,
        # where Python's int arithmetic is cheapest.
        h = hash((key,))
        a = h & _MASK28
        b = ((h >> 34) & _MASK28) | 1
        mask = self._mask
        row0, row1, row2, row3 = self._rows
        # Comparisons, not min(): a builtin call with four arguments costs more
        # than the rest of this method on CPython 3.11.
        found = row0[a & mask]
        a += b
        count = row1[a & mask]
        if count < found:  # noqa: PLR1730 - see above
            found = count
        a += b
        count = row2[a & mask]
        if count < found:  # noqa: PLR1730 - see above
            found = count
        a += b
        count = row3[a & mask]
        return count if count < found else found

    def raise_to(self, key: Hashable, count: int) -> None:
        """Make ``frequency(key)`` at least ``count`` (capped at 15), touching nothing else.

        The cache keeps the exact count of a resident key on its node and writes
        it back here when the key leaves; raising each counter to the count is a
        conservative update, so other keys' estimates grow as little as possible.
        """
        if count > MAX_FREQUENCY:
            count = MAX_FREQUENCY
        elif count <= 0:
            return
        h = hash((key,))
        a = h & _MASK28
        b = ((h >> 34) & _MASK28) | 1
        mask = self._mask
        row0, row1, row2, row3 = self._rows
        index = a & mask
        if row0[index] < count:  # noqa: PLR1730 - max() is a slow call
            row0[index] = count
        a += b
        index = a & mask
        if row1[index] < count:  # noqa: PLR1730 - max() is a slow call
            row1[index] = count
        a += b
        index = a & mask
        if row2[index] < count:  # noqa: PLR1730 - max() is a slow call
            row2[index] = count
        a += b
        index = a & mask
        if row3[index] < count:  # noqa: PLR1730 - max() is a slow call
            row3[index] = count

    def halve(self) -> None:
        """Age every counter: halve it (a table lookup per byte, done in C)."""
        row0, row1, row2, row3 = self._rows
        self._rows = (
            row0.translate(_HALVE),
            row1.translate(_HALVE),
            row2.translate(_HALVE),
            row3.translate(_HALVE),
        )

    def clear(self) -> None:
        self.resize(self.capacity)

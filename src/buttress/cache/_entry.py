"""A cache entry and its wire envelope.

Every tier holds the same entry: the value plus when it stops being fresh, when
its stale grace ends, how long it took to load (for early expiration) and the
versions of its tags. Remote tiers hold it encoded; the envelope carries the
times as absolute timestamps, so an entry copied up a tier never outlives its
source.

Envelope layout (little-endian)::

    magic 0xB7 | format 1 | fresh_until f64 | stale_until f64 | created f64 | delta f32
    | serializer name length u8 | tag count u16 | serializer name (ASCII)
    | per tag: u16 length + UTF-8, u8 length + version bytes | payload

The fixed part is one ``struct`` read: a read of many entries (``get_many``)
decodes each header in well under a microsecond.

``inf`` stands for "never".
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from buttress.errors import SerializationError

__all__ = ["Entry", "decode_entry", "encode_entry"]

_MAGIC = 0xB7
_FORMAT = 1
_HEAD = struct.Struct("<BBdddfBH")
_U16 = struct.Struct("<H")
_INF = math.inf


@dataclass(slots=True)
class Entry:
    """A cached value and its lifetime, as every tier stores it."""

    value: object
    fresh_until: float
    """Timestamp after which the value is stale (``inf``: never)."""
    stale_until: float
    """Timestamp after which even stale-if-error may not serve it."""
    created: float
    """When the value was stored."""
    delta: float = 0.0
    """Seconds the loader took: XFetch recomputes expensive values earlier."""
    tags: tuple[tuple[str, bytes], ...] = ()
    """``(tag, version)`` pairs recorded when the entry was written."""

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def is_usable(self, now: float) -> bool:
        """Fresh, or stale but still inside its grace period."""
        return now < self.stale_until

    def remaining(self, now: float) -> float | None:
        """Seconds a tier should keep this entry (its stale deadline); None for ever."""
        if self.stale_until == _INF:
            return None
        return self.stale_until - now


def encode_entry(entry: Entry, serializer_name: bytes, payload: bytes) -> bytes:
    """The envelope of ``entry`` around an already serialized, compressed ``payload``."""
    head = _HEAD.pack(
        _MAGIC,
        _FORMAT,
        entry.fresh_until,
        entry.stale_until,
        entry.created,
        entry.delta,
        len(serializer_name),
        len(entry.tags),
    )
    if not entry.tags:
        return b"".join((head, serializer_name, payload))
    parts = [head, serializer_name]
    for tag, version in entry.tags:
        raw = tag.encode()
        parts += (_U16.pack(len(raw)), raw, bytes((len(version),)), version)
    parts.append(payload)
    return b"".join(parts)


def decode_entry(data: bytes) -> tuple[Entry, bytes, int]:
    """The entry in an envelope (value not yet decoded), its serializer's name, and
    where its payload starts.

    Raises :class:`~buttress.errors.SerializationError` for anything that is not
    an envelope this version wrote.
    """
    try:
        magic, fmt, fresh_until, stale_until, created, delta, name_length, count = (
            _HEAD.unpack_from(data)
        )
        if magic != _MAGIC or fmt != _FORMAT:
            raise ValueError(f"magic/format {magic:#x}/{fmt} is not a buttress cache entry")
        offset = _HEAD.size + name_length
        name = data[_HEAD.size : offset]
        tags: tuple[tuple[str, bytes], ...] = ()
        if count:
            tags, offset = _read_tags(data, offset, count)
        if offset > len(data):
            raise ValueError("truncated envelope")
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(
            "a cache entry could not be read", detail=f"bad envelope: {exc}"
        ) from exc
    return Entry(None, fresh_until, stale_until, created, delta, tags), name, offset


def _read_tags(data: bytes, offset: int, count: int) -> tuple[tuple[tuple[str, bytes], ...], int]:
    tags = []
    for _ in range(count):
        (length,) = _U16.unpack_from(data, offset)
        tag = data[offset + 2 : offset + 2 + length].decode()
        offset += 2 + length
        length = data[offset]
        version = data[offset + 1 : offset + 1 + length]
        offset += 1 + length
        tags.append((tag, version))
    return tuple(tags), offset

"""A cache entry and its wire envelope.

Every tier holds the same entry: the value plus when it stops being fresh, when
its stale grace ends, how long it took to load (for early expiration) and the
versions of its tags. Remote tiers hold it encoded; the envelope carries the
times as absolute timestamps, so an entry copied up a tier never outlives its
source.

Envelope layout (little-endian)::

    magic 0xB7 | format 1 | fresh_until f64 | stale_until f64 | created f64 | delta f32
    | serializer name (u8 length + ASCII) | tag count u16 | per tag: u16 length + UTF-8,
    u8 length + version bytes | payload (compressed serialized value)

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
_HEAD = struct.Struct("<BBdddf")
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


def encode_entry(entry: Entry, serializer_name: str, payload: bytes) -> bytes:
    """The envelope of ``entry`` around an already serialized, compressed ``payload``."""
    name = serializer_name.encode("ascii")
    parts = [
        _HEAD.pack(
            _MAGIC, _FORMAT, entry.fresh_until, entry.stale_until, entry.created, entry.delta
        ),
        bytes((len(name),)),
        name,
        _U16.pack(len(entry.tags)),
    ]
    for tag, version in entry.tags:
        raw = tag.encode()
        parts += (_U16.pack(len(raw)), raw, bytes((len(version),)), version)
    parts.append(payload)
    return b"".join(parts)


def decode_entry(data: bytes) -> tuple[Entry, str, memoryview]:
    """Split an envelope into the entry (value not yet decoded), serializer name and payload.

    Raises :class:`~buttress.errors.SerializationError` for anything that is not
    an envelope this version wrote.
    """
    try:
        magic, fmt, fresh_until, stale_until, created, delta = _HEAD.unpack_from(data)
        if magic != _MAGIC or fmt != _FORMAT:
            raise ValueError(f"magic/format {magic:#x}/{fmt} is not a buttress cache entry")
        offset = _HEAD.size
        length = data[offset]
        name = data[offset + 1 : offset + 1 + length].decode("ascii")
        offset += 1 + length
        (count,) = _U16.unpack_from(data, offset)
        offset += 2
        tags = []
        for _ in range(count):
            (length,) = _U16.unpack_from(data, offset)
            tag = data[offset + 2 : offset + 2 + length].decode()
            offset += 2 + length
            length = data[offset]
            version = bytes(data[offset + 1 : offset + 1 + length])
            offset += 1 + length
            tags.append((tag, version))
        if offset > len(data):
            raise ValueError("truncated envelope")
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(
            "a cache entry could not be read", detail=f"bad envelope: {exc}"
        ) from exc
    entry = Entry(None, fresh_until, stale_until, created, delta, tuple(tags))
    return entry, name, memoryview(data)[offset:]

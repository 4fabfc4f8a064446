"""The contract between the tiered cache and a remote tier (Redis, memcached).

A store moves opaque bytes under full keys (the cache has already added its
namespace and encoded the entry). It knows nothing of TTL freshness, tags or
serialization: that logic lives once, in the tiered cache. Every method has a
sync form and an async form (prefixed ``a``) because the sync and async caches
drive the same logic with different I/O.

A store raises on failure (connection refused, timeout, protocol error); the
cache counts the error, trips the tier's breaker and carries on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Store", "Subscription"]

SetItem = tuple[str, bytes, float | None]
"""``(key, value, ttl)``: ``ttl`` in seconds (fractions allowed), ``None`` for no expiry."""


@runtime_checkable
class Subscription(Protocol):
    """A live subscription to an invalidation channel; ``close()`` ends it."""

    def close(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """A remote cache tier, addressed by full keys, holding bytes."""

    name: str
    """Short tier name used in stats and logs: ``"redis"``, ``"memcached"``."""
    max_key_length: int | None
    """Longest key in bytes (UTF-8) the server accepts, or ``None`` for no limit."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in order, ``None`` where missing: one round trip."""
        ...

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None:
        """Store every item in one round trip; also publish ``(channel, message)`` if given."""
        ...

    async def aset_many(
        self, items: Sequence[SetItem], *, publish: tuple[str, bytes] | None = None
    ) -> None: ...

    def delete_many(self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None) -> None:
        """Delete ``keys`` in one round trip; also publish ``(channel, message)`` if given."""
        ...

    async def adelete_many(
        self, keys: Sequence[str], *, publish: tuple[str, bytes] | None = None
    ) -> None: ...

    def delete_pattern(self, pattern: str) -> int:
        """Delete every key matching the glob ``pattern`` (incrementally, never KEYS); the count."""
        ...

    async def adelete_pattern(self, pattern: str) -> int: ...

    def ensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]:
        """Tag versions: each key's value, created (random, unique) when missing.

        Each key is kept alive for at least ``ttl`` seconds (for ever if ``None``),
        so a tag version outlives every entry that recorded it. One round trip.
        """
        ...

    async def aensure_versions(self, keys: Sequence[str], ttl: float | None) -> list[bytes]: ...

    def acquire_lease(self, key: str, token: bytes, ttl: float) -> bool:
        """Set ``key`` to ``token`` for ``ttl`` seconds only if it is absent; True if set."""
        ...

    async def aacquire_lease(self, key: str, token: bytes, ttl: float) -> bool: ...

    def release_lease(self, key: str, token: bytes) -> None:
        """Delete ``key`` only if it still holds ``token`` (atomically)."""
        ...

    async def arelease_lease(self, key: str, token: bytes) -> None: ...

    def ping(self) -> None:
        """Raise unless the server answers."""
        ...

    async def aping(self) -> None: ...

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        on_lost: Callable[[], None],
    ) -> Subscription | None:
        """Deliver ``channel``'s messages to ``on_message`` from a background thread.

        ``on_lost`` is called whenever delivery may have missed messages: when
        the connection drops and again once it is re-established. Returns
        ``None`` if the store has no pub/sub (memcached).
        """
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...

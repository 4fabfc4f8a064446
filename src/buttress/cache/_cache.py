"""The tiered cache: :class:`Cache` (async) and :class:`SyncCache` (its twin for Flask/Django).

Both faces drive the same logic (``_core``) and can share one state: ``cache.sync``
is the blocking face of an async ``cache``, and ``sync_cache.aio`` the other way.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from buttress.cache._compression import Compression
from buttress.cache._core import CacheCore, CacheResult, TieredStats, WarmReport
from buttress.cache._decorator import CachedDecorator, make_cached
from buttress.cache._memcached import MemcachedStore
from buttress.cache._memory import MemoryCache
from buttress.cache._missing import MISSING
from buttress.cache._redis import RedisStore
from buttress.cache._runtime import Logic, adrive, drive
from buttress.cache._serializers import Serializer
from buttress.cache._store import Store
from buttress.clock import Clock
from buttress.resilience._common import Duration, check_int

__all__ = ["Cache", "SyncCache", "cached"]

T = TypeVar("T")
D = TypeVar("D")
Self = TypeVar("Self", bound="_Facade")


class _Facade:
    """What both faces share: construction, configuration, stats."""

    _core: CacheCore

    def __init__(
        self,
        tiers: Sequence[MemoryCache[Any, Any] | Store],
        *,
        name: str = "cache",
        namespace: str = "buttress",
        ttl: Duration | None = 3600.0,
        ttls: Mapping[str, Duration | None] | None = None,
        l1_ttl: Duration | None = None,
        stale_ttl: Duration = 0.0,
        serializer: Serializer | None = None,
        compression: Compression | None = None,
        loader: Callable[[str], Any] | None = None,
        writer: Callable[[str, Any], Any] | None = None,
        write_behind: Callable[[list[tuple[str, Any]]], Any] | None = None,
        write_behind_batch: int = 100,
        write_behind_interval: Duration = 1.0,
        refresh_ahead: float | None = None,
        early_expiration: float | None = None,
        lease: Duration | None = None,
        coherence: bool = True,
        tier_failure_threshold: int = 3,
        tier_recovery_timeout: Duration = 5.0,
        clock: Clock | None = None,
    ) -> None:
        """Build a cache over ``tiers``: an optional :class:`MemoryCache` first, then stores.

        ``ttl`` is the default freshness (seconds; ``None`` keeps entries for
        ever), ``ttls`` a TTL per category, ``stale_ttl`` how long an expired
        entry is kept to serve when loading fails, ``l1_ttl`` an upper bound for
        the memory tier. ``loader(key)`` makes the cache read-through,
        ``writer(key, value)`` write-through, ``write_behind(items)`` write-behind
        (batched by ``write_behind_batch`` keys or ``write_behind_interval``
        seconds). ``refresh_ahead=0.2`` reloads an entry read in the last 20 % of
        its TTL in the background; ``early_expiration=1.0`` turns on XFetch;
        ``lease=10`` makes concurrent misses in several processes load once.
        A remote tier failing ``tier_failure_threshold`` times in a row is skipped
        for ``tier_recovery_timeout`` seconds.
        """
        self._core = CacheCore(
            tiers,
            name=name,
            namespace=namespace,
            ttl=ttl,
            ttls=ttls or {},
            l1_ttl=l1_ttl,
            stale_ttl=stale_ttl,
            serializer=serializer,
            compression=compression,
            loader=loader,
            writer=writer,
            write_behind=write_behind,
            write_behind_batch=write_behind_batch,
            write_behind_interval=write_behind_interval,
            refresh_ahead=refresh_ahead,
            early_expiration=early_expiration,
            lease=lease,
            coherence=coherence,
            tier_failure_threshold=tier_failure_threshold,
            tier_recovery_timeout=tier_recovery_timeout,
            clock=clock,
        )

    @classmethod
    def _from_core(cls: type[Self], core: CacheCore) -> Self:
        face = cls.__new__(cls)
        face._core = core
        return face

    @classmethod
    def from_url(
        cls: type[Self],
        *urls: str,
        l1_size: int | None = 10_000,
        l1_policy: str = "tinylfu",
        timeout: float = 0.05,
        **options: Any,
    ) -> Self:
        """A cache from URLs: ``memory://``, ``redis://…`` (L2) and ``memcached://…`` (L3).

        A memory L1 of ``l1_size`` entries goes in front unless ``l1_size`` is
        None. Other keyword arguments go to the constructor.

        >>> cache = Cache.from_url("redis://127.0.0.1:6379/0", "memcached://127.0.0.1:11211")
        """
        if not urls:
            raise ValueError("from_url needs at least one URL (memory://, redis://, memcached://)")
        tiers: list[MemoryCache[Any, Any] | Store] = []
        if l1_size is not None:
            check_int("Cache.from_url", "l1_size", l1_size, minimum=1)
            tiers.append(MemoryCache(l1_size, policy=l1_policy, clock=options.get("clock")))
        for url in urls:
            tiers += _tiers_of(url, timeout, memory=l1_size is None)
        return cls(tiers, **options)

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def tiers(self) -> tuple[str, ...]:
        """Tier names, top first: ``("memory", "redis", "memcached")``."""
        names = ["memory"] if self._core.l1 is not None else []
        return (*names, *(tier.name for tier in self._core.remotes))

    def stats(self) -> TieredStats:
        """Hits, misses, errors and latency per tier, plus loads, stale serves and more."""
        return self._core.stats()

    def hot_keys(self, n: int = 100) -> list[tuple[str, int]]:
        """The ``n`` most used keys with an estimated use count: warm these on a schedule."""
        return self._core.hot_keys(n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, tiers={list(self.tiers)})"

    # Both faces build the same logic here; they differ only in how they run it.

    def _l1_hit(self, full: str) -> Any:
        """The hot path: an L1 hit does no I/O and runs no logic."""
        core = self._core
        l1 = core.l1
        if l1 is not None and core.loader is None:
            entry = l1.get(full, MISSING)
            if entry is not MISSING and core.now() < entry.fresh_until:
                return entry.value
        return MISSING

    def _get_logic(self, key: str, full: str) -> Logic[Any]:
        core = self._core
        if core.loader is None:
            return core.get(full)
        return core.value_of(self._load_logic(key, functools.partial(core.loader, key)))

    def _set_logic(
        self,
        items: Mapping[str, Any],
        ttl: Duration | None,
        tags: Iterable[str] | None,
        category: str | None,
    ) -> Logic[None]:
        core = self._core
        pairs = [(core.full_key(key), value) for key, value in items.items()]
        return core.set_many(pairs, core.resolve_ttl(ttl, category), core.check_tags(tags))

    def _load_logic(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> Logic[CacheResult]:
        core = self._core
        return core.load(
            core.full_key(key), loader, core.resolve_ttl(ttl, category), core.check_tags(tags)
        )

    def _warm_logic(
        self,
        keys: Iterable[str],
        loader: Callable[[list[str]], Any],
        *,
        ttl: Duration | None,
        tags: Iterable[str] | None,
        category: str | None,
        batch_size: int,
        concurrency: int,
        skip_cached: bool,
    ) -> Logic[WarmReport]:
        core = self._core
        return core.warm(
            [core.full_key(key) for key in keys],
            loader,
            ttl=core.resolve_ttl(ttl, category),
            tags=core.check_tags(tags),
            batch_size=check_int("warm", "batch_size", batch_size, minimum=1),
            concurrency=check_int("warm", "concurrency", concurrency, minimum=1),
            skip_cached=skip_cached,
        )

    def _keys_logic(self, op: Callable[[list[str]], Logic[T]], keys: Iterable[str]) -> Logic[T]:
        core = self._core
        return op([core.full_key(key) for key in keys])


class Cache(_Facade):
    """An async tiered cache: memory L1, Redis L2, memcached L3.

    >>> cache = Cache.from_url("redis://127.0.0.1:6379/0")
    >>> await cache.set("user:1", {"name": "Ada"}, ttl=60, tags=["user:1"])
    >>> await cache.get_or_set("user:2", lambda: load_user(2), ttl=60)
    >>> await cache.invalidate_tags(["user:1"])

    Reads go down the tiers and copy what they find up; writes reach every
    tier. A remote tier that fails is skipped behind a circuit breaker: the
    cache keeps answering from memory and the loader, and never raises for it.
    """

    @property
    def sync(self) -> SyncCache:
        """The blocking face of this cache, sharing its tiers, state and stats."""
        return SyncCache._from_core(self._core)

    async def _run(self, logic: Any) -> Any:
        return await adrive(logic, self._core.async_runtime)

    async def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default`` (pass ``MISSING`` to tell a stored None)."""
        full = self._core.full_key(key)
        value = self._l1_hit(full)
        if value is MISSING:
            value = await self._run(self._get_logic(key, full))
        return default if value is MISSING else value

    async def contains(self, key: str) -> bool:
        """Whether ``key`` has a fresh value in some tier."""
        return bool(await self._run(self._core.contains(self._core.full_key(key))))

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The fresh values of ``keys`` that are cached: one round trip per tier."""
        return await self._run(self._keys_logic(self._core.get_many, keys))  # type: ignore[no-any-return]

    async def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> None:
        """Store ``value`` in every tier (and the writer, if the cache has one)."""
        await self._run(self._set_logic({key: value}, ttl, tags, category))

    async def set_many(
        self,
        items: Mapping[str, Any],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> None:
        """Store several values: one round trip per tier."""
        await self._run(self._set_logic(items, ttl, tags, category))

    async def delete(self, *keys: str) -> None:
        """Remove ``keys`` from every tier (and from other processes' memory tier)."""
        await self._run(self._keys_logic(self._core.delete, keys))

    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> T: ...
    @overload
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> T: ...
    async def get_or_set(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> Any:
        """Cache-aside: the cached value, else ``await loader()`` stored and returned.

        Concurrent misses of one key run the loader once. If the loader fails
        and a stale value is still in its grace period (``stale_ttl``), that
        value is returned instead of the error.
        """
        return (await self.load(key, loader, ttl=ttl, tags=tags, category=category)).value

    async def load(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> CacheResult:
        """Like :meth:`get_or_set`, but says whether the value is stale and where it came from."""
        return await self._run(self._load_logic(key, loader, ttl, tags, category))  # type: ignore[no-any-return]

    async def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Drop every entry written with any of ``tags``, on all tiers and processes."""
        core = self._core
        await self._run(core.invalidate_tags(core.check_tags(tags)))

    async def delete_pattern(self, pattern: str) -> int:
        """Drop every key matching the glob ``pattern`` (SCAN on Redis, never KEYS)."""
        return await self._run(self._core.delete_pattern(pattern))  # type: ignore[no-any-return]

    async def clear(self) -> None:
        """Drop every entry of this cache's namespace, on all tiers and processes."""
        await self._run(self._core.clear())

    async def write_around(self, key: str, value: Any) -> None:
        """Write to the backing store (the cache's ``writer``), then invalidate ``key``."""
        core = self._core
        await self._run(core.write_around(core.full_key(key), value))

    async def warm(
        self,
        keys: Iterable[str],
        loader: Callable[[list[str]], Mapping[str, Any] | Awaitable[Mapping[str, Any]]],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
        skip_cached: bool = True,
    ) -> WarmReport:
        """Load ``keys`` ahead of demand: ``loader(batch)`` returns ``{key: value}``.

        Batches of ``batch_size`` keys run ``concurrency`` at a time; keys that
        are already cached are skipped unless ``skip_cached=False``.
        """
        logic = self._warm_logic(
            keys,
            loader,
            ttl=ttl,
            tags=tags,
            category=category,
            batch_size=batch_size,
            concurrency=concurrency,
            skip_cached=skip_cached,
        )
        return await self._run(logic)  # type: ignore[no-any-return]

    async def flush(self) -> bool:
        """Write buffered write-behind entries now; False if the writer failed (they are kept)."""
        wb = self._core.write_behind
        return True if wb is None else bool(await self._run(wb.flush()))

    async def close(self) -> None:
        """Flush write-behind, finish background refreshes, stop listening for
        invalidations, and close the tiers' connections (the cache owns its tiers).

        Raises :class:`~buttress.errors.DependencyFailureError` if buffered
        writes still cannot be written; they stay buffered.
        """
        core = self._core
        await core.async_runtime.drain()
        core.close_subscription()
        wb = core.write_behind
        try:
            if wb is not None:
                await wb.stop_task()
                wb.stop_thread()
                await self._run(wb.close_logic())
        finally:
            for tier in core.remotes:
                await tier.store.aclose()

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def cached(
        self,
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] = (),
        key: Callable[..., str] | None = None,
        category: str | None = None,
        noself: bool = False,
    ) -> CachedDecorator:
        """Decorator form of :meth:`get_or_set`; see :func:`buttress.cache.cached`."""
        return cached(self, ttl=ttl, tags=tags, key=key, category=category, noself=noself)


class SyncCache(_Facade):
    """The blocking twin of :class:`Cache`, for Flask, Django and scripts.

    Same methods, same logic, no ``await``::

        cache = SyncCache.from_url("redis://127.0.0.1:6379/0")
        cache.get_or_set("user:2", lambda: load_user(2), ttl=60)
    """

    @property
    def aio(self) -> Cache:
        """The async face of this cache, sharing its tiers, state and stats."""
        return Cache._from_core(self._core)

    def _run(self, logic: Any) -> Any:
        return drive(logic, self._core.sync_runtime)

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: str, default: D) -> Any | D: ...
    def get(self, key: str, default: Any = None) -> Any:
        """The fresh value of ``key``, or ``default`` (pass ``MISSING`` to tell a stored None)."""
        full = self._core.full_key(key)
        value = self._l1_hit(full)
        if value is MISSING:
            value = self._run(self._get_logic(key, full))
        return default if value is MISSING else value

    def contains(self, key: str) -> bool:
        """Whether ``key`` has a fresh value in some tier (also ``key in cache``)."""
        return bool(self._run(self._core.contains(self._core.full_key(key))))

    __contains__ = contains

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return self._run(self._keys_logic(self._core.get_many, keys))  # type: ignore[no-any-return]

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> None:
        self._run(self._set_logic({key: value}, ttl, tags, category))

    def set_many(
        self,
        items: Mapping[str, Any],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> None:
        self._run(self._set_logic(items, ttl, tags, category))

    def delete(self, *keys: str) -> None:
        self._run(self._keys_logic(self._core.delete, keys))

    def get_or_set(
        self,
        key: str,
        loader: Callable[[], T],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> T:
        return self.load(key, loader, ttl=ttl, tags=tags, category=category).value  # type: ignore[no-any-return]

    def load(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
    ) -> CacheResult:
        return self._run(self._load_logic(key, loader, ttl, tags, category))  # type: ignore[no-any-return]

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        core = self._core
        self._run(core.invalidate_tags(core.check_tags(tags)))

    def delete_pattern(self, pattern: str) -> int:
        return self._run(self._core.delete_pattern(pattern))  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._run(self._core.clear())

    def write_around(self, key: str, value: Any) -> None:
        core = self._core
        self._run(core.write_around(core.full_key(key), value))

    def warm(
        self,
        keys: Iterable[str],
        loader: Callable[[list[str]], Mapping[str, Any]],
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] | None = None,
        category: str | None = None,
        batch_size: int = 100,
        concurrency: int = 4,
        skip_cached: bool = True,
    ) -> WarmReport:
        logic = self._warm_logic(
            keys,
            loader,
            ttl=ttl,
            tags=tags,
            category=category,
            batch_size=batch_size,
            concurrency=concurrency,
            skip_cached=skip_cached,
        )
        return self._run(logic)  # type: ignore[no-any-return]

    def flush(self) -> bool:
        wb = self._core.write_behind
        return True if wb is None else bool(self._run(wb.flush()))

    def close(self) -> None:
        core = self._core
        core.sync_runtime.shutdown()
        core.close_subscription()
        wb = core.write_behind
        try:
            if wb is not None:
                wb.stop_thread()
                self._run(wb.close_logic())
        finally:
            for tier in core.remotes:
                tier.store.close()

    def __enter__(self) -> SyncCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def cached(
        self,
        *,
        ttl: Duration | None = None,
        tags: Iterable[str] = (),
        key: Callable[..., str] | None = None,
        category: str | None = None,
        noself: bool = False,
    ) -> CachedDecorator:
        """Decorator form of :meth:`get_or_set`; see :func:`buttress.cache.cached`."""
        return cached(self, ttl=ttl, tags=tags, key=key, category=category, noself=noself)


def cached(
    cache: Cache | SyncCache,
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    key: Callable[..., str] | None = None,
    category: str | None = None,
    noself: bool = False,
) -> CachedDecorator:
    """Cache a ``def`` or ``async def`` function's results in ``cache``.

    >>> @cached(cache, ttl=60, tags=["user:{user_id}"])
    ... async def profile(user_id: int) -> dict: ...
    >>> await profile(1)                 # loads, then caches
    >>> await profile.invalidate(1)      # forgets that call

    The key is the function's qualified name plus a digest of its bound
    arguments, the same in every process; ``key(*args, **kwargs)`` replaces it.
    Arguments must be JSON-like, or a datetime, UUID, Decimal, enum, dataclass,
    pydantic model, or have ``__cache_key__()``. A method's ``self`` is keyed
    the same way (``noself=True`` leaves it out) and is never kept alive.
    Tags may name arguments. ``def`` functions use the blocking face of the
    cache, ``async def`` functions the async one.
    """
    if isinstance(cache, Cache):
        aio, blocking = cache, cache.sync
    elif isinstance(cache, SyncCache):
        aio, blocking = cache.aio, cache
    else:
        raise TypeError(f"cached() needs a Cache or SyncCache, got {cache!r}")
    return make_cached(aio, blocking, ttl=ttl, tags=tags, key=key, category=category, noself=noself)


CACHE_SCHEMES = ("memory", "redis", "rediss", "unix", "memcached")


def check_cache_url(url: str) -> str:
    """The scheme of a cache URL :meth:`Cache.from_url` takes; ValueError for another."""
    scheme = urlsplit(url).scheme
    if scheme not in CACHE_SCHEMES:
        raise ValueError(
            f"unsupported cache URL {url!r}: use memory://, redis://, rediss://, unix:// "
            "or memcached://"
        )
    return scheme


def _tiers_of(url: str, timeout: float, *, memory: bool) -> list[MemoryCache[Any, Any] | Store]:
    scheme = check_cache_url(url)
    if scheme == "memory":
        return [MemoryCache(10_000)] if memory else []
    if scheme in ("redis", "rediss", "unix"):
        return [RedisStore(url, timeout=timeout)]
    return [MemcachedStore(url, timeout=timeout)]

"""Tiered cache: in-process L1, Redis L2, memcached L3, with every caching strategy.

>>> from buttress.cache import Cache, MemoryCache
>>> l1 = MemoryCache(max_size=10_000, policy="tinylfu")
>>> cache = Cache.from_url("redis://127.0.0.1:6379/0")     # memory L1 + Redis L2
>>> await cache.get_or_set("user:1", load_user, ttl=60, tags=["user:1"])

:class:`Cache` is async; :class:`SyncCache` is its blocking twin, driven by
the same logic. See ``docs/cache.md`` for when to use which strategy.
"""

from types import FunctionType

from buttress.cache._cache import Cache, SyncCache, cached
from buttress.cache._compression import Compression
from buttress.cache._core import CacheResult, TieredStats, WarmReport
from buttress.cache._decorator import AsyncCachedFunction, CachedDecorator, CachedFunction
from buttress.cache._memcached import MemcachedStore
from buttress.cache._memory import CacheStats, MemoryCache, RemovalCause
from buttress.cache._missing import MISSING, Missing
from buttress.cache._redis import RedisStore
from buttress.cache._serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)
from buttress.cache._store import Store, Subscription
from buttress.cache._tier import TierStats

__all__ = [
    "MISSING",
    "AsyncCachedFunction",
    "Cache",
    "CacheResult",
    "CacheStats",
    "CachedDecorator",
    "CachedFunction",
    "Compression",
    "JsonSerializer",
    "MemcachedStore",
    "MemoryCache",
    "Missing",
    "MsgpackSerializer",
    "PickleSerializer",
    "RedisStore",
    "RemovalCause",
    "Serializer",
    "Store",
    "Subscription",
    "SyncCache",
    "TierStats",
    "TieredStats",
    "WarmReport",
    "cached",
]

# Shown as buttress.cache.X in reprs and docs, not as the private module.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | FunctionType) and _obj.__module__.startswith("buttress.cache._"):
        _obj.__module__ = __name__
del _name, _obj

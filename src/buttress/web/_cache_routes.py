"""``/cache``: stats, keys, batches, invalidation, warming and clearing.

Values are JSON here (the cache itself stores any value its serializer takes):
a stored value JSON can't carry is shown in its JSON form (bytes as URL-safe base64,
datetimes as ISO 8601, other objects as their repr). Reading
keys needs the admin role too: a cache holds every user's data.
"""

from __future__ import annotations

from enum import Enum

from fastapi import Path, Response

from buttress._jsonable import jsonable
from buttress.cache import MISSING
from buttress.errors import NotFoundError, ValidationError
from buttress.web._auth import Admin, Caller, ServiceDep
from buttress.web._models import (
    CacheBatchOut,
    CacheBatchSetIn,
    CacheEntryOut,
    CacheInvalidateIn,
    CacheKeysIn,
    CacheSetIn,
    CacheStatsOut,
    CountOut,
    WarmOut,
)
from buttress.web._router import API, router

TAGS: list[str | Enum] = ["cache"]
CACHE = API + "/cache"

Key = Path(min_length=1, max_length=512)


@router.get(CACHE + "/stats", tags=TAGS)
async def cache_stats(service: ServiceDep, _: Caller) -> CacheStatsOut:
    """Hits, misses, errors and availability per tier, and what the cache did."""
    return CacheStatsOut.of(service.cache.name, service.cache.stats())


@router.get(CACHE + "/keys/{key:path}", tags=TAGS)
async def get_key(service: ServiceDep, _: Admin, key: str = Key) -> CacheEntryOut:
    value = await service.cache.get(key, MISSING)
    if value is MISSING:
        raise NotFoundError(resource="cache key", resource_id=key)
    return CacheEntryOut(key=key, value=jsonable(value))


@router.put(CACHE + "/keys/{key:path}", tags=TAGS, status_code=204)
async def set_key(body: CacheSetIn, service: ServiceDep, _: Admin, key: str = Key) -> Response:
    await service.cache.set(key, body.value, ttl=body.ttl, tags=body.tags or None)
    return Response(status_code=204)


@router.delete(CACHE + "/keys/{key:path}", tags=TAGS, status_code=204)
async def delete_key(service: ServiceDep, _: Admin, key: str = Key) -> Response:
    await service.cache.delete(key)
    return Response(status_code=204)


@router.post(CACHE + "/batch/get", tags=TAGS)
async def get_many(body: CacheKeysIn, service: ServiceDep, _: Admin) -> CacheBatchOut:
    found = await service.cache.get_many(body.keys)
    values = {key: jsonable(value) for key, value in found.items()}
    return CacheBatchOut(values=values, missing=[k for k in body.keys if k not in found])


@router.post(CACHE + "/batch/set", tags=TAGS, status_code=204)
async def set_many(body: CacheBatchSetIn, service: ServiceDep, _: Admin) -> Response:
    await service.cache.set_many(body.items, ttl=body.ttl, tags=body.tags or None)
    return Response(status_code=204)


@router.post(CACHE + "/invalidate", tags=TAGS)
async def invalidate(body: CacheInvalidateIn, service: ServiceDep, _: Admin) -> CountOut:
    """Invalidate by tags and/or a glob pattern; the count is of pattern matches."""
    if not body.tags and body.pattern is None:
        raise ValidationError("give tags, a pattern, or both")
    count = 0
    if body.tags:
        await service.cache.invalidate_tags(body.tags)
    if body.pattern is not None:
        count = await service.cache.delete_pattern(body.pattern)
    return CountOut(count=count)


@router.post(CACHE + "/warm", tags=TAGS)
async def warm(body: CacheKeysIn, service: ServiceDep, _: Admin) -> WarmOut:
    """Pull these keys from the remote tiers into the memory tier, ahead of traffic."""
    found = await service.cache.get_many(body.keys)
    return WarmOut(warmed=len(found), missing=[k for k in body.keys if k not in found])


@router.post(CACHE + "/clear", tags=TAGS, status_code=204)
async def clear(service: ServiceDep, _: Admin) -> Response:
    """Empty every tier (in this namespace)."""
    await service.cache.clear()
    return Response(status_code=204)

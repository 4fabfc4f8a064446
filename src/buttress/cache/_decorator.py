"""``@cached``: memoise a function in a tiered cache, across processes.

The key is built from the function's qualified name and its bound arguments,
encoded canonically (JSON with sorted keys, then BLAKE2b), so every process
computes the same key for the same call and a restart keeps its cache. Tags
may name arguments: ``tags=["user:{user_id}"]``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import json
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from buttress.resilience._common import Duration, is_async_callable

if TYPE_CHECKING:
    from buttress.cache._cache import Cache, SyncCache

__all__ = ["make_cached"]

T = TypeVar("T")


def make_cached(
    aio: Cache,
    blocking: SyncCache,
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    key: Callable[..., str] | None = None,
    category: str | None = None,
    noself: bool = False,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Cache a ``def`` or ``async def`` function's results in ``cache``.

    >>> @cached(cache, ttl=60, tags=["user:{user_id}"])
    ... async def profile(user_id: int) -> dict: ...
    >>> await profile(1)                 # loads, then caches
    >>> await profile.invalidate(1)      # forgets that call

    ``key(*args, **kwargs)`` replaces the argument encoding. Arguments must be
    JSON-like (str, numbers, None, lists, dicts), or a datetime, UUID, Decimal,
    enum, dataclass, pydantic model, or an object with ``__cache_key__()``.
    A method's ``self`` is part of the key the same way; ``noself=True`` leaves
    it out. The decorator holds no reference to arguments after a call, so a
    cached method does not keep its instance alive.
    """
    tag_templates = tuple(tags)
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tag_templates):
        raise TypeError(f"tags must be a list of strings, got {tags!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable returning a str, got {key!r}")

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(fn)
        base = f"fn:{fn.__module__}.{fn.__qualname__}"
        params = list(signature.parameters)
        skip = params[0] if noself and params else None

        def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, list[str]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            if key is not None:
                custom = key(*args, **kwargs)
                if type(custom) is not str:
                    raise TypeError(f"key= must return a str, got {custom!r}")
                cache_key = f"{base}:{custom}"
            else:
                parts = [(name, value) for name, value in arguments.items() if name != skip]
                cache_key = f"{base}:{_digest(fn, parts)}"
            try:
                call_tags = [template.format(**arguments) for template in tag_templates]
            except (KeyError, IndexError) as exc:
                raise ValueError(
                    f"a tag of {fn.__qualname__} names {exc} which is not one of its arguments"
                ) from None
            return cache_key, call_tags

        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                cache_key, call_tags = bind(args, kwargs)
                return await aio.get_or_set(
                    cache_key,
                    lambda: fn(*args, **kwargs),
                    ttl=ttl,
                    tags=call_tags,
                    category=category,
                )

            async def ainvalidate(*args: Any, **kwargs: Any) -> None:
                await aio.delete(bind(args, kwargs)[0])

            async_wrapper.invalidate = ainvalidate  # type: ignore[attr-defined]
            async_wrapper.cache_key = lambda *a, **kw: bind(a, kw)[0]  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            cache_key, call_tags = bind(args, kwargs)
            return blocking.get_or_set(
                cache_key,
                lambda: fn(*args, **kwargs),
                ttl=ttl,
                tags=call_tags,
                category=category,
            )

        def invalidate(*args: Any, **kwargs: Any) -> None:
            blocking.delete(bind(args, kwargs)[0])

        wrapper.invalidate = invalidate  # type: ignore[attr-defined]
        wrapper.cache_key = lambda *a, **kw: bind(a, kw)[0]  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _digest(fn: Callable[..., Any], parts: list[tuple[str, Any]]) -> str:
    try:
        text = json.dumps(
            parts, default=_key_part, sort_keys=True, separators=(",", ":"), allow_nan=True
        )
    except TypeError as exc:
        raise TypeError(
            f"cannot build a cache key for {fn.__qualname__}: {exc}; "
            "pass key= to @cached, or give the type a __cache_key__() method"
        ) from None
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _key_part(value: Any) -> Any:
    """A stable, JSON-able stand-in for an argument that JSON can't encode."""
    custom = getattr(value, "__cache_key__", None)
    if custom is not None:
        return ["k", custom()]
    if isinstance(value, enum.Enum):
        return ["e", type(value).__qualname__, value.value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return ["d", type(value).__name__, value.isoformat()]
    if isinstance(value, datetime.timedelta):
        return ["td", value.total_seconds()]
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return [type(value).__name__, str(value)]
    if isinstance(value, bytes):
        return ["b", value.hex()]
    if isinstance(value, set | frozenset):
        return ["s", sorted(json.dumps(item, default=_key_part, sort_keys=True) for item in value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dc", type(value).__qualname__, fields]
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return ["pm", type(value).__qualname__, dump(mode="json")]
    raise TypeError(f"an argument of type {type(value).__qualname__!r} has no stable key")

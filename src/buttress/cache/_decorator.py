"""``@cached``: memoise a function in a tiered cache, across processes.

The key is built from the function's qualified name and its bound arguments,
encoded canonically (a tagged JSON form with sorted keys, then BLAKE2b), so
every process computes the same key for the same call and a restart keeps its
cache. Tags may name arguments: ``tags=["user:{user_id}"]``.
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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from buttress.resilience._common import Duration, is_async_callable

if TYPE_CHECKING:
    from buttress.cache._cache import Cache, SyncCache

__all__ = ["AsyncCachedFunction", "CachedDecorator", "CachedFunction", "make_cached"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


class _Keyer:
    """Turns a call's arguments into its cache key and tags."""

    def __init__(
        self,
        fn: Callable[..., Any],
        tags: tuple[str, ...],
        key: Callable[..., str] | None,
        noself: bool,
    ) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)
        self.base = f"fn:{fn.__module__}.{fn.__qualname__}"
        params = list(self.signature.parameters)
        self.skip = params[0] if noself and params else None
        self.tags = tags
        self.key = key

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, list[str]]:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if self.key is not None:
            custom = self.key(*args, **kwargs)
            if type(custom) is not str:
                raise TypeError(f"key= must return a str, got {custom!r}")
            cache_key = f"{self.base}:{custom}"
        else:
            parts = [[name, value] for name, value in arguments.items() if name != self.skip]
            cache_key = f"{self.base}:{_digest(self.fn, parts)}"
        try:
            call_tags = [template.format(**arguments) for template in self.tags]
        except (KeyError, IndexError) as exc:
            raise ValueError(
                f"a tag of {self.fn.__qualname__} names {exc}, which is not one of its arguments"
            ) from None
        return cache_key, call_tags


class _Options:
    __slots__ = ("category", "ttl")

    def __init__(self, ttl: Duration | None, category: str | None) -> None:
        self.ttl = ttl
        self.category = category


class CachedFunction(Generic[P, R]):
    """A ``def`` function whose results are cached; ``.invalidate(*args)`` forgets one call.

    Used as a method, it binds like a function: ``obj.method.invalidate(1)``
    forgets ``obj.method(1)``.
    """

    def __init__(self, fn: Callable[P, R], cache: SyncCache, keyer: _Keyer, options: _Options):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._cache = cache
        self._keyer = keyer
        self._options = options

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cache_key, tags = self._keyer(args, kwargs)
        fn = self._fn
        return self._cache.get_or_set(
            cache_key,
            lambda: fn(*args, **kwargs),
            ttl=self._options.ttl,
            tags=tags,
            category=self._options.category,
        )

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget the cached result of this call."""
        self._cache.delete(self._keyer(args, kwargs)[0])

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key this call is cached under."""
        return self._keyer(args, kwargs)[0]

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else _Bound(self, instance)


class AsyncCachedFunction(Generic[P, T]):
    """An ``async def`` function whose results are cached; ``await f.invalidate(*args)``."""

    def __init__(
        self,
        fn: Callable[P, Awaitable[T]],
        cache: Cache,
        keyer: _Keyer,
        options: _Options,
    ) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._cache = cache
        self._keyer = keyer
        self._options = options

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        cache_key, tags = self._keyer(args, kwargs)
        fn = self._fn
        return await self._cache.get_or_set(
            cache_key,
            lambda: fn(*args, **kwargs),
            ttl=self._options.ttl,
            tags=tags,
            category=self._options.category,
        )

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget the cached result of this call."""
        await self._cache.delete(self._keyer(args, kwargs)[0])

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key this call is cached under."""
        return self._keyer(args, kwargs)[0]

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else _Bound(self, instance)


class _Bound:
    """A cached function bound to an instance, like a bound method (holding the
    instance only as long as this object lives)."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, func: CachedFunction[Any, Any] | AsyncCachedFunction[Any, Any], obj: object):
        self.__func__ = func
        self.__self__ = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__.invalidate(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self.__func__.cache_key(self.__self__, *args, **kwargs)


class CachedDecorator(Protocol):
    """What ``cached(...)`` returns: a decorator for ``def`` and ``async def``."""

    # A coroutine function is a callable too; the first overload wins for it.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> AsyncCachedFunction[P, T]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> CachedFunction[P, R]: ...


def make_cached(
    aio: Cache,
    blocking: SyncCache,
    *,
    ttl: Duration | None = None,
    tags: Iterable[str] = (),
    key: Callable[..., str] | None = None,
    category: str | None = None,
    noself: bool = False,
) -> CachedDecorator:
    """The decorator behind :func:`buttress.cache.cached`, given both faces of a cache."""
    tag_templates = tuple(tags)
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tag_templates):
        raise TypeError(f"tags must be a list of strings, got {tags!r}")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable returning a str, got {key!r}")
    aio._core.resolve_ttl(ttl, category)  # a bad ttl or category fails at decoration
    options = _Options(ttl, category)

    def decorate(fn: Callable[..., Any]) -> Any:
        keyer = _Keyer(fn, tag_templates, key, noself)
        if is_async_callable(fn):
            return AsyncCachedFunction(fn, aio, keyer, options)
        return CachedFunction(fn, blocking, keyer, options)

    return decorate


_SCALARS = (str, int, float, bool)


def _digest(fn: Callable[..., Any], parts: list[list[Any]]) -> str:
    try:
        text = json.dumps(_canonical(parts), separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise TypeError(
            f"cannot build a cache key for {fn.__qualname__}: {exc}; "
            "pass key= to @cached, or give the type a __cache_key__() method"
        ) from None
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-able form of ``value`` that tells apart what Python tells apart.

    Scalars JSON keeps distinct (str, int, float, bool, None) stay as they are;
    everything else becomes a tagged list, so ``{1: "a"}`` and ``{"1": "a"}``,
    or ``(1, 2)`` and ``[1, 2]``, never share a key.
    """
    if value is None or type(value) in _SCALARS:
        return value
    if isinstance(value, enum.Enum):
        return ["e", type(value).__qualname__, _canonical(value.value)]
    if isinstance(value, list):
        return ["l", [_canonical(item) for item in value]]
    if isinstance(value, tuple):
        return ["t", [_canonical(item) for item in value]]
    if isinstance(value, dict):
        items = [[_canonical(k), _canonical(v)] for k, v in value.items()]
        return ["m", sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))]
    if isinstance(value, set | frozenset):
        members = [_canonical(item) for item in value]
        return ["s", sorted(members, key=lambda m: json.dumps(m, sort_keys=True))]
    custom = getattr(value, "__cache_key__", None)
    if custom is not None:
        return ["k", type(value).__qualname__, _canonical(custom())]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return ["d", type(value).__name__, value.isoformat()]
    if isinstance(value, datetime.timedelta):
        return ["td", value.total_seconds()]
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return [type(value).__name__, str(value)]
    if isinstance(value, bytes | bytearray):
        return ["b", bytes(value).hex()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ["dc", type(value).__qualname__, _canonical(fields)]
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump):
        return ["pm", type(value).__qualname__, _canonical(dump(mode="json"))]
    raise TypeError(f"an argument of type {type(value).__qualname__!r} has no stable key")

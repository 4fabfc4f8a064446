"""Compose strategies into one: ``Pipeline(fallback, retry, breaker, bulkhead)``.

The first strategy given is the outermost. The order matters, and this one is
the usual choice, for these reasons:

1. **fallback** outermost, so it answers for every failure below it, an open
   breaker and a full bulkhead included;
2. **retry** outside the breaker, so each attempt is one call the breaker
   counts (by default a retry does not retry an open breaker's rejection: the
   call fails fast, to the fallback);
3. **circuit breaker**;
4. **rate limiter**;
5. **timeout**, per attempt (inside the retry, so each try gets the full time);
6. **bulkhead** innermost, so a slot is held only while the call really runs;
7. **hedge** (async) next to the call it duplicates.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from buttress.resilience._common import Strategy, is_async_callable
from buttress.resilience._registry import Registry, default_registry

__all__ = ["Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")


_COMPOSED_CACHE_SIZE = 256


def _as_coroutine_function(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    if is_async_callable(fn):
        return fn

    @functools.wraps(fn)
    async def awaiting(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return awaiting


class Pipeline(Strategy):
    """Strategies applied as one, the first outermost.

    Any decorator that maps a function to a function can take part, so an
    application's own strategy composes with the built-in ones. The decorated
    function keeps the wrapped one's type: a fallback's value type is not tracked.

    >>> resilient = Pipeline(fallback(None), retry(attempts=3), breaker, Bulkhead(10))
    >>> @resilient
    ... def fetch(url: str) -> bytes: ...
    >>> resilient.call(fetch_raw, "https://example.com")
    """

    def __init__(
        self,
        *strategies: Callable[[Callable[..., Any]], Callable[..., Any]],
        name: str | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        if not strategies:
            raise ValueError("Pipeline: give at least one strategy")
        for position, strategy in enumerate(strategies):
            if not callable(strategy):
                raise ValueError(
                    f"Pipeline: strategy #{position + 1} must be a strategy or decorator, "
                    f"got {strategy!r}"
                )
        self._strategies = strategies
        self._name = name or "pipeline"
        self._composed: dict[Callable[..., Any], Callable[..., Any]] = {}
        self._composed_async: dict[Callable[..., Any], Callable[..., Any]] = {}
        if name is not None and registry is not None:
            registry.register(self)

    @property
    def name(self) -> str:
        return self._name

    @property
    def strategies(self) -> tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...]:
        return self._strategies

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self._strategies)
        return f"<Pipeline {self._name!r} [{inner}]>"

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate ``fn`` with every strategy, the first outermost."""
        for strategy in reversed(self._strategies):
            fn = strategy(fn)
        return fn

    def _compose(self, fn: Callable[..., Any], *, is_async: bool) -> Callable[..., Any]:
        # ``call(fn)`` reuses the composition made for the same function; the
        # cache is bounded, so lambdas made per call cannot pile up.
        cache = self._composed_async if is_async else self._composed
        composed = cache.get(fn)
        if composed is None:
            # call_async(fn) must compose async wrappers even for a plain callable
            # that returns a coroutine (a lambda), or no strategy would await it.
            composed = self(_as_coroutine_function(fn) if is_async else fn)
            if len(cache) >= _COMPOSED_CACHE_SIZE:
                cache.clear()
            cache[fn] = composed
        return composed

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._compose(fn, is_async=False)(*args, **kwargs)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await self._compose(fn, is_async=True)(*args, **kwargs)

    def metrics(self) -> dict[str, Any]:
        """Each named strategy's metrics, by name."""
        return {
            getattr(s, "name", repr(s)): s.metrics()
            for s in self._strategies
            if hasattr(s, "metrics")
        }

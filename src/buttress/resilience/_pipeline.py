"""Compose strategies into one: ``Pipeline(fallback, retry, breaker, bulkhead)``.

The first strategy given is the outermost. The order matters, and this one is
the usual choice, for these reasons:

1. **fallback** outermost, so it answers for every failure below it, an open
   breaker and a full bulkhead included;
2. **retry** outside the breaker, so each attempt is one call the breaker
   counts, and an open breaker's ``retry_after`` tells the retry how long to wait;
3. **circuit breaker**;
4. **rate limiter**;
5. **timeout**, per attempt (inside the retry, so each try gets the full time);
6. **bulkhead** innermost, so a slot is held only while the call really runs;
7. **hedge** (async) next to the call it duplicates.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from buttress.resilience._common import Strategy
from buttress.resilience._registry import Registry, default_registry

__all__ = ["Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")

_COMPOSED_CACHE_SIZE = 256


class Pipeline(Strategy):
    """Strategies applied as one, the first outermost.

    Any decorator that maps a function to a function can take part, so an
    application's own strategy composes with the built-in ones.

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
        self._lock = threading.Lock()
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

    def _compose(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        # ``call(fn)`` reuses the composition made for the same function.
        composed = self._composed.get(fn)
        if composed is None:
            composed = self(fn)
            with self._lock:
                if len(self._composed) >= _COMPOSED_CACHE_SIZE:
                    self._composed.clear()
                self._composed[fn] = composed
        return composed

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._compose(fn)(*args, **kwargs)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await self._compose(fn)(*args, **kwargs)

    def metrics(self) -> dict[str, Any]:
        """Each named strategy's metrics, by name."""
        return {
            getattr(s, "name", repr(s)): s.metrics()
            for s in self._strategies
            if hasattr(s, "metrics")
        }

"""Fallbacks: an answer to give when the real one failed."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress.clock import Clock
from buttress.resilience._common import (
    ExceptionFilter,
    Observable,
    Strategy,
    exception_filter,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry

__all__ = ["Fallback", "FallbackMetrics", "fallback"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FallbackMetrics:
    name: str
    fallbacks: int
    """Calls answered by a fallback."""
    failures: int
    """Calls where every fallback failed too."""


def _any_exception(exc: BaseException) -> bool:
    # Exception, not BaseException: cancellation and Ctrl-C must get through.
    return isinstance(exc, Exception)


class Fallback(Strategy, Observable):
    """Answer with a fallback when the call raises what ``on`` selects.

    Each fallback is a plain value, or a callable that receives the exception and
    returns the value (for an ``async def`` call it may be ``async`` too). Several
    form a chain, tried in order until one does not raise; if all raise, the
    original exception comes through with notes on what each fallback raised.
    A callable that *is* the value must be wrapped: ``fallback(lambda exc: fn)``.
    The decorated function keeps its declared type, so give a fallback of that
    type (``fallback([])`` for a function returning a list).

    Events: ``fallback`` (a fallback answered; ``step`` says which).

    >>> @fallback(read_from_cache, [], on=(ConnectionError,))
    ... def recent_orders(user_id: int) -> list[Order]: ...
    """

    def __init__(
        self,
        *fallbacks: object,
        on: ExceptionFilter | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = "Fallback" if name is None else f"Fallback({name!r})"
        if not fallbacks:
            raise ValueError(f"{where}: give at least one fallback value or callable")
        self._fallbacks = fallbacks
        self._should_fall_back = exception_filter(where, on, _any_exception)
        self._register(name, "fallback", registry)
        self._clock = resolve_clock(where, clock)
        self._lock = threading.Lock()
        self._used = self._failed = 0

    def __repr__(self) -> str:
        return f"<Fallback {self._name!r} chain of {len(self._fallbacks)}>"

    def metrics(self) -> FallbackMetrics:
        with self._lock:
            return FallbackMetrics(self._name, self._used, self._failed)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn``; on a selected exception, answer from the fallback chain."""
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if not self._should_fall_back(exc):
                raise
            failure = exc
        for step, handler in enumerate(self._fallbacks):
            if not callable(handler):
                return self._answered(step, failure, handler)
            try:
                value = handler(failure)
            except Exception as error:
                self._note(failure, step, error)
                continue
            return self._answered(step, failure, value)
        raise self._exhausted(failure)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Await ``fn``; on a selected exception, answer from the fallback chain."""
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if not self._should_fall_back(exc):
                raise
            failure = exc
        for step, handler in enumerate(self._fallbacks):
            if not callable(handler):
                return self._answered(step, failure, handler)
            try:
                value = handler(failure)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as error:
                self._note(failure, step, error)
                continue
            return self._answered(step, failure, value)
        raise self._exhausted(failure)

    def _answered(self, step: int, failure: BaseException, value: object) -> object:
        with self._lock:
            self._used += 1
        if self._listeners:
            self._listeners.emit(
                self._name, "fallback", self._clock.now(), step=step, exception=failure
            )
        return value

    def _note(self, failure: BaseException, step: int, error: Exception) -> None:
        failure.add_note(f"buttress.fallback {self._name!r}: fallback #{step + 1} raised {error!r}")

    def _exhausted(self, failure: BaseException) -> BaseException:
        with self._lock:
            self._failed += 1
        return failure


fallback = Fallback
"""``@fallback([], on=(TimeoutError,))``: the decorator spelling of :class:`Fallback`."""

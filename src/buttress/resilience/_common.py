"""Pieces every strategy shares: option checks, durations, events."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ParamSpec, TypeGuard, TypeVar

from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.resilience._registry import Registry

__all__ = [
    "Duration",
    "ExceptionFilter",
    "Listener",
    "Listeners",
    "Observable",
    "ResilienceEvent",
    "Strategy",
    "check_callable",
    "check_fraction",
    "check_int",
    "check_number",
    "check_seconds",
    "exception_filter",
    "is_async_callable",
    "resolve_clock",
]

P = ParamSpec("P")
T = TypeVar("T")

Duration = float | int | timedelta
"""A length of time: seconds as a number, or a :class:`datetime.timedelta`."""


def _owner(strategy: str) -> str:
    return f"{strategy}: " if strategy else ""


def check_int(strategy: str, name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an int of at least ``minimum``; else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_owner(strategy)}{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{_owner(strategy)}{name} must be >= {minimum}, got {value!r}")
    return value


def check_seconds(strategy: str, name: str, value: Duration, *, allow_zero: bool = True) -> float:
    """Turn a :data:`Duration` into float seconds, rejecting negatives (and zero if asked)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        raise ValueError(
            f"{_owner(strategy)}{name} must be a number of seconds or a timedelta, got {value!r}"
        )
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{_owner(strategy)}{name} must be {bound} seconds, got {value!r}")
    return float(seconds)


def check_fraction(strategy: str, name: str, value: float) -> float:
    """Accept a rate in (0, 1]: 0.5 means 50 %."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(
            f"{_owner(strategy)}{name} must be a fraction in (0, 1] (0.5 means 50 %), got {value!r}"
        )
    return float(value)


def resolve_clock(strategy: str, clock: Clock | None) -> Clock:
    """The clock to use: the system clock unless one is given."""
    if clock is None:
        return SYSTEM_CLOCK
    if not isinstance(clock, Clock):
        raise ValueError(
            f"{_owner(strategy)}clock must be a Clock (now, sleep, sleep_async, wait), "
            f"got {clock!r}"
        )
    return clock


C = TypeVar("C", bound=Callable[..., Any])


def check_callable(strategy: str, name: str, value: C | None) -> C | None:
    """Return ``value`` if it is callable or None; else raise ``ValueError``."""
    if value is not None and not callable(value):
        raise ValueError(f"{_owner(strategy)}{name} must be callable, got {value!r}")
    return value


def check_number(
    strategy: str, name: str, value: object, *, minimum: float, inclusive: bool = True
) -> float:
    """Return ``value`` as a float if it is a finite number above ``minimum``."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
        or (value == minimum and not inclusive)
    ):
        raise ValueError(f"{_owner(strategy)}{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def is_async_callable(fn: object) -> TypeGuard[Callable[..., Any]]:
    """True for ``async def`` functions, also behind ``functools.partial`` or a callable object."""
    while hasattr(fn, "func") and not inspect.isfunction(fn):  # functools.partial
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


@dataclass(frozen=True, slots=True)
class ResilienceEvent:
    """Something a strategy did: a breaker opened, a retry is about to sleep, a call was shed.

    ``source`` is the strategy's name, ``kind`` says what happened (``"state_change"``,
    ``"retry"``, ``"rejected"`` …) and ``attributes`` holds the details for that kind.
    """

    source: str
    kind: str
    time: float
    attributes: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[ResilienceEvent], object]


class Listeners:
    """The listeners of one strategy. Events are built only when someone listens."""

    __slots__ = ("_items", "_lock")

    def __init__(self) -> None:
        self._items: tuple[tuple[Listener, frozenset[str] | None], ...] = ()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, listener: Listener, kinds: Iterable[str] | None = None) -> None:
        wanted = None if kinds is None else frozenset(kinds)
        with self._lock:
            self._items = (*self._items, (listener, wanted))

    def remove(self, listener: Listener) -> None:
        with self._lock:
            items = [item for item in self._items if item[0] != listener]
            if len(items) == len(self._items):
                raise ValueError(f"{listener!r} is not a listener here")
            self._items = tuple(items)

    def wants(self, kind: str) -> bool:
        """Whether some listener takes events of this kind."""
        return any(kinds is None or kind in kinds for _, kinds in self._items)

    def emit(self, source: str, kind: str, time: float, **attributes: Any) -> None:
        """Deliver an event to each listener that wants it; a listener that raises
        cannot break the call."""
        event = None
        for listener, kinds in self._items:  # a snapshot: emit never holds the lock
            if kinds is not None and kind not in kinds:
                continue
            if event is None:
                event = ResilienceEvent(source, kind, time, attributes)
            try:
                listener(event)
            except Exception:
                _log_listener_failure(listener, event)


class Observable:
    """Gives a strategy its name, listeners, and its place in a registry."""

    _name: str
    _listeners: Listeners

    def _register(self, name: str | None, default: str, registry: Registry | None) -> None:
        """Name the strategy and give it listeners; a named one joins ``registry``."""
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(
                f"{type(self).__name__}: name must be a non-empty string or None, got {name!r}"
            )
        if registry is not None and not isinstance(registry, Registry):
            raise ValueError(
                f"{type(self).__name__}: registry must be a Registry or None, got {registry!r}"
            )
        self._name = name or default
        self._listeners = Listeners()
        if name is not None and registry is not None:
            registry.register(self)

    @property
    def name(self) -> str:
        return self._name

    def metrics(self) -> Any:
        """A frozen snapshot of the strategy's counters."""
        raise NotImplementedError

    def add_listener(self, listener: Listener, *, kinds: Iterable[str] | None = None) -> None:
        """Call ``listener(event)`` for each event, or only for events of ``kinds``.

        Listeners run on the thread that made the call, never under a lock. The
        class docstring lists which kinds a strategy emits.
        """
        self._listeners.add(listener, kinds)
        self._listeners_changed()

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        self._listeners_changed()

    def _listeners_changed(self) -> None:
        """A hook for strategies whose fast path depends on who listens."""


def _log_listener_failure(listener: Listener, event: ResilienceEvent) -> None:
    logging.getLogger("buttress.resilience").exception(
        "listener %r failed on %s event from %r", listener, event.kind, event.source
    )


class Strategy:
    """Base of the strategies: ``call``, ``call_async`` and a decorator, built on ``_run``.

    A subclass implements ``_run`` and ``_run_async``, which take the arguments
    as one tuple and one dict. The decorator hands them over as they came, with
    no repacking, which is most of what a wrapper layer costs; whether to wrap
    with the sync or the async runner is decided once, at decoration time.
    """

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        raise NotImplementedError

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through this strategy."""
        return self._run(fn, args, kwargs)  # type: ignore[no-any-return]

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` through this strategy."""
        return await self._run_async(fn, args, kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a ``def`` or ``async def`` function."""
        if is_async_callable(fn):
            run_async = self._run_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await run_async(fn, args, kwargs)

            return async_wrapper  # type: ignore[return-value]
        run = self._run

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return run(fn, args, kwargs)  # type: ignore[no-any-return]

        return wrapper


ExceptionFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""Which exceptions a strategy acts on: exception types, or a predicate on the exception."""


def exception_filter(
    where: str, on: ExceptionFilter | None, default: Callable[[BaseException], bool]
) -> Callable[[BaseException], bool]:
    """Turn an ``on=`` option into a predicate.

    Exception types are taken as given. A predicate only ever sees ``Exception``
    instances: ``CancelledError``, ``KeyboardInterrupt`` and ``SystemExit`` pass.
    """
    if on is None:
        return default
    if isinstance(on, type | tuple):
        types = on
        if not all(
            isinstance(t, type) and issubclass(t, BaseException)
            for t in (types if isinstance(types, tuple) else (types,))
        ):
            raise ValueError(f"{where}: on must name exception classes, got {on!r}")
        return lambda exc: isinstance(exc, types)
    if callable(on):
        predicate = on
        # Cancellation, Ctrl-C and exit are never a dependency's failure; a
        # predicate written with errors in mind must not catch them by accident.
        return lambda exc: isinstance(exc, Exception) and bool(predicate(exc))
    raise ValueError(f"{where}: on must be exception types or a predicate, got {on!r}")

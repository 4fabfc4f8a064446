"""Hedged calls: when the first try is slow, race a second one.

Tail latency is often one slow replica or one lost packet. Starting a duplicate
after ``delay`` (around the p95 latency) and taking whichever answers first cuts
the tail at the cost of a few extra calls. Only hedge idempotent calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress.clock import Clock
from buttress.resilience._common import (
    Duration,
    Observable,
    Strategy,
    check_int,
    check_seconds,
    is_async_callable,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry

__all__ = ["Hedge", "HedgeMetrics", "hedge"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HedgeMetrics:
    name: str
    calls: int
    hedges: int
    """Extra attempts started."""
    hedge_wins: int
    """Calls whose answer came from an extra attempt rather than the first."""


def _consume(task: asyncio.Task[Any]) -> None:
    # A losing attempt may still fail after it was cancelled; mark its
    # exception retrieved so asyncio does not log it as lost.
    if not task.cancelled():
        task.exception()


class Hedge(Strategy, Observable):
    """Start the call; after ``delay`` with no answer, start up to ``max_hedged`` more.

    The first success wins and the other attempts are cancelled. A failed attempt
    starts the next hedge at once instead of waiting out the delay. If every
    attempt fails, the last failure is raised. The losers are cancelled but not
    awaited, so the winner's answer never waits for their clean-up. Works on
    ``async def`` only: a thread cannot be cancelled, so a sync hedge would leak
    its losers.

    Events: ``hedge`` (an extra attempt started).

    >>> @hedge(delay=0.05, max_hedged=2)
    ... async def lookup(key: str) -> bytes: ...
    """

    def __init__(
        self,
        *,
        delay: Duration,
        max_hedged: int = 1,
        name: str | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = "Hedge" if name is None else f"Hedge({name!r})"
        self._delay = check_seconds(where, "delay", delay)
        self._max_hedged = check_int(where, "max_hedged", max_hedged, minimum=1)
        self._register(name, "hedge", registry)
        self._clock = resolve_clock(where, clock)
        self._lock = threading.Lock()
        self._calls = self._hedges = self._hedge_wins = 0

    def __repr__(self) -> str:
        return f"<Hedge {self._name!r} delay={self._delay}s max_hedged={self._max_hedged}>"

    def metrics(self) -> HedgeMetrics:
        with self._lock:
            return HedgeMetrics(self._name, self._calls, self._hedges, self._hedge_wins)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise TypeError(
            f"{self._name}: hedging needs an async def function (got {fn!r}); a sync call "
            "cannot be cancelled, so the losing attempts would run on in their threads"
        )

    def __call__(  # type: ignore[override]  # async functions only
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        if not is_async_callable(fn):
            self._run(fn, (), {})
        return super().__call__(fn)

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Await ``fn``, hedging it as configured."""
        loop = asyncio.get_running_loop()

        async def attempt() -> Any:
            return await fn(*args, **kwargs)

        attempts: list[asyncio.Task[Any]] = [loop.create_task(attempt())]
        running = set(attempts)
        hedges_left = self._max_hedged
        timer: asyncio.Task[None] | None = None
        failure: BaseException | None = None
        try:
            while True:
                if timer is None and hedges_left:
                    timer = loop.create_task(self._clock.sleep_async(self._delay))
                waiting: set[asyncio.Future[Any]] = set(running)
                if timer is not None:
                    waiting.add(timer)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                start_hedge = timer in done
                if start_hedge:
                    timer = None
                for task in attempts:
                    if task not in done:
                        continue
                    running.discard(task)
                    error = task.exception()
                    if error is None:
                        self._count(won_by_hedge=task is not attempts[0])
                        return task.result()
                    failure = error
                    start_hedge = True
                if start_hedge and hedges_left:
                    hedges_left -= 1
                    attempts.append(loop.create_task(attempt()))
                    running.add(attempts[-1])
                    self._started_hedge(len(attempts) - 1)
                    if timer is not None:
                        timer.cancel()  # the next hedge waits a full delay again
                        timer = None
                elif not running:
                    self._count(won_by_hedge=False)
                    assert failure is not None
                    raise failure
        finally:
            if timer is not None:
                timer.cancel()
            for task in running:
                task.cancel()
                task.add_done_callback(_consume)

    def _started_hedge(self, number: int) -> None:
        with self._lock:
            self._hedges += 1
        if self._listeners:
            self._listeners.emit(self._name, "hedge", self._clock.now(), attempt=number + 1)

    def _count(self, *, won_by_hedge: bool) -> None:
        with self._lock:
            self._calls += 1
            self._hedge_wins += won_by_hedge


hedge = Hedge
"""``@hedge(delay=0.05)``: the decorator spelling of :class:`Hedge`."""

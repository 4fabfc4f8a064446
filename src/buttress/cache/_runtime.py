"""One cache logic, two kinds of I/O.

The tiered cache's logic is written once, as generators that ``yield`` what
they need done (an :class:`Effect`: call a tier, call the loader, sleep, load a
key once for many callers, run work in the background or side by side) and
receive the result. :func:`drive` runs such a generator with blocking calls
for the sync cache; :func:`adrive` runs the very same generator with ``await``
for the async cache. This is the "sans-I/O" pattern of h11 and httpcore's
shared logic, and it is why there is no hand-kept second copy of the cache.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from buttress.clock import Clock

__all__ = [
    "AsyncRuntime",
    "Call",
    "Effect",
    "Flight",
    "Gather",
    "Logic",
    "Sleep",
    "Spawn",
    "SyncRuntime",
    "adrive",
    "drive",
]

R = TypeVar("R")

Logic = Generator["Effect[Any]", Any, R]
"""A piece of cache logic: yields effects, receives their results, returns ``R``."""


class Effect(Generic[R]):
    """Something the logic needs done; each runtime knows how to do it."""

    __slots__ = ()

    def run(self, runtime: SyncRuntime) -> R:
        raise NotImplementedError

    async def arun(self, runtime: AsyncRuntime) -> R:
        raise NotImplementedError


def drive(logic: Logic[R], runtime: SyncRuntime) -> R:
    """Run ``logic`` to completion with blocking I/O."""
    value: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = logic.send(value) if error is None else logic.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value, error = effect.run(runtime), None
            except Exception as exc:
                value, error = None, exc
    finally:
        logic.close()


async def adrive(logic: Logic[R], runtime: AsyncRuntime) -> R:
    """Run ``logic`` to completion with asyncio I/O."""
    value: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                effect = logic.send(value) if error is None else logic.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value, error = await effect.arun(runtime), None
            except Exception as exc:
                value, error = None, exc
    finally:
        logic.close()


class Call(Effect[Any]):
    """Call user code (a loader, a writer): awaited when it returns an awaitable."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def run(self, runtime: SyncRuntime) -> Any:
        result = self.fn(*self.args)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # no "never awaited" warning on top of the error
            raise TypeError(
                f"{_name(self.fn)} returned an awaitable; the sync cache needs a plain "
                "function (use the async Cache for async loaders and writers)"
            )
        return result

    async def arun(self, runtime: AsyncRuntime) -> Any:
        result = self.fn(*self.args)
        if inspect.isawaitable(result):
            return await result
        return result


class Sleep(Effect[None]):
    """Wait on the cache's clock."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self, runtime: SyncRuntime) -> None:
        runtime.clock.sleep(self.seconds)

    async def arun(self, runtime: AsyncRuntime) -> None:
        await runtime.clock.sleep_async(self.seconds)


class Flight(Effect[R]):
    """Run ``make()`` once per ``key`` however many callers ask at the same time.

    The first caller runs it; the others wait for its outcome (value or
    exception). The key is forgotten as soon as the work ends, however it ends.
    """

    __slots__ = ("key", "make")

    def __init__(self, key: str, make: Callable[[], Logic[R]]) -> None:
        self.key = key
        self.make = make

    def run(self, runtime: SyncRuntime) -> R:
        return runtime.flights.run(self.key, lambda: drive(self.make(), runtime))

    async def arun(self, runtime: AsyncRuntime) -> R:
        return await runtime.flight(self.key, self.make)


class Spawn(Effect[None]):
    """Start ``make()`` in the background (refresh-ahead); failures are logged by the logic."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Logic[Any]]) -> None:
        self.make = make

    def run(self, runtime: SyncRuntime) -> None:
        runtime.spawn(self.make)

    async def arun(self, runtime: AsyncRuntime) -> None:
        runtime.spawn(self.make)


class Gather(Effect[list[Any]]):
    """Run several pieces of logic, at most ``limit`` at a time; their results in order."""

    __slots__ = ("limit", "makers")

    def __init__(self, makers: Sequence[Callable[[], Logic[Any]]], limit: int) -> None:
        self.makers = makers
        self.limit = limit

    def run(self, runtime: SyncRuntime) -> list[Any]:
        if self.limit <= 1 or len(self.makers) <= 1:
            return [drive(make(), runtime) for make in self.makers]
        with ThreadPoolExecutor(self.limit, thread_name_prefix="buttress-cache-warm") as pool:
            futures = [pool.submit(_drive_made, make, runtime) for make in self.makers]
            return [future.result() for future in futures]

    async def arun(self, runtime: AsyncRuntime) -> list[Any]:
        gate = asyncio.Semaphore(self.limit)

        async def one(make: Callable[[], Logic[Any]]) -> Any:
            async with gate:
                return await adrive(make(), runtime)

        return list(await asyncio.gather(*(one(make) for make in self.makers)))


class _SyncFlight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SyncFlights:
    """Single-flight for threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _SyncFlight] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._flights)

    def run(self, key: str, work: Callable[[], R]) -> R:
        while True:
            with self._lock:
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _SyncFlight()
                else:
                    self.coalesced += 1
            if leader:
                try:
                    flight.value = work()
                except BaseException as exc:
                    flight.error = exc
                    raise
                finally:
                    with self._lock:
                        del self._flights[key]
                    flight.done.set()
                return flight.value  # type: ignore[no-any-return]
            flight.done.wait()
            if flight.error is None:
                return flight.value  # type: ignore[no-any-return]
            if isinstance(flight.error, Exception):
                raise flight.error
            # The leader was interrupted (KeyboardInterrupt, SystemExit): that is
            # the leader's own business, so a follower tries again itself.


class SyncRuntime:
    """Blocking I/O: threads for background work, events for single-flight."""

    def __init__(self, clock: Clock, on_background_error: Callable[[BaseException], None]) -> None:
        self.clock = clock
        self.flights = SyncFlights()
        self._on_background_error = on_background_error
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def spawn(self, make: Callable[[], Logic[Any]]) -> None:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="buttress-cache")
            pool = self._pool
        future = pool.submit(drive, make(), self)
        future.add_done_callback(self._report)

    def _report(self, future: Any) -> None:
        error = future.exception()
        if error is not None:
            self._on_background_error(error)

    def shutdown(self) -> None:
        """Wait for background work, then stop its threads."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class AsyncRuntime:
    """asyncio I/O: tasks for background work and for single-flight."""

    def __init__(self, clock: Clock, on_background_error: Callable[[BaseException], None]) -> None:
        self.clock = clock
        self._on_background_error = on_background_error
        # Keyed by loop too: a task belongs to the loop that made it.
        self._flights: dict[tuple[asyncio.AbstractEventLoop, str], _AsyncFlight] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.coalesced = 0

    def flights_in_progress(self) -> int:
        return len(self._flights)

    async def flight(self, key: str, make: Callable[[], Logic[R]]) -> R:
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        while True:
            flight = self._flights.get(slot)
            if flight is None or flight.abandoned:
                task = loop.create_task(adrive(make(), self))
                flight = self._flights[slot] = _AsyncFlight(task)
                task.add_done_callback(functools.partial(self._forget, slot, flight))
            else:
                self.coalesced += 1
            flight.waiters += 1
            try:
                # Shielded: one caller giving up must not cancel the load the
                # others wait for; it is cancelled when the last of them gives up.
                return await asyncio.shield(flight.task)
            except asyncio.CancelledError:
                flight.waiters -= 1
                current = asyncio.current_task()
                if (current is not None and current.cancelling()) or not flight.abandoned:
                    if flight.waiters == 0 and not flight.task.done():
                        flight.abandoned = True
                        flight.task.cancel()
                    raise
                # This caller joined a load its earlier callers had given up
                # on: it was cancelled under us, so run a fresh one.

    def _forget(
        self,
        slot: tuple[asyncio.AbstractEventLoop, str],
        flight: _AsyncFlight,
        task: asyncio.Task[Any],
    ) -> None:
        if self._flights.get(slot) is flight:
            del self._flights[slot]

    def spawn(self, make: Callable[[], Logic[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(adrive(make(), self))
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._on_background_error(task.exception())  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Wait for background work of the running loop to finish."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._background if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class _AsyncFlight:
    __slots__ = ("abandoned", "task", "waiters")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.waiters = 0
        self.abandoned = False  # every caller gave up: the task is being cancelled


def _drive_made(make: Callable[[], Logic[R]], runtime: SyncRuntime) -> R:
    return drive(make(), runtime)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)

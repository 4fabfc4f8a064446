"""Time, injected.

Everything in buttress that waits or measures time takes a ``clock=``. In
production that is the :data:`SYSTEM_CLOCK`; in tests it is a
:class:`ManualClock`, where time moves only when the test says so::

    >>> clock = ManualClock()
    >>> breaker = CircuitBreaker("payments", recovery_timeout=30, clock=clock)
    >>> clock.advance(30)   # the breaker now lets a probe through

Sleepers, sync and async, wake when the clock passes their deadline, so a test
proves timing logic exactly and never sleeps for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from buttress._wakeup import wake

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """The time source every primitive uses (a protocol).

    ``now()`` is monotonic seconds: only differences between two readings mean
    anything.
    """

    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def sleep_async(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds pass; False if the time ran out.

        A clock may set ``event`` itself to wake the waiter at the deadline, so
        pass an event that only this wait uses.
        """
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.sleep`, :func:`asyncio.sleep`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def sleep_async(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: SystemClock = SystemClock()
"""The process-wide real clock, the default ``clock=`` everywhere."""


@dataclass(eq=False)
class _Sleeper:
    deadline: float
    event: threading.Event | None = None
    future: asyncio.Future[None] | None = None
    woken: bool = field(default=False)

    def wake(self) -> None:
        self.woken = True
        wake(self.event, self.future)


class ManualClock:
    """A clock that moves only when a test advances it.

    Sync sleepers block and async sleepers suspend until :meth:`advance` carries
    the time past their deadline; they are woken in deadline order.

    With ``autojump=True`` a sleep advances the clock by itself and returns at
    once, which suits code that sleeps in one place at a time (a retry loop, a
    rate limiter's wait): the test then asserts how far the clock moved. It does
    not suit concurrent sleepers, such as a timeout racing the call it limits:
    whichever sleeps first jumps time past the other. Drive those with
    :meth:`advance` / :meth:`advance_async`. :meth:`wait` never jumps.

    >>> clock = ManualClock()
    >>> clock.advance(1.5)
    >>> clock.now()
    1.5
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = False) -> None:
        self._now = float(start)
        self._autojump = autojump
        self._sleepers: list[tuple[float, int, _Sleeper]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._sleeper_added = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r}, sleepers={self.sleepers})"

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        """How many sync and async sleepers are waiting on this clock."""
        with self._lock:
            return sum(1 for _, _, s in self._sleepers if not s.woken)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline passed."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            due = self._pop_due()
        for sleeper in due:
            sleeper.wake()

    async def advance_async(self, seconds: float, *, yields: int = 10) -> None:
        """Advance time step by step to each deadline, letting woken tasks run in between.

        A task woken at one deadline may start another sleep that ends before the
        target; stepping wakes it too, as real time would.
        """
        if seconds < 0:
            raise ValueError(f"ManualClock.advance_async: seconds must be >= 0, got {seconds!r}")
        target = self._now + seconds
        while True:
            # Let ready tasks run first: they may be about to start a sleep.
            for _ in range(yields):
                await asyncio.sleep(0)
            with self._lock:
                pending = [d for d, _, s in self._sleepers if not s.woken and d <= target]
                self._now = max(self._now, min(pending) if pending else target)
                due = self._pop_due()
            for sleeper in due:
                sleeper.wake()
            if not pending:
                for _ in range(yields):
                    await asyncio.sleep(0)
                return

    def _pop_due(self) -> list[_Sleeper]:
        due: list[_Sleeper] = []
        while self._sleepers and self._sleepers[0][0] <= self._now:
            due.append(heapq.heappop(self._sleepers)[2])
        return due

    def _register(
        self,
        seconds: float,
        *,
        event: threading.Event | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> _Sleeper:
        # The deadline is read and the sleeper filed in one step, so an advance
        # that lands in between cannot leave a sleeper whose time has come asleep.
        with self._lock:
            sleeper = _Sleeper(self._now + seconds, event=event, future=future)
            due = sleeper.deadline <= self._now
            if not due:
                heapq.heappush(self._sleepers, (sleeper.deadline, next(self._sequence), sleeper))
                self._sleeper_added.notify_all()
        if due:
            sleeper.wake()
        return sleeper

    def _unregister(self, sleeper: _Sleeper) -> None:
        with self._lock:
            if not sleeper.woken:
                sleeper.woken = True
                self._sleepers = [entry for entry in self._sleepers if entry[2] is not sleeper]
                heapq.heapify(self._sleepers)

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._autojump:
            self.advance(seconds)
            return
        event = threading.Event()
        self._register(seconds, event=event)
        event.wait()

    async def sleep_async(self, seconds: float) -> None:
        if seconds <= 0 or self._autojump:
            if seconds > 0:
                self.advance(seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sleeper = self._register(seconds, future=future)
        try:
            await future
        finally:
            self._unregister(sleeper)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        # Never autojumps: the event is set by another thread doing real work,
        # and jumping to the timeout would declare that work late before it ran.
        if event.is_set():
            return True
        if timeout is None:
            event.wait()
            return True
        if timeout <= 0:
            return False
        sleeper = self._register(timeout, event=event)
        event.wait()
        timed_out = sleeper.woken
        self._unregister(sleeper)
        return not timed_out

    def wait_for_sleepers(self, count: int = 1, *, timeout: float = 5.0) -> None:
        """Block until at least ``count`` sleepers wait on this clock.

        Threaded tests call this before :meth:`advance`, so that the thread under
        test is known to be asleep. ``timeout`` is real seconds, a guard against a
        hung test, not part of any timing being proved.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for _, _, s in self._sleepers if not s.woken) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"ManualClock: fewer than {count} sleepers after {timeout}s")
                self._sleeper_added.wait(remaining)

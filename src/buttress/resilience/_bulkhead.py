"""Cap how many calls run at once, so one slow dependency cannot take every worker.

One bulkhead serves threads and asyncio tasks alike. The admission logic is one
set of methods under one lock; a thread waits on an event and a task on a future,
and a released slot passes straight to the first waiter in line (FIFO), so a
newcomer never jumps the queue.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from buttress._wakeup import wake
from buttress.clock import Clock
from buttress.errors import BulkheadFullError
from buttress.resilience._common import (
    Duration,
    Observable,
    Strategy,
    check_int,
    check_seconds,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry
from buttress.resilience._timeout import Deadline

__all__ = ["Bulkhead", "BulkheadMetrics"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BulkheadMetrics:
    name: str
    max_concurrent: int
    max_queue: int
    active: int
    queued: int
    rejected: int


class _Waiter:
    __slots__ = ("event", "future", "granted")

    def __init__(
        self, event: threading.Event | None = None, future: asyncio.Future[None] | None = None
    ) -> None:
        self.event = event
        self.future = future
        self.granted = False

    def wake(self) -> None:
        wake(self.event, self.future)


class Bulkhead(Strategy, Observable):
    """Run at most ``max_concurrent`` calls at once; queue up to ``max_queue`` more.

    A queued call waits at most ``queue_timeout`` seconds (``None``: as long as it
    takes). A call that finds the queue full, or times out in it, gets
    :class:`BulkheadFullError` at once, which is the point: shed load fast rather
    than pile up.

    Events: ``rejected`` (``timed_out`` says whether it waited in the queue first).

    >>> db = Bulkhead(max_concurrent=10, max_queue=20, queue_timeout=0.5, name="db")
    >>> @db
    ... async def query(sql: str) -> list[Row]: ...
    """

    def __init__(
        self,
        max_concurrent: int = 10,
        *,
        max_queue: int = 0,
        queue_timeout: Duration | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = "Bulkhead" if name is None else f"Bulkhead({name!r})"
        self._max_concurrent = check_int(where, "max_concurrent", max_concurrent, minimum=1)
        self._max_queue = check_int(where, "max_queue", max_queue, minimum=0)
        self._queue_timeout = (
            None if queue_timeout is None else check_seconds(where, "queue_timeout", queue_timeout)
        )
        self._register(name, "bulkhead", registry)
        self._clock = resolve_clock(where, clock)
        self._lock = threading.Lock()
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(self._max_concurrent):
            self._slots.put(None)
        self._take_slot = self._slots.get_nowait
        self._return_slot = self._slots.put
        self._rejected = 0
        self._queue: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        active = self._max_concurrent - self._slots.qsize()
        return f"<Bulkhead {self._name!r} {active}/{self._max_concurrent} active>"

    def metrics(self) -> BulkheadMetrics:
        with self._lock:
            return BulkheadMetrics(
                self._name,
                self._max_concurrent,
                self._max_queue,
                self._max_concurrent - self._slots.qsize(),
                len(self._queue),
                self._rejected,
            )

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            self._take_slot()
        except queue.Empty:
            waiter = self._join_queue(lambda: _Waiter(event=threading.Event()))
            if waiter is not None:
                assert waiter.event is not None
                self._clock.wait(waiter.event, self._queue_timeout)
                self._settle(waiter, cancelled=False)
        try:
            return fn(*args, **kwargs)
        finally:
            self._release()

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            self._take_slot()
        except queue.Empty:
            loop = asyncio.get_running_loop()
            waiter = self._join_queue(lambda: _Waiter(future=loop.create_future()))
            if waiter is not None:
                assert waiter.future is not None
                try:
                    async with Deadline(self._queue_timeout, self._clock):
                        await waiter.future
                except TimeoutError:
                    self._settle(waiter, cancelled=False)
                except BaseException:
                    self._settle(waiter, cancelled=True)
                    raise
        try:
            return await fn(*args, **kwargs)
        finally:
            self._release()

    # -- admission, shared by threads and tasks ---------------------------------------
    #
    # Free slots are tokens in a SimpleQueue, whose get and put are atomic C calls:
    # the common case, a free slot, takes no lock. Only waiting takes the lock.

    def _join_queue(self, make_waiter: Callable[[], _Waiter]) -> _Waiter | None:
        """Queue up for a slot (the waiter), get one after all (None), or raise when full."""
        with self._lock:
            if len(self._queue) >= self._max_queue:
                self._rejected += 1
                full = True
            else:
                full = False
                waiter = make_waiter()
                self._queue.append(waiter)
        if full:
            raise self._full(timed_out=False)
        # A slot freed between the failed take and joining the queue went back
        # to the pool, not to this waiter: look once more.
        try:
            self._take_slot()
        except queue.Empty:
            return waiter
        with self._lock:
            handed_over = waiter.granted
            if not handed_over:
                self._queue.remove(waiter)
        if handed_over:
            self._release()  # it holds two slots now: one goes back
        return None

    def _settle(self, waiter: _Waiter, *, cancelled: bool) -> None:
        """After a wait ended: keep a slot that was handed over, or leave the queue.

        A slot handed over just as the wait timed out is kept; one handed over to
        a cancelled caller goes back, to the next waiter.
        """
        with self._lock:
            granted = waiter.granted
            if not granted:
                self._queue.remove(waiter)
                if not cancelled:
                    self._rejected += 1
        if granted and cancelled:
            self._release()
        elif not granted and not cancelled:
            raise self._full(timed_out=True)

    def _release(self) -> None:
        if self._queue:
            with self._lock:
                waiter = self._queue.popleft() if self._queue else None
                if waiter is not None:
                    waiter.granted = True  # the slot passes straight on
            if waiter is not None:
                waiter.wake()
                return
        self._return_slot(None)

    def _full(self, *, timed_out: bool) -> BulkheadFullError:
        if self._listeners:
            self._listeners.emit(self._name, "rejected", self._clock.now(), timed_out=timed_out)
        return BulkheadFullError(
            self._name,
            max_concurrent=self._max_concurrent,
            max_queue=self._max_queue,
            timed_out=timed_out,
        )

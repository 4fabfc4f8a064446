"""Give up waiting for a call that takes too long.

Async calls are cancelled through :func:`asyncio.timeout`, which is exact and
cheap. Sync calls cannot be interrupted in Python: the call runs in a worker
thread and the *caller* stops waiting at the deadline, with
:class:`~buttress.errors.OperationTimeoutError`. The worker thread runs on until
the function returns by itself, and nothing can kill it. Give the function its
own I/O timeouts too (a socket timeout, an HTTP client's timeout), and size the
worker pool for calls that hang.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.errors import OperationTimeoutError
from buttress.resilience._common import (
    Duration,
    Observable,
    Strategy,
    check_seconds,
    resolve_clock,
)
from buttress.resilience._registry import Registry, default_registry

__all__ = ["Timeout", "TimeoutMetrics", "timeout"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_WORKERS = 32

_shared_executor: ThreadPoolExecutor | None = None
_shared_lock = threading.Lock()


def _default_executor() -> ThreadPoolExecutor:
    global _shared_executor
    with _shared_lock:
        if _shared_executor is None:
            _shared_executor = ThreadPoolExecutor(
                max_workers=DEFAULT_MAX_WORKERS, thread_name_prefix="buttress-timeout"
            )
        return _shared_executor


class Deadline:
    """``async with Deadline(seconds, clock):`` cancels the body when the clock passes the deadline.

    On the system clock this is plain :func:`asyncio.timeout`; on another clock a
    watcher task sleeps on that clock and then fires the same timeout, so the
    cancellation logic is asyncio's either way.
    """

    __slots__ = ("_clock", "_deadline", "_scope", "_seconds", "_watcher")

    def __init__(self, seconds: float | None, clock: Clock) -> None:
        self._seconds = seconds
        self._clock = clock
        self._scope: asyncio.Timeout | None = None
        self._deadline = 0.0
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Deadline:
        native = self._clock is SYSTEM_CLOCK or self._seconds is None
        self._scope = asyncio.timeout(self._seconds if native else None)
        await self._scope.__aenter__()
        if not native:
            assert self._seconds is not None
            # The deadline is fixed now; the watcher may first run later.
            self._deadline = self._clock.now() + self._seconds
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        assert self._scope is not None
        await self._clock.sleep_async(self._deadline - self._clock.now())
        self._scope.reschedule(asyncio.get_running_loop().time())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if self._watcher is not None:
            self._watcher.cancel()
        assert self._scope is not None
        await self._scope.__aexit__(exc_type, exc, traceback)
        return None

    def expired(self) -> bool:
        """Whether the deadline fired (then the body saw a cancellation)."""
        return self._scope is not None and self._scope.expired()


@dataclass(frozen=True, slots=True)
class TimeoutMetrics:
    name: str
    seconds: float
    timeouts: int


class Timeout(Strategy, Observable):
    """Stop waiting for a call after ``seconds``; raise :class:`OperationTimeoutError`.

    Events: ``timeout``.

    >>> @timeout(2.0)
    ... async def fetch() -> bytes: ...        # cancelled at 2 s
    >>> @timeout(2.0)
    ... def fetch_sync() -> bytes: ...         # runs in a worker thread; caller waits 2 s

    ``OperationTimeoutError`` subclasses the builtin :class:`TimeoutError`.
    """

    def __init__(
        self,
        seconds: Duration,
        *,
        name: str | None = None,
        executor: Executor | None = None,
        clock: Clock | None = None,
        registry: Registry | None = default_registry,
    ) -> None:
        where = "Timeout" if name is None else f"Timeout({name!r})"
        self._seconds = check_seconds(where, "seconds", seconds, allow_zero=False)
        self._register(name, "timeout", registry)
        if executor is not None and not isinstance(executor, Executor):
            raise ValueError(
                f"{where}: executor must be a concurrent.futures.Executor, got {executor!r}"
            )
        self._executor = executor
        self._clock = resolve_clock(where, clock)
        self._timeouts = 0
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return self._seconds

    def __repr__(self) -> str:
        return f"<Timeout {self._name!r} {self._seconds}s>"

    def metrics(self) -> TimeoutMetrics:
        return TimeoutMetrics(self._name, self._seconds, self._timeouts)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn`` in a worker thread and wait at most ``seconds`` for it."""
        executor = self._executor or _default_executor()
        # The worker sees the caller's context variables (request ids, log context).
        future: Future[Any] = executor.submit(
            contextvars.copy_context().run,
            fn,
            *args,
            **kwargs,
        )
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        self._clock.wait(done, self._seconds)
        if future.done():
            return future.result()
        future.cancel()  # only helps if it never started
        raise self._timed_out()

    async def _run_async(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Await ``fn``, cancelling it after ``seconds``."""
        deadline = Deadline(self._seconds, self._clock)
        try:
            async with deadline:
                return await fn(*args, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():
                raise self._timed_out() from exc
            raise

    def _timed_out(self) -> OperationTimeoutError:
        with self._lock:
            self._timeouts += 1
        if self._listeners:
            self._listeners.emit(self._name, "timeout", self._clock.now(), seconds=self._seconds)
        return OperationTimeoutError(
            f"{self._name} gave up after {self._seconds:g}s", seconds=self._seconds
        )


timeout = Timeout
"""``@timeout(2.0)``: the decorator spelling of :class:`Timeout`."""

"""Write-behind: cache writes now, backing-store writes later, in batches.

Writes land in a buffer (the last write of a key wins) and reach the backing
store through the user's batch writer when the buffer holds ``batch_size``
keys or every ``interval`` seconds, and on close. A batch that fails goes back
into the buffer (behind newer writes of the same keys), is reported, and is
tried again with a growing pause; nothing is dropped silently. Only one flush
runs at a time, so an older value can never overtake a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from buttress.cache._runtime import (
    AsyncRuntime,
    Call,
    Effect,
    Flight,
    Logic,
    Sleep,
    Spawn,
    SyncRuntime,
    adrive,
    drive,
)
from buttress.clock import Clock
from buttress.errors import DependencyFailureError

__all__ = ["WriteBehind"]

log = logging.getLogger("buttress.cache")

_MAX_BACKOFF = 60.0
_FLUSH = "\0write-behind"


class WriteBehind:
    """The buffer and flusher behind ``Cache(write_behind=writer)``."""

    def __init__(
        self,
        writer: Callable[[list[tuple[str, Any]]], Any],
        *,
        batch_size: int,
        interval: float,
        clock: Clock,
    ) -> None:
        self._writer = writer
        self._batch_size = batch_size
        self._interval = interval
        self._clock = clock
        self._buffer: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._flushing = False
        self._closed = False
        self._consecutive_failures = 0
        self.failures = 0
        self.flushed = 0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        """Writes buffered and not yet acknowledged by the writer."""
        return len(self._buffer)

    def delay(self) -> float:
        """The pause before the next periodic flush; it grows while flushes fail."""
        backoff: float = self._interval * 2.0 ** min(self._consecutive_failures, 16)
        return min(backoff, _MAX_BACKOFF)

    def add(self, items: list[tuple[str, Any]]) -> Logic[None]:
        with self._lock:
            for key, value in items:
                self._buffer.pop(key, None)  # re-insert: the newest write goes last
                self._buffer[key] = value
            full = len(self._buffer) >= self._batch_size
        yield _EnsureFlusher(self)
        if full and not self._flushing:
            yield Spawn(self.flush)

    def check_open(self) -> None:
        """Refuse writes once closed: nobody would flush them."""
        if self._closed:
            raise RuntimeError(
                "this cache is closed: its write-behind buffer no longer takes writes"
            )

    def flush(self) -> Logic[bool]:
        """Write out the buffer in batches; False if a batch failed (and was kept).

        A flush already running in this runtime is joined rather than raced, so
        its outcome is this call's outcome too; then whatever arrived meanwhile
        is written.
        """
        ok = True
        for _ in range(2):
            ok = yield Flight(_FLUSH, self._flush_once)
            if not ok or not self._buffer:
                break
        return ok

    def _flush_once(self) -> Logic[bool]:
        with self._lock:
            if self._flushing:
                return False  # the other face of the cache is flushing: not confirmed
            self._flushing = True
        try:
            while True:
                with self._lock:
                    keys = list(self._buffer)[: self._batch_size]
                    if not keys:
                        return True
                    batch = [(key, self._buffer.pop(key)) for key in keys]
                try:
                    yield Call(self._writer, batch)
                except BaseException as exc:
                    # Cancelled or failed, the batch goes back: at least once.
                    self._restore(batch)
                    if not isinstance(exc, Exception):
                        raise
                    self.failures += 1
                    self._consecutive_failures += 1
                    log.error(
                        "write-behind: writing %d entries failed (%d in a row); kept for retry "
                        "in %.1fs: %r",
                        len(batch),
                        self._consecutive_failures,
                        self.delay(),
                        exc,
                    )
                    return False
                self._consecutive_failures = 0
                self.flushed += len(batch)
        finally:
            self._flushing = False

    def _restore(self, batch: list[tuple[str, Any]]) -> None:
        with self._lock:
            for key, value in batch:
                self._buffer.setdefault(key, value)  # a newer write of the key wins

    def close_logic(self, attempts: int = 3) -> Logic[None]:
        """Final flush on close: a few tries, then an error naming what is left."""
        self._closed = True
        self._wake.set()
        for attempt in range(attempts):
            if (yield from self.flush()):
                return
            if attempt + 1 < attempts:
                yield Sleep(min(self._interval, 1.0))
        raise DependencyFailureError(
            f"write-behind could not write {self.pending} cache entries to the backing store",
            dependency="write-behind writer",
            pending=self.pending,
        )

    # --- the periodic flusher, one per kind of runtime ----------------------------

    def start_thread(self, runtime: SyncRuntime) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = self._thread = threading.Thread(
                target=self._run_thread, args=(runtime,), name="buttress-write-behind", daemon=True
            )
        thread.start()

    def _run_thread(self, runtime: SyncRuntime) -> None:
        while True:
            # A fresh event per wait: a clock may set it itself at the deadline.
            wake = self._wake = threading.Event()
            if self.is_closed():
                return
            self._clock.wait(wake, self.delay())
            if self.is_closed():
                return
            drive(self.flush(), runtime)

    def is_closed(self) -> bool:
        return self._closed

    def start_task(self, runtime: AsyncRuntime) -> None:
        loop = asyncio.get_running_loop()
        task = self._tasks.get(loop)
        if (task is not None and not task.done()) or self._closed:
            return
        self._tasks[loop] = loop.create_task(self._run_task(runtime))

    async def _run_task(self, runtime: AsyncRuntime) -> None:
        while not self._closed:
            await self._clock.sleep_async(self.delay())
            await adrive(self.flush(), runtime)

    def stop_thread(self) -> None:
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    async def stop_task(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        task = self._tasks.pop(loop, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _EnsureFlusher(Effect[None]):
    __slots__ = ("write_behind",)

    def __init__(self, write_behind: WriteBehind) -> None:
        self.write_behind = write_behind

    def run(self, runtime: SyncRuntime) -> None:
        self.write_behind.start_thread(runtime)

    async def arun(self, runtime: AsyncRuntime) -> None:
        self.write_behind.start_task(runtime)

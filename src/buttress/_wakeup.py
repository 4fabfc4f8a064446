"""Wake one waiter, a thread on an event or a task on a future, from any thread."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["wake"]


def wake(event: threading.Event | None, future: asyncio.Future[None] | None) -> None:
    """Set ``event``, or resolve ``future`` on its own loop (at once if that is this thread's)."""
    if event is not None:
        event.set()
    elif future is not None:
        loop = future.get_loop()
        if _running_loop() is loop:
            _resolve(future)
        else:
            loop.call_soon_threadsafe(_resolve, future)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled waiter's future stays cancelled
        future.set_result(None)

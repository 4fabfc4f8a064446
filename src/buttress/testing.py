"""Helpers for testing code that uses buttress.

- :class:`ManualClock`: time that moves only when the test advances it;
- :func:`set_testing` / :func:`testing_mode`: retries that never wait, with a
  set or capped number of attempts;
- :func:`capture_events`: the events a strategy emits, as a list.

>>> from buttress.testing import ManualClock, testing_mode
>>> with testing_mode(attempts=1):
...     ...  # retries run once and never sleep
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from buttress.clock import ManualClock
from buttress.resilience import _retry
from buttress.resilience._common import Listener, ResilienceEvent
from buttress.resilience._retry import is_testing, set_testing

__all__ = ["ManualClock", "capture_events", "is_testing", "set_testing", "testing_mode"]


@contextmanager
def testing_mode(*, attempts: int | None = None, cap: bool = False) -> Iterator[None]:
    """Turn the testing mode on for a block, and restore what was there before."""
    before = _retry._testing
    set_testing(True, attempts=attempts, cap=cap)
    try:
        yield
    finally:
        if before is None:
            set_testing(False)
        else:
            set_testing(True, attempts=before.attempts, cap=before.cap)


testing_mode.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect it


class _Observable(Protocol):
    def add_listener(self, listener: Listener) -> None: ...
    def remove_listener(self, listener: Listener) -> None: ...


@contextmanager
def capture_events(*strategies: _Observable) -> Iterator[list[ResilienceEvent]]:
    """Collect the events of ``strategies`` while the block runs.

    >>> with capture_events(breaker) as events:
    ...     breaker.force_open()
    >>> [e.kind for e in events]
    ['state_change']
    """
    events: list[ResilienceEvent] = []
    for strategy in strategies:
        strategy.add_listener(events.append)
    try:
        yield events
    finally:
        for strategy in strategies:
            strategy.remove_listener(events.append)

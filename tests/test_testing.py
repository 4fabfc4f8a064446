"""buttress.testing: the helpers a user's own tests rely on."""

from __future__ import annotations

import pytest

from buttress import CircuitBreaker, retry
from buttress.clock import ManualClock
from buttress.testing import capture_events, is_testing, set_testing, testing_mode


def test_testing_mode_restores_what_was_there() -> None:
    """Leaving a nested testing_mode brings back the outer settings, then none."""
    with testing_mode(attempts=3):
        with testing_mode(attempts=1):
            calls = 0

            def failing() -> None:
                nonlocal calls
                calls += 1
                raise ConnectionError("x")

            with pytest.raises(ConnectionError):
                retry(attempts=5, clock=ManualClock())(failing)()
            assert 1 == calls
        assert is_testing()
        calls = 0
        with pytest.raises(ConnectionError):
            retry(attempts=5, clock=ManualClock())(failing)()
        assert 3 == calls
    assert not is_testing()


def test_set_testing_rejects_impossible_attempts() -> None:
    """attempts=0 would make every call fail without trying: refused."""
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        set_testing(True, attempts=0)


def test_capture_events_stops_listening_afterwards() -> None:
    """Events are collected only inside the block."""
    breaker = CircuitBreaker("captured", registry=None)
    with capture_events(breaker) as events:
        breaker.force_open()
    breaker.reset()
    assert ["state_change"] == [e.kind for e in events]

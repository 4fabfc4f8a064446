"""Fallback: an answer when the real one failed, from a value, a handler or a chain."""

from __future__ import annotations

import asyncio

import pytest

from buttress import CircuitBreaker, CircuitOpenError, fallback
from buttress.resilience import Fallback
from buttress.testing import capture_events


def broken() -> object:
    raise ConnectionError("db down")


def test_a_value_answers_for_the_failure() -> None:
    """A plain value is returned when the call raises."""
    assert [] == fallback([])(broken)()


def test_a_handler_receives_the_exception() -> None:
    """A callable fallback is called with the exception and its result returned."""
    assert "ConnectionError" == fallback(lambda exc: type(exc).__name__)(broken)()


def test_success_bypasses_the_fallback() -> None:
    """A call that works is returned untouched."""
    assert [1] == fallback([])(lambda: [1])()


def test_chain_is_tried_in_order_until_one_answers() -> None:
    """A raising fallback passes to the next; the first that answers wins."""
    tried: list[str] = []

    def from_cache(exc: BaseException) -> list[int]:
        tried.append("cache")
        raise KeyError("cold cache")

    def from_replica(exc: BaseException) -> list[int]:
        tried.append("replica")
        return [2]

    assert [2] == fallback(from_cache, from_replica, [])(broken)()
    assert ["cache", "replica"] == tried


def test_when_the_whole_chain_fails_the_original_comes_through_with_notes() -> None:
    """If every fallback raises, the caller sees the original error, noting each failure."""

    def cold(exc: BaseException) -> None:
        raise KeyError("cold")

    with pytest.raises(ConnectionError, match="db down") as raised:
        fallback(cold, name="orders")(broken)()
    assert [
        "buttress.fallback 'orders': fallback #1 raised KeyError('cold')"
    ] == raised.value.__notes__


def test_on_limits_what_falls_back() -> None:
    """Only the selected exceptions fall back; others propagate."""
    only_open = fallback("degraded", on=CircuitOpenError)
    with pytest.raises(ConnectionError):
        only_open(broken)()
    breaker = CircuitBreaker("fb", registry=None)
    breaker.force_open()
    assert "degraded" == only_open(breaker(broken))()


def test_cancellation_is_never_swallowed() -> None:
    """KeyboardInterrupt passes through the default filter."""

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fallback(None)(interrupted)()


async def test_async_handlers_are_awaited() -> None:
    """For async calls a fallback handler may be async too."""

    async def down() -> str:
        raise ConnectionError("x")

    async def stale(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return "stale"

    assert "stale" == await fallback(stale)(down)()
    assert "plain" == await fallback(lambda exc: "plain")(down)()


def test_metrics_and_events() -> None:
    """Fallbacks used and failed are counted; each use emits an event."""

    def cold(exc: BaseException) -> None:
        raise KeyError("cold")

    policy = Fallback(cold, [], name="m", registry=None)
    with capture_events(policy) as events:
        policy.call(broken)
    assert [("fallback", 1)] == [(e.kind, e.attributes["step"]) for e in events]
    assert (1, 0) == (policy.metrics().fallbacks, policy.metrics().failures)
    failing = Fallback(cold, registry=None)
    with pytest.raises(ConnectionError):
        failing.call(broken)
    assert (0, 1) == (failing.metrics().fallbacks, failing.metrics().failures)


def test_needs_at_least_one_fallback() -> None:
    """An empty chain is refused."""
    with pytest.raises(ValueError, match="at least one fallback"):
        Fallback()

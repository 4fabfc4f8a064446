"""Hedged calls: a slow first try is raced by another, the first success wins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from buttress import hedge
from buttress.clock import ManualClock
from buttress.resilience import Hedge
from buttress.testing import capture_events


class Replicas:
    """Each attempt takes the next (latency, outcome) from a script, timed on the clock."""

    def __init__(self, clock: ManualClock, *script: tuple[float, str]) -> None:
        self.clock = clock
        self.script = list(script)
        self.started: list[float] = []
        self.cancelled: list[int] = []

    async def __call__(self) -> str:
        attempt = len(self.started)
        self.started.append(self.clock.now())
        latency, outcome = self.script[attempt]
        try:
            await self.clock.sleep_async(latency)
        except asyncio.CancelledError:
            self.cancelled.append(attempt)
            raise
        if outcome == "fail":
            raise ConnectionError(f"attempt {attempt} failed")
        return f"{outcome} from attempt {attempt}"


async def test_fast_answer_starts_no_hedge(clock: ManualClock) -> None:
    """An answer before the delay means no extra attempt."""
    replicas = Replicas(clock, (0.01, "ok"))
    policy = hedge(delay=0.05, clock=clock)
    task = asyncio.create_task(policy.call_async(replicas))
    await clock.advance_async(0.01)
    assert "ok from attempt 0" == await task
    assert [0.0] == replicas.started
    assert (1, 0, 0) == (
        policy.metrics().calls,
        policy.metrics().hedges,
        policy.metrics().hedge_wins,
    )


async def test_slow_first_try_is_raced_and_the_winner_cancels_the_rest(clock: ManualClock) -> None:
    """After `delay` a hedge starts; when it answers first, the slow try is cancelled."""
    replicas = Replicas(clock, (10.0, "slow"), (0.02, "ok"))
    policy = hedge(delay=0.05, clock=clock, name="lookup")
    task = asyncio.create_task(policy.call_async(replicas))
    await clock.advance_async(0.1)
    assert "ok from attempt 1" == await task
    assert [0.0, 0.05] == replicas.started
    await asyncio.sleep(0)
    assert [0] == replicas.cancelled
    assert (1, 1) == (policy.metrics().hedges, policy.metrics().hedge_wins)


async def test_a_failure_starts_the_next_hedge_at_once(clock: ManualClock) -> None:
    """A failed attempt does not wait out the delay before the next one starts."""
    replicas = Replicas(clock, (0.01, "fail"), (0.01, "ok"))
    task = asyncio.create_task(hedge(delay=1.0, clock=clock).call_async(replicas))
    await clock.advance_async(0.05)
    assert "ok from attempt 1" == await task
    assert [0.0, 0.01] == replicas.started


async def test_up_to_max_hedged_extra_attempts(clock: ManualClock) -> None:
    """With max_hedged=2, attempts start at 0, delay and 2*delay, and no more."""
    replicas = Replicas(clock, (10.0, "a"), (10.0, "b"), (0.5, "c"))
    policy = hedge(delay=1.0, max_hedged=2, clock=clock)
    with capture_events(policy) as events:
        task = asyncio.create_task(policy.call_async(replicas))
        await clock.advance_async(3.0)
        assert "c from attempt 2" == await task
    assert [0.0, 1.0, 2.0] == replicas.started
    assert [2, 3] == [e.attributes["attempt"] for e in events]


async def test_when_every_attempt_fails_the_last_failure_is_raised(clock: ManualClock) -> None:
    """If all attempts fail, the caller sees the last failure."""
    replicas = Replicas(clock, (0.01, "fail"), (0.02, "fail"))
    task = asyncio.create_task(hedge(delay=1.0, clock=clock).call_async(replicas))
    await clock.advance_async(1)
    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        await task


async def test_decorates_async_functions(clock: ManualClock) -> None:
    """@hedge works on async def and keeps its name."""

    @hedge(delay=0.1, clock=clock)
    async def lookup(key: str) -> str:
        return key.upper()

    assert "K" == await lookup("k")
    assert "lookup" == lookup.__name__


def test_refuses_sync_functions() -> None:
    """A sync function cannot be hedged: its losers could not be cancelled."""
    with pytest.raises(TypeError, match="needs an async def function"):
        hedge(delay=0.1)(_sync)  # type: ignore[arg-type]  # what mypy refuses, at run time


def _sync() -> None:
    return None


@pytest.mark.parametrize(
    ("options", "message"),
    [({"delay": -1}, "delay must be >= 0 seconds"), ({"delay": 1, "max_hedged": 0}, "max_hedged")],
)
def test_invalid_configuration_names_the_parameter(options: dict[str, Any], message: str) -> None:
    """Bad options raise ValueError naming the option."""
    with pytest.raises(ValueError, match=message):
        Hedge(**options)

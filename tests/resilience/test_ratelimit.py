"""RateLimiter: GCRA per key, waiting or not, with bounded memory."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from buttress import RateLimiter, RateLimitExceeded
from buttress.clock import ManualClock


def make(clock: ManualClock, *args: Any, **options: Any) -> RateLimiter:
    options.setdefault("registry", None)
    return RateLimiter(*args, clock=clock, **options)


def test_burst_passes_then_the_rate_applies(clock: ManualClock) -> None:
    """A fresh key gets `burst` at once, then one more every per/rate seconds."""
    limiter = make(clock, 10, per=1.0, burst=3)
    assert [True, True, True, False] == [limiter.try_acquire("k") for _ in range(4)]
    clock.advance(0.099)
    assert not limiter.try_acquire("k")
    clock.advance(0.001)
    assert limiter.try_acquire("k")
    assert not limiter.try_acquire("k")


def test_keys_are_limited_separately(clock: ManualClock) -> None:
    """One key's spending leaves another's allowance alone."""
    limiter = make(clock, 1, per=60, burst=1)
    assert limiter.try_acquire("alice")
    assert not limiter.try_acquire("alice")
    assert limiter.try_acquire("bob")


def test_long_run_rate_is_exact(clock: ManualClock) -> None:
    """Over 100 s at 5 per second, 500 requests pass, plus the initial burst."""
    limiter = make(clock, 5, per=1, burst=2)
    passed = 0
    for _ in range(10_000):
        passed += limiter.try_acquire("k")
        clock.advance(0.01)
    assert 500 + 2 - 1 <= passed <= 500 + 2


def test_cost_spends_several_units(clock: ManualClock) -> None:
    """A request of cost 3 spends three units of the burst."""
    limiter = make(clock, 10, burst=4)
    assert limiter.try_acquire("k", cost=3)
    assert not limiter.try_acquire("k", cost=2)
    assert limiter.try_acquire("k", cost=1)
    with pytest.raises(ValueError, match="cost must be between 1 and burst"):
        limiter.try_acquire("k", cost=5)


def test_acquire_raises_with_retry_after_when_the_wait_is_too_long(clock: ManualClock) -> None:
    """acquire(max_wait=...) refuses a longer wait, saying how long it would be."""
    limiter = make(clock, 1, per=10, burst=1, name="api")
    limiter.acquire("k")
    with pytest.raises(RateLimitExceeded) as raised:
        limiter.acquire("k", max_wait=5)
    assert 10.0 == pytest.approx(raised.value.retry_after)
    assert "api" == raised.value.limiter
    assert 1 == limiter.metrics().rejected


def test_acquire_waits_on_the_clock_for_its_turn() -> None:
    """acquire() books the slot and sleeps until it comes."""
    clock = ManualClock(autojump=True)
    limiter = make(clock, 2, per=1, burst=1)
    limiter.acquire("k")
    limiter.acquire("k", max_wait=1)
    limiter.acquire("k", max_wait=1)
    assert 1.0 == pytest.approx(clock.now())


async def test_acquire_async_waits_on_the_clock(clock: ManualClock) -> None:
    """acquire_async() sleeps asynchronously until its booked slot."""
    limiter = make(clock, 1, per=4, burst=1)
    await limiter.acquire_async("k")
    task = asyncio.create_task(limiter.acquire_async("k", max_wait=10))
    await clock.advance_async(3.9)
    assert not task.done()
    await clock.advance_async(0.1)
    await task


def test_decorator_limits_calls(clock: ManualClock) -> None:
    """As a decorator it limits the function's calls, raising past max_wait."""
    limiter = make(clock, 1, per=1, burst=2, max_wait=0)

    @limiter
    def ping() -> str:
        return "pong"

    assert ["pong", "pong"] == [ping(), ping()]
    with pytest.raises(RateLimitExceeded):
        ping()


def test_idle_keys_are_forgotten(clock: ManualClock) -> None:
    """Keys idle for two horizons leave memory; a million keys do not stay."""
    limiter = make(clock, 10, per=1, burst=10)  # horizon: 1 s
    for n in range(100_000):
        limiter.try_acquire(f"user:{n}")
    assert 100_000 == limiter.metrics().keys
    clock.advance(2.5)
    limiter.try_acquire("fresh")
    assert 1 == limiter.metrics().keys


async def test_forgetting_keeps_booked_waits(clock: ManualClock) -> None:
    """A key whose booked waits reach past the horizon is not forgotten early."""
    limiter = make(clock, 1, per=1, burst=1)  # horizon: 1 s
    waiters = [asyncio.create_task(limiter.acquire_async("k", max_wait=10)) for _ in range(5)]
    await asyncio.sleep(0)  # each booked its turn: t = 0, 1, 2, 3, 4
    await clock.advance_async(2.5)  # two rotations pass
    assert not limiter.try_acquire("k")  # still booked until t = 5
    await clock.advance_async(2.5)
    assert limiter.try_acquire("k")
    await asyncio.gather(*waiters)


def test_reset_forgets_a_key(clock: ManualClock) -> None:
    """reset(key) gives that key a fresh allowance."""
    limiter = make(clock, 1, per=60, burst=1)
    limiter.try_acquire("k")
    limiter.reset("k")
    assert limiter.try_acquire("k")


def test_threads_never_overspend(clock: ManualClock) -> None:
    """8 threads racing for a burst of 100 get exactly 100 between them."""
    limiter = make(clock, 1, per=3600, burst=100)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [limiter.try_acquire("shared") for _ in range(1000)]
        with lock:
            granted.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 100 == sum(granted)


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        ((0,), {}, "rate must be a finite number > 0"),
        ((-5,), {}, "rate must be a finite number > 0"),
        ((float("inf"),), {}, "rate must be a finite number > 0, got inf"),
        ((10,), {"per": 0}, "per must be > 0 seconds"),
        ((10,), {"burst": 0}, "burst must be >= 1"),
        ((10,), {"max_wait": -1}, "max_wait must be >= 0 seconds"),
    ],
)
def test_invalid_configuration_names_the_parameter(
    args: tuple[Any, ...], options: dict[str, Any], message: str
) -> None:
    """Bad options raise ValueError naming the option and its range."""
    with pytest.raises(ValueError, match=message):
        RateLimiter(*args, **options)


async def test_a_cancelled_wait_gives_its_turn_back(clock: ManualClock) -> None:
    """A caller cancelled while waiting for its booked turn frees that turn."""
    limiter = make(clock, 1, per=10, burst=1)
    await limiter.acquire_async("k")
    waiting = asyncio.create_task(limiter.acquire_async("k", max_wait=60))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await clock.advance_async(10)
    assert limiter.try_acquire("k")  # the cancelled caller's turn, at t = 10


def test_memory_follows_active_keys_with_a_million_keys(clock: ManualClock) -> None:
    """A million one-off keys leave memory within two horizons."""
    limiter = make(clock, 1, per=1, burst=1)  # horizon: 1 s
    for n in range(1_000_000):
        limiter.try_acquire(str(n))
    assert 1_000_000 == limiter.metrics().keys
    clock.advance(1)
    limiter.try_acquire("a")
    clock.advance(1)
    limiter.try_acquire("b")
    assert 2 == limiter.metrics().keys


def test_decide_reports_what_is_left_and_when_it_comes_back(clock: ManualClock) -> None:
    limiter = RateLimiter(10, per=1, burst=3, clock=clock)
    first = limiter.decide("a")
    assert (first.allowed, first.limit, first.remaining) == (True, 3, 2)
    assert first.reset_after == pytest.approx(0.1)
    limiter.decide("a")
    last = limiter.decide("a")
    assert (last.allowed, last.remaining) == (True, 0)
    refused = limiter.decide("a")
    assert (refused.allowed, refused.remaining) == (False, 0)
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.reset_after == pytest.approx(0.3)
    assert limiter.metrics().rejected == 1
    clock.advance(0.1)
    assert limiter.decide("a").allowed
    # A key's verdict is its own.
    assert limiter.decide("b").remaining == 2

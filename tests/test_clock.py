"""ManualClock: time moves only when the test says so, and sleepers wake on cue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from buttress.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock


def test_both_clocks_satisfy_the_protocol() -> None:
    """The system clock and the manual clock are both Clocks."""
    assert isinstance(SYSTEM_CLOCK, Clock)
    assert isinstance(ManualClock(), Clock)
    assert isinstance(SYSTEM_CLOCK, SystemClock)


def test_manual_clock_moves_only_when_advanced() -> None:
    """now() stays put until advance() moves it, by exactly that much."""
    clock = ManualClock(start=100.0)
    assert 100.0 == clock.now()
    clock.advance(2.5)
    assert 102.5 == clock.now()


def test_advance_rejects_going_backwards() -> None:
    """Time never runs backwards; the error names the bad value."""
    with pytest.raises(ValueError, match="-1"):
        ManualClock().advance(-1)


def test_sync_sleeper_wakes_only_at_its_deadline(clock: ManualClock) -> None:
    """A thread sleeping 5 s wakes when the clock reaches 5 s, not before."""
    woke = threading.Event()

    def sleeper() -> None:
        clock.sleep(5)
        woke.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    clock.wait_for_sleepers(1)
    clock.advance(4.9)
    assert not woke.wait(0.05)
    clock.advance(0.1)
    assert woke.wait(5)
    thread.join()
    assert 0 == clock.sleepers


async def test_async_sleepers_wake_in_deadline_order(clock: ManualClock) -> None:
    """Async sleepers wake when time passes their deadlines, earliest first."""
    order: list[str] = []

    async def sleep(name: str, seconds: float) -> None:
        await clock.sleep_async(seconds)
        order.append(name)

    tasks = [asyncio.create_task(sleep("late", 3)), asyncio.create_task(sleep("early", 1))]
    await asyncio.sleep(0)
    assert 2 == clock.sleepers
    await clock.advance_async(1)
    assert ["early"] == order
    await clock.advance_async(2)
    assert ["early", "late"] == order
    await asyncio.gather(*tasks)


async def test_advance_async_steps_through_chained_sleeps(clock: ManualClock) -> None:
    """A task that sleeps again after waking is woken again within the same advance."""
    wakes: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep_async(1)
            wakes.append(clock.now())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await clock.advance_async(10)
    assert [1.0, 2.0, 3.0] == wakes
    assert 10.0 == clock.now()
    await task


async def test_cancelled_async_sleeper_leaves_the_clock(clock: ManualClock) -> None:
    """Cancelling a sleeping task removes its sleeper."""
    task = asyncio.create_task(clock.sleep_async(10))
    await asyncio.sleep(0)
    assert 1 == clock.sleepers
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 == clock.sleepers


def test_wait_returns_true_when_the_event_is_set_first(clock: ManualClock) -> None:
    """wait() returns True as soon as the event is set, before the deadline."""
    event = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(clock.wait(event, 10)))
    thread.start()
    clock.wait_for_sleepers(1)
    event.set()
    thread.join(5)
    assert [True] == result
    assert 0.0 == clock.now()


def test_wait_returns_false_when_the_deadline_passes(clock: ManualClock) -> None:
    """wait() returns False once the clock passes the timeout."""
    event = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(clock.wait(event, 2)))
    thread.start()
    clock.wait_for_sleepers(1)
    clock.advance(2)
    thread.join(5)
    assert [False] == result


def test_autojump_sleep_advances_the_clock_itself() -> None:
    """With autojump a sleep returns at once and moves time by its length."""
    clock = ManualClock(autojump=True)
    clock.sleep(1.5)
    clock.sleep(0.5)
    assert 2.0 == clock.now()


def test_autojump_never_jumps_a_wait_for_other_work() -> None:
    """wait() on an autojump clock waits for the event instead of declaring a timeout."""
    clock = ManualClock(autojump=True)
    event = threading.Event()
    timer = threading.Timer(0.01, event.set)
    timer.start()
    assert clock.wait(event, 3)
    assert 0.0 == clock.now()
    timer.join()


def test_a_sleeper_whose_deadline_already_passed_wakes_at_once(clock: ManualClock) -> None:
    """Filing a sleeper and reading the deadline are one step: a zero-length wait is due."""
    event = threading.Event()
    sleeper = clock._register(0.0, event=event)
    assert sleeper.woken
    assert event.is_set()
    assert 0 == clock.sleepers


def test_wait_for_sleepers_gives_up_with_a_clear_error(clock: ManualClock) -> None:
    """Waiting for sleepers that never come raises instead of hanging the test."""
    with pytest.raises(TimeoutError, match="fewer than 1 sleepers"):
        clock.wait_for_sleepers(1, timeout=0.01)


def test_system_clock_is_monotonic_and_sleeps() -> None:
    """The system clock never goes back, and sleep(0) returns at once."""
    first = SYSTEM_CLOCK.now()
    SYSTEM_CLOCK.sleep(0)
    assert SYSTEM_CLOCK.now() >= first
    assert SYSTEM_CLOCK.wait(threading.Event(), 0) is False

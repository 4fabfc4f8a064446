"""Bulkhead: a cap on concurrent calls, a bounded queue, and fast rejection."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from buttress import Bulkhead, BulkheadFullError
from buttress.clock import ManualClock
from buttress.resilience._bulkhead import _Waiter
from buttress.testing import capture_events


def make(**options: Any) -> Bulkhead:
    options.setdefault("registry", None)
    return Bulkhead(**options)


async def test_a_thousand_tasks_never_exceed_max_concurrent() -> None:
    """1,000 concurrent calls through a bulkhead of 10 never run more than 10 at once."""
    bulkhead = make(max_concurrent=10, max_queue=1000)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1

    await asyncio.gather(*(bulkhead.call_async(work) for _ in range(1000)))
    assert 10 == peak
    metrics = bulkhead.metrics()
    assert (0, 0, 0) == (metrics.active, metrics.queued, metrics.rejected)


async def test_full_bulkhead_without_queue_rejects_at_once() -> None:
    """With no queue, a call beyond max_concurrent gets BulkheadFullError immediately."""
    bulkhead = make(max_concurrent=2, name="db")
    gate = asyncio.Event()
    holders = [asyncio.create_task(bulkhead.call_async(gate.wait)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError) as raised:
        await bulkhead.call_async(gate.wait)
    assert "db" == raised.value.name
    assert not raised.value.timed_out
    assert (2, 0, 1) == (
        bulkhead.metrics().active,
        bulkhead.metrics().queued,
        bulkhead.metrics().rejected,
    )
    gate.set()
    await asyncio.gather(*holders)
    assert 0 == bulkhead.metrics().active


async def test_queued_calls_run_in_arrival_order() -> None:
    """Waiters get freed slots first come, first served."""
    bulkhead = make(max_concurrent=1, max_queue=5)
    order: list[int] = []
    gate = asyncio.Event()

    async def first() -> None:
        await gate.wait()

    async def record(n: int) -> None:
        order.append(n)

    holder = asyncio.create_task(bulkhead.call_async(first))
    await asyncio.sleep(0)
    waiters = []
    for n in range(5):
        waiters.append(asyncio.create_task(bulkhead.call_async(record, n)))
        await asyncio.sleep(0)
    assert 5 == bulkhead.metrics().queued
    with pytest.raises(BulkheadFullError):
        await bulkhead.call_async(record, 99)  # the queue is full too
    gate.set()
    await asyncio.gather(holder, *waiters)
    assert [0, 1, 2, 3, 4] == order


async def test_queue_timeout_rejects_a_waiter(clock: ManualClock) -> None:
    """A waiter still queued after queue_timeout gets BulkheadFullError(timed_out=True)."""
    bulkhead = make(max_concurrent=1, max_queue=1, queue_timeout=2, clock=clock)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.call_async(gate.wait))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.call_async(asyncio.sleep, 0))
    await clock.advance_async(1.9)
    assert not waiter.done()
    await clock.advance_async(0.1)
    with pytest.raises(BulkheadFullError) as raised:
        await waiter
    assert raised.value.timed_out
    assert (0, 1) == (bulkhead.metrics().queued, bulkhead.metrics().rejected)
    gate.set()
    await holder


async def test_cancelled_waiter_leaves_no_slot_behind() -> None:
    """A waiter cancelled in the queue frees its place, and the slot count stays right."""
    bulkhead = make(max_concurrent=1, max_queue=2)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.call_async(gate.wait))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(bulkhead.call_async(asyncio.sleep, 0))
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert 0 == bulkhead.metrics().queued
    gate.set()
    await holder
    assert "ran" == await bulkhead.call_async(_answer)
    assert 0 == bulkhead.metrics().active


async def _answer() -> str:
    return "ran"


def test_threads_never_exceed_max_concurrent() -> None:
    """16 threads through a bulkhead of 3 with a long queue: at most 3 run at once."""
    bulkhead = make(max_concurrent=3, max_queue=100)
    lock = threading.Lock()
    running = peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        for _ in range(2000):
            pass
        with lock:
            running -= 1

    threads = [
        threading.Thread(target=lambda: [bulkhead.call(work) for _ in range(50)]) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak <= 3
    assert (0, 0, 0) == (
        bulkhead.metrics().active,
        bulkhead.metrics().queued,
        bulkhead.metrics().rejected,
    )


def test_thread_waiter_gets_the_released_slot(clock: ManualClock) -> None:
    """A queued thread proceeds as soon as the running call releases its slot."""
    bulkhead = make(max_concurrent=1, max_queue=1, queue_timeout=10, clock=clock)
    release = threading.Event()
    results: list[str] = []
    holder = threading.Thread(target=lambda: bulkhead.call(release.wait, 10))
    holder.start()
    while bulkhead.metrics().active < 1:
        pass
    waiter = threading.Thread(target=lambda: results.append(bulkhead.call(str, "second")))
    waiter.start()
    clock.wait_for_sleepers(1)
    assert 1 == bulkhead.metrics().queued
    release.set()
    waiter.join(5)
    holder.join(5)
    assert ["second"] == results
    assert 0.0 == clock.now()  # no time had to pass


def test_thread_waiter_times_out_on_the_clock(clock: ManualClock) -> None:
    """A queued thread gives up when the clock passes queue_timeout."""
    bulkhead = make(max_concurrent=1, max_queue=1, queue_timeout=5, clock=clock)
    release = threading.Event()
    holder = threading.Thread(target=lambda: bulkhead.call(release.wait, 10))
    holder.start()
    while bulkhead.metrics().active < 1:
        pass
    errors: list[BulkheadFullError] = []

    def wait_in_line() -> None:
        try:
            bulkhead.call(str)
        except BulkheadFullError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    clock.wait_for_sleepers(1)
    clock.advance(5)
    waiter.join(5)
    release.set()
    holder.join(5)
    assert [True] == [e.timed_out for e in errors]
    assert 0 == bulkhead.metrics().active


def test_slot_is_released_when_the_call_raises() -> None:
    """A failing call gives its slot back."""
    bulkhead = make(max_concurrent=1)
    with pytest.raises(ZeroDivisionError):
        bulkhead.call(lambda: 1 / 0)
    assert 7 == bulkhead.call(lambda: 7)


def test_rejections_emit_events() -> None:
    """Each rejection emits a 'rejected' event."""
    bulkhead = make(max_concurrent=1, name="b")
    inner_rejected: list[BaseException] = []

    def nested() -> None:
        try:
            bulkhead.call(str)
        except BulkheadFullError as exc:
            inner_rejected.append(exc)

    with capture_events(bulkhead) as events:
        bulkhead.call(nested)
    assert 1 == len(inner_rejected)
    assert [("rejected", False)] == [(e.kind, e.attributes["timed_out"]) for e in events]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be >= 1, got 0"),
        ({"max_queue": -1}, "max_queue must be >= 0"),
        ({"queue_timeout": -2}, "queue_timeout must be >= 0 seconds"),
    ],
)
def test_invalid_configuration_names_the_parameter(options: dict[str, Any], message: str) -> None:
    """Bad options raise ValueError naming the option and its range."""
    with pytest.raises(ValueError, match=message):
        Bulkhead(**options)


async def test_a_slot_handed_to_a_cancelled_waiter_goes_back() -> None:
    """A waiter cancelled just after a slot was handed to it returns the slot."""
    bulkhead = make(max_concurrent=1, max_queue=1)
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    waiter: asyncio.Task[None] | None = None

    async def holder() -> None:
        await gate.wait()
        assert waiter is not None
        # Runs right after this call returns and its slot is handed to the waiter,
        # before the waiter wakes up.
        loop.call_soon(waiter.cancel)

    first = asyncio.create_task(bulkhead.call_async(holder))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(bulkhead.call_async(asyncio.sleep, 0))
    await asyncio.sleep(0)
    assert 1 == bulkhead.metrics().queued
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (0, 0) == (bulkhead.metrics().active, bulkhead.metrics().queued)
    assert "ran" == await bulkhead.call_async(_answer)


def test_a_slot_freed_while_joining_the_queue_is_not_lost() -> None:
    """If the last slot comes back between a failed take and joining the queue, the
    newcomer takes it instead of waiting for a release that already happened."""
    bulkhead = make(max_concurrent=1, max_queue=1)
    bulkhead._take_slot()  # the slot is busy: a newcomer's take fails...
    bulkhead._release()  # ...and then it is released before the newcomer queues
    waiter = bulkhead._join_queue(lambda: _Waiter(event=threading.Event()))
    assert waiter is None  # it got the slot rather than a place in the queue
    assert (1, 0) == (bulkhead.metrics().active, bulkhead.metrics().queued)

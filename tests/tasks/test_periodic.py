"""Periodic tasks: each tick enqueued once, however many schedulers run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from buttress.clock import ManualClock
from buttress.tasks import TaskStatus
from buttress.tasks._queue import Queue
from buttress.tasks._schedule import Schedule, Scheduler
from buttress.tasks._worker import Worker


@pytest.fixture
def queue(backend_url: str) -> Iterator[Queue]:
    made = Queue.from_url(backend_url, clock=ManualClock(start=1_000))
    yield made
    made.close()


def test_schedules_find_their_latest_and_next_ticks() -> None:
    every = Schedule(every=60)
    assert 960.0 == every.latest(1_000)
    assert 1_020.0 == every.after(960)
    cron = Schedule(cron="*/15 * * * *")
    assert 900.0 == cron.latest(1_000)  # 00:15 on 1970-01-01 UTC
    assert 1_800.0 == cron.after(900)
    assert 900.0 == cron.latest(900)  # a tick is its own latest


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "every= or cron="),
        ({"every": 1, "cron": "* * * * *"}, "every= or cron="),
        ({"every": 0}, "positive number"),
        ({"cron": "not cron"}, "not a valid cron expression"),
    ],
)
def test_bad_schedules_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(**options)  # type: ignore[arg-type]


async def test_each_tick_is_enqueued_once_however_many_schedulers_run(queue: Queue) -> None:
    clock = queue.clock
    assert isinstance(clock, ManualClock)

    @queue.periodic(every=60)
    async def report() -> None:
        return None

    schedulers = [Scheduler(queue) for _ in range(3)]
    clock.advance(20)  # 1_020: the tick at 1_020 is due
    stored = [task for s in schedulers for task in await s.run_due()]
    assert 1 == len(stored)
    assert [] == [task for s in schedulers for task in await s.run_due()]  # nothing new
    clock.advance(60)
    stored = [task for s in schedulers for task in await s.run_due()]
    assert 1 == len(stored)
    assert 2 == len((await queue.list(name="report")).tasks)


async def test_a_worker_runs_periodic_ticks(queue: Queue) -> None:
    runs: list[float] = []
    clock = queue.clock
    assert isinstance(clock, ManualClock)

    @queue.periodic(every=60)
    async def heartbeat() -> None:
        runs.append(clock.now())

    clock.advance(20)  # a tick (1_020) is due as the worker starts
    await Worker(queue).run(until_empty=True)
    assert [1_020.0] == runs
    page = await queue.list(name="heartbeat")
    assert [TaskStatus.SUCCEEDED] == [task.status for task in page.tasks]

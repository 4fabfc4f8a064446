"""The worker at its edges: results that can't be stored, shutdown with zero grace,
leases kept during the grace period, thread timeouts, decorated process tasks, a
busy store during claims and ticks, and aging of tasks that aren't runnable yet."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress.clock import ManualClock
from buttress.tasks import Priority, TaskStatus
from buttress.tasks._backend import NewTask
from buttress.tasks._queue import Queue
from buttress.tasks._sqlite import SqliteBackend
from buttress.tasks._worker import Worker


@pytest.fixture
def real_queue(tmp_path: Path) -> Iterator[Queue]:
    """A queue on the system clock (shutdown grace and thread timeouts use real time)."""
    made = Queue.from_url(f"sqlite:///{tmp_path}/review.db", lease=0.5)
    yield made
    made.close()


async def _until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- a result that can't be stored is recorded as the task's failure ---------------------


async def test_unencodable_result_is_recorded_not_left_running(tmp_path: Path) -> None:
    queue = Queue.from_url(f"sqlite:///{tmp_path}/q.db", clock=ManualClock())
    try:

        @queue.task
        async def make_object() -> object:
            return object()  # msgpack can't encode it

        task = await make_object.enqueue()
        await asyncio.wait_for(Worker(queue).run(until_empty=True), 10)
        after = await queue.get(task.id)
        # The worker returned "empty", yet the task is still RUNNING under a lease
        # nobody renews: it will be reaped and run again, with no error recorded.
        assert after.status is TaskStatus.DEAD, after.status
        assert after.error is not None
        assert after.error.type == "TypeError"
    finally:
        queue.close()


# --- grace=0 gives running tasks back at once --------------------------------------------


async def test_grace_zero_requeues_at_once_instead_of_hanging(real_queue: Queue) -> None:
    @real_queue.task
    async def forever() -> None:
        await asyncio.sleep(3600)

    task = await forever.enqueue()
    worker = Worker(real_queue, grace=0, poll_interval=0.01)
    run = asyncio.create_task(worker.run())

    async def running() -> bool:
        return (await real_queue.get(task.id)).status is TaskStatus.RUNNING

    await _until(running)
    worker.stop()
    try:
        # `timeout=self.grace or None` turns grace 0 into "wait forever".
        await asyncio.wait_for(asyncio.shield(run), 3)
    except TimeoutError:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        pytest.fail("Worker(grace=0).stop(): shutdown never returned")
    assert (await real_queue.get(task.id)).status is TaskStatus.QUEUED


# --- leases are renewed through the shutdown grace period --------------------------------


async def test_leases_are_renewed_while_shutdown_waits_for_running_tasks(
    real_queue: Queue,
) -> None:
    @real_queue.task
    async def slow() -> str:
        await asyncio.sleep(1.5)
        return "done"

    task = await slow.enqueue()
    worker = Worker(real_queue, grace=5, heartbeat=0.1, poll_interval=0.01)
    run = asyncio.create_task(worker.run())

    async def running() -> bool:
        return (await real_queue.get(task.id)).status is TaskStatus.RUNNING

    await _until(running)
    worker.stop()
    await asyncio.sleep(1.0)  # twice the lease (0.5 s), well inside the 5 s grace
    # Another worker's reaper runs now: the task is alive on a live worker.
    reaped = real_queue.backend.reap(real_queue.now())
    await asyncio.wait_for(run, 10)
    assert [] == reaped, "a task still running in shutdown grace lost its lease"
    assert (await real_queue.get(task.id)).status is TaskStatus.SUCCEEDED


# --- a thread task's timeout starts when it runs -----------------------------------------


async def test_a_timed_out_thread_does_not_time_out_the_next_thread_task(
    real_queue: Queue,
) -> None:
    ran: list[str] = []

    @real_queue.task(timeout=0.2, priority="high")
    def stuck() -> None:
        time.sleep(1.5)

    @real_queue.task(timeout=0.5)
    def quick() -> str:
        ran.append("quick")
        return "ok"

    await stuck.enqueue()
    second = await quick.enqueue()
    await asyncio.wait_for(Worker(real_queue, concurrency=1).run(until_empty=True), 10)
    after = await real_queue.get(second.id)
    # quick() needs microseconds, but waited in the 1-thread pool behind the
    # abandoned stuck() thread, and its timeout counted the wait: dead, never run.
    assert after.status is TaskStatus.SUCCEEDED, (after.status, after.error, ran)


# --- @queue.task(executor="process") works as a decorator --------------------------------


def cube(x: int) -> int:
    return x * x * x


async def test_decorated_process_task_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = Queue.from_url(f"sqlite:///{tmp_path}/q.db")
    try:
        definition = queue.task(executor="process")(cube)
        # What `@queue.task(executor="process")` at module level does: the module's
        # name now refers to the TaskDefinition, so pickling the bare function fails.
        monkeypatch.setattr(sys.modules[__name__], "cube", definition)
        task = await definition.enqueue(3)
        await asyncio.wait_for(Worker(queue).run(until_empty=True), 30)
        after = await queue.get(task.id)
        assert after.status is TaskStatus.SUCCEEDED, after.error
        assert 27 == queue.serializer.loads(after.output or b"")
    finally:
        queue.close()


# --- a busy store while claiming doesn't stop the worker ---------------------------------


async def test_a_locked_database_during_claim_does_not_crash_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = Queue.from_url(f"sqlite:///{tmp_path}/q.db", clock=ManualClock())
    try:

        @queue.task
        async def noop() -> None:
            return None

        task = await noop.enqueue()
        backend = queue.backend
        real_claim = backend.claim
        calls = {"n": 0}

        def flaky_claim(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:  # another process held the write lock past busy_timeout
                raise sqlite3.OperationalError("database is locked")
            return real_claim(**kwargs)

        monkeypatch.setattr(backend, "claim", flaky_claim)
        await asyncio.wait_for(Worker(queue).run(until_empty=True), 10)
        assert (await queue.get(task.id)).status is TaskStatus.SUCCEEDED
    finally:
        queue.close()


# --- a busy store while enqueueing a tick doesn't stop the schedule ----------------------


async def test_the_scheduler_survives_a_failed_tick_enqueue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(start=1_000)
    queue = Queue.from_url(f"sqlite:///{tmp_path}/q.db", clock=clock)
    try:

        @queue.periodic(every=60)
        async def tick() -> None:
            return None

        backend = queue.backend
        real_enqueue = backend.enqueue
        calls = {"n": 0}

        def flaky_enqueue(tasks: Any, now: float) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise sqlite3.OperationalError("database is locked")
            return real_enqueue(tasks, now)

        monkeypatch.setattr(backend, "enqueue", flaky_enqueue)
        worker = Worker(queue, poll_interval=0.01)
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.1)
        clock.advance(80)  # 1_080: storing the 1_080 tick fails once
        await asyncio.sleep(0.2)
        clock.advance(60)  # 1_140: the 1_140 tick must still be enqueued
        await asyncio.sleep(0.3)
        worker.stop()
        await asyncio.wait_for(run, 10)
        page = await queue.list(name="tick")
        assert len(page.tasks) >= 1, "the scheduler stopped after one failed enqueue"
    finally:
        queue.close()


# --- aging moves only tasks that are runnable --------------------------------------------


def test_aging_does_not_promote_a_task_still_waiting_for_its_delay(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "q.db")
    try:

        def new(task_id: str, priority: Priority, eta: float) -> NewTask:
            return NewTask(
                id=task_id,
                name="t",
                payload=b"\x92\x90\x80",
                payload_format="msgpack",
                priority=priority,
                max_retries=0,
                timeout=None,
                eta=eta,
            )

        backend.enqueue([new("01BULKDELAYED0000000000000", Priority.BULK, 300.0)], now=0.0)
        for now in range(10, 301, 10):  # a worker ages every beat; aging=10 s
            backend.age(float(now), 10.0)
        backend.enqueue([new("02NORMALNOW000000000000000", Priority.NORMAL, 300.0)], now=300.0)
        (first,) = backend.claim(worker="w", names=None, now=300.0, lease=30, limit=1)
        # The BULK task only became runnable at 300 and has not waited at all,
        # yet it was aged to CRITICAL during its delay and jumps the NORMAL one.
        assert first.task.id == "02NORMALNOW000000000000000", first.task.priority
    finally:
        backend.close()

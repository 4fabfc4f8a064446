"""The worker against the SQLite backend: run, retry, dead-letter, time out, shut down."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from buttress.clock import ManualClock
from buttress.errors import OperationTimeoutError
from buttress.tasks import Priority, TaskStatus
from buttress.tasks._model import TaskFailedError
from buttress.tasks._queue import Backoff, Queue
from buttress.tasks._worker import Worker, current_task


def result_of(queue: Queue, raw: object) -> object:
    assert isinstance(raw, bytes)
    return queue.serializer.loads(raw)


async def test_async_and_thread_tasks_run_and_succeed(queue: Queue) -> None:
    @queue.task
    async def double(x: int) -> int:
        return 2 * x

    @queue.task
    def greet(name: str, *, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    first = await double.enqueue(21)
    second = await greet.enqueue("ada", punctuation="?")
    await Worker(queue, concurrency=2).run(until_empty=True)
    done_first, done_second = await queue.get(first.id), await queue.get(second.id)
    assert TaskStatus.SUCCEEDED == done_first.status
    assert 42 == result_of(queue, done_first.output)
    assert "hello ada?" == result_of(queue, done_second.output)
    assert 1 == done_first.attempts


async def test_strict_priority_order_with_one_slot(queue: Queue) -> None:
    order: list[str] = []

    @queue.task
    async def record(label: str) -> None:
        order.append(label)

    await queue.enqueue(record, "bulk", priority=Priority.BULK)
    await queue.enqueue(record, "normal-1")
    await queue.enqueue(record, "critical", priority="critical")
    await queue.enqueue(record, "normal-2")
    await Worker(queue, concurrency=1).run(until_empty=True)
    assert ["critical", "normal-1", "normal-2", "bulk"] == order


async def test_a_failure_is_retried_after_its_backoff_then_dead_lettered(
    queue: Queue, clock: ManualClock
) -> None:
    attempts = 0

    @queue.task(retries=1, backoff=Backoff(base=10))
    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError(f"upstream down ({attempts})")

    task = await flaky.enqueue()
    await Worker(queue).run(until_empty=True)
    waiting = await queue.get(task.id)
    assert (TaskStatus.FAILED, 1) == (waiting.status, waiting.attempts)
    assert clock.now() + 10 == waiting.eta
    await Worker(queue).run(until_empty=True)  # not due yet: nothing runs
    assert 1 == attempts
    clock.advance(10)
    await Worker(queue).run(until_empty=True)
    dead = await queue.get(task.id)
    assert TaskStatus.DEAD == dead.status
    assert dead.error is not None
    assert ("ConnectionError", "upstream down (2)") == (dead.error.type, dead.error.message)
    assert "Traceback" in dead.error.traceback
    assert [task.id] == [t.id for t in (await queue.dead_letters()).tasks]


async def test_an_unknown_task_and_a_corrupt_payload_are_dead_lettered_not_fatal(
    queue: Queue,
) -> None:
    @queue.task
    async def fine() -> str:
        return "ok"

    unknown = await queue.enqueue("nobody_registered_this")
    broken = dataclasses.replace(queue.prepare("fine"), payload=b"\xc1")
    await queue.enqueue_many([broken])
    good = await fine.enqueue()
    await Worker(queue).run(until_empty=True)
    unknown_done = await queue.get(unknown.id)
    assert TaskStatus.DEAD == unknown_done.status
    assert unknown_done.error is not None
    assert "no task named 'nobody_registered_this'" in unknown_done.error.message
    assert TaskStatus.DEAD == (await queue.get(broken.id)).status
    assert TaskStatus.SUCCEEDED == (await queue.get(good.id)).status


async def test_a_task_past_its_timeout_fails(queue: Queue) -> None:
    @queue.task(timeout=0.05)
    async def stuck() -> None:
        await asyncio.Event().wait()

    task = await stuck.enqueue()
    await Worker(queue).run(until_empty=True)
    done = await queue.get(task.id)
    assert TaskStatus.DEAD == done.status
    assert done.error is not None
    assert "TimeoutError" == done.error.type


async def test_current_task_gives_the_running_task_its_context(queue: Queue) -> None:
    seen: list[str] = []

    @queue.task
    async def introspect() -> None:
        seen.append(current_task().task.id)
        current_task().progress(0.5, "half way")

    task = await introspect.enqueue()
    await Worker(queue).run(until_empty=True)
    assert [task.id] == seen
    with pytest.raises(RuntimeError, match="only available inside a running task"):
        current_task()


async def test_shutdown_gives_a_running_task_back_without_counting_the_attempt(
    queue: Queue,
) -> None:
    started = asyncio.Event()

    @queue.task
    async def long_job() -> None:
        started.set()
        await asyncio.Event().wait()

    task = await long_job.enqueue()
    worker = Worker(queue, grace=0.01)
    running = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(running, 5)
    back = await queue.get(task.id)
    assert (TaskStatus.QUEUED, 0) == (back.status, back.attempts)


async def test_task_result_waits_for_the_result_or_the_failure(queue: Queue) -> None:
    @queue.task
    async def add(a: int, b: int) -> int:
        return a + b

    @queue.task
    async def broken() -> None:
        raise ValueError("bad input")

    ok = await add.enqueue(2, 3)
    bad = await broken.enqueue()
    worker = asyncio.ensure_future(Worker(queue).run(until_empty=True))
    clock = queue.clock
    assert isinstance(clock, ManualClock)
    waiting = asyncio.ensure_future(ok.result(timeout=60))
    while not waiting.done():  # result() polls on the queue's clock
        await clock.advance_async(0.5)
        await asyncio.sleep(0.01)
    assert 5 == waiting.result()
    await worker
    with pytest.raises(TaskFailedError, match=f"task {bad.id} failed"):
        await bad.result(timeout=0)


async def test_task_result_times_out(queue: Queue) -> None:
    task = await queue.enqueue("never_runs")
    with pytest.raises(OperationTimeoutError):
        await task.result(timeout=0)


async def test_force_cancel_stops_a_running_task_at_once(queue: Queue, clock: ManualClock) -> None:
    started = asyncio.Event()

    @queue.task
    async def endless() -> None:
        started.set()
        await asyncio.Event().wait()

    task = await endless.enqueue()
    worker = Worker(queue)
    running = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    assert TaskStatus.RUNNING == (await queue.cancel(task.id, force=True)).status
    for _ in range(200):  # the worker's next beat (on the manual clock) sees the request
        await clock.advance_async(worker.heartbeat)
        if (await queue.get(task.id)).status is TaskStatus.CANCELLED:
            break
        await asyncio.sleep(0.01)
    assert TaskStatus.CANCELLED == (await queue.get(task.id)).status
    worker.stop()
    await asyncio.wait_for(running, 5)


async def test_a_graceful_cancel_is_seen_by_the_task(queue: Queue, clock: ManualClock) -> None:
    started = asyncio.Event()

    @queue.task
    async def polite() -> str:
        started.set()
        for _ in range(10_000):  # works in small steps, checking for a cancel request
            if current_task().cancelled:
                return "stopped cleanly"
            await asyncio.sleep(0.005)
        return "finished"

    task = await polite.enqueue()
    worker = Worker(queue)
    running = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await queue.cancel(task.id)
    for _ in range(200):
        await clock.advance_async(worker.heartbeat)
        if (await queue.get(task.id)).status.is_final:
            break
        await asyncio.sleep(0.01)
    # It stopped by itself within the grace period; a cancel request makes it cancelled.
    assert TaskStatus.CANCELLED == (await queue.get(task.id)).status
    worker.stop()
    await asyncio.wait_for(running, 5)


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_process_tasks_run_in_a_process_that_a_timeout_terminates(
    queue: Queue, tmp_path: Path
) -> None:
    import process_tasks

    square = queue.task(executor="process")(process_tasks.square)
    refuse = queue.task(executor="process")(process_tasks.refuse)
    hang = queue.task(executor="process", timeout=1.0)(process_tasks.record_pid_then_hang)
    pid_file = tmp_path / "pid"
    done = await square.enqueue(7)
    failed = await refuse.enqueue("not allowed")
    stuck = await hang.enqueue(str(pid_file))
    await Worker(queue, concurrency=3).run(until_empty=True)
    assert 49 == await (await queue.get(done.id)).result(timeout=0)
    error = (await queue.get(failed.id)).error
    assert error is not None
    assert ("PermissionError", "not allowed") == (error.type, error.message)
    timed_out = await queue.get(stuck.id)
    assert timed_out.error is not None
    assert "TimeoutError" == timed_out.error.type
    assert _gone(int(pid_file.read_text()))  # the work itself was stopped


async def test_the_worker_counts_events_and_logs_them_as_structured_records(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    @queue.task
    async def ok() -> None:
        return None

    @queue.task
    async def boom() -> None:
        raise KeyError("missing")

    await ok.enqueue()
    await ok.enqueue()
    failed = await queue.enqueue(boom, owner="u1")
    worker = Worker(queue)
    await worker.run(until_empty=True)
    assert (3, 2, 1) == (
        worker.events["claimed"],
        worker.events["succeeded"],
        worker.events["dead"],
    )
    dead = [r for r in caplog.records if getattr(r, "event", None) == "dead"]
    assert 1 == len(dead)
    record = dead[0]
    assert (failed.id, "boom", "u1", "KeyError") == (
        record.task_id,  # type: ignore[attr-defined]
        record.task,  # type: ignore[attr-defined]
        record.owner,  # type: ignore[attr-defined]
        record.error_type,  # type: ignore[attr-defined]
    )

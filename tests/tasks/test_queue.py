"""The queue's front: registration, validated enqueueing, reading, cancel and retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from buttress.clock import ManualClock
from buttress.errors import ConflictError, NotFoundError
from buttress.tasks import Priority, TaskStatus
from buttress.tasks._queue import Queue


def test_registration_keeps_the_defaults_and_refuses_a_second_task_of_the_same_name(
    queue: Queue,
) -> None:
    @queue.task(priority="high", retries=3, timeout=10)
    async def send_email(to: str) -> None:
        return None

    assert "send_email" == send_email.name
    assert (Priority.HIGH, 3, 10.0, "async") == (
        send_email.priority,
        send_email.retries,
        send_email.timeout,
        send_email.executor,
    )

    @queue.task
    def resize(path: str) -> str:
        return path

    assert "thread" == resize.executor
    assert "x" == resize("x")  # calling it runs it inline
    with pytest.raises(ValueError, match="already registered"):
        queue.task(name="send_email")(resize.fn)
    with pytest.raises(ValueError, match="executor must be one of"):
        queue.task(name="other", executor="gpu")(resize.fn)
    with pytest.raises(ValueError, match="needs an async def"):
        queue.task(name="other", executor="async")(resize.fn)


async def test_enqueue_stores_a_waiting_task_with_the_defaults(queue: Queue) -> None:
    @queue.task(priority=Priority.HIGH, retries=2)
    async def send_email(to: str) -> None:
        return None

    task = await send_email.enqueue("a@example.com")
    assert (TaskStatus.QUEUED, Priority.HIGH, 2, "send_email") == (
        task.status,
        task.priority,
        task.max_retries,
        task.name,
    )
    stored = await queue.get(task.id)
    assert task.id == stored.id
    assert TaskStatus.QUEUED == stored.status


async def test_enqueue_by_name_with_options(queue: Queue, clock: ManualClock) -> None:
    task = await queue.enqueue(
        "send_email", "b@example.com", priority="low", owner="u1", delay=5, tags=["mail"]
    )
    assert (TaskStatus.SCHEDULED, Priority.LOW, "u1", ("mail",)) == (
        task.status,
        task.priority,
        task.owner,
        task.tags,
    )
    assert clock.now() + 5 == task.eta


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"priority": "urgent"}, ValueError, "unknown priority 'urgent'"),
        ({"delay": -1}, ValueError, "delay must not be negative"),
        ({"delay": 1, "eta": 5.0}, ValueError, "delay= or eta="),
        ({"tags": "one"}, TypeError, "not one string"),
        ({"owner": ""}, ValueError, "owner must be a non-empty string"),
        ({"retries": -1}, ValueError, "retries must be >= 0"),
    ],
)
async def test_bad_options_are_refused_and_nothing_is_stored(
    queue: Queue, options: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await queue.enqueue("send_email", "x", **options)  # type: ignore[arg-type]
    assert () == (await queue.list()).tasks


async def test_an_argument_that_cannot_be_stored_is_named(queue: Queue) -> None:
    with pytest.raises(TypeError, match="argument 'callback' of type"):
        await queue.enqueue("notify", "x", callback=print)
    assert () == (await queue.list()).tasks


async def test_arguments_a_registered_task_cannot_take_are_refused_at_enqueue(
    queue: Queue,
) -> None:
    @queue.task
    async def greet(name: str, *, loud: bool = False) -> str:
        return name

    with pytest.raises(TypeError, match="task 'greet' cannot take these arguments"):
        await queue.enqueue("greet", "ada", "lovelace")
    with pytest.raises(TypeError, match="'shout'"):
        await queue.enqueue(greet, "ada", shout=True)
    with pytest.raises(TypeError, match="missing a required argument"):
        await queue.enqueue("greet")
    assert () == (await queue.list()).tasks
    assert "greet" == (await queue.enqueue(greet, "ada", loud=True)).name


async def test_a_task_kwarg_named_like_an_option_goes_through_kwargs(queue: Queue) -> None:
    task = await queue.enqueue("assign", kwargs={"owner": "the task's own argument"})
    assert task.owner is None


async def test_get_is_scoped_to_its_owner(queue: Queue) -> None:
    task = await queue.enqueue("work", owner="alice")
    assert "alice" == (await queue.get(task.id, owner="alice")).owner
    with pytest.raises(NotFoundError):
        await queue.get(task.id, owner="bob")
    with pytest.raises(NotFoundError):
        await queue.get("0" * 26)


async def test_list_filters_and_pages(queue: Queue) -> None:
    ids = [(await queue.enqueue("work", i, owner="alice")).id for i in range(5)]
    await queue.enqueue("work", owner="bob")
    first = await queue.list(owner="alice", limit=3)
    assert ids[::-1][:3] == [task.id for task in first.tasks]  # newest first
    assert first.cursor is not None
    rest = await queue.list(owner="alice", limit=3, cursor=first.cursor)
    assert ids[::-1][3:] == [task.id for task in rest.tasks]
    with pytest.raises(ValueError, match="unknown task status"):
        await queue.list(status="sleeping")


async def test_dedup_returns_the_live_task(queue: Queue) -> None:
    first = await queue.enqueue("report", dedup_key="daily-2026-11-22")
    again = await queue.enqueue("report", dedup_key="daily-2026-11-22")
    assert first.id == again.id
    assert 1 == len((await queue.list()).tasks)


async def test_cancel_then_retry(queue: Queue) -> None:
    task = await queue.enqueue("work")
    assert TaskStatus.CANCELLED == (await queue.cancel(task.id)).status
    assert TaskStatus.QUEUED == (await queue.retry(task.id)).status
    with pytest.raises(NotFoundError):
        await queue.cancel(task.id, owner="somebody else")


async def test_enqueue_many_stores_all_in_one_go(queue: Queue) -> None:
    prepared = [queue.prepare("work", (i,)) for i in range(3)]
    stored = await queue.enqueue_many(prepared)
    assert [task.id for task in prepared] == [task.id for task in stored]


async def test_cleanup_only_deletes_finished_tasks(queue: Queue) -> None:
    with pytest.raises(ValueError, match="only deletes finished tasks"):
        await queue.cleanup(60, statuses=["queued"])
    with pytest.raises(ValueError, match="older_than must not be negative"):
        await queue.cleanup(-1)


def test_an_unknown_url_or_payload_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported queue URL"):
        Queue.from_url("mysql://x")
    with pytest.raises(ValueError, match="pickle is never used"):
        Queue.from_url(f"sqlite:///{tmp_path}/q.db", payload="pickle")


async def test_an_owner_never_sees_counts_or_changes_another_owners_tasks(queue: Queue) -> None:
    alice = await queue.enqueue("work", owner="alice")
    await queue.enqueue("work", owner="bob")
    with pytest.raises(NotFoundError):
        await queue.get(alice.id, owner="bob")
    assert ["bob"] == [task.owner for task in (await queue.list(owner="bob")).tasks]
    assert 1 == sum((await queue.stats(owner="bob")).by_status.values())
    with pytest.raises(NotFoundError):
        await queue.cancel(alice.id, owner="bob")
    assert [] == await queue.cancel_many([alice.id], owner="bob")
    assert 0 == await queue.delete_many([alice.id], owner="bob")
    assert TaskStatus.QUEUED == (await queue.get(alice.id)).status


async def test_bulk_actions_by_ids_or_filter(queue: Queue) -> None:
    tagged = [(await queue.enqueue("work", tags=["batch-7"])).id for _ in range(3)]
    other = await queue.enqueue("work")
    cancelled = await queue.cancel_many(tag="batch-7")
    assert sorted(tagged) == sorted(task.id for task in cancelled)
    assert TaskStatus.QUEUED == (await queue.get(other.id)).status
    assert 3 == len(await queue.retry_many(tagged))
    assert 3 == len(await queue.cancel_many(tagged))
    assert 3 == await queue.delete_many(status="cancelled")
    with pytest.raises(ValueError, match="refusing to act on all"):
        await queue.cancel_many()


async def test_aging_moves_a_waiting_task_up_one_level_per_period(
    backend_url: str, clock: ManualClock
) -> None:
    queue = Queue.from_url(backend_url, clock=clock, aging=60)
    try:
        bulk = await queue.enqueue("work", priority="bulk")
        clock.advance(59)
        assert 0 == queue.backend.age(queue.now(), 60)
        clock.advance(1)
        assert 1 == queue.backend.age(queue.now(), 60)
        assert Priority.LOW == (await queue.get(bulk.id)).priority
        clock.advance(60 * 10)
        for _ in range(10):
            queue.backend.age(queue.now(), 60)
            clock.advance(60)
        assert Priority.CRITICAL == (await queue.get(bulk.id)).priority  # and no further
    finally:
        queue.close()
    with pytest.raises(ValueError, match="aging must be > 0"):
        Queue.from_url(backend_url, aging=0)


async def test_a_task_record_carries_its_arguments(queue: Queue) -> None:
    stored = await queue.enqueue("send_email", "a@example.com", subject="hi")
    assert (("a@example.com",), {"subject": "hi"}) == (stored.args, stored.kwargs)
    read = await queue.get(stored.id)
    assert (("a@example.com",), {"subject": "hi"}) == (read.args, read.kwargs)
    listed = (await queue.list()).tasks[0]
    assert ("a@example.com",) == listed.args


async def test_retrying_a_task_that_is_not_finished_badly_is_a_conflict(queue: Queue) -> None:
    task = await queue.enqueue("work")
    with pytest.raises(ConflictError, match="is queued: only failed, dead or cancelled"):
        await queue.retry(task.id)
    with pytest.raises(NotFoundError):
        await queue.retry("0" * 26)


def test_a_zero_lease_is_refused_not_replaced(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease must be > 0"):
        Queue.from_url(f"sqlite:///{tmp_path}/q.db", lease=0)

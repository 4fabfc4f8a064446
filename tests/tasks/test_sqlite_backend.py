"""The SQLite task backend: ordering, leases, dedup, owner isolation, cancel and
retry, cleanup, stats, concurrency across threads and processes, durability.

Times are passed explicitly (``now``), as the queue does with its clock.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buttress.errors import ConfigurationError, DataIntegrityError
from buttress.tasks import Priority, Progress, TaskError, TaskStatus, new_task_id
from buttress.tasks._backend import Backend, NewTask, TaskFilter
from buttress.tasks._sqlite import SCHEMA_VERSION, SqliteBackend

LEASE = 30.0
BOOM = TaskError("ValueError", "boom", "Traceback ...")


def new(
    name: str = "job",
    *,
    priority: Priority = Priority.NORMAL,
    eta: float = 0.0,
    max_retries: int = 0,
    **fields: Any,
) -> NewTask:
    options: dict[str, Any] = {"payload": b"\x92\x90\x80", "payload_format": "msgpack"}
    options.update(fields)
    return NewTask(
        id=options.pop("id", None) or new_task_id(),
        name=name,
        priority=priority,
        max_retries=max_retries,
        timeout=None,
        eta=eta,
        **options,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def backend(db_path: Path) -> Iterator[SqliteBackend]:
    made = SqliteBackend(db_path)
    yield made
    made.close()


def claim_one(backend: SqliteBackend, now: float, worker: str = "w1", lease: float = LEASE) -> Any:
    (claim,) = backend.claim(worker=worker, names=None, now=now, lease=lease, limit=1)
    return claim


def drain_ids(backend: SqliteBackend, now: float = 0.0) -> list[str]:
    claims = backend.claim(worker="w", names=None, now=now, lease=LEASE, limit=1000)
    return [c.task.id for c in claims]


# --- opening ---------------------------------------------------------------------------


def test_it_is_a_backend_and_the_file_is_wal_with_a_schema_version(
    backend: SqliteBackend, db_path: Path
) -> None:
    assert isinstance(backend, Backend)
    with sqlite3.connect(db_path) as conn:
        assert "wal" == conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert SCHEMA_VERSION == conn.execute("PRAGMA user_version").fetchone()[0]
    # The claim runs off the runnable index (already in claim order), not a sort of
    # every waiting task: replay the statement it sent under EXPLAIN QUERY PLAN.
    sent: list[str] = []
    with backend._session() as conn:
        conn.set_trace_callback(sent.append)
    backend.enqueue([new()], now=0.0)
    backend.claim(worker="w", names=["job"], now=0.0, lease=LEASE, limit=5)
    with backend._session() as conn:
        conn.set_trace_callback(None)
        (claim_sql,) = [sql for sql in sent if sql.startswith("UPDATE")]
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + claim_sql))
    assert "SCAN tasks USING INDEX tasks_runnable" in plan
    assert "TEMP B-TREE" not in plan


def test_reopening_keeps_the_tasks(db_path: Path) -> None:
    first = SqliteBackend(db_path)
    (task,) = first.enqueue([new()], now=0.0)
    first.close()
    second = SqliteBackend(db_path)
    try:
        assert task == second.get(task.id)
    finally:
        second.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///rel/q.db", "rel/q.db"),
        ("sqlite:////abs/q.db", "/abs/q.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_from_url_reads_the_path(
    url: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[tuple[str, float]] = []
    monkeypatch.setattr(
        SqliteBackend,
        "__init__",
        lambda self, path, *, busy_timeout: seen.append((path, busy_timeout)),
    )
    SqliteBackend.from_url(url)
    SqliteBackend.from_url(url + "?busy_timeout=2.5")
    assert [(expected, 5.0), (expected, 2.5)] == seen


@pytest.mark.parametrize(
    "url",
    ["redis://x", "sqlite://host/q.db", "sqlite:///", "sqlite:///q.db?mode=ro", "sqlite:q.db"],
)
def test_from_url_refuses_what_it_cannot_open(url: str) -> None:
    with pytest.raises(ValueError, match=r"SQLite URL|sqlite"):
        SqliteBackend.from_url(url)


def test_from_url_opens_a_real_file(tmp_path: Path) -> None:
    made = SqliteBackend.from_url(f"sqlite:///{tmp_path}/sub.db")
    try:
        assert (tmp_path / "sub.db").exists()
        assert str(tmp_path / "sub.db") == made.path
    finally:
        made.close()


def test_memory_database_is_shared_by_threads() -> None:
    made = SqliteBackend.from_url("sqlite:///:memory:")
    try:
        (task,) = made.enqueue([new()], now=0.0)
        found: list[object] = []
        thread = threading.Thread(target=lambda: found.append(made.get(task.id)))
        thread.start()
        thread.join()
        assert [task] == found
    finally:
        made.close()


def test_a_corrupt_file_gives_a_clear_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, just some text " * 200)
    with pytest.raises(DataIntegrityError, match="not a readable SQLite database"):
        SqliteBackend(db_path)


def test_a_newer_schema_version_gives_a_clear_error(db_path: Path) -> None:
    SqliteBackend(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigurationError, match="newer than this buttress understands"):
        SqliteBackend(db_path)


def test_another_applications_database_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(DataIntegrityError, match="not a buttress task queue"):
        SqliteBackend(db_path)


def test_a_missing_directory_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot open the task database"):
        SqliteBackend(tmp_path / "missing" / "q.db")


def test_an_old_sqlite_is_refused(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(ConfigurationError, match=r"SQLite >= 3\.35"):
        SqliteBackend(db_path)


def test_a_closed_backend_refuses_calls(db_path: Path) -> None:
    made = SqliteBackend(db_path)
    made.close()
    made.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        made.get("x")


# --- enqueue and claim -------------------------------------------------------------------


def test_enqueue_returns_the_stored_tasks_and_get_reads_them_back(backend: SqliteBackend) -> None:
    (task,) = backend.enqueue(
        [new("mail", owner="u1", tags=("a", "b"), metadata={"k": [1, 2]}, max_retries=3)],
        now=5.0,
    )
    assert (TaskStatus.QUEUED, 5.0, ("a", "b"), {"k": [1, 2]}, 3, 0) == (
        task.status,
        task.enqueued_at,
        task.tags,
        task.metadata,
        task.max_retries,
        task.attempts,
    )
    assert task == backend.get(task.id)
    assert task == backend.get(task.id, owner="u1")
    assert backend.get("nope") is None


def test_claim_order_is_priority_then_eta_then_enqueue_order(backend: SqliteBackend) -> None:
    low = new(priority=Priority.LOW)
    normal_late = new(eta=2.0)
    normal_a = new(eta=1.0)
    normal_b = new(eta=1.0)
    critical = new(priority=Priority.CRITICAL, eta=3.0)
    bulk = new(priority=Priority.BULK)
    backend.enqueue([low, normal_late, normal_a, normal_b, critical, bulk], now=0.0)
    expected = [critical.id, normal_a.id, normal_b.id, normal_late.id, low.id, bulk.id]
    # One big claim comes back in order, and so do claims one at a time.
    assert expected[:3] == drain_ids_limit(backend, 3)
    one_by_one = [claim_one(backend, now=10.0).task.id for _ in range(3)]
    assert expected[3:] == one_by_one


def drain_ids_limit(backend: SqliteBackend, limit: int) -> list[str]:
    claims = backend.claim(worker="w", names=None, now=10.0, lease=LEASE, limit=limit)
    return [c.task.id for c in claims]


def test_a_delayed_task_is_scheduled_and_not_claimable_before_its_eta(
    backend: SqliteBackend,
) -> None:
    (task,) = backend.enqueue([new(eta=100.0)], now=0.0)
    assert TaskStatus.SCHEDULED == task.status
    assert [] == drain_ids(backend, now=99.9)
    assert [task.id] == drain_ids(backend, now=100.0)


def test_claim_marks_running_counts_the_attempt_and_hands_over_the_payload(
    backend: SqliteBackend,
) -> None:
    (task,) = backend.enqueue([new(payload=b"args", payload_format="json")], now=0.0)
    claim = claim_one(backend, now=2.0, lease=10.0)
    assert (task.id, b"args", "json", "w1", 12.0) == (
        claim.task.id,
        claim.payload,
        claim.payload_format,
        claim.worker,
        claim.lease_until,
    )
    assert (TaskStatus.RUNNING, 1, 2.0) == (
        claim.task.status,
        claim.task.attempts,
        claim.task.started_at,
    )
    assert claim.task == backend.get(task.id)
    assert [] == drain_ids(backend, now=3.0)  # held: nobody else gets it


def test_claim_takes_only_the_named_tasks(backend: SqliteBackend) -> None:
    backend.enqueue([new("a"), new("b"), new("c")], now=0.0)
    got = backend.claim(worker="w", names=["c", "a"], now=0.0, lease=LEASE, limit=10)
    assert ["a", "c"] == [c.task.name for c in got]
    assert [] == backend.claim(worker="w", names=[], now=0.0, lease=LEASE, limit=10)
    assert [] == backend.claim(worker="w", names=None, now=0.0, lease=LEASE, limit=0)


def test_claim_is_atomic_across_threads(db_path: Path) -> None:
    backend = SqliteBackend(db_path, busy_timeout=30)
    ids = {t.id for t in backend.enqueue([new() for _ in range(300)], now=0.0)}
    claimed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def work(worker: str) -> None:
        start.wait()
        while got := backend.claim(worker=worker, names=None, now=0.0, lease=LEASE, limit=2):
            with lock:
                claimed.extend(c.task.id for c in got)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    backend.close()
    assert len(claimed) == len(set(claimed))
    assert ids == set(claimed)


CLAIMER = """
import sys, time, os
from buttress.tasks._sqlite import SqliteBackend
backend = SqliteBackend(sys.argv[1], busy_timeout=30)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.002)
while got := backend.claim(worker=sys.argv[3], names=None, now=0.0, lease=30.0, limit=1):
    for claim in got:
        print(claim.task.id, flush=True)
backend.close()
"""


def test_claim_is_atomic_across_processes(backend: SqliteBackend, tmp_path: Path) -> None:
    ids = {t.id for t in backend.enqueue([new() for _ in range(400)], now=0.0)}
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(backend.path), str(go), f"p{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert "ready\n" == proc.stdout.readline()
    go.touch()
    outputs = [proc.communicate(timeout=60)[0].split() for proc in procs]
    assert [0, 0] == [proc.returncode for proc in procs]
    claimed = list(itertools.chain.from_iterable(outputs))
    assert len(claimed) == len(set(claimed))
    assert ids == set(claimed)


# --- leases ----------------------------------------------------------------------------


def test_a_late_finisher_cannot_overwrite_the_newer_attempt(backend: SqliteBackend) -> None:
    (task,) = backend.enqueue([new(max_retries=3)], now=0.0)
    old = claim_one(backend, now=0.0, worker="w1", lease=10.0)
    assert [task.id] == backend.reap(now=10.5)
    new_claim = claim_one(backend, now=11.0, worker="w2", lease=10.0)
    assert 2 == new_claim.task.attempts

    assert not backend.succeed("w1", task.id, old.task.attempts, b"late", now=12.0)
    assert not backend.fail("w1", task.id, old.task.attempts, BOOM, None, now=12.0)
    assert set() == backend.heartbeat("w1", [task.id], lease_until=100.0)
    assert not backend.progress("w1", task.id, Progress(0.5))
    # The same worker name with the old attempt number is refused too.
    assert not backend.succeed("w2", task.id, 1, b"late", now=12.0)
    assert backend.get(task.id) == new_claim.task

    assert backend.succeed("w2", task.id, 2, b"ok", now=13.0)
    done = backend.get(task.id)
    assert done is not None
    assert (TaskStatus.SUCCEEDED, b"ok", 13.0, None) == (
        done.status,
        done.output,
        done.finished_at,
        done.error,
    )
    assert not backend.succeed("w2", task.id, 2, b"again", now=14.0)


def test_heartbeat_extends_the_lease(backend: SqliteBackend) -> None:
    (task, other) = backend.enqueue([new(), new()], now=0.0)
    claim_one(backend, now=0.0, lease=10.0)
    assert {task.id} == backend.heartbeat("w1", [task.id, other.id], lease_until=30.0)
    assert [] == backend.reap(now=20.0)
    assert [task.id] == backend.reap(now=30.5)


def test_reap_requeues_then_dead_letters_after_the_last_retry(backend: SqliteBackend) -> None:
    (task,) = backend.enqueue([new("flaky", max_retries=1)], now=0.0)
    claim_one(backend, now=0.0, lease=5.0)
    assert [] == backend.reap(now=5.0)  # lease_until is not yet in the past
    assert [task.id] == backend.reap(now=6.0)
    requeued = backend.get(task.id)
    assert requeued is not None
    assert (TaskStatus.QUEUED, 1, 6.0, "LeaseExpired") == (
        requeued.status,
        requeued.attempts,
        requeued.eta,
        requeued.error and requeued.error.type,
    )

    assert 2 == claim_one(backend, now=7.0, lease=5.0).task.attempts
    assert [task.id] == backend.reap(now=20.0)
    dead = backend.get(task.id)
    assert dead is not None
    assert (TaskStatus.DEAD, 20.0) == (dead.status, dead.finished_at)
    assert dead.error == TaskError("LeaseExpired", "lease expired: the worker died or stalled", "")
    assert {("flaky", "LeaseExpired"): 1} == backend.stats(owner=None, now=20.0).dead_letters
    assert [] == drain_ids(backend, now=100.0)


def test_fail_with_retry_at_waits_then_runs_again_and_without_it_goes_dead(
    backend: SqliteBackend,
) -> None:
    (task,) = backend.enqueue([new(max_retries=1)], now=0.0)
    first = claim_one(backend, now=0.0)
    assert backend.fail("w1", task.id, first.task.attempts, BOOM, retry_at=50.0, now=1.0)
    waiting = backend.get(task.id)
    assert waiting is not None
    assert (TaskStatus.FAILED, 50.0, BOOM, None) == (
        waiting.status,
        waiting.eta,
        waiting.error,
        waiting.finished_at,
    )
    assert [] == drain_ids(backend, now=49.0)
    second = claim_one(backend, now=50.0)
    assert 2 == second.task.attempts
    assert backend.fail("w1", task.id, 2, BOOM, retry_at=None, now=51.0)
    dead = backend.get(task.id)
    assert dead is not None
    assert (TaskStatus.DEAD, 51.0, BOOM) == (dead.status, dead.finished_at, dead.error)


def test_progress_is_recorded_while_running_and_reset_by_the_next_attempt(
    backend: SqliteBackend,
) -> None:
    (task,) = backend.enqueue([new(max_retries=1)], now=0.0)
    claim_one(backend, now=0.0)
    assert backend.progress("w1", task.id, Progress(0.25, "a quarter"))
    got = backend.get(task.id)
    assert got is not None
    assert Progress(0.25, "a quarter") == got.progress
    backend.fail("w1", task.id, 1, BOOM, retry_at=1.0, now=0.5)
    assert not backend.progress("w1", task.id, Progress(0.5))  # not running any more
    assert Progress() == claim_one(backend, now=1.0).task.progress


def test_a_result_is_kept_for_its_ttl(backend: SqliteBackend) -> None:
    kept, brief = backend.enqueue([new(), new(result_ttl=10.0)], now=0.0)
    for claim in backend.claim(worker="w", names=None, now=0.0, lease=LEASE, limit=2):
        assert backend.succeed("w", claim.task.id, 1, b"r-" + claim.task.id.encode(), now=1.0)
    backend.reap(now=10.9)
    assert [b"r-" + kept.id.encode(), b"r-" + brief.id.encode()] == [
        t.output for t in (backend.get(kept.id), backend.get(brief.id)) if t is not None
    ]
    backend.reap(now=11.0)
    later = backend.get(brief.id)
    assert later is not None
    assert later.output is None
    assert TaskStatus.SUCCEEDED == later.status
    assert (backend.get(kept.id) or later).output == b"r-" + kept.id.encode()


def test_release_gives_the_task_back_without_counting_the_attempt(
    backend: SqliteBackend,
) -> None:
    kept, other, flagged = backend.enqueue([new(), new(), new()], now=0.0)
    backend.claim(worker="w1", names=None, now=0.0, lease=LEASE, limit=3)
    backend.cancel(TaskFilter(ids=(flagged.id,)), now=1.0)
    assert [] == backend.release("w2", [kept.id], now=2.0)  # not w2's to give back
    assert sorted([kept.id, flagged.id]) == backend.release("w1", [kept.id, flagged.id], now=2.0)
    back, gone = backend.get(kept.id), backend.get(flagged.id)
    assert back is not None
    assert gone is not None
    assert (TaskStatus.QUEUED, 0, 2.0, None) == (
        back.status,
        back.attempts,
        back.eta,
        back.started_at,
    )
    assert (TaskStatus.CANCELLED, 2.0) == (gone.status, gone.finished_at)
    assert not backend.succeed("w1", kept.id, 1, None, now=3.0)  # the lease went with it
    assert 1 == claim_one(backend, now=3.0, worker="w3").task.attempts
    assert TaskStatus.RUNNING == (backend.get(other.id) or back).status


# --- dedup -----------------------------------------------------------------------------


def test_a_live_dedup_key_returns_the_existing_task(backend: SqliteBackend) -> None:
    (first,) = backend.enqueue([new(dedup_key="k")], now=0.0)
    again, other = backend.enqueue([new(dedup_key="k"), new(dedup_key="other")], now=1.0)
    assert first == again
    assert other.id != first.id
    # In one batch, the second of two equal keys gets the first.
    a, b = backend.enqueue([new(dedup_key="batch"), new(dedup_key="batch")], now=1.0)
    assert a == b
    assert 3 == len(backend.list(TaskFilter(), cursor=None, limit=100).tasks)
    # Running is still live.
    assert first.id == claim_one(backend, now=2.0).task.id
    (running,) = backend.enqueue([new(dedup_key="k")], now=3.0)
    assert (first.id, TaskStatus.RUNNING) == (running.id, running.status)


def test_after_the_task_is_final_the_dedup_key_makes_a_new_one(backend: SqliteBackend) -> None:
    (first,) = backend.enqueue([new(dedup_key="k")], now=0.0)
    claim_one(backend, now=0.0)
    assert backend.succeed("w1", first.id, 1, None, now=1.0)
    (second,) = backend.enqueue([new(dedup_key="k")], now=2.0)
    assert second.id != first.id
    assert TaskStatus.QUEUED == second.status
    # Cancelled is final too.
    backend.cancel(TaskFilter(ids=(second.id,)), now=3.0)
    (third,) = backend.enqueue([new(dedup_key="k")], now=4.0)
    assert third.id not in {first.id, second.id}


def test_dedup_keys_are_per_owner(backend: SqliteBackend) -> None:
    a, b, nobody = backend.enqueue(
        [new(dedup_key="k", owner="a"), new(dedup_key="k", owner="b"), new(dedup_key="k")],
        now=0.0,
    )
    assert 3 == len({a.id, b.id, nobody.id})
    assert ("a", "b", None) == (a.owner, b.owner, nobody.owner)


def test_dedup_is_race_free_across_threads(db_path: Path) -> None:
    backend = SqliteBackend(db_path, busy_timeout=30)
    start = threading.Barrier(8)
    got: list[str] = []

    def enqueue() -> None:
        start.wait()
        for _ in range(10):
            (task,) = backend.enqueue([new(dedup_key="once")], now=0.0)
            got.append(task.id)

    threads = [threading.Thread(target=enqueue) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = backend.list(TaskFilter(), cursor=None, limit=100).tasks
    backend.close()
    assert 80 == len(got)
    assert 1 == len(set(got))
    assert [got[0]] == [t.id for t in stored]


# --- owners ----------------------------------------------------------------------------


def test_owner_a_never_sees_counts_or_changes_owner_bs_tasks(backend: SqliteBackend) -> None:
    (a_task,) = backend.enqueue([new(owner="a")], now=0.0)
    b_waiting, b_dead = backend.enqueue([new(owner="b"), new(owner="b")], now=0.0)
    claims = backend.claim(worker="w", names=None, now=0.0, lease=LEASE, limit=3)
    for claim in claims:
        if claim.task.id == b_dead.id:
            backend.fail("w", b_dead.id, 1, BOOM, None, now=1.0)
        else:
            backend.fail("w", claim.task.id, 1, BOOM, retry_at=5.0, now=1.0)
    b_ids = (b_waiting.id, b_dead.id)

    assert backend.get(b_waiting.id, owner="a") is None
    assert backend.get(b_waiting.id, owner="b") is not None
    assert [a_task.id] == [
        t.id for t in backend.list(TaskFilter(owner="a"), cursor=None, limit=9).tasks
    ]
    assert () == backend.list(TaskFilter(owner="a", ids=b_ids), cursor=None, limit=9).tasks
    assert [] == backend.cancel(TaskFilter(owner="a", ids=b_ids), now=2.0)
    assert [] == backend.retry(TaskFilter(owner="a", ids=b_ids), now=2.0)
    assert 0 == backend.delete(TaskFilter(owner="a", ids=b_ids))

    stats = backend.stats(owner="a", now=2.0)
    assert 1 == sum(stats.by_status.values())
    assert 1 == stats.by_status[TaskStatus.FAILED]
    assert {} == stats.dead_letters
    assert {("job", "ValueError"): 1} == backend.stats(owner="b", now=2.0).dead_letters
    # Nothing of b's changed.
    after = [backend.get(i) for i in b_ids]
    assert [TaskStatus.FAILED, TaskStatus.DEAD] == [t.status for t in after if t is not None]
    # And unscoped (the operator) sees everything.
    assert 3 == sum(backend.stats(owner=None, now=2.0).by_status.values())


# --- cancel, retry, delete -----------------------------------------------------------------


def test_cancel_ends_a_waiting_task_and_flags_a_running_one(backend: SqliteBackend) -> None:
    (finished,) = backend.enqueue([new()], now=0.0)
    claim_one(backend, now=0.0)
    assert backend.succeed("w1", finished.id, 1, None, now=0.5)
    (running,) = backend.enqueue([new()], now=0.0)
    assert running.id == claim_one(backend, now=0.0).task.id
    (waiting,) = backend.enqueue([new()], now=0.0)

    touched = backend.cancel(TaskFilter(ids=(running.id, waiting.id, finished.id)), now=1.0)
    by_id = {t.id: t for t in touched}
    assert {running.id, waiting.id} == set(by_id)
    assert (TaskStatus.CANCELLED, 1.0) == (by_id[waiting.id].status, by_id[waiting.id].finished_at)
    assert (TaskStatus.RUNNING, None) == (by_id[running.id].status, by_id[running.id].finished_at)
    assert {running.id: False} == backend.cancel_requests([running.id, waiting.id, finished.id])
    assert [by_id[waiting.id]] == [backend.get(waiting.id)]
    assert TaskStatus.SUCCEEDED == (backend.get(finished.id) or waiting).status
    # The running task may still finish: cancelling is a request.
    assert backend.succeed("w1", running.id, 1, None, now=2.0)


def test_a_task_asked_to_cancel_is_cancelled_not_retried(backend: SqliteBackend) -> None:
    first, second = backend.enqueue([new(max_retries=5), new(max_retries=5)], now=0.0)
    backend.claim(worker="w", names=None, now=0.0, lease=5.0, limit=2)
    backend.cancel(TaskFilter(ids=(first.id, second.id)), now=1.0)
    assert backend.fail("w", first.id, 1, BOOM, retry_at=2.0, now=2.0)
    assert [second.id] == backend.reap(now=10.0)
    assert [TaskStatus.CANCELLED, TaskStatus.CANCELLED] == [
        t.status for t in (backend.get(first.id), backend.get(second.id)) if t is not None
    ]
    assert [] == drain_ids(backend, now=100.0)


def test_retry_requeues_a_dead_task_from_scratch(backend: SqliteBackend) -> None:
    (task,) = backend.enqueue([new(max_retries=0)], now=0.0)
    claim_one(backend, now=0.0)
    backend.fail("w1", task.id, 1, BOOM, None, now=1.0)
    (again,) = backend.retry(TaskFilter(ids=(task.id,)), now=5.0)
    assert (TaskStatus.QUEUED, 0, None, 5.0, None, None) == (
        again.status,
        again.attempts,
        again.error,
        again.eta,
        again.started_at,
        again.finished_at,
    )
    assert [] == backend.retry(TaskFilter(ids=(task.id,)), now=6.0)  # queued: nothing to do
    assert 1 == claim_one(backend, now=6.0).task.attempts


def test_retry_leaves_a_task_whose_dedup_key_is_live_again(backend: SqliteBackend) -> None:
    (old,) = backend.enqueue([new(dedup_key="k")], now=0.0)
    backend.cancel(TaskFilter(ids=(old.id,)), now=1.0)
    (fresh,) = backend.enqueue([new(dedup_key="k")], now=2.0)
    assert [] == backend.retry(TaskFilter(ids=(old.id,)), now=3.0)
    assert TaskStatus.CANCELLED == (backend.get(old.id) or fresh).status


def test_delete_and_cleanup_by_finished_before(backend: SqliteBackend) -> None:
    early, late, waiting, running = backend.enqueue([new(), new(), new(), new()], now=0.0)
    claims = backend.claim(worker="w", names=None, now=0.0, lease=LEASE, limit=2)
    assert [early.id, late.id] == [c.task.id for c in claims]
    backend.succeed("w", early.id, 1, None, now=10.0)
    backend.fail("w", late.id, 1, BOOM, None, now=20.0)
    claim_one(backend, now=0.0)  # takes `waiting`
    backend.cancel(TaskFilter(ids=(waiting.id,)), now=0.0)  # flag only: it is running

    assert 1 == backend.delete(TaskFilter(finished_before=15.0))
    assert backend.get(early.id) is None
    assert backend.get(late.id) is not None
    assert 0 == backend.delete(TaskFilter(ids=(waiting.id,)))  # running: never removed
    assert 2 == backend.delete(TaskFilter(statuses=(TaskStatus.DEAD, TaskStatus.QUEUED)))
    assert [waiting.id] == [t.id for t in backend.list(TaskFilter(), cursor=None, limit=9).tasks]
    assert running.id != waiting.id


# --- listing ---------------------------------------------------------------------------


def test_list_pages_newest_first_with_a_cursor(backend: SqliteBackend) -> None:
    ids = [t.id for t in backend.enqueue([new() for _ in range(25)], now=0.0)]
    seen: list[str] = []
    cursor: str | None = None
    sizes = []
    while True:
        page = backend.list(TaskFilter(), cursor=cursor, limit=10)
        sizes.append(len(page.tasks))
        seen.extend(t.id for t in page.tasks)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert [10, 10, 5] == sizes
    assert list(reversed(ids)) == seen
    # Exactly a page's worth: no dangling empty page.
    assert backend.list(TaskFilter(), cursor=ids[10], limit=10).cursor is None


def test_list_applies_every_filter(backend: SqliteBackend) -> None:
    mail, sms, low, tagged = backend.enqueue(
        [
            new("mail"),
            new("sms", owner="u"),
            new("mail", priority=Priority.LOW),
            new("push", tags=("x", "y")),
        ],
        now=0.0,
    )
    backend.claim(worker="w", names=["mail"], now=0.0, lease=LEASE, limit=1)
    backend.fail("w", mail.id, 1, TaskError("KeyError", "k"), None, now=1.0)

    def ids(**where: Any) -> set[str]:
        return {t.id for t in backend.list(TaskFilter(**where), cursor=None, limit=50).tasks}

    assert {mail.id, low.id} == ids(names=("mail",))
    assert {sms.id} == ids(owner="u")
    assert {low.id} == ids(priorities=(Priority.LOW,))
    assert {tagged.id} == ids(tag="y")
    assert set() == ids(tag="z")
    assert {mail.id} == ids(error_type="KeyError")
    assert {mail.id} == ids(statuses=(TaskStatus.DEAD,))
    assert {sms.id, low.id} == ids(ids=(sms.id, low.id, "unknown"))
    assert set() == ids(ids=())
    assert {low.id} == ids(names=("mail",), statuses=(TaskStatus.QUEUED,))


# --- stats -----------------------------------------------------------------------------


def test_stats_counts_and_times(backend: SqliteBackend) -> None:
    a, b = backend.enqueue([new("a"), new("b", priority=Priority.HIGH)], now=0.0)
    backend.enqueue([new("c", priority=Priority.LOW, eta=500.0)], now=0.0)
    backend.enqueue([new("d", eta=80.0)], now=80.0)
    for claim in backend.claim(worker="w", names=["a", "b"], now=100.0, lease=LEASE, limit=2):
        assert claim.task.id in {a.id, b.id}
    backend.succeed("w", b.id, 1, None, now=104.0)  # waited 100, ran 4
    backend.fail("w", a.id, 1, BOOM, None, now=130.0)  # waited 100, ran 30; dead

    stats = backend.stats(owner=None, now=150.0)
    assert 1 == stats.by_status[TaskStatus.SUCCEEDED]
    assert 1 == stats.by_status[TaskStatus.DEAD]
    assert 1 == stats.by_status[TaskStatus.QUEUED]
    assert 1 == stats.by_status[TaskStatus.SCHEDULED]
    assert 0 == stats.by_status[TaskStatus.RUNNING]
    assert {Priority.NORMAL: 1, Priority.LOW: 1} == {
        p: n for p, n in stats.by_priority.items() if n
    }
    assert 2 == stats.finished_last_minute
    assert 100.0 == stats.mean_wait_seconds
    assert 17.0 == stats.mean_run_seconds
    # The scheduled task (eta 500) is not runnable yet: the oldest waiting is "d".
    assert 70.0 == stats.oldest_waiting_seconds
    assert {("a", "ValueError"): 1} == stats.dead_letters

    later = backend.stats(owner=None, now=200.0)
    assert 0 == later.finished_last_minute
    empty = backend.stats(owner="nobody", now=200.0)
    assert (None, None, None, 0) == (
        empty.mean_wait_seconds,
        empty.mean_run_seconds,
        empty.oldest_waiting_seconds,
        sum(empty.by_status.values()),
    )


# --- durability ------------------------------------------------------------------------

ENQUEUER = """
import sys
from buttress.tasks._backend import NewTask
from buttress.tasks._model import Priority, new_task_id
from buttress.tasks._sqlite import SqliteBackend
backend = SqliteBackend(sys.argv[1])
n = 0
while True:
    n += 1
    batch = [NewTask(id=new_task_id(), name="t", payload=b"x", payload_format="json",
                     priority=Priority.NORMAL, max_retries=0, timeout=None, eta=0.0)
             for _ in range(1 + n % 3)]
    for task in backend.enqueue(batch, now=0.0):
        print(task.id, flush=True)
"""


def test_every_acknowledged_enqueue_survives_a_kill(db_path: Path) -> None:
    SqliteBackend(db_path).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", ENQUEUER, str(db_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(60)]
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert -signal.SIGKILL == proc.returncode
    acknowledged += [line for line in rest.split("\n") if len(line) == 26]
    assert len(acknowledged) >= 60

    backend = SqliteBackend(db_path)
    try:
        missing = [i for i in acknowledged if backend.get(i) is None]
    finally:
        backend.close()
    assert [] == missing


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"priority": 9}, ValueError, "priority"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"eta": float("nan")}, ValueError, "eta"),
        ({"payload": "text"}, TypeError, "payload"),
        ({"metadata": {"k": object()}}, TypeError, "metadata"),
        ({"tags": "abc"}, TypeError, "tags"),
        ({"owner": ""}, ValueError, "owner"),
        ({"name": ""}, ValueError, "name"),
        ({"result_ttl": -1.0}, ValueError, "result_ttl"),
        ({"dedup_key": 5}, TypeError, "dedup_key"),
    ],
)
def test_bad_task_fields_are_refused_by_name(
    backend: SqliteBackend, fields: dict[str, Any], error: type[Exception], field: str
) -> None:
    (good,) = backend.enqueue([new()], now=0.0)
    name = fields.pop("name", "job")
    with pytest.raises(error, match=field):
        backend.enqueue([new(name, **fields), new()], now=0.0)
    # Nothing of the batch was stored.
    assert [good.id] == [t.id for t in backend.list(TaskFilter(), cursor=None, limit=9).tasks]


def test_a_duplicate_id_is_refused_and_the_batch_rolled_back(backend: SqliteBackend) -> None:
    (task,) = backend.enqueue([new()], now=0.0)
    with pytest.raises(ValueError, match="already exists"):
        backend.enqueue([new(), new(id=task.id)], now=0.0)
    assert 1 == len(backend.list(TaskFilter(), cursor=None, limit=9).tasks)


def test_bad_call_arguments_are_refused_by_name(backend: SqliteBackend) -> None:
    with pytest.raises(ValueError, match="limit"):
        backend.claim(worker="w", names=None, now=0.0, lease=LEASE, limit=-1)
    with pytest.raises(ValueError, match="lease"):
        backend.claim(worker="w", names=None, now=0.0, lease=0, limit=1)
    with pytest.raises(ValueError, match="worker"):
        backend.claim(worker="", names=None, now=0.0, lease=LEASE, limit=1)
    with pytest.raises(ValueError, match="now"):
        backend.reap(now=float("inf"))
    with pytest.raises(ValueError, match="limit"):
        backend.list(TaskFilter(), cursor=None, limit=0)
    with pytest.raises(ValueError, match="unknown task status"):
        backend.list(TaskFilter(statuses=("bogus",)), cursor=None, limit=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="where"):
        backend.delete(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="error"):
        backend.fail("w", "x", 1, "boom", None, now=0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="result"):
        backend.succeed("w", "x", 1, "text", now=0.0)  # type: ignore[arg-type]


def test_a_threads_connection_is_closed_when_the_thread_ends(backend: SqliteBackend) -> None:
    thread = threading.Thread(target=backend.get, args=("x",))
    thread.start()
    thread.join()
    # The main thread's connection (opened by __init__) lives on; the thread's is gone.
    assert [True, False] == [f.alive for f in backend._finalizers]
    backend.get("x")
    assert [True, False] == [f.alive for f in backend._finalizers]

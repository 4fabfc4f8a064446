"""Crash test: 2,000 tasks, 4 worker processes, 10 random ``kill -9`` during the run.

Every task must end succeeded (none lost), and a task may run more than once
only when its earlier run's lease expired: its worker was killed, or it reported
the lease lost. Workers are real ``python -m buttress worker`` processes running
``crash_app.py``, whose task appends ``task_id attempt pid`` to a per-process
file with one ``write()``, so even a run killed right after it is on record.

The lease is 1 s (heartbeat 1/3 s), so a killed worker's tasks come back within
about 2 s: the reaper runs once a lease's worth of beats in a live worker.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buttress.tasks import Queue

N_TASKS = 2000
N_WORKERS = 4
N_KILLS = 10
LEASE = 1.0
CONCURRENCY = 8
# A task loses one attempt to each kill that catches it running; retries cover
# every kill plus a margin for a worker that stalls past its lease on a busy
# machine, so no run of bad luck can dead-letter a task (the test would say so).
RETRIES = N_KILLS + 10
DEADLINE = 90.0  # seconds for the whole run; it takes ~10 s on 2 cores
APP_DIR = Path(__file__).parent


@dataclass
class Workers:
    """The worker processes, each slot restarted after a kill, and what became of them."""

    env: dict[str, str]
    logs: Path
    runs: Path
    slots: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stderr: dict[int, Path] = field(default_factory=dict)
    killed: set[int] = field(default_factory=set)

    def start(self) -> subprocess.Popen[bytes]:
        path = self.logs / f"worker-{len(self.stderr)}.err"
        with path.open("wb") as err:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "buttress",
                    "worker",
                    "--app",
                    "crash_app:queue",
                    "--concurrency",
                    str(CONCURRENCY),
                    "--grace",
                    "10",
                ],
                cwd=APP_DIR,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        # Runs are told apart by pid: a pid handed out twice would blur them.
        assert process.pid not in self.stderr, f"pid {process.pid} was reused"
        self.stderr[process.pid] = path
        return process

    def kill(self, slot: int) -> int:
        """``kill -9`` the worker in ``slot`` and start another there; the dead pid."""
        victim = self.slots[slot]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.killed.add(victim.pid)
        self.slots[slot] = self.start()
        return victim.pid

    def stderr_of(self, pid: int) -> str:
        return self.stderr[pid].read_text(errors="replace")

    def wait_started(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "buttress worker " not in self.stderr_of(process.pid):
            assert process.poll() is None, self.stderr_of(process.pid)[-3000:]
            assert time.monotonic() < deadline, f"worker {process.pid} did not start"
            time.sleep(0.02)

    def check_alive(self) -> None:
        for process in self.slots:
            if process.poll() is not None:
                pytest.fail(
                    f"worker {process.pid} exited by itself with {process.returncode}:\n"
                    f"{self.stderr_of(process.pid)[-3000:]}"
                )

    def stop_all(self) -> None:
        for process in self.slots:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {
        **os.environ,
        "CRASH_APP_QUEUE_URL": f"sqlite:///{tmp_path}/crash.db",
        "CRASH_APP_LEASE": str(LEASE),
        "CRASH_APP_LOG_DIR": str(runs),
    }
    made = Workers(env=env, logs=tmp_path, runs=runs)
    yield made
    made.stop_all()  # whatever a failed test left running


def counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())


def enqueue_all(db: Path) -> set[str]:
    queue = Queue.from_url(f"sqlite:///{db}")
    try:
        new = [queue.prepare("record", (n,), retries=RETRIES) for n in range(N_TASKS)]
        return {task.id for task in queue.backend.enqueue(new, queue.now())}
    finally:
        queue.close()


def run_with_kills(
    workers: Workers, db_path: Path, rng: random.Random, note: str
) -> tuple[list[tuple[int, int]], dict[str, tuple[str, int]]]:
    """Start the workers, kill at random points until every task succeeded, then stop
    the survivors with SIGTERM. Returns the kills (succeeded by then, pid) and each
    task's final (status, attempts)."""
    workers.slots = [workers.start() for _ in range(N_WORKERS)]
    # Kill when these many tasks have succeeded: spread over the run, never at its end.
    marks = sorted(rng.sample(range(N_TASKS // 20, N_TASKS * 17 // 20), N_KILLS))
    kills: list[tuple[int, int]] = []
    deadline = time.monotonic() + DEADLINE
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        while (done := counts(db).get("succeeded", 0)) < N_TASKS:
            if marks and done >= marks[0]:
                marks.pop(0)
                # Prefer a worker that has run tasks (not one still starting up).
                busy = [
                    slot
                    for slot, process in enumerate(workers.slots)
                    if (workers.runs / f"{process.pid}.log").exists()
                ]
                slot = rng.choice(busy or list(range(N_WORKERS)))
                kills.append((done, workers.kill(slot)))
            workers.check_alive()
            assert time.monotonic() < deadline, f"not drained in {DEADLINE} s: {counts(db)} {note}"
            time.sleep(0.01)
        final = {
            task_id: (status, attempts)
            for task_id, status, attempts in db.execute("SELECT id, status, attempts FROM tasks")
        }

    # A graceful stop of the survivors: SIGTERM, exit 0. A worker restarted just
    # now may still be starting Python; its banner says it handles signals.
    for process in workers.slots:
        workers.wait_started(process)
    workers.check_alive()
    for process in workers.slots:
        process.send_signal(signal.SIGTERM)
    for process in workers.slots:
        assert 0 == process.wait(timeout=30), workers.stderr_of(process.pid)[-3000:]
    return kills, final


def read_runs(runs_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """Every execution on record: task id -> [(attempt, pid)]."""
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for log in runs_dir.glob("*.log"):
        for line in log.read_text().splitlines():
            task_id, attempt, pid = line.split()
            runs[task_id].append((int(attempt), int(pid)))
    return runs


def test_killed_workers_lose_no_task_and_rerun_only_after_a_lease_expiry(
    tmp_path: Path, workers: Workers
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    note = f"(seed {seed})"
    enqueued = enqueue_all(tmp_path / "crash.db")
    assert N_TASKS == len(enqueued)

    kills, final = run_with_kills(workers, tmp_path / "crash.db", random.Random(seed), note)

    # Ten kills, all while tasks were still waiting.
    assert N_KILLS == len(kills), f"{kills} {note}"
    assert all(done < N_TASKS for done, _ in kills), f"{kills} {note}"

    # None lost: exactly the tasks enqueued, every one succeeded.
    assert enqueued == set(final), note
    not_succeeded = {tid: row for tid, row in final.items() if row[0] != "succeeded"}
    assert {} == not_succeeded, note

    runs = read_runs(workers.runs)
    assert enqueued == set(runs), f"tasks with no run on record {note}"
    reruns = 0
    unexplained: list[str] = []
    for task_id, task_runs in runs.items():
        attempts = [attempt for attempt, _ in task_runs]
        # The lease is exclusive: no attempt ran twice, and the run that succeeded
        # (the last attempt) is the one the record counts.
        assert len(set(attempts)) == len(attempts), f"{task_id} ran an attempt twice: {task_runs}"
        assert max(attempts) == final[task_id][1], f"{task_id}: {task_runs} vs {final[task_id]}"
        for attempt, pid in task_runs:
            if attempt == max(attempts):
                continue
            reruns += 1
            # An earlier run was superseded: its lease must have expired, because
            # its worker was killed, or (a stall) because the worker lost it and said so.
            if pid not in workers.killed and task_id not in workers.stderr_of(pid):
                unexplained.append(f"{task_id} attempt {attempt} in live worker {pid}")
    print(
        "STATS",
        reruns,
        sum(1 for _, c in final.values() if c > 1),
        max(c for _, c in final.values()),
        kills,
    )
    assert [] == unexplained, note
    # The kills did catch tasks mid-flight, so the reclaim path really ran.
    assert reruns > 0 or any(count > 1 for _, count in final.values()), note

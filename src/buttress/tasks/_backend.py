"""The contract between the queue and a storage backend (SQLite now; Redis, PostgreSQL later).

Every method is one atomic state change (one statement or one transaction), so
a crash at any instant leaves each task in a state it can be recovered from.
The backend stores the task record of ``_model.Task`` plus the lease (which
worker holds a running task, and until when) and the encoded payload.

Owner isolation lives here: every method that takes ``owner`` puts it in the
query itself, so a scoped call never returns, counts or changes another
owner's task. ``owner=None`` means unscoped (the operator's view).

Times are seconds on the queue's clock, passed in by the caller (``now``), so a
``ManualClock`` drives retries, delays, leases and cleanup in tests.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from buttress.tasks._model import Priority, Progress, Task, TaskError, TaskStatus

__all__ = ["Backend", "Claim", "NewTask", "Page", "QueueStats", "TaskFilter"]


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to store: its record fields and its encoded arguments."""

    id: str
    name: str
    payload: bytes
    payload_format: str
    priority: Priority
    max_retries: int
    timeout: float | None
    eta: float
    owner: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None
    result_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A task a worker now holds under a lease until ``lease_until``."""

    task: Task
    payload: bytes
    payload_format: str
    worker: str
    lease_until: float


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a bulk or listing call means; every field narrows the set."""

    ids: tuple[str, ...] | None = None
    owner: str | None = None
    statuses: tuple[TaskStatus, ...] | None = None
    priorities: tuple[Priority, ...] | None = None
    names: tuple[str, ...] | None = None
    tag: str | None = None
    error_type: str | None = None
    finished_before: float | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest first; ``cursor`` fetches the next (None: the end)."""

    tasks: tuple[Task, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the queue holds and how it has been doing."""

    by_status: dict[TaskStatus, int]
    by_priority: dict[Priority, int]
    """Waiting tasks (queued, scheduled, failed) per priority."""
    finished_last_minute: int
    mean_wait_seconds: float | None
    mean_run_seconds: float | None
    oldest_waiting_seconds: float | None
    dead_letters: dict[tuple[str, str], int]
    """Dead tasks by (task name, error type)."""


@runtime_checkable
class Backend(Protocol):
    """Storage for tasks. Sync methods; the queue runs them off the event loop."""

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> builtins.list[Task]:
        """Store ``tasks`` in one transaction. A task whose ``dedup_key`` belongs to a
        live (not final) task is not stored: that existing task is returned instead."""
        ...

    def get(self, task_id: str, *, owner: str | None = None) -> Task | None: ...

    def list(self, where: TaskFilter, *, cursor: str | None, limit: int) -> Page: ...

    def claim(
        self, *, worker: str, names: Sequence[str] | None, now: float, lease: float, limit: int
    ) -> builtins.list[Claim]:
        """Take up to ``limit`` runnable tasks (eta <= now) in order (priority, eta, id),
        mark them running with a lease, and count the attempt: one atomic step."""
        ...

    def heartbeat(self, worker: str, task_ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend the leases ``worker`` still holds; returns the ids it still holds."""
        ...

    def progress(self, worker: str, task_id: str, progress: Progress) -> bool: ...

    def succeed(
        self, worker: str, task_id: str, attempt: int, result: bytes | None, now: float
    ) -> bool:
        """Mark succeeded if ``worker`` still holds the lease of ``attempt``; False if not."""
        ...

    def succeed_many(
        self, worker: str, finished: Sequence[tuple[str, int, bytes | None]], now: float
    ) -> set[str]:
        """``succeed`` for ``(task_id, attempt, result)`` items in one transaction; the
        ids whose lease was still held."""
        ...

    def fail(  # noqa: PLR0917 - the lease check needs all of these
        self,
        worker: str,
        task_id: str,
        attempt: int,
        error: TaskError,
        retry_at: float | None,
        now: float,
    ) -> bool:
        """Record a failed attempt: back to waiting until ``retry_at``, or dead if None."""
        ...

    def release(self, worker: str, task_ids: Sequence[str], now: float) -> builtins.list[str]:
        """Give back running tasks ``worker`` holds (a graceful shutdown): queued again
        with eta=now, and the attempt they were claimed for is not counted."""
        ...

    def age(self, now: float, every: float) -> int:
        """Move tasks that waited ``every`` seconds one priority level up (aging)."""
        ...

    def reap(self, now: float) -> builtins.list[str]:
        """Re-queue running tasks whose lease expired (dead if out of attempts)."""
        ...

    def cancel(self, where: TaskFilter, now: float, *, force: bool = False) -> builtins.list[Task]:
        """Cancel waiting tasks at once; ask running ones to stop (``force``: at once,
        without the grace period). Returns the tasks touched, as they now are."""
        ...

    def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, bool]:
        """Which of these running tasks someone asked to cancel: id -> forced."""
        ...

    def retry(self, where: TaskFilter, now: float) -> builtins.list[Task]:
        """Re-queue failed, dead or cancelled tasks (attempts start again)."""
        ...

    def delete(self, where: TaskFilter) -> int: ...

    def stats(self, *, owner: str | None, now: float) -> QueueStats: ...

    def close(self) -> None: ...

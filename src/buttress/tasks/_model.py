"""What a task is: its priority, its status, its id, and the record every backend keeps.

The record is backend-neutral: SQLite (and later Redis and PostgreSQL) store
exactly these fields, so the conformance suite can hold them all to one model.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from buttress.errors import ButtressError

__all__ = [
    "Priority",
    "Progress",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskStatus",
    "new_task_id",
    "tick_task_id",
]


class Priority(enum.IntEnum):
    """How urgent a task is; a lower value runs first (strict priority).

    >>> Priority.parse("high") is Priority.HIGH
    True
    """

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BULK = 4

    @classmethod
    def parse(cls, value: object) -> Priority:
        """A priority from itself, its name (any case) or its number; ValueError otherwise."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(p.name.lower() for p in cls)
        raise ValueError(f"unknown priority {value!r}: use one of {names} (or 0-4)")

    @property
    def label(self) -> str:
        """The lower-case name used in the API and in logs: ``"high"``."""
        return self.name.lower()


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. ``.value`` is the name the API and the store use."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    """Waiting for its eta (a delay, or a retry's backoff)."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The last attempt failed and another one will come."""
    DEAD = "dead"
    """Out of retries (or unrunnable): in the dead-letter queue."""
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True once the task will not run again by itself."""
        return self in _FINAL

    @property
    def is_waiting(self) -> bool:
        """True while the task waits to be claimed by a worker."""
        return self in _WAITING


_FINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED})
_WAITING = frozenset({TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.FAILED})


class TaskFailedError(ButtressError):
    """A task ended dead: its last attempt failed with ``error``."""

    code = "task_failed"
    status = 500
    default_message = "the task failed"

    def __init__(self, task_id: str, error: TaskError | None) -> None:
        self.task_id = task_id
        self.error = error
        what = f"{error.type}: {error.message}" if error is not None else "unknown error"
        super().__init__(f"task {task_id} failed", detail=what, task_id=task_id)


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why an attempt failed: the exception's type, its message and the traceback."""

    type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running task has got: a fraction in [0, 1] and a message."""

    fraction: float = 0.0
    message: str = ""

    def __post_init__(self) -> None:
        fraction = self.fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0.0 <= fraction <= 1.0
        ):
            raise ValueError(f"progress must be a fraction between 0 and 1, got {fraction!r}")
        if not isinstance(self.message, str):
            raise TypeError(f"a progress message must be a str, got {type(self.message)!r}")


@dataclass(frozen=True, slots=True)
class Task:
    """One task as a backend stores it. Times are seconds on the queue's clock."""

    id: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    status: TaskStatus = TaskStatus.QUEUED
    attempts: int = 0
    """Attempts started so far (a lease that expired counts as one)."""
    max_retries: int = 0
    timeout: float | None = None
    eta: float = 0.0
    """When the task may run next (its delay, or its next retry)."""
    owner: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    output: bytes | None = None
    """The encoded result of a succeeded task (``await task.result()`` decodes it)."""
    error: TaskError | None = None
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    dedup_key: str | None = None
    queue: Any = field(default=None, repr=False, compare=False)
    """The queue this record came from (set by the queue), for :meth:`result`."""

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - a deadline, passed on
        """Wait for the task to finish and return its result.

        Raises :class:`TaskFailedError` if it ended dead, ``OperationCancelledError``
        if it was cancelled, and ``OperationTimeoutError`` after ``timeout`` seconds.
        """
        if self.queue is None:
            raise RuntimeError("this task record is not bound to a queue; use queue.result(id)")
        return await self.queue.result(self.id, timeout=timeout, owner=self.owner)

    @property
    def retries_left(self) -> int:
        """How many more attempts a failure would still get."""
        return max(0, self.max_retries + 1 - self.attempts)


# --- ids ---------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


class _IdSource:
    """ULID-style ids: 48 bits of milliseconds, then 80 bits that start random and
    count up within a millisecond, so ids sort by creation even in a burst."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def next(self, now_ms: int | None = None) -> str:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            if ms <= self._last_ms:
                # Same millisecond (or the wall clock stepped back): keep order.
                ms = self._last_ms
                random_part = self._last_random + 1
                if random_part >= 1 << _RANDOM_BITS:
                    ms += 1
                    random_part = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                # The top bit stays clear: room to count up within the millisecond.
                random_part = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms, self._last_random = ms, random_part
        return _encode((ms << _RANDOM_BITS) | random_part)


_ids = _IdSource()


def _encode(value: int) -> str:
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def tick_task_id(name: str, tick: float) -> str:
    """The id of periodic task ``name``'s run for ``tick`` (seconds): the same in every
    scheduler, so a tick is stored once however many schedulers enqueue it."""
    digest = hashlib.blake2b(name.encode(), digest_size=10).digest()
    return _encode((int(tick * 1000) << _RANDOM_BITS) | int.from_bytes(digest, "big") >> 1)


def new_task_id() -> str:
    """A new task id: 26 characters, unique, and in creation order when sorted."""
    return _ids.next()

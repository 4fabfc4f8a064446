"""The queue: register tasks, enqueue them, read, cancel, retry and clean up.

>>> queue = Queue.from_url("sqlite:///buttress.db")
>>> @queue.task(priority=Priority.HIGH, retries=3)
... async def send_email(to: str) -> None: ...
>>> task = await send_email.enqueue("a@example.com")
>>> await queue.enqueue("send_email", "b@example.com", priority="low", owner="u1", delay=5)
>>> (await queue.get(task.id)).status
<TaskStatus.QUEUED: 'queued'>

The queue is a thin, validating front over a :class:`~buttress.tasks._backend.Backend`:
each method is one backend call, run off the event loop (the SQLite backend
blocks). Workers (``Worker``) claim, run and finish the tasks.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

from buttress.clock import Clock, SystemClock
from buttress.errors import (
    ConflictError,
    NotFoundError,
    OperationCancelledError,
    OperationTimeoutError,
)
from buttress.resilience._common import Duration, check_int, resolve_clock
from buttress.tasks._backend import Backend, NewTask, Page, QueueStats, TaskFilter
from buttress.tasks._model import Priority, Task, TaskFailedError, TaskStatus, new_task_id
from buttress.tasks._payload import encode_payload, payload_serializer
from buttress.tasks._schedule import Schedule

__all__ = ["Queue", "TaskDefinition"]

P = ParamSpec("P")
R = TypeVar("R")

_EXECUTORS = ("async", "thread", "process")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def _seconds(where: str, value: Duration | None, *, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{where} is required")
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        raise ValueError(f"{where} must be a number of seconds or a timedelta, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{where} must not be negative, got {value!r}")
    return float(seconds)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise ValueError(f"a task name must be letters, digits and '_.:-', got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a failed task waits before its next attempt: exponential with a cap."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (1 for the first)."""
        return min(self.cap, self.base * self.factor ** max(0, attempt - 1))


class TaskDefinition(Generic[P, R]):
    """A registered task: the function and its defaults. Calling it runs it inline;
    ``await definition.enqueue(...)`` queues it."""

    def __init__(
        self,
        queue: Queue,
        fn: Callable[P, R],
        *,
        name: str,
        priority: Priority,
        retries: int,
        timeout: float | None,
        executor: str,
        backoff: Backoff,
        result_ttl: float | None,
        schedule: Schedule | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.schedule = schedule
        self.queue = queue
        self.fn = fn
        self.name = name
        self.priority = priority
        self.retries = retries
        self.timeout = timeout
        self.executor = executor
        self.backoff = backoff
        self.result_ttl = result_ttl
        self.signature = inspect.signature(fn)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise TypeError now, naming the task, if a call with these arguments would:
        better refused at enqueue than dead-lettered by a worker later."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r} cannot take these arguments: {exc}") from None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Queue a run of this task with its defaults (``queue.enqueue`` takes options)."""
        return await self.queue.enqueue(self.name, *args, kwargs=kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name!r} priority={self.priority.label} retries={self.retries}>"


class Queue:
    """A durable priority queue of tasks (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        *,
        payload: str = "msgpack",
        lease: Duration = 30.0,
        aging: Duration | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"Queue needs a Backend, got {backend!r}")
        self.backend = backend
        self.payload = payload
        self.serializer = payload_serializer(payload)  # explains a format it won't use
        self.lease = _seconds("lease", lease, allow_none=False) or 0.0
        if self.lease == 0:
            raise ValueError("lease must be > 0 seconds: a task is held for that long")
        # Strict priority can starve BULK work under steady higher-priority load:
        # with aging, a task moves up one level for every `aging` seconds it waits.
        self.aging = _seconds("aging", aging)
        if self.aging == 0:
            raise ValueError("aging must be > 0 seconds (or None for strict priority)")
        self.clock = resolve_clock("Queue", clock)
        # Times go into a file that outlives processes and reboots: with the
        # system clock that means wall time, not the monotonic clock (which
        # restarts at boot); a test clock is its own timeline.
        self.now: Callable[[], float] = (
            time.time if isinstance(self.clock, SystemClock) else self.clock.now
        )
        self.tasks: dict[str, TaskDefinition[Any, Any]] = {}
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Queue:
        """``sqlite:///path.db`` (relative), ``sqlite:////abs/path.db``; Redis and
        PostgreSQL come later."""
        check_queue_url(url)
        from buttress.tasks._sqlite import SqliteBackend  # noqa: PLC0415 - optional part

        return cls(SqliteBackend.from_url(url), **options)

    def __repr__(self) -> str:
        return f"Queue({type(self.backend).__name__}, tasks={sorted(self.tasks)})"

    # --- registration ---------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskDefinition[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        priority: Priority | str | int = Priority.NORMAL,
        retries: int = 0,
        timeout: Duration | None = None,
        executor: str | None = None,
        backoff: Backoff | None = None,
        result_ttl: Duration | None = 3600.0,
    ) -> Callable[[Callable[P, R]], TaskDefinition[P, R]]: ...
    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        priority: Priority | str | int = Priority.NORMAL,
        retries: int = 0,
        timeout: Duration | None = None,
        executor: str | None = None,
        backoff: Backoff | None = None,
        result_ttl: Duration | None = 3600.0,
    ) -> Any:
        """Register a task (``@queue.task`` or ``@queue.task(...)``) with its defaults.

        ``executor`` is where a worker runs it: ``"async"`` (the default for
        ``async def``), ``"thread"`` (the default for ``def``) or ``"process"``.
        """

        def register(fn: Callable[P, R]) -> TaskDefinition[P, R]:
            if not callable(fn):
                raise TypeError(f"@queue.task needs a function, got {fn!r}")
            task_name = _check_name(name if name is not None else fn.__name__)
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered")
            default = "async" if inspect.iscoroutinefunction(fn) else "thread"
            chosen = executor if executor is not None else default
            if chosen not in _EXECUTORS:
                raise ValueError(f"executor must be one of {_EXECUTORS}, got {chosen!r}")
            if chosen == "async" and not inspect.iscoroutinefunction(fn):
                raise ValueError(f"executor='async' needs an async def, {task_name} is a def")
            definition = TaskDefinition(
                self,
                fn,
                name=task_name,
                priority=Priority.parse(priority),
                retries=check_int(f"task {task_name!r}", "retries", retries, minimum=0),
                timeout=_seconds("timeout", timeout),
                executor=chosen,
                backoff=backoff if backoff is not None else Backoff(),
                result_ttl=_seconds("result_ttl", result_ttl),
            )
            self.tasks[task_name] = definition
            return definition

        return register if fn is None else register(fn)

    def periodic(
        self,
        *,
        every: Duration | None = None,
        cron: str | None = None,
        name: str | None = None,
        priority: Priority | str | int = Priority.NORMAL,
        retries: int = 0,
        timeout: Duration | None = None,
        executor: str | None = None,
    ) -> Callable[[Callable[P, R]], TaskDefinition[P, R]]:
        """Register a task that workers' schedulers enqueue on a schedule (no arguments).

        >>> @queue.periodic(cron="*/15 * * * *")
        ... async def refresh_rates() -> None: ...
        """
        schedule = Schedule(every=_seconds("every", every), cron=cron)

        def register(fn: Callable[P, R]) -> TaskDefinition[P, R]:
            definition = self.task(
                name=name, priority=priority, retries=retries, timeout=timeout, executor=executor
            )(fn)
            definition.schedule = schedule
            return definition

        return register

    # --- enqueueing --------------------------------------------------------------------

    def prepare(
        self,
        task: str | TaskDefinition[Any, Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        priority: Priority | str | int | None = None,
        delay: Duration | None = None,
        eta: float | None = None,
        owner: str | None = None,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        dedup_key: str | None = None,
        retries: int | None = None,
        timeout: Duration | None = None,
    ) -> NewTask:
        """Validate and encode one enqueue (errors name what is wrong; nothing is stored)."""
        name = task.name if isinstance(task, TaskDefinition) else _check_name(task)
        definition = self.tasks.get(name)
        now = self.now()
        wait = _seconds("delay", delay)
        if eta is not None and wait is not None:
            raise ValueError("give delay= or eta=, not both")
        if eta is not None and (isinstance(eta, bool) or not isinstance(eta, int | float)):
            raise TypeError(f"eta= takes seconds on the queue's clock, got {eta!r}")
        when = now + (wait or 0.0) if eta is None else float(eta)
        if isinstance(tags, str):
            raise TypeError(f"tags must be a list of strings, not one string: {tags!r}")
        tag_list = tuple(tags)
        if not all(isinstance(tag, str) and tag for tag in tag_list):
            raise ValueError(f"tags must be non-empty strings, got {tag_list!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError(f"owner must be a non-empty string or None, got {owner!r}")
        if dedup_key is not None and (not isinstance(dedup_key, str) or not dedup_key):
            raise ValueError(f"dedup_key must be a non-empty string or None, got {dedup_key!r}")
        if definition is not None:
            definition.check_arguments(args, kwargs or {})
        payload = encode_payload(self.serializer, tuple(args), dict(kwargs or {}))
        return NewTask(
            id=new_task_id(),
            name=name,
            payload=payload,
            payload_format=self.payload,
            priority=Priority.parse(
                priority
                if priority is not None
                else (definition.priority if definition else Priority.NORMAL)
            ),
            max_retries=(
                check_int(f"task {name!r}", "retries", retries, minimum=0)
                if retries is not None
                else (definition.retries if definition else 0)
            ),
            timeout=(
                _seconds("timeout", timeout)
                if timeout is not None
                else (definition.timeout if definition else None)
            ),
            eta=when,
            owner=owner,
            tags=tag_list,
            metadata=dict(metadata or {}),
            dedup_key=dedup_key,
            result_ttl=definition.result_ttl if definition else 3600.0,
        )

    async def enqueue(
        self,
        task: str | TaskDefinition[Any, Any],
        *args: Any,
        priority: Priority | str | int | None = None,
        delay: Duration | None = None,
        eta: float | None = None,
        owner: str | None = None,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        dedup_key: str | None = None,
        retries: int | None = None,
        timeout: Duration | None = None,  # noqa: ASYNC109 - the task's timeout, not this call's
        kwargs: Mapping[str, Any] | None = None,
        **task_kwargs: Any,
    ) -> Task:
        """Queue one run of ``task`` (its name or its definition) with ``args`` and
        keyword arguments; returns the stored task (or the live one with the same
        ``dedup_key``). A task keyword argument that shares its name with an option
        goes in ``kwargs=``."""
        merged = {**(kwargs or {}), **task_kwargs}
        new = self.prepare(
            task,
            args,
            merged,
            priority=priority,
            delay=delay,
            eta=eta,
            owner=owner,
            tags=tags,
            metadata=metadata,
            dedup_key=dedup_key,
            retries=retries,
            timeout=timeout,
        )
        (stored,) = await self._call(self.backend.enqueue, [new], self.now())
        return self._bind(stored)

    async def enqueue_many(self, tasks: Iterable[NewTask]) -> builtins.list[Task]:
        """Store prepared tasks (``queue.prepare(...)``) in one transaction."""
        batch = list(tasks)
        stored = await self._call(self.backend.enqueue, batch, self.now())
        return [self._bind(task) for task in stored]

    # --- reading -------------------------------------------------------------------

    async def get(self, task_id: str, *, owner: str | None = None) -> Task:
        """The task ``task_id`` (scoped to ``owner`` if given); NotFoundError if absent."""
        task = await self._call(functools.partial(self.backend.get, task_id, owner=owner))
        if task is None:
            raise NotFoundError("task not found", task_id=task_id)
        return self._bind(task)

    async def list(
        self,
        *,
        owner: str | None = None,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        priority: Priority | str | int | None = None,
        name: str | None = None,
        tag: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """Tasks, newest first, filtered; ``page.cursor`` fetches the next page."""
        where = TaskFilter(
            owner=owner,
            statuses=_statuses(status),
            priorities=None if priority is None else (Priority.parse(priority),),
            names=None if name is None else (name,),
            tag=tag,
        )
        limit = check_int("list", "limit", limit, minimum=1)
        return await self._call(
            functools.partial(self.backend.list, where, cursor=cursor, limit=min(limit, 1000))
        )

    async def result(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline on the queue's clock
        owner: str | None = None,
    ) -> Any:
        """Wait until task ``task_id`` finishes; its decoded result (see ``Task.result``)."""
        deadline = None if timeout is None else self.clock.now() + timeout
        pause = 0.01
        while True:
            task = await self.get(task_id, owner=owner)
            if task.status is TaskStatus.SUCCEEDED:
                raw = task.output
                return None if raw is None else self.serializer.loads(raw)
            if task.status is TaskStatus.DEAD:
                raise TaskFailedError(task.id, task.error)
            if task.status is TaskStatus.CANCELLED:
                raise OperationCancelledError(f"task {task.id} was cancelled")
            if deadline is not None and self.clock.now() >= deadline:
                raise OperationTimeoutError(
                    f"task {task.id} did not finish within {timeout} s", seconds=timeout
                )
            wait = pause if deadline is None else min(pause, deadline - self.clock.now())
            await self.clock.sleep_async(max(wait, 0.0))
            pause = min(pause * 2, 0.5)  # poll quickly at first, then gently

    async def dead_letters(
        self, *, owner: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page:
        """The dead-letter queue: tasks that ran out of attempts or could not run."""
        return await self.list(owner=owner, status=TaskStatus.DEAD, cursor=cursor, limit=limit)

    async def stats(self, *, owner: str | None = None) -> QueueStats:
        return await self._call(functools.partial(self.backend.stats, owner=owner, now=self.now()))

    # --- changing -------------------------------------------------------------------

    async def cancel(self, task_id: str, *, owner: str | None = None, force: bool = False) -> Task:
        """Cancel a waiting task at once, or ask a running one to stop: it sees
        ``current_task().cancelled``, then asyncio cancellation after the worker's
        ``cancel_grace``; ``force=True`` cancels it at once (a thread task is
        abandoned and marked cancelled)."""
        changed = await self._call(
            functools.partial(
                self.backend.cancel,
                TaskFilter(ids=(task_id,), owner=owner),
                self.now(),
                force=force,
            )
        )
        if changed:
            return changed[0]
        return await self.get(task_id, owner=owner)  # as it is (NotFoundError if absent)

    async def retry(self, task_id: str, *, owner: str | None = None) -> Task:
        """Queue a failed, dead or cancelled task again, with fresh attempts."""
        changed = await self._call(
            self.backend.retry, TaskFilter(ids=(task_id,), owner=owner), self.now()
        )
        if changed:
            return self._bind(changed[0])
        task = await self.get(task_id, owner=owner)  # NotFoundError if absent
        raise ConflictError(
            f"task {task_id} is {task.status.value}: only failed, dead or cancelled tasks "
            "can be retried",
            task_id=task_id,
        )

    async def cancel_many(
        self, ids: Iterable[str] | None = None, **where: Unpack[Selection]
    ) -> builtins.list[Task]:
        """Cancel these tasks, or every task matching the filter; the ones affected."""
        chosen = _filter(ids, **where)
        return [self._bind(t) for t in await self._call(self.backend.cancel, chosen, self.now())]

    async def retry_many(
        self, ids: Iterable[str] | None = None, **where: Unpack[Selection]
    ) -> builtins.list[Task]:
        """Queue failed, dead or cancelled tasks again (these, or all matching)."""
        chosen = _filter(ids, **where)
        return [self._bind(t) for t in await self._call(self.backend.retry, chosen, self.now())]

    async def delete_many(
        self, ids: Iterable[str] | None = None, **where: Unpack[Selection]
    ) -> int:
        """Delete these tasks, or all matching (never a running one); the count."""
        return await self._call(self.backend.delete, _filter(ids, **where))

    async def reprocess(
        self, ids: Iterable[str] | None = None, *, name: str | None = None, owner: str | None = None
    ) -> builtins.list[Task]:
        """Send dead tasks (these ``ids``, or all matching the filter) back to the queue."""
        where = TaskFilter(
            ids=None if ids is None else tuple(ids),
            owner=owner,
            statuses=(TaskStatus.DEAD,),
            names=None if name is None else (name,),
        )
        return await self._call(self.backend.retry, where, self.now())

    async def cleanup(
        self,
        older_than: Duration,
        statuses: Iterable[TaskStatus | str] = (
            TaskStatus.SUCCEEDED,
            TaskStatus.DEAD,
            TaskStatus.CANCELLED,
        ),
        *,
        owner: str | None = None,
    ) -> int:
        """Delete finished tasks that finished more than ``older_than`` ago; the count."""
        age = _seconds("older_than", older_than, allow_none=False) or 0.0
        wanted = _statuses(list(statuses)) or ()
        if any(not status.is_final for status in wanted):
            raise ValueError("cleanup only deletes finished tasks (succeeded, dead, cancelled)")
        where = TaskFilter(owner=owner, statuses=wanted, finished_before=self.now() - age)
        return await self._call(self.backend.delete, where)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.backend.close()

    def _bind(self, task: Task) -> Task:
        """The record with this queue attached, so ``await task.result()`` works."""
        return dataclasses.replace(task, queue=self)

    # --- plumbing ---------------------------------------------------------------------

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        # The backend blocks (SQLite): keep it off the event loop.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(4, thread_name_prefix="buttress-queue")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def check_queue_url(url: str) -> None:
    """Refuse (ValueError) a URL :meth:`Queue.from_url` does not take."""
    if not url.startswith("sqlite:"):
        raise ValueError(f"unsupported queue URL {url!r}: use sqlite:///path.db")


class Selection(TypedDict, total=False):
    """Which tasks a bulk action means: every given field narrows the set."""

    owner: str | None
    status: TaskStatus | str | Iterable[TaskStatus | str] | None
    name: str | None
    tag: str | None


def _filter(
    ids: Iterable[str] | None,
    *,
    owner: str | None = None,
    status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
    name: str | None = None,
    tag: str | None = None,
) -> TaskFilter:
    if isinstance(ids, str):
        raise TypeError(f"ids must be a list of task ids, not one string: {ids!r}")
    if ids is None and owner is None and status is None and name is None and tag is None:
        raise ValueError("give ids or a filter (owner, status, name, tag): refusing to act on all")
    return TaskFilter(
        ids=None if ids is None else tuple(ids),
        owner=owner,
        statuses=_statuses(status),
        names=None if name is None else (name,),
        tag=tag,
    )


def _statuses(
    status: TaskStatus | str | Iterable[TaskStatus | str] | None,
) -> tuple[TaskStatus, ...] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, TaskStatus | str) else list(status)
    try:
        return tuple(TaskStatus(item) for item in items)
    except ValueError:
        known = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"unknown task status in {items!r}: use {known}") from None

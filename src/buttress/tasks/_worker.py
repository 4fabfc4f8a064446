"""The worker: claims tasks under a lease, runs them, and records what happened.

>>> await Worker(queue, concurrency=10).run()                  # until SIGTERM/SIGINT
>>> await Worker(queue, concurrency=10).run(until_empty=True)  # drain, then return

The lease is the central guarantee. A claimed task is held for ``lease``
seconds and the worker renews it by heartbeat while the task runs; a task is
only marked finished if its lease is still held (so a late finisher cannot
overwrite a newer attempt), and a reaper gives tasks whose lease lapsed — their
worker died — back to the queue, with the attempt counted: at least once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from buttress.resilience._common import (
    Duration,
    Listener,
    Listeners,
    check_int,
    check_seconds,
)
from buttress.tasks._backend import Claim
from buttress.tasks._model import Progress, Task, TaskError
from buttress.tasks._payload import decode_payload, payload_serializer
from buttress.tasks._queue import Queue, TaskDefinition
from buttress.tasks._schedule import Scheduler

__all__ = ["TaskContext", "Worker", "current_task"]

log = logging.getLogger("buttress.tasks")

_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("buttress_task")


def current_task() -> TaskContext:
    """The context of the task running here (in its coroutine, thread or callbacks).

    >>> ctx = current_task()
    >>> ctx.progress(0.5, "half way")
    >>> if ctx.cancelled: return
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_task() is only available inside a running task") from None


class TaskContext:
    """What a running task knows about itself: its record, progress, cancellation."""

    def __init__(self, task: Task, worker: Worker) -> None:
        self.task = task
        self._worker = worker
        self.cancelled = False
        """True once someone asked this task to stop: finish up and return."""

    @property
    def attempt(self) -> int:
        return self.task.attempts

    def progress(self, fraction: float, message: str = "") -> None:
        """Record how far the task has got (0 to 1); written by the worker's next beat."""
        self._worker._progress[self.task.id] = Progress(fraction, message)


@dataclass
class _Running:
    claim: Claim
    context: TaskContext
    job: asyncio.Task[Any]
    started: float
    cancel_at: float | None = None


class Worker:
    """Runs a queue's tasks: ``async def`` on the loop, ``def`` in threads, or in processes."""

    def __init__(
        self,
        queue: Queue,
        *,
        concurrency: int = 10,
        names: list[str] | None = None,
        poll_interval: Duration = 0.1,
        heartbeat: Duration | None = None,
        grace: Duration = 30.0,
        cancel_grace: Duration = 5.0,
        worker_id: str | None = None,
        schedule: bool = True,
        signals: bool = True,
    ) -> None:
        self.queue = queue
        # Off when a host (uvicorn, say) owns SIGTERM/SIGINT and calls stop() itself.
        self.signals = signals
        self.schedule = schedule
        self.clock = queue.clock
        self.concurrency = check_int("Worker", "concurrency", concurrency, minimum=1)
        self.names = names
        self.poll_interval = check_seconds("Worker", "poll_interval", poll_interval)
        self.lease = queue.lease
        self.heartbeat = (
            self.lease / 3 if heartbeat is None else check_seconds("Worker", "heartbeat", heartbeat)
        )
        self.grace = check_seconds("Worker", "grace", grace)
        self.cancel_grace = check_seconds("Worker", "cancel_grace", cancel_grace)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._running: dict[str, _Running] = {}
        self._progress: dict[str, Progress] = {}
        self._stopping = asyncio.Event()
        self._wake: asyncio.Event | None = None
        self._finishing: list[tuple[str, int, bytes | None, asyncio.Future[bool]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self.events: collections.Counter[str] = collections.Counter()
        """What this worker did, by event: claimed, succeeded, retried, dead, cancelled,
        lease_lost, reaped, released — the counts the metrics read."""
        self._listeners = Listeners()

    def add_listener(self, listener: Listener, *, kinds: Iterable[str] | None = None) -> None:
        """Call ``listener(event)`` for each task event this worker logs (or those of
        ``kinds``), as the resilience strategies do: ``event.kind`` is the event
        (``claimed``, ``succeeded``, ``retried``, ``dead`` ...), ``event.attributes``
        holds the ``task`` and the logged fields. An attempt that ends carries
        ``seconds``, its run time on the worker's clock.

        Listeners run on the worker's loop, so they must be quick; one that raises
        is logged and ignored.

        >>> worker.add_listener(lambda e: print(e.kind, e.attributes["task"].name))
        """
        if not callable(listener):
            raise TypeError(f"Worker.add_listener needs a callable, got {listener!r}")
        self._listeners.add(listener, kinds)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; ValueError if it was not added."""
        self._listeners.remove(listener)

    def stop(self) -> None:
        """Stop claiming; running tasks get ``grace`` seconds, the rest go back to the queue."""
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()

    async def run(self, *, until_empty: bool = False) -> None:
        """Claim and run tasks until stopped (SIGTERM/SIGINT), or until none is left."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        installed = self._install_signals(loop) if self.signals else []
        beat = loop.create_task(self._beat())
        helpers = []
        scheduler = Scheduler(self.queue)
        if self.schedule and scheduler.periodic():
            await scheduler.run_due()  # ticks due now are there before the first claim
            helpers.append(loop.create_task(self._schedule(scheduler)))
        try:
            await self._claim_loop(until_empty)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            try:
                # The heartbeat goes on while running tasks finish: their leases
                # must not lapse during the grace period.
                await self._shut_down()
            finally:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals here
            installed.append(sig)
        return installed

    async def _claim_loop(self, until_empty: bool) -> None:
        backend = self.queue.backend
        assert self._wake is not None
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = await self.queue._call(
                        functools.partial(
                            backend.claim,
                            worker=self.id,
                            names=self.names,
                            now=self.queue.now(),
                            lease=self.lease,
                            limit=free,
                        )
                    )
                except Exception:
                    # A busy store ("database is locked") is not the end of the
                    # worker: wait a poll interval and try again.
                    log.exception("worker %s: claiming failed; retrying", self.id)
                    self.events["claim_failed"] += 1
                    await asyncio.sleep(self.poll_interval)
                    continue
            self.events["claimed"] += len(claims)
            for claim in claims:
                self._start(claim)
            if claims:
                continue
            if until_empty and not self._running:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _start(self, claim: Claim) -> None:
        context = TaskContext(claim.task, self)
        job = asyncio.get_running_loop().create_task(self._execute(claim, context))
        self._running[claim.task.id] = _Running(claim, context, job, self.clock.now())
        job.add_done_callback(lambda _: self._finished(claim.task.id))

    def _finished(self, task_id: str) -> None:
        self._running.pop(task_id, None)
        self._progress.pop(task_id, None)
        if self._wake is not None:
            self._wake.set()  # a slot is free: claim again now

    async def _execute(self, claim: Claim, context: TaskContext) -> None:
        try:
            await self._run_claim(claim, context)
        except Exception:
            # The store failed while recording the outcome: the lease lapses and
            # the reaper gives the task another attempt (at least once).
            log.exception("worker %s: recording task %s failed", self.id, claim.task.id)
            self.events["record_failed"] += 1

    async def _run_claim(self, claim: Claim, context: TaskContext) -> None:
        task = claim.task
        definition = self.queue.tasks.get(task.name)
        if definition is None:
            await self._fail(
                claim,
                TaskError("UnknownTask", f"no task named {task.name!r} is registered here"),
                retry=False,
            )
            return
        try:
            args, kwargs = decode_payload(payload_serializer(claim.payload_format), claim.payload)
        except Exception as exc:
            await self._fail(claim, _error_of(exc, "the task's payload is corrupt"), retry=False)
            return
        try:
            result = await self._invoke(definition, context, args, kwargs)
        except asyncio.CancelledError:
            if self._stopping.is_set() and task.id not in self._cancelled_ids():
                raise  # shutdown: the task goes back to the queue
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # this cancellation is handled: record it
            await self._fail(claim, TaskError("Cancelled", "the task was cancelled"), retry=False)
            return
        except Exception as exc:
            await self._fail(claim, _error_of(exc), retry=True, definition=definition)
            return
        try:
            encoded = self.queue.serializer.dumps(result) if result is not None else None
        except Exception as exc:
            await self._fail(
                claim, _error_of(exc, "the task's result cannot be stored"), retry=False
            )
            return
        seconds = self._ran(task)
        if await self._commit_success(task, encoded):
            self._event("succeeded", logging.DEBUG, "task succeeded", task, seconds=seconds)
        else:
            self._event(
                "lease_lost",
                logging.WARNING,
                "task finished after its lease was lost",
                task,
                seconds=seconds,
            )

    async def _commit_success(self, task: Task, encoded: bytes | None) -> bool:
        """Record a success; successes that finish while a commit is under way are
        written together by the next one (group commit: one fsync for many)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finishing.append((task.id, task.attempts, encoded, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_loop())
        return await asyncio.shield(future)

    async def _commit_loop(self) -> None:
        while self._finishing:
            batch, self._finishing = self._finishing, []
            items = [(task_id, attempt, encoded) for task_id, attempt, encoded, _ in batch]
            try:
                done = await self.queue._call(
                    self.queue.backend.succeed_many, self.id, items, self.queue.now()
                )
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for task_id, _, _, future in batch:
                if not future.done():
                    future.set_result(task_id in done)

    def _event(self, name: str, level: int, message: str, task: Task, **fields: Any) -> None:
        """Count an event and log it as a structured record (fields in ``extra``)."""
        self.events[name] += 1
        if self._listeners:
            self._listeners.emit(self.id, name, self.clock.now(), task=task, **fields)
        if log.isEnabledFor(level):
            log.log(
                level,
                message,
                extra={
                    "event": name,
                    "worker": self.id,
                    "task_id": task.id,
                    "task": task.name,
                    "attempt": task.attempts,
                    "owner": task.owner,
                    **fields,
                },
            )

    def _ran(self, task: Task) -> float:
        """Seconds since this worker started ``task``'s attempt, on its clock."""
        running = self._running.get(task.id)
        return 0.0 if running is None else self.clock.now() - running.started

    def _cancelled_ids(self) -> set[str]:
        return {tid for tid, run in self._running.items() if run.context.cancelled}

    async def _invoke(
        self,
        definition: TaskDefinition[Any, Any],
        context: TaskContext,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        timeout = context.task.timeout
        _current.set(context)
        loop = asyncio.get_running_loop()
        if definition.executor == "async":
            async with asyncio.timeout(timeout):
                return await definition.fn(*args, **kwargs)
        if definition.executor == "thread":
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix="buttress-task"
                )
            run = contextvars.copy_context().run
            started = asyncio.Event()

            def body() -> Any:
                loop.call_soon_threadsafe(started.set)
                return run(definition.fn, *args, **kwargs)

            # A thread can't be stopped: on timeout the worker stops waiting and
            # records the failure; the thread finishes on its own. The timeout
            # starts once the function runs, not while it waits for a thread.
            future = loop.run_in_executor(self._threads, body)
            await started.wait()
            return await asyncio.wait_for(future, timeout)
        return await _in_process(_reference(definition.fn), args, kwargs, timeout)

    async def _fail(
        self,
        claim: Claim,
        error: TaskError,
        *,
        retry: bool,
        definition: TaskDefinition[Any, Any] | None = None,
    ) -> None:
        task = claim.task
        seconds = self._ran(task)
        retry_at = None
        if retry and definition is not None and task.attempts <= task.max_retries:
            retry_at = self.queue.now() + definition.backoff.delay(task.attempts)
        if error.type == "Cancelled":
            self._event("cancelled", logging.INFO, "task cancelled", task, seconds=seconds)
        elif retry_at is not None:
            self._event(
                "retried",
                logging.WARNING,
                "task failed; retrying",
                task,
                error_type=error.type,
                error=error.message,
                retry_at=retry_at,
                seconds=seconds,
            )
        else:
            self._event(
                "dead",
                logging.ERROR,
                "task failed; dead-lettered",
                task,
                error_type=error.type,
                error=error.message,
                seconds=seconds,
            )
        await self.queue._call(
            lambda: self.queue.backend.fail(
                self.id, task.id, task.attempts, error, retry_at, self.queue.now()
            )
        )

    async def _beat(self) -> None:
        """Renew leases, write progress, honour cancel requests, reap lapsed leases."""
        since_reap = 0.0
        while True:
            await self.clock.sleep_async(self.heartbeat)
            try:
                since_reap = await self._beat_once(since_reap)
            except Exception:
                # A busy or failing store must not stop the heartbeat for good: the
                # leases would lapse while this worker keeps running their tasks.
                log.exception("worker %s: heartbeat failed; retrying at the next beat", self.id)

    async def _beat_once(self, since_reap: float) -> float:
        """One beat; returns the time since the last reaping."""
        backend = self.queue.backend
        ids = list(self._running)
        now = self.queue.now()
        if ids:
            held = await self.queue._call(backend.heartbeat, self.id, ids, now + self.lease)
            for task_id in set(ids) - held:
                running = self._running.get(task_id)
                if running is not None:
                    self._event(
                        "lease_lost",
                        logging.WARNING,
                        "lease lost; another worker may run it",
                        running.claim.task,
                    )
            for task_id, progress in list(self._progress.items()):
                await self.queue._call(backend.progress, self.id, task_id, progress)
            await self._honour_cancels(ids, now)
        if self.queue.aging is not None:
            await self.queue._call(backend.age, now, self.queue.aging)
        since_reap += self.heartbeat
        if since_reap >= self.lease:
            since_reap = 0.0
            reaped = await self.queue._call(backend.reap, now)
            if reaped:
                self.events["reaped"] += len(reaped)
                log.warning(
                    "re-queued tasks whose worker stopped renewing their lease",
                    extra={"event": "reaped", "worker": self.id, "task_ids": reaped},
                )
        return since_reap

    async def _schedule(self, scheduler: Scheduler) -> None:
        """Enqueue periodic ticks as they come due (once each, across all schedulers)."""
        while True:
            due = scheduler.next_due()
            wait = 60.0 if due is None else max(0.0, due - self.queue.now())
            await self.clock.sleep_async(wait)
            while True:
                try:
                    stored = await scheduler.run_due()
                except Exception:
                    # Missing a beat must not stop the schedule: try again shortly.
                    log.exception("worker %s: enqueueing a periodic tick failed", self.id)
                    await self.clock.sleep_async(max(self.poll_interval, 0.01))
                    continue
                break
            if stored and self._wake is not None:
                self._wake.set()

    async def _honour_cancels(self, ids: list[str], now: float) -> None:
        requested = await self.queue._call(self.queue.backend.cancel_requests, ids)
        for task_id, forced in requested.items():
            running = self._running.get(task_id)
            if running is None:
                continue
            if forced:
                # Stop now: a coroutine is cancelled; a thread can't be, so the
                # worker stops waiting for it (abandoned) and records the cancel.
                running.context.cancelled = True
                running.job.cancel()
            elif not running.context.cancelled:
                running.context.cancelled = True
                running.cancel_at = now + self.cancel_grace
            elif running.cancel_at is not None and now >= running.cancel_at:
                running.job.cancel()  # past the grace period: asyncio cancellation

    async def _shut_down(self) -> None:
        running = list(self._running.values())
        if running:
            _, pending = await asyncio.wait([run.job for run in running], timeout=self.grace)
            if pending:
                for job in pending:
                    job.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                if self._committer is not None:
                    # Successes already being written must land before the rest is
                    # given back, or a finished task would be queued to run again.
                    await asyncio.gather(self._committer, return_exceptions=True)
                left = [run.claim.task.id for run in running if run.job in pending]
                await self.queue._call(self.queue.backend.release, self.id, left, self.queue.now())
                self.events["released"] += len(left)
                log.warning(
                    "shutdown: running tasks given back to the queue",
                    extra={"event": "released", "worker": self.id, "task_ids": left},
                )
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


async def _in_process(
    fn: tuple[str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limit: float | None,
) -> Any:
    """Run ``fn`` in a process of its own, which a timeout or a forced cancel terminates.

    One process per task (from a fork server: no copy of this process's threads
    or connections) rather than a pool: a pool can't stop one of its tasks.
    ``fn`` must be importable by its module and name, as with any process pool.
    """
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(sender, fn, args, kwargs), name="buttress-task", daemon=True
    )
    process.start()
    sender.close()
    try:
        async with asyncio.timeout(limit):
            while not await asyncio.to_thread(receiver.poll, 0.05):
                if not process.is_alive() and not receiver.poll():
                    raise RuntimeError(f"the task's process died (exit code {process.exitcode})")
        outcome = receiver.recv()
    except BaseException:
        process.terminate()  # timed out or cancelled: stop the work itself
        raise
    finally:
        await asyncio.to_thread(process.join, 5)
        receiver.close()
    if outcome[0] == "ok":
        return outcome[1]
    _, type_name, message, trace = outcome
    raise ProcessTaskError(type_name, message, trace)


class ProcessTaskError(Exception):
    """An exception raised by a task in its process, carried back as text."""

    def __init__(self, type_name: str, message: str, trace: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.trace = trace


def _reference(fn: Callable[..., Any]) -> tuple[str, str]:
    """Where the child finds ``fn``: by module and qualified name, as pickle would, but
    without requiring that name to be the bare function (``@queue.task`` rebinds it)."""
    return fn.__module__, fn.__qualname__


def _resolve(reference: tuple[str, str]) -> Callable[..., Any]:
    module_name, qualname = reference
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target.fn if isinstance(target, TaskDefinition) else target


def _child(
    sender: Any, reference: tuple[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    try:
        result = _resolve(reference)(*args, **kwargs)
    except BaseException as exc:
        sender.send(("error", type(exc).__qualname__, str(exc), traceback.format_exc()))
    else:
        sender.send(("ok", result))
    finally:
        sender.close()


def _error_of(exc: BaseException, message: str | None = None) -> TaskError:
    if isinstance(exc, ProcessTaskError):
        return TaskError(exc.type_name, message or str(exc), exc.trace)
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "the task ran past its timeout"
    else:
        text = message or str(exc)
    return TaskError(
        type(exc).__qualname__,
        text,
        "".join(traceback.format_exception(exc)),
    )

"""Periodic tasks: ``@queue.periodic(every=60)`` or ``@queue.periodic(cron="*/15 * * * *")``.

A scheduler (every worker runs one) enqueues each tick of each periodic task.
The task id of a tick is derived from the task's name and the tick's time, so
however many schedulers run, a tick is stored once: the second enqueue of the
same id is refused by the backend and ignored here.

Ticks are not caught up: a scheduler enqueues ticks from the moment it starts,
not the ones missed while no scheduler ran (the way cron behaves). Cron
expressions are read in UTC by croniter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from buttress.tasks._model import Task, tick_task_id

if TYPE_CHECKING:
    from buttress.tasks._queue import Queue, TaskDefinition

__all__ = ["Schedule", "Scheduler"]

log = logging.getLogger("buttress.tasks")


class Schedule:
    """When a periodic task is due: every ``every`` seconds, or by a cron expression."""

    def __init__(self, *, every: float | None = None, cron: str | None = None) -> None:
        if (every is None) == (cron is None):
            raise ValueError("a periodic task needs every= or cron=, and not both")
        self.every = every
        self.cron = cron
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int | float) or not every > 0
        ):
            raise ValueError(f"every= must be a positive number of seconds, got {every!r}")
        if cron is not None:
            from croniter import croniter  # noqa: PLC0415 - only periodic tasks need it

            if not isinstance(cron, str) or not croniter.is_valid(cron):
                raise ValueError(f"cron= is not a valid cron expression: {cron!r}")

    def latest(self, now: float) -> float:
        """The last tick at or before ``now``."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        from croniter import croniter  # noqa: PLC0415

        assert self.cron is not None
        start = datetime.fromtimestamp(now, UTC)
        if croniter.match(self.cron, start) and start.second == 0 and start.microsecond == 0:
            return now
        return float(croniter(self.cron, start).get_prev(float))

    def after(self, tick: float) -> float:
        """The first tick after ``tick``."""
        if self.every is not None:
            return tick + self.every
        from croniter import croniter  # noqa: PLC0415

        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(tick, UTC)).get_next(float))

    def __repr__(self) -> str:
        return f"every {self.every:g} s" if self.every is not None else f"cron {self.cron!r}"


class Scheduler:
    """Enqueues the ticks of a queue's periodic tasks as they come due."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.started = queue.now()
        self._last: dict[str, float] = {}

    def periodic(self) -> list[TaskDefinition[Any, Any]]:
        return [task for task in self.queue.tasks.values() if task.schedule is not None]

    async def run_due(self) -> list[Task]:
        """Enqueue every tick due now that this scheduler hasn't enqueued yet."""
        now = self.queue.now()
        stored = []
        for definition in self.periodic():
            schedule = definition.schedule
            assert schedule is not None
            tick = schedule.latest(now)
            if tick < self.started or tick <= self._last.get(definition.name, -math.inf):
                continue
            new = dataclasses.replace(
                self.queue.prepare(definition, eta=tick), id=tick_task_id(definition.name, tick)
            )
            try:
                (task,) = await self.queue.enqueue_many([new])
            except ValueError as exc:
                if "already exists" not in str(exc):
                    raise
                self._last[definition.name] = tick  # another scheduler stored it first
                continue
            self._last[definition.name] = tick
            stored.append(task)
        return stored

    def next_due(self) -> float | None:
        """When the next tick of any periodic task comes (None if there are none)."""
        now = self.queue.now()
        ticks = [d.schedule.after(d.schedule.latest(now)) for d in self.periodic() if d.schedule]
        return min(ticks) if ticks else None

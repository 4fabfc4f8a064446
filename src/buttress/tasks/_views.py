"""Tasks and queue stats as JSON: the one shape the API and the command line show."""

from __future__ import annotations

from typing import Any

from buttress._jsonable import jsonable
from buttress.errors import redact
from buttress.tasks._backend import QueueStats
from buttress.tasks._model import Priority, Task, TaskStatus

__all__ = ["stats_view", "task_view"]


def task_view(task: Task) -> dict[str, Any]:
    """``task`` as JSON values. Its error's message is redacted; its traceback stays
    in the logs (a task's owner may read the error, not the server's internals)."""
    error = task.error
    return {
        "id": task.id,
        "name": task.name,
        "status": task.status.value,
        "priority": task.priority.label,
        "owner": task.owner,
        "attempts": task.attempts,
        "max_retries": task.max_retries,
        "args": jsonable(task.args),
        "kwargs": jsonable(task.kwargs),
        "tags": list(task.tags),
        "metadata": jsonable(task.metadata),
        "progress": task.progress.fraction,
        "progress_message": task.progress.message,
        "error": None if error is None else {"type": error.type, "message": redact(error.message)},
        "enqueued_at": task.enqueued_at,
        "eta": task.eta,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }


def stats_view(stats: QueueStats) -> dict[str, Any]:
    """Queue stats as JSON values, every status and priority present."""
    return {
        "by_status": {s.value: stats.by_status.get(s, 0) for s in TaskStatus},
        "by_priority": {p.label: stats.by_priority.get(p, 0) for p in Priority},
        "finished_last_minute": stats.finished_last_minute,
        "mean_wait_seconds": stats.mean_wait_seconds,
        "mean_run_seconds": stats.mean_run_seconds,
        "oldest_waiting_seconds": stats.oldest_waiting_seconds,
        "dead_letters": [
            {"name": name, "error_type": error_type, "count": count}
            for (name, error_type), count in sorted(stats.dead_letters.items())
        ],
    }

"""Durable background tasks: priorities, retries, a dead-letter queue, leases.

>>> from buttress.tasks import Queue, Worker, Priority
>>> queue = Queue.from_url("sqlite:///buttress.db")
>>> @queue.task(priority=Priority.HIGH, retries=3)
... async def send_email(to: str) -> None: ...
>>> await send_email.enqueue("a@example.com")
>>> await Worker(queue, concurrency=10).run(until_empty=True)

``buttress worker --app myapp.tasks:queue`` runs a worker process. See
``docs/tasks.md`` for the guarantees (leases, at-least-once) and the options.
"""

from buttress.tasks._backend import Backend, Claim, NewTask, Page, QueueStats, TaskFilter
from buttress.tasks._model import Priority, Progress, Task, TaskError, TaskStatus, new_task_id
from buttress.tasks._queue import Backoff, Queue, TaskDefinition
from buttress.tasks._worker import TaskContext, Worker, current_task

__all__ = [
    "Backend",
    "Backoff",
    "Claim",
    "NewTask",
    "Page",
    "Priority",
    "Progress",
    "Queue",
    "QueueStats",
    "Task",
    "TaskContext",
    "TaskDefinition",
    "TaskError",
    "TaskFilter",
    "TaskStatus",
    "Worker",
    "current_task",
    "new_task_id",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("buttress.tasks._"):
        _obj.__module__ = __name__
del _name, _obj

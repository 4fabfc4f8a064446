"""Durable background tasks: priorities, retries, a dead-letter queue, leases.

Being built (issue 4): so far the task model — priorities, statuses, ids,
the stored record — and the argument payload format.
"""

from buttress.tasks._model import Priority, Progress, Task, TaskError, TaskStatus, new_task_id

__all__ = ["Priority", "Progress", "Task", "TaskError", "TaskStatus", "new_task_id"]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("buttress.tasks._"):
        _obj.__module__ = __name__
del _name, _obj

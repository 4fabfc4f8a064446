"""An application module for worker subprocesses (the CLI and crash tests).

``buttress worker --app crash_app:queue`` imports it. The queue's file comes from
``CRASH_APP_QUEUE_URL`` and its lease from ``CRASH_APP_LEASE`` (seconds); each run
of ``record`` appends ``task_id attempt pid`` to ``<CRASH_APP_LOG_DIR>/<pid>.log``,
so the test can tell every execution apart, even of a process killed with -9.
"""

from __future__ import annotations

import os

from buttress.tasks import Queue, current_task

queue = Queue.from_url(
    os.environ["CRASH_APP_QUEUE_URL"], lease=float(os.environ.get("CRASH_APP_LEASE", "30"))
)

_log_fd: int | None = None


@queue.task
async def record(n: int) -> int:
    """Note this execution, then return ``n``."""
    global _log_fd
    if _log_fd is None:
        path = os.path.join(os.environ["CRASH_APP_LOG_DIR"], f"{os.getpid()}.log")
        _log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    task = current_task().task
    # One write() of one line on an O_APPEND file: the kernel keeps it whole,
    # and a kill -9 right after cannot lose it (no user-space buffer).
    os.write(_log_fd, f"{task.id} {task.attempts} {os.getpid()}\n".encode())
    return n

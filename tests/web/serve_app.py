"""An application module for ``buttress serve --app serve_app:queue`` (tests/web/test_serve.py).

The test runs the service in a temporary directory with this directory on
``PYTHONPATH``, so the queue's relative file lands in that temporary directory.
"""

from __future__ import annotations

from buttress.tasks import Queue

queue = Queue.from_url("sqlite:///serve_app.db")


@queue.task
async def add(x: int, y: int) -> int:
    """Add two numbers (the in-process worker runs it)."""
    return x + y

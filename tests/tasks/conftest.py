"""The backend conformance suite's fixtures.

``test_queue.py``, ``test_worker.py`` and ``test_periodic.py`` drive the queue
only through its public API, against every backend in ``BACKENDS``: the Redis
and PostgreSQL backends join this list (with their servers started by the
fixtures in ``tests/conftest.py``) and must pass the same tests.
``test_sqlite_backend.py`` tests the SQLite backend's own contract directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buttress.clock import ManualClock
from buttress.tasks import Queue

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A queue URL of a fresh, empty queue on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    raise AssertionError(f"no fixture for backend {request.param!r}")


@pytest.fixture
def queue(backend_url: str, clock: ManualClock) -> Iterator[Queue]:
    made = Queue.from_url(backend_url, clock=clock)
    yield made
    made.close()

"""Shared fixtures: a manual clock, global switches reset around every test, and real
Redis and memcached servers.

Server fixtures (see ``tests/servers.py``):

* ``redis_server`` / ``memcached_server`` (session): one server for the whole run,
  with ``.host``, ``.port``, ``.url``, ``.stop()``, ``.kill()``, ``.start()`` (same
  port), ``.pause()`` / ``.resume()`` and ``.flush()``.
* ``redis_url`` / ``memcached_url``: that server's URL, flushed (and restarted or
  resumed if an earlier test stopped it) before the test.
* ``fresh_redis`` / ``fresh_memcached``: a dedicated server the test may kill, pause
  and restart as it likes; ``redis_server_factory`` / ``memcached_server_factory``
  make as many as a test needs. All are stopped after the test.

A missing server binary fails the test, with how to install it: these tests are
never skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from buttress.clock import ManualClock
from buttress.resilience import set_testing
from buttress.tasks import Queue
from servers import MemcachedServer, RedisServer, ServerError, ServerProcess, reap_orphans

S = TypeVar("S", bound=ServerProcess)


@pytest.fixture(autouse=True)
def _reset_testing_mode() -> Iterator[None]:
    """Every test starts and ends with the retry testing mode off."""
    set_testing(False)
    yield
    set_testing(False)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _started(server: S) -> S:
    """Start ``server``, failing (never skipping) the test if it cannot run."""
    try:
        return server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def _reaped() -> None:
    """Kill servers left behind by an earlier run that was killed outright."""
    reap_orphans()


@pytest.fixture(scope="session")
def redis_server(_reaped: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _started(RedisServer(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def memcached_server(
    _reaped: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MemcachedServer]:
    server = _started(MemcachedServer(tmp_path_factory.mktemp("memcached")))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis server's URL, its data flushed before the test."""
    _started(redis_server)  # a no-op unless an earlier test stopped or paused it
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def memcached_url(memcached_server: MemcachedServer) -> str:
    """The session memcached server's URL, its data flushed before the test."""
    _started(memcached_server)
    memcached_server.flush()
    return memcached_server.url


def _factory(kind: type[S], directory: Path) -> Iterator[Callable[[], S]]:
    servers: list[S] = []

    def make() -> S:
        server = kind(directory / f"{kind.binary}-{len(servers)}")
        servers.append(server)
        return _started(server)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server_factory(_reaped: None, tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Call it for a dedicated, started Redis server; all are stopped after the test."""
    yield from _factory(RedisServer, tmp_path)


@pytest.fixture
def memcached_server_factory(
    _reaped: None, tmp_path: Path
) -> Iterator[Callable[[], MemcachedServer]]:
    """Call it for a dedicated, started memcached server; all are stopped after the test."""
    yield from _factory(MemcachedServer, tmp_path)


@pytest.fixture
def fresh_redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    """A Redis server of this test's own, to kill, pause and restart."""
    return redis_server_factory()


@pytest.fixture
def fresh_memcached(memcached_server_factory: Callable[[], MemcachedServer]) -> MemcachedServer:
    """A memcached server of this test's own, to kill, pause and restart."""
    return memcached_server_factory()


# --- the task queue's backend conformance suite -----------------------------------
# tests/tasks/test_queue.py, test_worker.py and test_periodic.py drive the queue only
# through its public API, against every backend in TASK_BACKENDS: the Redis and
# PostgreSQL backends join this list (their servers started by the fixtures above)
# and must pass the same tests. test_sqlite_backend.py tests SQLite's own contract.

TASK_BACKENDS = ["sqlite"]


@pytest.fixture(params=TASK_BACKENDS)
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

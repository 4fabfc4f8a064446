"""The embedded task backend: one SQLite file in WAL mode, safe for many processes.

>>> backend = SqliteBackend.from_url("sqlite:///buttress.db")   # or SqliteBackend("buttress.db")
>>> backend.enqueue([new_task], now=clock.now())
>>> claims = backend.claim(worker="w1", names=None, now=clock.now(), lease=30, limit=10)
>>> backend.succeed("w1", claims[0].task.id, claims[0].task.attempts, b"...", now=clock.now())

Every state change is one statement or one ``BEGIN IMMEDIATE`` transaction, so
worker processes sharing the file never claim one task twice, and a crash at any
instant leaves each task in a state :meth:`SqliteBackend.reap` recovers from.
Each thread gets its own connection (reads run side by side under WAL); writers
queue on SQLite's write lock, waiting up to ``busy_timeout`` seconds.

Owner isolation is in the SQL: a call scoped to an owner puts ``owner = ?`` in
its ``WHERE`` clause, so another owner's rows are never read, counted or changed.

Payloads (the encoded arguments) and results are opaque bytes here: the queue
encodes and decodes them. A task read back has ``args=()`` and ``kwargs={}``,
and ``result`` holds the stored bytes (cleared once its ``result_ttl`` ran out,
at the next :meth:`~SqliteBackend.reap`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from buttress.errors import ConfigurationError, DataIntegrityError
from buttress.tasks._backend import Claim, NewTask, Page, QueueStats, TaskFilter
from buttress.tasks._model import Priority, Progress, Task, TaskError, TaskStatus
from buttress.tasks._payload import decode_payload, payload_serializer

__all__ = ["SCHEMA_VERSION", "SqliteBackend"]

SCHEMA_VERSION = 1
"""The layout this module writes (``PRAGMA user_version``); a later one migrates from it."""

_APPLICATION_ID = 0x42545251  # "BTRQ": marks the file as a buttress task queue
_MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
_STATS_WINDOW = 60.0
_STATS_SAMPLE = 1000  # recent finished tasks behind the mean wait and run times
_LEASE_EXPIRED = TaskError(type="LeaseExpired", message="lease expired: the worker died or stalled")

# The literal lists below must match the partial indexes' WHERE clauses word
# for word: SQLite only uses a partial index when the query repeats its condition.
_WAITING_SQL = "status IN ('queued', 'scheduled', 'failed')"
_LIVE_SQL = "status NOT IN ('succeeded', 'dead', 'cancelled')"

_SCHEMA = f"""
CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    payload           BLOB NOT NULL,
    payload_format    TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    status            TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_retries       INTEGER NOT NULL,
    timeout           REAL,
    eta               REAL NOT NULL,
    owner             TEXT,
    tags              TEXT NOT NULL DEFAULT '[]',
    metadata          TEXT NOT NULL DEFAULT '{{}}',
    progress          REAL NOT NULL DEFAULT 0,
    progress_message  TEXT NOT NULL DEFAULT '',
    result            BLOB,
    result_ttl        REAL,
    result_expires_at REAL,
    error_type        TEXT,
    error_message     TEXT,
    error_traceback   TEXT,
    enqueued_at       REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    dedup_key         TEXT,
    lease_worker      TEXT,
    lease_until       REAL,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    aged_at           REAL
);
-- claim: the next runnable task in (priority, eta, id) order, straight off the index.
CREATE INDEX tasks_runnable ON tasks (priority, eta, id) WHERE {_WAITING_SQL};
-- one live task per (owner, dedup key): enforced, not just looked up.
CREATE UNIQUE INDEX tasks_dedup ON tasks (dedup_key, ifnull(owner, ''))
    WHERE dedup_key IS NOT NULL AND {_LIVE_SQL};
CREATE INDEX tasks_owner ON tasks (owner, id);
-- listing by status, stats, and reap (running rows are few: one per busy worker slot).
CREATE INDEX tasks_status ON tasks (status, id);
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_results ON tasks (result_expires_at) WHERE result_expires_at IS NOT NULL;
"""

# Everything a Task needs, without the payload (lists and gets never decode it).
_TASK_COLUMNS = (
    "id, name, priority, status, attempts, max_retries, timeout, eta, owner, tags, metadata, "
    "progress, progress_message, result, error_type, error_message, error_traceback, "
    "enqueued_at, started_at, finished_at, dedup_key, payload, payload_format"
)
_CLAIM_COLUMNS = f"{_TASK_COLUMNS}, payload, payload_format, lease_until"
_N_TASK_COLUMNS = _TASK_COLUMNS.count(",") + 1


class SqliteBackend:
    """Tasks in one SQLite file (see the module docs); implements ``Backend``.

    ``path`` is the database file (created with its schema if missing) or
    ``":memory:"`` for a private in-memory database on a single connection.
    ``busy_timeout`` is how long a call waits for another writer's lock before
    ``sqlite3.OperationalError("database is locked")``.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ConfigurationError(
                f"the SQLite task backend needs SQLite >= 3.35 (for UPDATE ... RETURNING); "
                f"this Python links SQLite {sqlite3.sqlite_version}"
            )
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"SqliteBackend: path must be a str or a path, got {path!r}")
        path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise ValueError(f"SqliteBackend: path must be a non-empty file path, got {path!r}")
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ValueError(
                f"SqliteBackend: busy_timeout must be a number of seconds >= 0, "
                f"got {busy_timeout!r}"
            )
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self._memory = path == ":memory:"
        self._closed = False
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._local = threading.local()
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._shared: _Slot | None = None
        with self._session() as conn:
            self._prepare(conn)

    @classmethod
    def from_url(cls, url: str, *, busy_timeout: float = 5.0) -> SqliteBackend:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``;
        ``?busy_timeout=10`` in the URL sets the lock wait too."""
        path = cls.path_of(url)
        query = url.partition("?")[2]
        for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if key != "busy_timeout":
                raise ValueError(f"unknown option {key!r} in the SQLite URL: only busy_timeout")
            try:
                busy_timeout = float(value)
            except ValueError:
                raise ValueError(
                    f"busy_timeout in the SQLite URL must be seconds, got {value!r}"
                ) from None
        return cls(path, busy_timeout=busy_timeout)

    @staticmethod
    def path_of(url: str) -> str:
        """The database file a SQLite URL names, as :meth:`from_url` reads it, without
        opening it: ``"q.db"`` for ``sqlite:///q.db``, ``"/abs/q.db"`` for
        ``sqlite:////abs/q.db``; a ValueError for any other URL.

        >>> SqliteBackend.path_of("sqlite:///my%20queue.db?busy_timeout=10")
        'my queue.db'
        """
        if not isinstance(url, str):
            raise TypeError(f"a queue URL must be a str, got {url!r}")
        scheme, sep, rest = url.partition("://")
        if scheme != "sqlite" or not sep or not rest.startswith("/"):
            raise ValueError(
                f"not a SQLite URL: {url!r}; use sqlite:///relative.db, sqlite:////abs/path.db "
                "or sqlite:///:memory:"
            )
        path = rest[1:].partition("?")[0]
        if not path:
            raise ValueError(f"the SQLite URL {url!r} names no database file")
        return urllib.parse.unquote(path)

    def __repr__(self) -> str:
        return f"SqliteBackend({self.path!r})"

    # --- connections ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we say BEGIN and COMMIT ourselves
                check_same_thread=False,  # close() may run on another thread
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the task database {self.path!r}: {exc}") from exc
        try:
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigurationError(
                        f"the task database {self.path!r} cannot use WAL mode (got {mode!r}); "
                        "put it on a local file system"
                    )
            # FULL: in WAL mode every commit fsyncs the log, so an enqueue we have
            # acknowledged survives a power cut or OS crash, not only a process
            # crash (which NORMAL would already survive: the commit is in the OS
            # cache). "Fail loud, lose nothing" is the promise; the cost is one
            # fsync per transaction, which batching (enqueue_many, claim limit) amortizes.
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.OperationalError:  # locked, I/O: not the file's fault
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _unreadable(self.path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _slot(self) -> _Slot:
        self._check_open()
        if self._memory:
            # One in-memory database is one connection: every thread shares it.
            with self._guard:
                if self._shared is None:
                    self._shared = _Slot(self._connect())
                    self._finalizers.append(weakref.finalize(self._shared, self._shared.conn.close))
                return self._shared
        if os.getpid() != self._pid:
            # A forked child must not touch its parent's connections (SQLite's
            # locks are per process): forget them without closing, and open anew.
            with self._guard:
                if os.getpid() != self._pid:
                    for finalizer in self._finalizers:
                        finalizer.detach()
                    self._finalizers = []
                    self._local = threading.local()
                    self._pid = os.getpid()
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = _Slot(self._connect())
            with self._guard:
                if self._closed:  # closed while we connected
                    slot.conn.close()
                    self._check_open()
                # The connection closes when its thread ends (the thread-local
                # slot dies) or at close(), whichever comes first.
                self._finalizers = [f for f in self._finalizers if f.alive]
                self._finalizers.append(weakref.finalize(slot, slot.conn.close))
            self._local.slot = slot
        return slot

    @contextlib.contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        slot = self._slot()
        with slot.lock:
            yield slot.conn

    @contextlib.contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction. IMMEDIATE takes the write lock up front, so a
        read-modify-write can't be raced by another process between its steps."""
        with self._session() as conn:
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Create the schema in a new file, or check that an existing one is ours."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
                if version == 0 and not tables:
                    # executescript() would COMMIT first: run each statement in our transaction.
                    for statement in _SCHEMA.split(";"):  # no ";" inside the schema text
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                elif app_id != _APPLICATION_ID or version == 0:
                    raise DataIntegrityError(
                        f"{self.path!r} is a SQLite database but not a buttress task queue "
                        f"(application_id={app_id}, user_version={version}); "
                        "point the queue at a new file"
                    )
                elif version > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"the task database {self.path!r} has schema version {version}, newer "
                        f"than this buttress understands ({SCHEMA_VERSION}); upgrade buttress"
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:  # not a database, or malformed
            raise _unreadable(self.path, exc) from exc

    def close(self) -> None:
        """Close every connection; later calls raise RuntimeError. Idempotent."""
        with self._guard:
            self._closed = True
            finalizers, self._finalizers = self._finalizers, []
            self._shared = None
        for finalizer in finalizers:
            finalizer()

    # --- writing --------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask], now: float) -> builtins.list[Task]:
        """Store ``tasks`` in one transaction (see ``Backend.enqueue``); a ``dedup_key``
        live for the same owner returns that task instead of storing a new one."""
        now = _time("now", now)
        if isinstance(tasks, NewTask) or not isinstance(tasks, Sequence):
            raise TypeError(f"enqueue takes a sequence of NewTask, got {tasks!r}")
        rows = [_new_row(task, now) for task in tasks]
        if not rows:
            return []
        stored: list[Task] = []
        with self._transaction() as conn:
            for task, row in zip(tasks, rows, strict=True):
                if task.dedup_key is not None:
                    # Under BEGIN IMMEDIATE nobody else writes until we commit, so
                    # look-then-insert is race-free; the unique index backs it up.
                    found = conn.execute(
                        f"SELECT {_TASK_COLUMNS} FROM tasks WHERE dedup_key = ? "
                        f"AND ifnull(owner, '') = ? AND dedup_key IS NOT NULL AND {_LIVE_SQL}",
                        (task.dedup_key, task.owner or ""),
                    ).fetchone()
                    if found is not None:
                        stored.append(_task(found))
                        continue
                try:
                    conn.execute(_INSERT, row)
                except sqlite3.IntegrityError as exc:
                    if "tasks.id" in str(exc):
                        raise ValueError(f"a task with id {task.id!r} already exists") from None
                    raise
                stored.append(_stored(task, row))
        return stored

    def claim(
        self, *, worker: str, names: Sequence[str] | None, now: float, lease: float, limit: int
    ) -> builtins.list[Claim]:
        """Take up to ``limit`` runnable tasks in (priority, eta, id) order under a lease
        for ``worker``, counting the attempt: one ``UPDATE ... RETURNING``."""
        worker = _text("worker", worker)
        now = _time("now", now)
        lease = _time("lease", lease)
        if lease <= 0:
            raise ValueError(f"lease must be > 0 seconds, got {lease!r}")
        limit = _count("limit", limit, minimum=0)
        name_list = None if names is None else _texts("names", names)
        if limit == 0 or name_list == []:
            return []
        name_sql = "" if name_list is None else "AND name IN (SELECT value FROM json_each(?))"
        params: list[Any] = [worker, now + lease, now, now]
        if name_list is not None:
            params.append(json.dumps(name_list))
        params.append(limit)
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE tasks SET status = 'running', lease_worker = ?, lease_until = ?, "
                "attempts = attempts + 1, started_at = ?, progress = 0, progress_message = '' "
                "WHERE id IN ("
                # INDEXED BY: with no statistics the planner may prefer the status
                # index and sort every waiting task; the runnable index is already
                # in claim order, so the LIMIT stops after `limit` rows.
                f"  SELECT id FROM tasks INDEXED BY tasks_runnable WHERE {_WAITING_SQL} "
                f"  AND eta <= ? {name_sql}"
                "   ORDER BY priority, eta, id LIMIT ?"
                f") RETURNING {_CLAIM_COLUMNS}",
                params,
            ).fetchall()
        # RETURNING comes in no promised order: put the claims back in queue order.
        claims = [
            Claim(
                task=_task(row),
                payload=bytes(row[_N_TASK_COLUMNS]),
                payload_format=row[_N_TASK_COLUMNS + 1],
                worker=worker,
                lease_until=row[_N_TASK_COLUMNS + 2],
            )
            for row in rows
        ]
        claims.sort(key=lambda c: (c.task.priority, c.task.eta, c.task.id))
        return claims

    def heartbeat(self, worker: str, task_ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend the leases ``worker`` still holds to ``lease_until``; the ids it holds."""
        worker = _text("worker", worker)
        ids = _texts("task_ids", task_ids)
        lease_until = _time("lease_until", lease_until)
        if not ids:
            return set()
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE tasks SET lease_until = ? WHERE status = 'running' AND lease_worker = ? "
                "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                (lease_until, worker, json.dumps(ids)),
            ).fetchall()
        return {row[0] for row in rows}

    def progress(self, worker: str, task_id: str, progress: Progress) -> bool:
        """Record ``progress`` if ``worker`` still holds the task; False if not."""
        worker = _text("worker", worker)
        task_id = _text("task_id", task_id)
        if not isinstance(progress, Progress):
            raise TypeError(f"progress must be a Progress, got {progress!r}")
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE tasks SET progress = ?, progress_message = ? "
                "WHERE id = ? AND status = 'running' AND lease_worker = ?",
                (float(progress.fraction), progress.message, task_id, worker),
            )
        return cur.rowcount == 1

    def succeed(
        self, worker: str, task_id: str, attempt: int, result: bytes | None, now: float
    ) -> bool:
        """Mark the task succeeded with ``result`` if ``worker`` still holds the lease of
        ``attempt``; False (and nothing changes) if the lease was lost."""
        return task_id in self.succeed_many(worker, [(task_id, attempt, result)], now)

    def succeed_many(
        self,
        worker: str,
        finished: Sequence[tuple[str, int, bytes | None]],
        now: float,
    ) -> set[str]:
        """``succeed`` for several tasks in one transaction (one fsync for all: the
        worker's group commit); the ids whose lease was still held."""
        worker = _text("worker", worker)
        now = _time("now", now)
        rows = []
        for task_id, attempt, result in finished:
            if result is not None and not isinstance(result, bytes | bytearray | memoryview):
                raise TypeError(f"result must be bytes or None, got {type(result).__name__}")
            stored = None if result is None else bytes(result)
            rows.append((_text("task_id", task_id), _count("attempt", attempt, minimum=1), stored))
        done: set[str] = set()
        if not rows:
            return done
        with self._transaction() as conn:
            for task_id, attempt, result in rows:
                cur = conn.execute(
                    # A task that returns after a cancel request stopped at it: cancelled.
                    "UPDATE tasks SET status = CASE WHEN cancel_requested THEN 'cancelled' "
                    "ELSE 'succeeded' END, finished_at = ?, result = ?, "
                    "result_expires_at = CASE WHEN ? IS NULL OR result_ttl IS NULL THEN NULL "
                    "  ELSE ? + result_ttl END, "
                    "error_type = NULL, error_message = NULL, error_traceback = NULL, "
                    "lease_worker = NULL, lease_until = NULL "
                    "WHERE id = ? AND status = 'running' AND lease_worker = ? AND attempts = ?",
                    (now, result, result, now, task_id, worker, attempt),
                )
                if cur.rowcount == 1:
                    done.add(task_id)
        return done

    def fail(  # noqa: PLR0917 - the Backend protocol's signature
        self,
        worker: str,
        task_id: str,
        attempt: int,
        error: TaskError,
        retry_at: float | None,
        now: float,
    ) -> bool:
        """Record a failed attempt (if ``worker`` still holds the lease of ``attempt``):
        waiting as ``failed`` until ``retry_at``, or ``dead`` if it is None. A task
        someone asked to cancel is ``cancelled`` instead of retried."""
        worker = _text("worker", worker)
        task_id = _text("task_id", task_id)
        attempt = _count("attempt", attempt, minimum=1)
        now = _time("now", now)
        retry_at = None if retry_at is None else _time("retry_at", retry_at)
        if not isinstance(error, TaskError):
            raise TypeError(f"error must be a TaskError, got {error!r}")
        if retry_at is None:
            status_sql, eta = "CASE WHEN cancel_requested THEN 'cancelled' ELSE 'dead' END", None
        else:
            status_sql, eta = (
                "CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END",
                retry_at,
            )
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE tasks SET status = {status_sql}, eta = ifnull(?, eta), "
                "finished_at = CASE WHEN ? IS NULL OR cancel_requested THEN ? END, "
                "error_type = ?, error_message = ?, error_traceback = ?, "
                "lease_worker = NULL, lease_until = NULL "
                "WHERE id = ? AND status = 'running' AND lease_worker = ? AND attempts = ?",
                (
                    eta,
                    retry_at,
                    now,
                    str(error.type),
                    str(error.message),
                    str(error.traceback),
                    task_id,
                    worker,
                    attempt,
                ),
            )
        return cur.rowcount == 1

    def release(self, worker: str, task_ids: Sequence[str], now: float) -> builtins.list[str]:
        """Give back running tasks ``worker`` still holds (a graceful shutdown): queued
        again with eta ``now``, and the attempt they were claimed for not counted.
        A task someone asked to cancel is ``cancelled`` instead. Returns their ids."""
        worker = _text("worker", worker)
        ids = _texts("task_ids", task_ids)
        now = _time("now", now)
        if not ids:
            return []
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE tasks SET "
                "status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END, "
                "finished_at = CASE WHEN cancel_requested THEN ? END, "
                "eta = ?, attempts = max(attempts - 1, 0), "
                "started_at = CASE WHEN attempts > 1 THEN started_at END, "
                "progress = 0, progress_message = '', lease_worker = NULL, lease_until = NULL "
                "WHERE status = 'running' AND lease_worker = ? "
                "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
                (now, now, worker, json.dumps(ids)),
            ).fetchall()
        return sorted(row[0] for row in rows)

    def age(self, now: float, every: float) -> int:
        """Move each task that has waited ``every`` seconds (since it was enqueued or
        last moved) one priority level up, so low priorities can't starve; the count."""
        now = _time("now", now)
        every = _time("every", every)
        if every <= 0:
            raise ValueError(f"every must be > 0 seconds, got {every!r}")
        with self._transaction() as conn:
            cur = conn.execute(
                # Only runnable tasks age, from when they became runnable: a task
                # still waiting for its delay or backoff isn't starving.
                "UPDATE tasks SET priority = priority - 1, aged_at = ? "
                f"WHERE {_WAITING_SQL} AND priority > 0 AND eta <= ? "
                "AND max(eta, ifnull(aged_at, enqueued_at)) <= ?",
                (now, now, now - every),
            )
            return cur.rowcount

    def reap(self, now: float) -> builtins.list[str]:
        """Running tasks whose lease ran out before ``now`` go back to the queue
        (eta ``now``), or to the dead letters once past ``max_retries`` (the lost
        attempt was counted at claim), or to ``cancelled`` if a cancel was asked.
        Returns their ids. Also drops results whose ``result_ttl`` ran out."""
        now = _time("now", now)
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE tasks SET "
                "status = CASE WHEN cancel_requested THEN 'cancelled' "
                "  WHEN attempts <= max_retries THEN 'queued' ELSE 'dead' END, "
                "eta = ?, "
                "finished_at = CASE WHEN cancel_requested OR attempts > max_retries THEN ? END, "
                "error_type = ?, error_message = ?, error_traceback = '', "
                "lease_worker = NULL, lease_until = NULL "
                "WHERE status = 'running' AND lease_until < ? RETURNING id",
                (now, now, _LEASE_EXPIRED.type, _LEASE_EXPIRED.message, now),
            ).fetchall()
            conn.execute(
                "UPDATE tasks SET result = NULL, result_expires_at = NULL "
                "WHERE result_expires_at IS NOT NULL AND result_expires_at <= ?",
                (now,),
            )
        return sorted(row[0] for row in rows)

    def cancel(self, where: TaskFilter, now: float, *, force: bool = False) -> builtins.list[Task]:
        """Waiting tasks become ``cancelled`` now; running ones get ``cancel_requested``
        (1: stop gracefully, 2: stop at once; the worker stops them). Returns the
        tasks touched, as they now are."""
        now = _time("now", now)
        sql, params = _where(where)
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE tasks SET status = 'cancelled', finished_at = ? "
                f"WHERE {_WAITING_SQL} AND {sql} RETURNING {_TASK_COLUMNS}",
                [now, *params],
            ).fetchall()
            rows += conn.execute(
                "UPDATE tasks SET cancel_requested = max(cancel_requested, ?) "
                f"WHERE status = 'running' AND {sql} RETURNING {_TASK_COLUMNS}",
                [2 if force else 1, *params],
            ).fetchall()
        return sorted((_task(row) for row in rows), key=lambda t: t.id)

    def cancel_requests(self, task_ids: Sequence[str]) -> dict[str, bool]:
        """Which of these running tasks someone asked to cancel: id -> forced."""
        ids = _texts("task_ids", task_ids)
        if not ids:
            return {}
        with self._session() as conn:
            rows = conn.execute(
                "SELECT id, cancel_requested FROM tasks "
                "WHERE id IN (SELECT value FROM json_each(?)) "
                "AND status = 'running' AND cancel_requested > 0",
                (json.dumps(ids),),
            ).fetchall()
        return {row[0]: row[1] == 2 for row in rows}

    def retry(self, where: TaskFilter, now: float) -> builtins.list[Task]:
        """Failed, dead or cancelled tasks go back to ``queued`` (eta ``now``) with their
        attempts, error and result cleared. A task whose ``dedup_key`` is live again
        (someone enqueued it anew) is left alone: it would run the same work twice."""
        now = _time("now", now)
        sql, params = _where(where)
        with self._transaction() as conn:
            # OR IGNORE skips exactly the rows the live-dedup unique index refuses.
            rows = conn.execute(
                "UPDATE OR IGNORE tasks SET status = 'queued', attempts = 0, eta = ?, "
                "error_type = NULL, error_message = NULL, error_traceback = NULL, "
                "result = NULL, result_expires_at = NULL, started_at = NULL, finished_at = NULL, "
                "progress = 0, progress_message = '', cancel_requested = 0 "
                "WHERE status IN ('failed', 'dead', 'cancelled') "
                f"AND {sql} RETURNING {_TASK_COLUMNS}",
                [now, *params],
            ).fetchall()
        return sorted((_task(row) for row in rows), key=lambda t: t.id)

    def delete(self, where: TaskFilter) -> int:
        """Delete the matching tasks, except running ones (a task is never removed
        before it finishes: cancel it first). Returns how many went."""
        sql, params = _where(where)
        with self._transaction() as conn:
            cur = conn.execute(f"DELETE FROM tasks WHERE status <> 'running' AND {sql}", params)
        return cur.rowcount

    # --- reading --------------------------------------------------------------------

    def get(self, task_id: str, *, owner: str | None = None) -> Task | None:
        """The task, or None if there is none with this id (for this owner)."""
        task_id = _text("task_id", task_id)
        owner = _owner(owner)
        with self._session() as conn:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ? AND (? IS NULL OR owner = ?)",
                (task_id, owner, owner),
            ).fetchone()
        return None if row is None else _task(row)

    def list(self, where: TaskFilter, *, cursor: str | None, limit: int) -> Page:
        """Matching tasks, newest first; pass the page's ``cursor`` for the next one."""
        sql, params = _where(where)
        limit = _count("limit", limit, minimum=1)
        if cursor is not None:
            cursor = _text("cursor", cursor)
            sql += " AND id < ?"
            params.append(cursor)
        with self._session() as conn:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {sql} ORDER BY id DESC LIMIT ?",
                [*params, limit + 1],
            ).fetchall()
        tasks = tuple(_task(row) for row in rows[:limit])
        # The cursor is the last id shown: ids sort by creation, so "id < cursor"
        # continues exactly where this page stopped, whatever was added since.
        return Page(tasks=tasks, cursor=tasks[-1].id if len(rows) > limit else None)

    def stats(self, *, owner: str | None, now: float) -> QueueStats:
        """Counts and timings, for ``owner``'s tasks only when one is given."""
        owner = _owner(owner)
        now = _time("now", now)
        scope = "(:owner IS NULL OR owner = :owner)"
        args = {"owner": owner, "now": now, "since": now - _STATS_WINDOW, "sample": _STATS_SAMPLE}
        # One read transaction: every number comes from the same snapshot.
        with self._transaction("DEFERRED") as conn:
            by_status = dict.fromkeys(TaskStatus, 0)
            for status, n in conn.execute(
                f"SELECT status, count(*) FROM tasks WHERE {scope} GROUP BY status", args
            ):
                by_status[TaskStatus(status)] = n
            by_priority = dict.fromkeys(Priority, 0)
            for priority, n in conn.execute(
                f"SELECT priority, count(*) FROM tasks WHERE {_WAITING_SQL} AND {scope} "
                "GROUP BY priority",
                args,
            ):
                by_priority[Priority(priority)] = n
            finished = conn.execute(
                f"SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL AND {scope} "
                "AND finished_at > :since AND finished_at <= :now",
                args,
            ).fetchone()[0]
            wait, run = conn.execute(
                "SELECT avg(started_at - enqueued_at), avg(finished_at - started_at) FROM ("
                "  SELECT enqueued_at, started_at, finished_at FROM tasks "
                f"  WHERE finished_at IS NOT NULL AND {scope} "
                "   AND status IN ('succeeded', 'dead') AND started_at IS NOT NULL "
                "   ORDER BY finished_at DESC LIMIT :sample)",
                args,
            ).fetchone()
            oldest = conn.execute(
                f"SELECT min(min(eta, enqueued_at)) FROM tasks WHERE {_WAITING_SQL} "
                f"AND eta <= :now AND {scope}",
                args,
            ).fetchone()[0]
            dead = {
                (name, error_type): n
                for name, error_type, n in conn.execute(
                    "SELECT name, ifnull(error_type, ''), count(*) FROM tasks "
                    f"WHERE status = 'dead' AND {scope} GROUP BY 1, 2",
                    args,
                )
            }
        return QueueStats(
            by_status=by_status,
            by_priority=by_priority,
            finished_last_minute=finished,
            mean_wait_seconds=wait,
            mean_run_seconds=run,
            oldest_waiting_seconds=None if oldest is None else max(0.0, now - oldest),
            dead_letters=dead,
        )


class _Slot:
    """A connection and the lock that keeps it to one caller at a time."""

    __slots__ = ("__weakref__", "conn", "lock")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()


def _unreadable(path: str, exc: sqlite3.DatabaseError) -> DataIntegrityError:
    return DataIntegrityError(
        f"the task database {path!r} is not a readable SQLite database ({exc}); "
        "restore it from a backup or point the queue at a new file"
    )


# --- rows ---------------------------------------------------------------------------

_INSERT = (
    "INSERT INTO tasks (id, name, payload, payload_format, priority, status, max_retries, "
    "timeout, eta, owner, tags, metadata, result_ttl, enqueued_at, dedup_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _new_row(task: NewTask, now: float) -> tuple[Any, ...]:
    """The INSERT parameters of ``task``, after checking every field."""
    if not isinstance(task, NewTask):
        raise TypeError(f"enqueue takes NewTask records, got {task!r}")
    if not isinstance(task.payload, bytes | bytearray | memoryview):
        raise TypeError(f"payload must be bytes, got {type(task.payload).__name__}")
    timeout = None if task.timeout is None else _time("timeout", task.timeout)
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds or None, got {task.timeout!r}")
    result_ttl = None if task.result_ttl is None else _time("result_ttl", task.result_ttl)
    if result_ttl is not None and result_ttl < 0:
        raise ValueError(f"result_ttl must be >= 0 seconds or None, got {task.result_ttl!r}")
    tags = _texts("tags", task.tags)
    if not isinstance(task.metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(task.metadata).__name__}")
    try:
        metadata = json.dumps(task.metadata, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON data (str keys): {exc}") from None
    eta = _time("eta", task.eta)
    return (
        _text("id", task.id),
        _text("name", task.name),
        bytes(task.payload),
        _text("payload_format", task.payload_format),
        int(Priority.parse(task.priority)),
        TaskStatus.SCHEDULED.value if eta > now else TaskStatus.QUEUED.value,
        _count("max_retries", task.max_retries, minimum=0),
        timeout,
        eta,
        _owner(task.owner),
        json.dumps(tags),
        metadata,
        result_ttl,
        now,
        None if task.dedup_key is None else _text("dedup_key", task.dedup_key),
    )


def _stored(task: NewTask, row: tuple[Any, ...]) -> Task:
    """The Task just inserted from ``row`` (no need to read it back)."""
    return Task(
        id=row[0],
        name=row[1],
        priority=Priority(row[4]),
        status=TaskStatus(row[5]),
        max_retries=row[6],
        timeout=row[7],
        eta=row[8],
        owner=row[9],
        tags=tuple(task.tags),
        metadata=json.loads(row[11]),
        enqueued_at=row[13],
        dedup_key=row[14],
        **_arguments(task.payload, task.payload_format),
    )


def _arguments(payload: bytes, payload_format: str) -> dict[str, Any]:
    """The record's args and kwargs, decoded for reading; a payload that can't be
    decoded reads as none (the worker dead-letters it with the real error)."""
    try:
        args, kwargs = decode_payload(payload_serializer(payload_format), bytes(payload))
    except Exception:
        return {}
    return {"args": args, "kwargs": kwargs}


def _task(row: Sequence[Any]) -> Task:
    """A Task from a row of ``_TASK_COLUMNS``."""
    try:
        error = None if row[14] is None else TaskError(row[14], row[15] or "", row[16] or "")
        return Task(
            id=row[0],
            name=row[1],
            priority=Priority(row[2]),
            status=TaskStatus(row[3]),
            attempts=row[4],
            max_retries=row[5],
            timeout=row[6],
            eta=row[7],
            owner=row[8],
            tags=tuple(json.loads(row[9])),
            metadata=json.loads(row[10]),
            progress=Progress(row[11], row[12]),
            output=None if row[13] is None else bytes(row[13]),
            error=error,
            enqueued_at=row[17],
            started_at=row[18],
            finished_at=row[19],
            dedup_key=row[20],
            **_arguments(row[21], row[22]),
        )
    except (ValueError, TypeError) as exc:
        raise DataIntegrityError(
            "a stored task record is corrupt", detail=f"task {row[0]!r}: {exc}"
        ) from exc


# --- filters and checks ---------------------------------------------------------------


def _where(where: TaskFilter) -> tuple[str, list[Any]]:
    """The SQL condition (always something) and parameters of a TaskFilter."""
    if not isinstance(where, TaskFilter):
        raise TypeError(f"where must be a TaskFilter, got {where!r}")
    terms = ["1"]
    params: list[Any] = []

    def member(column: str, values: Sequence[Any]) -> None:
        # One JSON parameter instead of one "?" per value: no limit on the count.
        terms.append(f"{column} IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(values)))

    if where.ids is not None:
        member("id", _texts("ids", where.ids))
    if where.owner is not None:
        terms.append("owner = ?")
        params.append(_owner(where.owner))
    if where.statuses is not None:
        member("status", [_status(s).value for s in _seq("statuses", where.statuses)])
    if where.priorities is not None:
        member("priority", [int(Priority.parse(p)) for p in _seq("priorities", where.priorities)])
    if where.names is not None:
        member("name", _texts("names", where.names))
    if where.tag is not None:
        terms.append("EXISTS (SELECT 1 FROM json_each(tasks.tags) WHERE json_each.value = ?)")
        params.append(_text("tag", where.tag))
    if where.error_type is not None:
        terms.append("error_type = ?")
        params.append(_text("error_type", where.error_type))
    if where.finished_before is not None:
        terms.append("finished_at IS NOT NULL AND finished_at < ?")
        params.append(_time("finished_before", where.finished_before))
    return " AND ".join(terms), params


def _seq(field: str, values: object) -> Sequence[Any]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{field} must be a tuple, got {values!r}")
    return values


def _status(value: object) -> TaskStatus:
    try:
        return TaskStatus(value if isinstance(value, str) else repr(value))
    except ValueError:
        names = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"unknown task status {value!r}: use one of {names}") from None


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{field} must not be empty")
    return value


def _texts(field: str, values: object) -> builtins.list[str]:
    return [_text(f"{field}[{i}]", v) for i, v in enumerate(_seq(field, values))]


def _owner(owner: object) -> str | None:
    # An empty owner would share dedup keys with "no owner" (the index uses ifnull).
    return None if owner is None else _text("owner", owner)


def _time(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    return float(value)


def _count(field: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} must be >= {minimum}, got {value!r}")
    return value

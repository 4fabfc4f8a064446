"""Finding the application's queue: ``--app module:attribute`` and ``--queue`` URLs.

Used by ``worker``, ``serve`` and ``tasks``; imports stay inside the functions
(see ``buttress.cli``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from buttress.tasks import Queue


def _load_queue(ref: str) -> Queue:
    """The ``Queue`` that ``module:attribute`` names; a usage error naming what is wrong."""
    import importlib  # noqa: PLC0415 - see the module docstring

    from buttress.tasks import Queue  # noqa: PLC0415

    def bad(message: str) -> typer.BadParameter:
        return typer.BadParameter(message, param_hint="'--app'")

    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise bad(f"expected module:attribute (like myapp.tasks:queue), got {ref!r}")
    # Like uvicorn: the app is usually a module in the directory the command runs
    # from, which the console script does not put on sys.path by itself.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name != missing and not module_name.startswith(f"{missing}."):
            raise  # the module exists but imports something missing: show the traceback
        raise bad(f"cannot import module {module_name!r}: {exc}") from None
    found: object = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise bad(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, Queue):
        kind = f"{type(found).__module__}.{type(found).__qualname__}"
        raise bad(f"{ref} is a {kind} ({found!r:.80}), not a buttress.tasks.Queue")
    if not found.tasks:
        raise bad(
            f"the queue {ref} has no tasks registered: a worker would dead-letter every task; "
            "register them with @queue.task where the queue is defined"
        )
    return found


def _sqlite_path(url: str, *, who: str = "this worker") -> str:
    """The file of a ``sqlite:///path.db`` queue URL, read as the queue reads it
    (:meth:`SqliteBackend.path_of`); a usage error for any other URL."""
    from buttress.tasks._sqlite import SqliteBackend  # noqa: PLC0415 - see the module docstring

    try:
        return SqliteBackend.path_of(url)
    except ValueError:
        raise typer.BadParameter(
            f"{url!r} is not a queue URL {who} knows: use sqlite:///path.db",
            param_hint="'--queue'",
        ) from None


def _check_queue_url(queue: Queue, url: str, ref: str) -> None:
    """Refuse a ``--queue`` that is not where the app's queue keeps its tasks."""
    import os  # noqa: PLC0415 - see the module docstring

    from buttress.tasks._sqlite import SqliteBackend  # noqa: PLC0415

    backend = queue.backend
    path = _sqlite_path(url)
    # Compare files, not spellings: sqlite:///q.db and sqlite:////abs/q.db may be one.
    if not isinstance(backend, SqliteBackend) or os.path.realpath(path) != os.path.realpath(
        backend.path
    ):
        raise typer.BadParameter(
            f"{url} is not the queue of {ref}, which is {queue!r} at {_where(queue)}; "
            "leave --queue out to use the app's queue",
            param_hint="'--queue'",
        )


def _where(queue: Queue) -> str:
    import os  # noqa: PLC0415 - see the module docstring

    path = getattr(queue.backend, "path", None)
    return repr(os.path.realpath(path)) if isinstance(path, str) else repr(queue.backend)

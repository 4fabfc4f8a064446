"""The ``buttress`` command.

Each subcommand imports what it needs when it runs, so ``buttress --version`` and
``--help`` stay fast however heavy a subcommand's dependencies are.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from buttress.tasks import Queue

__all__ = ["app", "main"]

app = typer.Typer(
    name="buttress",
    help="buttress: resilience, caching and durable tasks for Python backends.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from buttress import __version__  # noqa: PLC0415 - see the module docstring

        typer.echo(f"buttress {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """buttress: resilience, caching and durable tasks for Python backends."""


@app.command()
def demo(
    duration: Annotated[
        float,
        typer.Option(min=0.1, max=86_400, help="How long to run, in seconds."),
    ] = 20.0,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed the simulated upstream's dice (random if not given)."),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(min=1, max=1000, help="How many clients call at once."),
    ] = 16,
) -> None:
    """Watch a resilience pipeline ride out a simulated upstream's outage, live."""
    from buttress._demo import run_demo  # noqa: PLC0415 - rich loads only for the demo

    result = run_demo(duration=duration, seed=seed, concurrency=concurrency)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def worker(
    *,
    app_ref: Annotated[
        str,
        typer.Option(
            "--app",
            help="The application's queue as module:attribute, e.g. myapp.tasks:queue "
            "(a buttress.tasks.Queue with its tasks registered).",
            show_default=False,
        ),
    ],
    queue_url: Annotated[
        str | None,
        typer.Option(
            "--queue",
            help="The queue's URL, checked against the app's queue (default: the app's own).",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many tasks run at once.")
    ] = 10,
    names: Annotated[
        str | None,
        typer.Option(
            help="Run only these tasks, comma-separated (default: every task the app has).",
            show_default=False,
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            min=0,
            max=86_400,
            help="At shutdown, seconds running tasks get to finish before they go back "
            "to the queue.",
        ),
    ] = 30.0,
    until_empty: Annotated[
        bool,
        typer.Option("--until-empty", help="Stop once no task is left to run, instead of waiting."),
    ] = False,
) -> None:
    """Run the app's tasks until SIGTERM or SIGINT, then shut down gracefully."""
    import math  # noqa: PLC0415 - see the module docstring
    import signal  # noqa: PLC0415

    if math.isnan(grace):  # NaN slips past the range check
        raise typer.BadParameter("must be a number of seconds", param_hint="'--grace'")
    # Until the worker puts in its own handlers, a stop signal just ends the command
    # (exit 0): no task is held yet. Without this, SIGTERM while the app imports
    # would kill the process outright, and a supervisor would see a crash.
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, _exit_before_start)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        queue = _load_queue(app_ref)
        try:
            if queue_url is not None:
                _check_queue_url(queue, queue_url, app_ref)
            only = _task_names(queue, names, app_ref)
            _run_worker(queue, concurrency=concurrency, names=only, grace=grace, drain=until_empty)
        finally:
            queue.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _run_worker(
    queue: Queue, *, concurrency: int, names: list[str] | None, grace: float, drain: bool
) -> None:
    import asyncio  # noqa: PLC0415 - see the module docstring
    import logging  # noqa: PLC0415

    from buttress.tasks import Worker  # noqa: PLC0415

    runner = Worker(queue, concurrency=concurrency, names=names, grace=grace)
    # The worker logs lease losses, reaps and dead letters: show them on stderr,
    # for this command only (a library never configures logging on import).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("buttress")
    logger.addHandler(handler)
    try:
        typer.echo(
            f"buttress worker {runner.id}: {', '.join(names or sorted(queue.tasks))} "
            f"on {queue!r}, concurrency {concurrency}",
            err=True,
        )
        # Worker.run swaps in its own SIGTERM/SIGINT handlers (a graceful stop)
        # before it claims anything, and takes them out when it returns.
        asyncio.run(runner.run(until_empty=drain))
    finally:
        logger.removeHandler(handler)
    typer.echo(
        f"buttress worker {runner.id}: stopped "
        f"({runner.events['succeeded']} succeeded, "
        f"{runner.events['retried'] + runner.events['dead']} failed)",
        err=True,
    )


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


def _check_queue_url(queue: Queue, url: str, ref: str) -> None:
    """Refuse a ``--queue`` that is not where the app's queue keeps its tasks."""
    import os  # noqa: PLC0415 - see the module docstring
    import urllib.parse  # noqa: PLC0415

    from buttress.tasks._sqlite import SqliteBackend  # noqa: PLC0415

    backend = queue.backend
    scheme, sep, rest = url.partition("://")
    if scheme != "sqlite" or not sep or not rest.startswith("/"):
        raise typer.BadParameter(
            f"{url!r} is not a queue URL this worker knows: use sqlite:///path.db",
            param_hint="'--queue'",
        )
    path = urllib.parse.unquote(rest[1:].partition("?")[0])
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


def _task_names(queue: Queue, names: str | None, ref: str) -> list[str] | None:
    """The ``--names`` list, each one a task the app registers (or None: all of them)."""
    if names is None:
        return None
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    if not wanted:
        raise typer.BadParameter("lists no task name", param_hint="'--names'")
    unknown = [name for name in wanted if name not in queue.tasks]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))} not registered in {ref} "
            f"(it has {', '.join(sorted(queue.tasks))})",
            param_hint="'--names'",
        )
    return wanted


def main() -> None:
    """Entry point of the ``buttress`` console script."""
    app()

"""``buttress worker``: run an application's tasks until told to stop.

Imports stay inside the functions, so loading this module costs nothing (see ``buttress.cli``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from buttress._cli._common import _exit_on_stop_signals
from buttress._cli._queues import _check_queue_url, _load_queue

if TYPE_CHECKING:
    from buttress.tasks import Queue


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

    if math.isnan(grace):  # NaN slips past the range check
        raise typer.BadParameter("must be a number of seconds", param_hint="'--grace'")
    # Until the worker puts in its own handlers, a stop signal just ends the command
    # (exit 0): no task is held yet.
    with _exit_on_stop_signals():
        queue = _load_queue(app_ref)
        try:
            if queue_url is not None:
                _check_queue_url(queue, queue_url, app_ref)
            only = _task_names(queue, names, app_ref)
            _run_worker(queue, concurrency=concurrency, names=only, grace=grace, drain=until_empty)
        finally:
            queue.close()


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

"""``buttress tasks``: inspect and act on tasks, on a local queue or through the service.

Each command imports what it needs when it runs (see ``buttress.cli``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from buttress._cli._common import (
    ApiKeyOption,
    JsonOption,
    UrlOption,
    _console,
    _escape,
    _print_json,
    _service_errors,
    _table,
)
from buttress._cli._queues import _sqlite_path

# buttress._client is cheap to import: it loads httpx and the queue lazily.
from buttress._client import DEFAULT_URL

if TYPE_CHECKING:
    from rich.table import Table

    from buttress._client import TaskOps
    from buttress.tasks import Queue

tasks_app = typer.Typer(
    name="tasks",
    help="Tasks of a queue: directly with --queue, else through the service at --url.",
    no_args_is_help=True,
)

BULK_CHUNK = 100
"""Tasks per request (or transaction) in a bulk action; the progress bar moves by these."""

StatusOption = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        help="Only tasks in this status (repeatable): queued, scheduled, running, "
        "succeeded, failed, dead, cancelled.",
        show_default=False,
    ),
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="Only tasks of this name.", show_default=False)
]
OwnerOption = Annotated[
    str | None,
    typer.Option(
        "--owner",
        help="Only this owner's tasks (through the service: admins only).",
        show_default=False,
    ),
]
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="Show at most this many.")]
QueueOption = Annotated[
    str | None,
    typer.Option(
        "--queue",
        help="Work on this queue directly (sqlite:///path.db) instead of through the "
        "service at --url.",
        show_default=False,
    ),
]
_STATUS_STYLES = {
    "queued": "cyan",
    "scheduled": "blue",
    "running": "yellow",
    "succeeded": "green",
    "failed": "magenta",
    "dead": "bold red",
    "cancelled": "dim",
}


@contextlib.contextmanager
def _tasks(queue_url: str | None, url: str, api_key: str | None) -> Iterator[TaskOps]:
    """The task operations on ``queue_url`` if given, else on the service at ``url``."""
    from buttress._client import LocalTasks, RemoteTasks, ServiceClient  # noqa: PLC0415

    ops: TaskOps
    if queue_url is not None:
        ops = LocalTasks(_open_queue(queue_url), queue_url)
    else:
        ops = RemoteTasks(ServiceClient(url, api_key=api_key))
    try:
        with _service_errors():
            yield ops
    finally:
        ops.close()


def _open_queue(url: str) -> Queue:
    """The queue at ``url``, which must exist: an ops command creates no empty queue."""
    from buttress.tasks import Queue  # noqa: PLC0415 - see the module docstring

    path = _sqlite_path(url, who="the tasks command")
    if path != ":memory:" and not Path(path).is_file():
        raise typer.BadParameter(
            f"no queue at {url} (no file {str(Path(path).resolve())!r})", param_hint="'--queue'"
        )
    return Queue.from_url(url)


def _check_statuses(statuses: list[str] | None) -> list[str] | None:
    from buttress.tasks import TaskStatus  # noqa: PLC0415 - see the module docstring

    known = [s.value for s in TaskStatus]
    for status in statuses or ():
        if status not in known:
            raise typer.BadParameter(
                f"{status!r} is not a task status: use one of {', '.join(known)}",
                param_hint="'--status'",
            )
    return statuses or None


def _tasks_table(tasks: list[dict[str, Any]], title: str, *, errors: bool = False) -> Table:
    from buttress._client import age  # noqa: PLC0415 - see the module docstring

    table = _table(title)
    # The id is what the other commands take: it is never cut; the rest may be.
    table.add_column("id", no_wrap=True, min_width=26)
    table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("status", no_wrap=True, min_width=9)
    if not errors:
        table.add_column("priority", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    if not errors:
        table.add_column("owner", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("age", justify="right", no_wrap=True)
    if errors:
        table.add_column("error", overflow="fold", ratio=1)
    for task in tasks:
        status = task["status"]
        error = task.get("error")
        row = [
            _escape(task["id"]),
            _escape(task["name"]),
            f"[{_STATUS_STYLES.get(status, '')}]{status}[/]",
        ]
        if not errors:
            row.append(task["priority"])
        row.append(f"{task['attempts']}/{task['max_retries'] + 1}")
        if not errors:
            row.append(_escape(task["owner"] or "-"))
        row.append(age(task["enqueued_at"]))
        if errors:
            row.append("" if error is None else _escape(f"{error['type']}: {error['message']}"))
        table.add_row(*row)
    return table


def _all_ids(
    ops: TaskOps, *, status: list[str], name: str | None = None, owner: str | None = None
) -> list[str]:
    """The ids of every task matching, page by page."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = ops.list(status=status, name=name, owner=owner, cursor=cursor, limit=1000)
        ids += [task["id"] for task in page]
        if cursor is None:
            return ids


def _in_chunks(ids: list[str], act: Callable[[list[str]], int], description: str) -> int:
    """``act`` on ``ids`` a chunk at a time, with a progress bar; the total ``act`` counts."""
    from rich.progress import (  # noqa: PLC0415 - see the module docstring
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    done = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console(stderr=True),
    ) as progress:
        bar = progress.add_task(description, total=len(ids))
        for start in range(0, len(ids), BULK_CHUNK):
            chunk = ids[start : start + BULK_CHUNK]
            done += act(chunk)
            progress.advance(bar, len(chunk))
    return done


@tasks_app.command("list")
def tasks_list(
    *,
    status: StatusOption = None,
    name: NameOption = None,
    owner: OwnerOption = None,
    limit: LimitOption = 50,
    cursor: Annotated[
        str | None,
        typer.Option(help="Continue from a previous listing's cursor.", show_default=False),
    ] = None,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    json: JsonOption = False,
) -> None:
    """Tasks, newest first (through the service: your own; an admin's: everyone's)."""
    wanted = _check_statuses(status)
    with _tasks(queue_url, url, api_key) as ops:
        tasks, next_cursor = ops.list(
            status=wanted, name=name, owner=owner, cursor=cursor, limit=limit
        )
        where = ops.where
    if json:
        _print_json({"tasks": tasks, "cursor": next_cursor})
        return
    console = _console()
    if not tasks:
        console.print(f"no tasks at {where}")
        return
    console.print(_tasks_table(tasks, f"tasks at {where}"))
    if next_cursor is not None:
        _console(stderr=True).print(f"more: --cursor {next_cursor}")


@tasks_app.command("show")
def tasks_show(
    *,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    json: JsonOption = False,
) -> None:
    """Everything about one task: arguments, attempts, progress, error, times."""
    import datetime  # noqa: PLC0415 - see the module docstring

    from buttress._client import age  # noqa: PLC0415

    with _tasks(queue_url, url, api_key) as ops:
        task = ops.get(task_id)
    if json:
        _print_json(task)
        return

    def when(timestamp: float | None) -> str:
        if timestamp is None:
            return "-"
        moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
        return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({age(timestamp)} ago)"

    table = _table(f"task {task['id']}")
    table.add_column("field", style="dim", no_wrap=True)
    table.add_column("value")
    status = task["status"]
    error = task.get("error")
    rows = [
        ("name", _escape(task["name"])),
        ("status", f"[{_STATUS_STYLES.get(status, '')}]{status}[/]"),
        ("priority", task["priority"]),
        ("owner", _escape(task["owner"] or "-")),
        ("attempts", f"{task['attempts']} of {task['max_retries'] + 1}"),
        ("args", _escape(repr(task["args"]))),
        ("kwargs", _escape(repr(task["kwargs"]))),
        ("tags", _escape(", ".join(task["tags"]) or "-")),
        ("progress", f"{task['progress']:.0%} {_escape(task['progress_message'])}".strip()),
        ("error", "-" if error is None else _escape(f"{error['type']}: {error['message']}")),
        ("enqueued", when(task["enqueued_at"])),
        ("runs at", when(task["eta"])),
        ("started", when(task["started_at"])),
        ("finished", when(task["finished_at"])),
    ]
    for field, value in rows:
        table.add_row(field, value)
    _console().print(table)


@tasks_app.command("cancel")
def tasks_cancel(
    *,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID]...", help="The tasks to cancel.", show_default=False),
    ] = None,
    status: StatusOption = None,
    name: NameOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Stop a running task at once, not at its next check (one ID only)."
        ),
    ] = False,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel tasks by id, or every task in --status (e.g. --status queued)."""
    wanted = _check_statuses(status)
    if bool(task_ids) == bool(wanted):
        raise typer.BadParameter("give task ids or --status, not both", param_hint="'ID'")
    if force and not (task_ids and len(task_ids) == 1):
        # Bulk cancelling has no force: refuse rather than quietly cancel gently.
        raise typer.BadParameter(
            "works on one task id at a time, not on several or on --status",
            param_hint="'--force'",
        )
    console = _console()
    with _tasks(queue_url, url, api_key) as ops:
        if task_ids and len(task_ids) == 1:
            task = ops.cancel(task_ids[0], force=force)
            done = "cancelled" if task["status"] == "cancelled" else "asked to stop"
            console.print(_tasks_table([task], done))
            return
        ids = task_ids or _all_ids(ops, status=wanted or [], name=name)
        if not ids:
            console.print("no tasks to cancel")
            return
        count = _in_chunks(ids, ops.cancel_many, "cancelling")
    console.print(f"cancelled {count} of {len(ids)} tasks")


@tasks_app.command("retry")
def tasks_retry(
    *,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Queue a failed, dead or cancelled task again, with fresh attempts."""
    with _tasks(queue_url, url, api_key) as ops:
        task = ops.retry(task_id)
    _console().print(_tasks_table([task], "queued again"))


@tasks_app.command("dlq")
def tasks_dlq(
    *,
    name: NameOption = None,
    owner: OwnerOption = None,
    limit: LimitOption = 50,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    json: JsonOption = False,
) -> None:
    """The dead-letter queue: tasks that ran out of attempts, with their last error."""
    with _tasks(queue_url, url, api_key) as ops:
        tasks, next_cursor = ops.list(status=["dead"], name=name, owner=owner, limit=limit)
        where = ops.where
    if json:
        _print_json({"tasks": tasks, "cursor": next_cursor})
        return
    console = _console()
    if not tasks:
        console.print(f"no dead tasks at {where}")
        return
    console.print(_tasks_table(tasks, f"dead tasks at {where}", errors=True))
    if next_cursor is not None:
        _console(stderr=True).print(f"(more than {limit}: raise --limit, or filter by --name)")


@tasks_app.command("reprocess")
def tasks_reprocess(
    *,
    task_ids: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[ID]...",
            help="Dead tasks to send back (default: every dead task, or those of --name).",
            show_default=False,
        ),
    ] = None,
    name: NameOption = None,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Send dead tasks back to the queue with fresh attempts (through the service: admins)."""
    console = _console()
    with _tasks(queue_url, url, api_key) as ops:
        ids = list(task_ids) if task_ids else _all_ids(ops, status=["dead"], name=name)
        if not ids:
            console.print("no dead tasks to reprocess")
            return
        count = _in_chunks(ids, ops.reprocess, "reprocessing")
    skipped = len(ids) - count
    note = f" ({skipped} were not dead)" if skipped else ""
    console.print(f"reprocessed {count} dead task{'' if count == 1 else 's'}{note}")


@tasks_app.command("stats")
def tasks_stats(
    *,
    owner: OwnerOption = None,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    json: JsonOption = False,
) -> None:
    """Counts by status and priority, timings, and dead letters by task and error."""
    with _tasks(queue_url, url, api_key) as ops:
        stats = ops.stats(owner=owner)
        where = ops.where
    if json:
        _print_json(stats)
        return
    console = _console()
    by_status = _table(f"tasks at {where}")
    for status in stats["by_status"]:
        by_status.add_column(f"[{_STATUS_STYLES.get(status, '')}]{status}[/]", justify="right")
    by_status.add_row(*(str(n) for n in stats["by_status"].values()))
    console.print(by_status)
    waiting = _table("waiting, by priority")
    for priority in stats["by_priority"]:
        waiting.add_column(priority, justify="right")
    waiting.add_row(*(str(n) for n in stats["by_priority"].values()))
    console.print(waiting)

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    console.print(
        f"finished in the last minute {stats['finished_last_minute']}  "
        f"mean wait {seconds(stats['mean_wait_seconds'])}  "
        f"mean run {seconds(stats['mean_run_seconds'])}  "
        f"oldest waiting {seconds(stats['oldest_waiting_seconds'])}"
    )
    if stats["dead_letters"]:
        dead = _table("dead letters")
        for column in ("task", "error", "count"):
            dead.add_column(column, justify="right" if column == "count" else "left")
        for group in stats["dead_letters"]:
            dead.add_row(_escape(group["name"]), _escape(group["error_type"]), str(group["count"]))
        console.print(dead)

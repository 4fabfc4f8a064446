"""What every subcommand shares: printing, errors, and options for talking to a service.

Heavy dependencies (rich, httpx) are imported inside the functions that use them,
so ``buttress --version`` stays fast (see ``buttress.cli``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from buttress._client import ServiceClient

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="BUTTRESS_URL", help="The base URL of a running `buttress serve`."
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="BUTTRESS_API_KEY",
        help="An API key of the service (sent as a Bearer token).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _exit_before_start(signum: int, frame: object) -> None:
    """Until a command puts in its own handlers, a stop signal just ends it (exit 0)."""
    raise SystemExit(0)


@contextlib.contextmanager
def _exit_on_stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM or SIGINT ends the command with exit 0.

    For the time before a worker or uvicorn puts in its own handlers (while the app
    imports, say): no task is held yet, and without this a SIGTERM would kill the
    process outright, which a supervisor would count as a crash. Those runners put
    these handlers back when they return (uvicorn then re-raises the signal it caught,
    so the command exits 0 then too). The old handlers come back at the end; off the
    main thread, signals are left alone.
    """
    import signal  # noqa: PLC0415 - see the module docstring

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, _exit_before_start)
        except ValueError:  # not the main thread
            break
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one red line on stderr, and exit with ``code``."""
    from rich.markup import escape  # noqa: PLC0415 - see the module docstring

    _console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] [red]{escape(message)}[/]")
    raise typer.Exit(code)


def _console(*, stderr: bool = False, soft_wrap: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415 - see the module docstring

    return Console(stderr=stderr, highlight=False, soft_wrap=soft_wrap)


@contextlib.contextmanager
def _service_errors() -> Iterator[None]:
    """Turn the client's and the queue's errors into one clear line and an exit code."""
    from buttress._client import ServiceError, ServiceUnreachableError  # noqa: PLC0415
    from buttress.errors import ButtressError  # noqa: PLC0415

    try:
        yield
    except ServiceUnreachableError as exc:
        _fail(str(exc), code=2)
    except ServiceError as exc:
        hint = {
            401: " (pass --api-key or set BUTTRESS_API_KEY)",
            403: " (this needs an admin's API key)",
        }.get(exc.status, "")
        _fail(f"{exc}{hint}", code=1)
    except ButtressError as exc:  # from a local queue
        _fail(f"{exc.title}: {exc}", code=1)


@contextlib.contextmanager
def _client(url: str, api_key: str | None) -> Iterator[ServiceClient]:
    from buttress._client import ServiceClient  # noqa: PLC0415 - see the module docstring

    with _service_errors(), ServiceClient(url, api_key=api_key) as client:
        yield client


def _print_json(value: object) -> None:
    import json  # noqa: PLC0415 - see the module docstring

    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(title: str | None = None) -> Table:
    from rich import box  # noqa: PLC0415 - see the module docstring
    from rich.table import Table  # noqa: PLC0415

    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def _escape(text: str) -> str:
    from rich.markup import escape  # noqa: PLC0415 - see the module docstring

    return escape(text)

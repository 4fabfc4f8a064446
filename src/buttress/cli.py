"""The ``buttress`` command.

Each subcommand imports what it needs when it runs, so ``buttress --version`` and
``--help`` stay fast however heavy a subcommand's dependencies are.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from buttress._client import ServiceClient, TaskOps
    from buttress.config import Settings
    from buttress.tasks import Queue
    from buttress.web import Service

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


def _sqlite_path(url: str, *, who: str = "this worker") -> str:
    """The file of a ``sqlite:///path.db`` queue URL; a usage error for any other URL."""
    import urllib.parse  # noqa: PLC0415 - see the module docstring

    scheme, sep, rest = url.partition("://")
    if scheme != "sqlite" or not sep or not rest.startswith("/"):
        raise typer.BadParameter(
            f"{url!r} is not a queue URL {who} knows: use sqlite:///path.db",
            param_hint="'--queue'",
        )
    return urllib.parse.unquote(rest[1:].partition("?")[0])


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


# --- serve ----------------------------------------------------------------------------------

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    import ipaddress  # noqa: PLC0415 - see the module docstring

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one red line on stderr, and exit with ``code``."""
    from rich.markup import escape  # noqa: PLC0415 - see the module docstring

    _console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] [red]{escape(message)}[/]")
    raise typer.Exit(code)


def _console(*, stderr: bool = False, soft_wrap: bool = False) -> Console:
    from rich.console import Console  # noqa: PLC0415 - see the module docstring

    return Console(stderr=stderr, highlight=False, soft_wrap=soft_wrap)


def _base_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a service listening on ``host``."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    shown = wildcard.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


@app.command()
def serve(
    *,
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to listen on (default: BUTTRESS_HOST, or 127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port to listen on (default: BUTTRESS_PORT, or 8000).",
            show_default=False,
        ),
    ] = None,
    app_ref: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="The application's queue as module:attribute (myapp.tasks:queue), whose "
            "tasks the service and its worker run (default: BUTTRESS_APP).",
            show_default=False,
        ),
    ] = None,
    queue_url: Annotated[
        str | None,
        typer.Option(
            "--queue",
            help="The queue's URL (default: BUTTRESS_QUEUE_URL, or sqlite:///buttress.db; "
            "with --demo, a file in a temporary directory).",
            show_default=False,
        ),
    ] = None,
    cache_url: Annotated[
        str | None,
        typer.Option(
            "--cache",
            help="The cache's remote tiers, comma-separated: redis://…, memcached://… "
            "(default: BUTTRESS_CACHE_URL, or memory://).",
            show_default=False,
        ),
    ] = None,
    no_worker: Annotated[
        bool,
        typer.Option(
            "--no-worker", help="Run no in-process worker (run `buttress worker` instead)."
        ),
    ] = False,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Also run a built-in workload (a flaky upstream behind a breaker, retry, "
            "cache, bulkhead and rate limiter; tasks of every priority; a periodic task), "
            "so /metrics, /api/v1 and /docs show live numbers.",
        ),
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default: BUTTRESS_LOG_LEVEL, or INFO).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the ops service: the API under /api/v1, /docs, /metrics, and a worker.

    Settings come from BUTTRESS_* variables (and .env); these options override them.
    """
    import signal  # noqa: PLC0415 - see the module docstring

    from buttress.config import load_settings  # noqa: PLC0415
    from buttress.errors import ConfigurationError  # noqa: PLC0415

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "queue_url": queue_url,
        "cache_url": cache_url,
        "log_level": None if log_level is None else log_level.upper(),
        "app": app_ref,
        "worker": False if no_worker else None,
    }
    try:
        settings = load_settings(**{k: v for k, v in given.items() if v is not None})
    except ConfigurationError as exc:
        _fail(str(exc), code=2)
    if not settings.api_keys and not _is_loopback(settings.host):
        _fail(
            f"refusing to listen on {settings.host}: no API keys are configured, so every "
            "caller would act as an admin. Set BUTTRESS_API_KEYS (JSON, like "
            '{"<a long random key>": {"owner": "ops", "role": "admin"}}), '
            "or listen on 127.0.0.1",
            code=2,
        )
    # As in `worker`: a stop signal before uvicorn takes over just ends the command
    # (exit 0). uvicorn puts these handlers back after its graceful shutdown and
    # re-raises the signal it caught, so the command then exits 0 too, rather than
    # dying of the signal.
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, _exit_before_start)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        _serve(settings, demo=demo, explicit_queue="queue_url" in settings.model_fields_set)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(settings: Settings, *, demo: bool, explicit_queue: bool) -> None:
    import logging  # noqa: PLC0415 - see the module docstring
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from buttress.observability import configure_logging  # noqa: PLC0415
    from buttress.tasks import Queue  # noqa: PLC0415
    from buttress.web import Service, create_app  # noqa: PLC0415

    queue: Queue | None = None
    temp_dir: str | None = None
    if settings.app is not None:
        queue = _load_queue(settings.app)
        if explicit_queue:
            try:
                _check_queue_url(queue, settings.queue_url, settings.app)
            except typer.BadParameter:
                queue.close()
                raise
    elif demo and not explicit_queue:
        # The demo's tasks are not the user's: keep them out of ./buttress.db.
        temp_dir = tempfile.mkdtemp(prefix="buttress-demo-")
        queue = Queue.from_url(f"sqlite:///{temp_dir}/demo.db")
    service: Service | None = None
    try:
        configure_logging(level=settings.log_level, format=settings.log_format)
        if demo:
            from buttress.web._demo import DemoService  # noqa: PLC0415

            service = DemoService(settings, queue=queue)
        else:
            service = Service(settings, queue=queue)
        web_app = create_app(service=service)
        _announce(settings, service, temp_dir=temp_dir, demo=demo)
        if service.open_access:
            logging.getLogger("buttress.cli").warning(
                "no API keys configured (BUTTRESS_API_KEYS): the API is open to local "
                "callers only, each acting as admin"
            )
        server = uvicorn.Server(
            uvicorn.Config(
                web_app,
                host=settings.host,
                port=settings.port,
                log_config=None,  # uvicorn's loggers go through configure_logging's handler
                access_log=False,  # the request middleware counts requests
                lifespan="on",
                ws="none",
            )
        )
        server.run()
        if not server.started:
            _fail("the service did not start: see the log above", code=1)
    finally:
        # The lifespan's shutdown closed it already, unless the service never started.
        if service is not None:
            service.queue.close()
        elif queue is not None:
            queue.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _announce(settings: Settings, service: Service, *, temp_dir: str | None, demo: bool) -> None:
    """Print where the service answers, what it runs, and whether it is open."""
    console = _console(stderr=True, soft_wrap=True)  # whole lines, for log collectors
    base = _base_url(settings.host, settings.port)
    tasks = ", ".join(sorted(service.queue.tasks)) or "none registered"
    worker = (
        f"in-process, {settings.worker_concurrency} at once"
        if settings.worker
        else "off (run `buttress worker`)"
    )
    console.print(f"[bold]buttress serve[/] on [bold cyan]{base}[/]")
    console.print(f"  API      {base}/api/v1")
    console.print(f"  docs     {base}/docs")
    console.print(f"  metrics  {base}/metrics")
    console.print(f"  queue    {_where(service.queue)} (tasks: {tasks})")
    console.print(f"  worker   {worker}")
    if demo:
        where = (
            f"a temporary directory ({temp_dir}), deleted at exit; pass --queue to keep it"
            if temp_dir is not None
            else _where(service.queue)
        )
        console.print(f"  demo     a live workload; its tasks are in {where}")
    if service.open_access:
        console.print(
            "[bold yellow]warning:[/] [yellow]no API keys configured (BUTTRESS_API_KEYS): "
            "the API is open to local callers only, each acting as admin[/]"
        )


# --- talking to a running service -----------------------------------------------------------

DEFAULT_SERVICE_URL = "http://127.0.0.1:8000"

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
QueueOption = Annotated[
    str | None,
    typer.Option(
        "--queue",
        help="Work on this queue directly (sqlite:///path.db) instead of through the "
        "service at --url.",
        show_default=False,
    ),
]


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


_STATE_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow"}
_HEALTH_STYLES = {"healthy": "green", "degraded": "yellow", "unhealthy": "bold red"}
_STATUS_STYLES = {
    "queued": "cyan",
    "scheduled": "blue",
    "running": "yellow",
    "succeeded": "green",
    "failed": "magenta",
    "dead": "bold red",
    "cancelled": "dim",
}


breakers_app = typer.Typer(
    name="breakers", help="Circuit breakers of a running service.", no_args_is_help=True
)
cache_app = typer.Typer(name="cache", help="The cache of a running service.", no_args_is_help=True)
app.add_typer(breakers_app)
app.add_typer(cache_app)


@breakers_app.command("list")
def breakers_list(
    *, url: UrlOption = DEFAULT_SERVICE_URL, api_key: ApiKeyOption = None, json: JsonOption = False
) -> None:
    """Every circuit breaker the service knows, with its state and counts."""
    with _client(url, api_key) as client:
        breakers = client.breakers()
    if json:
        _print_json(breakers)
        return
    table = _table(f"circuit breakers at {url}")
    for column in ("name", "state", "calls", "failures", "rejected", "failure rate", "probe in"):
        table.add_column(column, no_wrap=column in {"name", "state"})
    for b in breakers:
        retry_after = b.get("retry_after")
        state = b["state"] + (" (forced)" if b.get("forced_open") else "")
        table.add_row(
            b["name"],
            f"[{_STATE_STYLES.get(b['state'], '')}]{state}[/]",
            str(b["calls"]),
            str(b["failures"]),
            str(b["rejections"]),
            f"{b['failure_rate']:.0%}",
            "-" if not retry_after or b["state"] != "open" else f"{retry_after:.1f}s",
        )
    _console().print(table if breakers else "no circuit breakers registered")


@breakers_app.command("reset")
def breakers_reset(
    *,
    name: Annotated[str, typer.Argument(help="The breaker's name.", show_default=False)],
    url: UrlOption = DEFAULT_SERVICE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Close a breaker and clear its counts (needs an admin key)."""
    with _client(url, api_key) as client:
        breaker = client.reset_breaker(name)
    _console().print(f"breaker {breaker['name']} reset: {breaker['state']}")


@cache_app.command("stats")
def cache_stats(
    *, url: UrlOption = DEFAULT_SERVICE_URL, api_key: ApiKeyOption = None, json: JsonOption = False
) -> None:
    """Hits, misses and errors per tier, and what the cache did."""
    with _client(url, api_key) as client:
        stats = client.cache_stats()
    if json:
        _print_json(stats)
        return
    table = _table(f"cache {stats['name']!r} at {url}")
    for column in ("tier", "hits", "misses", "hit rate", "errors", "available"):
        table.add_column(column)
    for tier in stats["tiers"]:
        reads = tier["hits"] + tier["misses"]
        table.add_row(
            tier["name"],
            str(tier["hits"]),
            str(tier["misses"]),
            f"{tier['hits'] / reads:.0%}" if reads else "-",
            str(tier["errors"]),
            "yes" if tier["available"] else "[red]no[/]",
        )
    console = _console()
    console.print(table)
    console.print(
        f"loads {stats['loads']}  load errors {stats['load_errors']}  "
        f"stale served {stats['stale_served']}  coalesced {stats['coalesced']}  "
        f"write-behind pending {stats['write_behind_pending']}"
    )


@cache_app.command("clear")
def cache_clear(*, url: UrlOption = DEFAULT_SERVICE_URL, api_key: ApiKeyOption = None) -> None:
    """Empty every tier of the cache (needs an admin key)."""
    with _client(url, api_key) as client:
        client.cache_clear()
    _console().print("cache cleared")


@cache_app.command("invalidate")
def cache_invalidate(
    *,
    tags: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", help="Invalidate entries with this tag (repeatable).", show_default=False
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(help="Delete keys matching this glob pattern (user:*).", show_default=False),
    ] = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Invalidate entries by tag and/or key pattern (needs an admin key)."""
    if not tags and pattern is None:
        raise typer.BadParameter("give --tag (one or more) or --pattern", param_hint="'--tag'")
    with _client(url, api_key) as client:
        count = client.cache_invalidate(tags=tags or (), pattern=pattern)
    done = []
    if tags:
        done.append(f"invalidated tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}")
    if pattern is not None:
        done.append(f"deleted {count} key{'' if count == 1 else 's'} matching {pattern!r}")
    _console().print("; ".join(done))


@app.command()
def health(
    *, url: UrlOption = DEFAULT_SERVICE_URL, api_key: ApiKeyOption = None, json: JsonOption = False
) -> None:
    """The service's readiness: exit 0 if healthy or degraded, 1 if unhealthy, 2 if unreachable."""
    with _client(url, api_key) as client:
        report = client.readiness()
    if json:
        _print_json(report)
    else:
        status = report["status"]
        table = _table()
        for column in ("component", "status", "latency", "detail"):
            table.add_column(column)
        for name, component in sorted(report["components"].items()):
            detail = component.get("error") or component.get("detail")
            table.add_row(
                name,
                f"[{_HEALTH_STYLES.get(component['status'], '')}]{component['status']}[/]",
                f"{component['latency_seconds'] * 1000:.1f} ms",
                "" if detail is None else str(detail),
            )
        console = _console()
        console.print(f"{url}: [{_HEALTH_STYLES.get(status, '')}]{status}[/]")
        console.print(table)
    if report["status"] == "unhealthy":
        raise typer.Exit(1)


# --- tasks: on a local queue, or through the service -------------------------------------------

tasks_app = typer.Typer(
    name="tasks",
    help="Tasks of a queue: directly with --queue, else through the service at --url.",
    no_args_is_help=True,
)
app.add_typer(tasks_app)

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


def _escape(text: str) -> str:
    from rich.markup import escape  # noqa: PLC0415 - see the module docstring

    return escape(text)


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
    url: UrlOption = DEFAULT_SERVICE_URL,
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
    url: UrlOption = DEFAULT_SERVICE_URL,
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
        bool, typer.Option("--force", help="Stop a running task at once, not at its next check.")
    ] = False,
    queue_url: QueueOption = None,
    url: UrlOption = DEFAULT_SERVICE_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel tasks by id, or every task in --status (e.g. --status queued)."""
    wanted = _check_statuses(status)
    if bool(task_ids) == bool(wanted):
        raise typer.BadParameter("give task ids or --status, not both", param_hint="'ID'")
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
    url: UrlOption = DEFAULT_SERVICE_URL,
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
    url: UrlOption = DEFAULT_SERVICE_URL,
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
    url: UrlOption = DEFAULT_SERVICE_URL,
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
    url: UrlOption = DEFAULT_SERVICE_URL,
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


def main() -> None:
    """Entry point of the ``buttress`` console script."""
    app()

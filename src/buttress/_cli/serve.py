"""``buttress serve``: run the ops service (API, docs, metrics) and a worker under uvicorn.

uvicorn, fastapi and the web package load only when the command runs (see ``buttress.cli``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from buttress._cli._common import _console, _exit_on_stop_signals, _fail
from buttress._cli._queues import _check_queue_url, _load_queue, _where

if TYPE_CHECKING:
    from buttress.config import Settings
    from buttress.tasks import Queue
    from buttress.web import Service


def _base_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a service listening on ``host``."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    shown = wildcard.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


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
    from buttress.config import is_loopback, load_settings  # noqa: PLC0415 - see the docstring
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
    if not settings.api_keys and not is_loopback(settings.host):
        _fail(
            f"refusing to listen on {settings.host}: no API keys are configured, so every "
            "caller would act as an admin. Set BUTTRESS_API_KEYS (JSON, like "
            '{"<a long random key>": {"owner": "ops", "role": "admin"}}), '
            "or listen on 127.0.0.1",
            code=2,
        )
    # A stop signal before uvicorn takes over just ends the command (exit 0); uvicorn
    # puts these handlers back after its graceful shutdown and re-raises the signal it
    # caught, so the command then exits 0 too, rather than dying of the signal.
    with _exit_on_stop_signals():
        _serve(settings, demo=demo, explicit_queue="queue_url" in settings.model_fields_set)


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
        if service.open_access:  # logged, not printed too: one warning on stderr
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
    """Print where the service answers and what it runs (`_serve` logs whether it is open)."""
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

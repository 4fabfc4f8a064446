"""The ``buttress`` command.

Each subcommand imports what it needs when it runs, so ``buttress --version`` and
``--help`` stay fast however heavy a subcommand's dependencies are. The subcommands
live in ``buttress._cli``, one module each; this module assembles them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from buttress._cli import remote, serve, tasks, worker

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


# Commands list in the order they are registered, then the groups: as before the split.
app.command()(worker.worker)
app.command()(serve.serve)
app.command()(remote.health)
app.add_typer(remote.breakers_app)
app.add_typer(remote.cache_app)
app.add_typer(tasks.tasks_app)


def main() -> None:
    """Entry point of the ``buttress`` console script."""
    app()

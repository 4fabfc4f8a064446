"""``buttress breakers``, ``cache`` and ``health``: ask a running service over HTTP.

httpx and rich load only when a command runs (see ``buttress.cli``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from buttress._cli._common import (
    ApiKeyOption,
    JsonOption,
    UrlOption,
    _client,
    _console,
    _print_json,
    _table,
)

# buttress._client is cheap to import: it loads httpx and the queue lazily.
from buttress._client import DEFAULT_URL

_STATE_STYLES = {"closed": "green", "open": "bold red", "half_open": "yellow"}
_HEALTH_STYLES = {"healthy": "green", "degraded": "yellow", "unhealthy": "bold red"}


breakers_app = typer.Typer(
    name="breakers", help="Circuit breakers of a running service.", no_args_is_help=True
)
cache_app = typer.Typer(name="cache", help="The cache of a running service.", no_args_is_help=True)


@breakers_app.command("list")
def breakers_list(
    *, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None, json: JsonOption = False
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
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Close a breaker and clear its counts (needs an admin key)."""
    with _client(url, api_key) as client:
        breaker = client.reset_breaker(name)
    _console().print(f"breaker {breaker['name']} reset: {breaker['state']}")


@cache_app.command("stats")
def cache_stats(
    *, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None, json: JsonOption = False
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
def cache_clear(*, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None) -> None:
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
    url: UrlOption = DEFAULT_URL,
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


def health(
    *, url: UrlOption = DEFAULT_URL, api_key: ApiKeyOption = None, json: JsonOption = False
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

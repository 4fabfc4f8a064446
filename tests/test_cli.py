"""The ``buttress`` command and the demo's parts."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from buttress import CircuitState, __version__
from buttress._demo import (
    DemoResult,
    DemoStats,
    FlakyUpstream,
    PhaseSchedule,
    Reply,
    Snapshot,
    StateChange,
    build_pipeline,
    render_summary,
    render_table,
)
from buttress.cli import app
from buttress.clock import ManualClock

runner = CliRunner()


def _text(table: Table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None).print(table)
    return buffer.getvalue()


def _at_phase(schedule: PhaseSchedule, clock: ManualClock, name: str) -> None:
    """Advance ``clock`` to the middle of the phase called ``name``."""
    starts = schedule.starts()
    ends = [start for start, _ in starts[1:]] + [schedule.duration]
    for (start, phase), end in zip(starts, ends, strict=True):
        if phase.name == name:
            clock.advance((start + end) / 2 - schedule.elapsed())
            return
    raise AssertionError(f"no phase named {name!r}")


def test_version_prints_name_and_version() -> None:
    """``buttress --version`` prints ``buttress <version>`` and exits 0."""
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"buttress {__version__}\n" == result.output


def test_no_arguments_shows_help() -> None:
    """``buttress`` alone lists the subcommands instead of doing something."""
    result = runner.invoke(app, [])
    assert "demo" in result.output


def test_demo_runs_end_to_end_and_prints_a_summary() -> None:
    """``buttress demo --duration 1`` runs without a terminal and ends with a summary."""
    result = runner.invoke(app, ["demo", "--duration", "1", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "demo-breaker" in result.output
    assert "summary" in result.output
    assert "answered by upstream" in result.output
    assert "latency p50 / p99" in result.output


def test_demo_rejects_a_non_positive_duration() -> None:
    """A duration of zero is refused with a usage error naming the option."""
    result = runner.invoke(app, ["demo", "--duration", "0"])
    assert result.exit_code == 2
    assert "--duration" in result.output


def test_schedule_runs_the_phases_in_order_by_share() -> None:
    """The default schedule goes healthy, degrading, outage, recovery, and holds the last."""
    schedule = PhaseSchedule(20, clock=ManualClock())
    names = [schedule.phase_at(t).name for t in (0.0, 4.5, 9.5, 16.0, 25.0)]
    assert names == ["healthy", "degrading", "outage", "recovery", "recovery"]
    assert pytest.approx([start for start, _ in schedule.starts()]) == [0.0, 4.0, 9.0, 15.0]


def test_upstream_fails_in_the_outage_and_answers_when_healthy() -> None:
    """With a fixed seed the upstream rarely fails while healthy and nearly always in the outage."""
    clock = ManualClock()
    schedule = PhaseSchedule(20, clock=clock)
    upstream = FlakyUpstream(schedule, rng=random.Random(1), clock=clock)

    healthy = [upstream.roll() for _ in range(200)]
    _at_phase(schedule, clock, "outage")
    outage = [upstream.roll() for _ in range(200)]

    assert {"healthy"} == {o.phase for o in healthy}
    assert {"outage"} == {o.phase for o in outage}
    assert sum(o.fails for o in healthy) <= 6
    assert sum(o.fails for o in outage) >= 185
    assert upstream.requests == 400


async def test_upstream_fetch_raises_in_the_outage_and_replies_when_healthy() -> None:
    """``fetch`` replies while healthy and raises ConnectionError in the outage, on the clock."""
    clock = ManualClock(autojump=True)
    schedule = PhaseSchedule(20, clock=clock)
    upstream = FlakyUpstream(schedule, rng=random.Random(1), clock=clock)

    reply = await upstream.fetch(1)
    assert Reply("upstream", "value 1") == reply
    assert clock.now() > 0  # the request took its latency on the clock

    _at_phase(schedule, clock, "outage")
    with pytest.raises(ConnectionError, match="outage"):
        await upstream.fetch(2)
    assert upstream.failures == 1


def test_requests_per_second_counts_the_last_second_only() -> None:
    """The upstream's rate forgets requests older than a second."""
    clock = ManualClock()
    upstream = FlakyUpstream(PhaseSchedule(20, clock=clock), rng=random.Random(1), clock=clock)
    for _ in range(5):
        upstream.roll()
    assert upstream.requests_per_second() == 5.0
    clock.advance(1.5)
    assert upstream.requests_per_second() == 0.0


def test_table_shows_each_strategy_and_the_breaker_state() -> None:
    """The live table has a row per strategy by name, and the breaker's state."""
    clock = ManualClock()
    upstream = FlakyUpstream(PhaseSchedule(20, clock=clock), rng=random.Random(1), clock=clock)
    pipeline = build_pipeline(
        upstream, clock=clock, rng=random.Random(1), duration=20, concurrency=8
    )

    closed = _text(render_table(Snapshot.take(pipeline, upstream)))
    pipeline.breaker.force_open()
    opened = _text(render_table(Snapshot.take(pipeline, upstream)))

    for name in ("demo-fallback", "demo-retry", "demo-breaker", "demo-timeout", "demo-bulkhead"):
        assert name in closed
    assert "closed" in closed
    assert "open" in opened
    assert "closed" not in opened
    assert "healthy" in closed


def test_summary_lists_sources_latencies_and_state_changes() -> None:
    """The summary counts who answered, gives percentiles and lists the breaker's transitions."""
    stats = DemoStats()
    for latency in (0.010, 0.020, 0.030, 0.040):
        stats.record(Reply("upstream", "v"), latency)
    stats.record(Reply("fallback", "cached"), 0.001)
    stats.state_changes.append(StateChange(4.2, CircuitState.CLOSED, CircuitState.OPEN))

    assert stats.requests == 5
    assert stats.percentile(0.5, source="upstream") == 0.020
    assert stats.percentile(0.99) == 0.040
    assert DemoStats().percentile(0.5) == 0.0

    result = DemoResult(stats, _empty_snapshot(), seed=7, interrupted=False)
    text = _text(render_summary(result))
    assert "4  (80%)" in text
    assert "1  (20%)" in text
    assert "closed -> open" in text
    assert "4.2s" in text


def _empty_snapshot() -> Snapshot:
    clock = ManualClock()
    upstream = FlakyUpstream(PhaseSchedule(1, clock=clock), rng=random.Random(0), clock=clock)
    pipeline = build_pipeline(
        upstream, clock=clock, rng=random.Random(0), duration=1, concurrency=1
    )
    return Snapshot.take(pipeline, upstream)


def test_demo_prints_on_a_terminal_that_is_not_utf8() -> None:
    """The demo's output is plain enough for a cp1252 console (Windows' default for pipes)."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "buttress", "demo", "--duration", "0.3", "--seed", "1"],
        env={**os.environ, "PYTHONIOENCODING": "cp1252"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr.decode(errors="replace")


def test_demo_refuses_an_endless_duration() -> None:
    """--duration inf is refused rather than running a demo whose outage never comes."""
    result = runner.invoke(app, ["demo", "--duration", "inf"])
    assert 2 == result.exit_code

"""Timing loops, machine facts and tables shared by the benchmark scripts.

Every number is a minimum over repeats: on a shared machine noise only ever adds
time, so the fastest repeat is the one closest to what the code costs. The
repeats of the candidates in one group are interleaved (A, B, C, A, B, C …), so a
noisy second hits all of them alike rather than one of them whole.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import importlib.metadata
import itertools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = [
    "AsyncCase",
    "Report",
    "Settings",
    "SyncCase",
    "Target",
    "Timing",
    "machine_facts",
    "print_header",
    "print_summary",
    "ratio",
    "time_async",
    "time_sync",
    "version_of",
]


@dataclass(frozen=True, slots=True)
class Settings:
    """How hard to measure: repeats per candidate and seconds per repeat."""

    repeats: int
    seconds_per_repeat: float
    markdown: bool


@dataclass(frozen=True, slots=True)
class SyncCase:
    """A statement timed in a ``timeit`` loop, with the names it uses."""

    label: str
    stmt: str
    namespace: Mapping[str, object]
    version: str = ""


@dataclass(frozen=True, slots=True)
class AsyncCase:
    """A coroutine function awaited in a loop inside one coroutine."""

    label: str
    fn: Callable[[], Awaitable[object]]
    version: str = ""


@dataclass(frozen=True, slots=True)
class Timing:
    """Nanoseconds per call of one candidate: the best repeat and the median one."""

    label: str
    version: str
    best: float
    median: float

    @property
    def spread(self) -> float:
        """How far the median repeat lies above the best one: a noise gauge."""
        return self.median / self.best - 1 if self.best > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Target:
    """A performance goal and whether this run met it."""

    goal: str
    measured: str
    met: bool


@dataclass(slots=True)
class Report:
    """One group's table, the notes under it and the targets it checked."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def render(self, console: Console, *, markdown: bool) -> None:
        if markdown:
            self._render_markdown()
        else:
            self._render_rich(console)

    def _render_markdown(self) -> None:
        print(f"### {self.title}\n")
        print("| " + " | ".join(self.columns) + " |")
        aligns = [" --- "] + [" ---: "] * (len(self.columns) - 1)
        print("|" + "|".join(aligns) + "|")
        for row in self.rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        print()
        for note in self.notes:
            print(f"- {note}")
        for target in self.targets:
            verdict = "**met**" if target.met else "**MISSED**"
            print(f"- Target: {target.goal}: {target.measured}, {verdict}")
        if self.notes or self.targets:
            print()

    def _render_rich(self, console: Console) -> None:
        table = Table(title=self.title, title_justify="left", title_style="bold")
        for position, column in enumerate(self.columns):
            table.add_column(column, justify="left" if position == 0 else "right")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)
        for note in self.notes:
            console.print(f"  [dim]note:[/dim] {note}", highlight=False)
        for target in self.targets:
            verdict = "[green]met[/green]" if target.met else "[bold red]MISSED[/bold red]"
            console.print(f"  target: {target.goal}: {target.measured}, {verdict}", highlight=False)
        console.print()


def ratio(numerator: float, denominator: float) -> str:
    """``0.11x``, or ``n/a`` when the denominator is too small to divide by."""
    if denominator <= 0:
        return "n/a"
    value = numerator / denominator
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


# -- timing ---------------------------------------------------------------------------


def _calibrate(run: Callable[[int], float], seconds: float) -> int:
    """How many loops make one repeat last about ``seconds``; the runs warm up too."""
    number = 1
    while True:
        elapsed = run(number)
        if elapsed >= seconds / 4:
            return max(1, math.ceil(number * seconds / elapsed))
        grow = 10 if elapsed < seconds / 100 else 2
        number *= grow


def time_sync(cases: Sequence[SyncCase], settings: Settings) -> dict[str, Timing]:
    """Best and median ns per call of each case's statement; GC off while timing."""
    timers = [timeit.Timer(case.stmt, globals=dict(case.namespace)) for case in cases]
    numbers = [_calibrate(timer.timeit, settings.seconds_per_repeat) for timer in timers]
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(settings.repeats):
        for timer, number, sample in zip(timers, numbers, samples, strict=True):
            sample.append(timer.timeit(number) / number * 1e9)
    return _timings(cases, samples)


async def _await_loop(fn: Callable[[], Awaitable[object]], number: int) -> float:
    await fn()  # the first call may set up per-loop state; it is not timed
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in itertools.repeat(None, number):
            await fn()
        return time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()


def time_async(cases: Sequence[AsyncCase], settings: Settings) -> dict[str, Timing]:
    """Best and median ns per ``await fn()``: one ``asyncio.run`` per repeat, not timed."""

    def runner(fn: Callable[[], Awaitable[object]]) -> Callable[[int], float]:
        return lambda number: asyncio.run(_await_loop(fn, number))

    runs = [runner(case.fn) for case in cases]
    numbers = [_calibrate(run, settings.seconds_per_repeat) for run in runs]
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(settings.repeats):
        for run, number, sample in zip(runs, numbers, samples, strict=True):
            sample.append(run(number) / number * 1e9)
    return _timings(cases, samples)


def _timings(
    cases: Sequence[SyncCase | AsyncCase], samples: list[list[float]]
) -> dict[str, Timing]:
    return {
        case.label: Timing(case.label, case.version, min(sample), statistics.median(sample))
        for case, sample in zip(cases, samples, strict=True)
    }


# -- where and what ---------------------------------------------------------------------


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"model name", "Model", "cpu model"}:
            return value.strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_facts() -> list[tuple[str, str]]:
    """Date, machine, CPU, cores, Python and the checkout, as label/value pairs."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("platform", platform.platform()),
        ("cpu", _cpu_model()),
        ("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
        ("buttress", f"{version_of('buttress')} (git {_git_revision()})"),
    ]


def print_header(
    console: Console, title: str, facts: Sequence[tuple[str, str]], *, markdown: bool
) -> None:
    """The run's title and facts: a Markdown list, or a rich rule and aligned lines."""
    if markdown:
        print(f"## {title}\n")
        for label, value in facts:
            print(f"- **{label}**: {value}")
        print()
    else:
        console.rule(title)
        for label, value in facts:
            console.print(f"[bold]{label:>9}[/bold]  {value}", highlight=False)
        console.print()


def print_summary(
    console: Console, targets: Sequence[Target], *, markdown: bool, started: float | None = None
) -> None:
    """The targets of the whole run, met or missed, then how long the run took."""
    summary = Report("Targets", ["target", "measured", "verdict"])
    for target in targets:
        summary.rows.append([target.goal, target.measured, "met" if target.met else "MISSED"])
    summary.render(console, markdown=markdown)
    if started is None:
        return
    elapsed = time.perf_counter() - started
    if markdown:
        print(f"_Run took {elapsed:.0f} s._")
    else:
        console.print(f"run took {elapsed:.0f} s", highlight=False)

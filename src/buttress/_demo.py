"""``buttress demo``: a flaky upstream, a resilience pipeline in front of it, a live table.

The parts that decide something (the phase schedule, the upstream's dice, the
table, the summary) are plain objects driven by a clock and a ``random.Random``,
so tests run them on a :class:`~buttress.clock.ManualClock`. Only
:func:`run_demo` uses real time and the terminal.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from buttress.clock import SYSTEM_CLOCK, Clock
from buttress.resilience import (
    Bulkhead,
    BulkheadMetrics,
    CircuitBreaker,
    CircuitMetrics,
    CircuitState,
    Fallback,
    FallbackMetrics,
    Pipeline,
    ResilienceEvent,
    Retry,
    RetryMetrics,
    Timeout,
    TimeoutMetrics,
)

__all__ = [
    "DEFAULT_PHASES",
    "DemoPipeline",
    "DemoResult",
    "DemoStats",
    "FlakyUpstream",
    "Outcome",
    "Phase",
    "PhaseSchedule",
    "Reply",
    "Snapshot",
    "StateChange",
    "build_pipeline",
    "render_summary",
    "render_table",
    "run_demo",
]

REFRESH_PER_SECOND = 4
TIMEOUT_SECONDS = 0.25
RATE_WINDOW = 1.0
"""Seconds of history behind the requests/s figure."""


@dataclass(frozen=True, slots=True)
class Phase:
    """How the upstream behaves for one stretch of the demo."""

    name: str
    share: float
    """Fraction of the demo's duration this phase lasts."""
    failure_rate: float
    """Share of requests that raise ``ConnectionError``."""
    latency: float
    """Usual latency in seconds; each request gets 50 % to 150 % of it."""
    spike_rate: float
    """Share of requests that take ``spike_latency`` instead."""
    spike_latency: float


DEFAULT_PHASES: tuple[Phase, ...] = (
    Phase("healthy", 0.2, failure_rate=0.01, latency=0.02, spike_rate=0.01, spike_latency=0.1),
    # Spikes past the timeout: the timeout and the retry get busy, the breaker holds.
    Phase("degrading", 0.25, failure_rate=0.15, latency=0.05, spike_rate=0.1, spike_latency=0.5),
    # Fast failures (connection refused): the failure rate crosses the breaker's threshold.
    Phase("outage", 0.3, failure_rate=0.97, latency=0.01, spike_rate=0.05, spike_latency=0.5),
    Phase("recovery", 0.25, failure_rate=0.02, latency=0.03, spike_rate=0.02, spike_latency=0.15),
)

_PHASE_STYLES = {
    "healthy": "green",
    "degrading": "yellow",
    "outage": "bold red",
    "recovery": "cyan",
    "done": "dim",
}
_STATE_STYLES = {
    CircuitState.CLOSED: "bold green",
    CircuitState.OPEN: "bold red",
    CircuitState.HALF_OPEN: "bold yellow",
}


class PhaseSchedule:
    """Which :class:`Phase` the upstream is in, by the time elapsed on ``clock``.

    The phases split ``duration`` by their shares; past the end the last phase holds.

    >>> schedule = PhaseSchedule(20, clock=ManualClock())
    >>> schedule.current().name
    'healthy'
    """

    def __init__(
        self, duration: float, *, clock: Clock, phases: Sequence[Phase] = DEFAULT_PHASES
    ) -> None:
        if not duration > 0:
            raise ValueError(f"PhaseSchedule: duration must be > 0 seconds, got {duration!r}")
        if not phases:
            raise ValueError("PhaseSchedule: give at least one phase")
        total = sum(phase.share for phase in phases)
        self.duration = float(duration)
        self.phases = tuple(phases)
        self._clock = clock
        self._start = clock.now()
        # Phase i runs until self._ends[i] seconds after the start.
        self._ends = list(itertools.accumulate(p.share / total * duration for p in phases))

    def elapsed(self) -> float:
        """Seconds since the schedule started."""
        return self._clock.now() - self._start

    def phase_at(self, elapsed: float) -> Phase:
        """The phase ``elapsed`` seconds after the start."""
        index = bisect.bisect_right(self._ends, elapsed)
        return self.phases[min(index, len(self.phases) - 1)]

    def current(self) -> Phase:
        return self.phase_at(self.elapsed())

    def starts(self) -> list[tuple[float, Phase]]:
        """Each phase with the second it starts at."""
        return list(zip([0.0, *self._ends[:-1]], self.phases, strict=True))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the upstream will do with one request: wait ``latency``, then fail or answer."""

    phase: str
    latency: float
    fails: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer to a client, and who gave it."""

    source: str
    """``"upstream"`` or ``"fallback"``."""
    value: str


FALLBACK_REPLY = Reply("fallback", "cached answer")


class FlakyUpstream:
    """A simulated dependency that fails and stalls as its :class:`PhaseSchedule` says.

    :meth:`roll` decides a request's fate (no I/O, so tests call it directly);
    :meth:`fetch` acts it out on the clock.
    """

    def __init__(self, schedule: PhaseSchedule, *, rng: random.Random, clock: Clock) -> None:
        self.schedule = schedule
        self._rng = rng
        self._clock = clock
        self._recent: deque[float] = deque()
        self.requests = 0
        self.failures = 0

    def roll(self) -> Outcome:
        """Decide what happens to the next request, and count it."""
        phase = self.schedule.current()
        rng = self._rng
        if rng.random() < phase.spike_rate:
            latency = phase.spike_latency
        else:
            latency = phase.latency * rng.uniform(0.5, 1.5)
        self.requests += 1
        now = self._clock.now()
        self._recent.append(now)
        self._forget_before(now - RATE_WINDOW)
        return Outcome(phase.name, latency, rng.random() < phase.failure_rate)

    async def fetch(self, key: int) -> Reply:
        """Answer request ``key`` after the rolled latency, or raise ``ConnectionError``."""
        outcome = self.roll()
        await self._clock.sleep_async(outcome.latency)
        if outcome.fails:
            self.failures += 1
            raise ConnectionError(f"upstream ({outcome.phase}) reset the connection on #{key}")
        return Reply("upstream", f"value {key}")

    def requests_per_second(self) -> float:
        """Requests that reached the upstream in the last second."""
        self._forget_before(self._clock.now() - RATE_WINDOW)
        return len(self._recent) / RATE_WINDOW

    def _forget_before(self, cutoff: float) -> None:
        recent = self._recent
        while recent and recent[0] < cutoff:
            recent.popleft()


@dataclass(frozen=True, slots=True)
class DemoPipeline:
    """The strategies in front of the upstream, and the function they protect."""

    fallback: Fallback
    retry: Retry
    breaker: CircuitBreaker
    timeout: Timeout
    bulkhead: Bulkhead
    call: Callable[[int], Awaitable[Reply]]


def build_pipeline(
    upstream: FlakyUpstream,
    *,
    clock: Clock,
    rng: random.Random,
    duration: float,
    concurrency: int,
) -> DemoPipeline:
    """Put ``Pipeline(fallback, retry, breaker, timeout, bulkhead)`` in front of ``upstream``."""
    fallback = Fallback(FALLBACK_REPLY, name="demo-fallback", clock=clock, registry=None)
    # The defaults retry the upstream's failures but not an open breaker or a
    # full bulkhead: those send the caller to the fallback at once.
    retry = Retry(
        attempts=3,
        wait_initial=0.02,
        wait_max=0.2,
        name="demo-retry",
        clock=clock,
        rng=rng,
        registry=None,
    )
    breaker = CircuitBreaker(
        "demo-breaker",
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=20,
        window=50,
        # Scaled so that a short demo still shows an open breaker probing and closing.
        recovery_timeout=min(2.0, max(0.1, duration / 10)),
        success_threshold=3,
        clock=clock,
        registry=None,
    )
    timeout = Timeout(TIMEOUT_SECONDS, name="demo-timeout", clock=clock, registry=None)
    # Fewer slots than clients, so that latency spikes fill it and it sheds load.
    slots = max(1, concurrency * 5 // 8)
    bulkhead = Bulkhead(
        slots,
        max_queue=max(1, concurrency // 4),
        queue_timeout=0.05,
        name="demo-bulkhead",
        clock=clock,
        registry=None,
    )
    pipeline = Pipeline(fallback, retry, breaker, timeout, bulkhead, name="demo", registry=None)
    return DemoPipeline(fallback, retry, breaker, timeout, bulkhead, pipeline(upstream.fetch))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame of the live table shows."""

    elapsed: float
    duration: float
    phase: str
    requests_per_second: float
    fallback: FallbackMetrics
    retry: RetryMetrics
    breaker: CircuitMetrics
    timeout: TimeoutMetrics
    bulkhead: BulkheadMetrics

    @classmethod
    def take(cls, pipeline: DemoPipeline, upstream: FlakyUpstream) -> Snapshot:
        """Read every strategy's metrics and the upstream's state now."""
        schedule = upstream.schedule
        elapsed = schedule.elapsed()
        phase = schedule.phase_at(elapsed).name if elapsed < schedule.duration else "done"
        return cls(
            elapsed=elapsed,
            duration=schedule.duration,
            phase=phase,
            requests_per_second=upstream.requests_per_second(),
            fallback=pipeline.fallback.metrics(),
            retry=pipeline.retry.metrics(),
            breaker=pipeline.breaker.metrics(),
            timeout=pipeline.timeout.metrics(),
            bulkhead=pipeline.bulkhead.metrics(),
        )


def _counters(*pairs: tuple[str, object]) -> Text:
    text = Text()
    for position, (label, value) in enumerate(pairs):
        if position:
            text.append("  ")
        text.append(f"{label} ", style="dim")
        text.append(str(value), style="bold")
    return text


_NO_STATE = Text("-", style="dim")


def render_table(snapshot: Snapshot) -> Table:
    """One row per strategy, outermost first, then the upstream."""
    elapsed = min(snapshot.elapsed, snapshot.duration)
    table = Table(
        title=f"buttress demo  {elapsed:4.1f}s / {snapshot.duration:g}s",
        title_justify="left",
        # ASCII arrows: the demo must print on any terminal encoding (cp1252 too).
        caption="calls flow top to bottom: fallback -> retry -> breaker -> timeout -> bulkhead",
        caption_justify="left",
        box=box.SIMPLE_HEAVY,
        pad_edge=False,
    )
    # Widths fixed to the longest values, so the table does not jump as they change.
    table.add_column("strategy", style="bold", no_wrap=True, min_width=13)
    table.add_column("state", no_wrap=True, min_width=9)
    table.add_column("counters", no_wrap=True, min_width=51)
    fallback, retry, breaker = snapshot.fallback, snapshot.retry, snapshot.breaker
    bulkhead = snapshot.bulkhead
    table.add_row(
        fallback.name,
        _NO_STATE,
        _counters(("fallbacks", fallback.fallbacks), ("failed", fallback.failures)),
    )
    table.add_row(
        retry.name,
        _NO_STATE,
        _counters(
            ("retries", retry.retries),
            ("recovered", retry.recovered),
            ("exhausted", retry.exhausted),
        ),
    )
    table.add_row(
        breaker.name,
        Text(breaker.state.value, style=_STATE_STYLES[breaker.state]),
        _counters(
            ("calls", breaker.calls),
            ("failed", breaker.failures),
            ("rejected", breaker.rejections),
            ("fail rate", f"{breaker.failure_rate:.0%}"),
        ),
    )
    table.add_row(
        snapshot.timeout.name,
        _NO_STATE,
        _counters(
            ("timeouts", snapshot.timeout.timeouts),
            ("limit", f"{snapshot.timeout.seconds:g}s"),
        ),
    )
    table.add_row(
        bulkhead.name,
        _NO_STATE,
        _counters(
            ("active", f"{bulkhead.active}/{bulkhead.max_concurrent}"),
            ("queued", f"{bulkhead.queued}/{bulkhead.max_queue}"),
            ("rejected", bulkhead.rejected),
        ),
        end_section=True,
    )
    table.add_row(
        "upstream",
        Text(snapshot.phase, style=_PHASE_STYLES.get(snapshot.phase, "")),
        _counters(("requests/s", f"{snapshot.requests_per_second:.0f}")),
    )
    return table


@dataclass(frozen=True, slots=True)
class StateChange:
    """A breaker transition, ``at`` seconds into the demo."""

    at: float
    previous: CircuitState
    state: CircuitState


@dataclass
class DemoStats:
    """What the clients saw: who answered, how fast, and how the breaker moved."""

    answered_by: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Seconds each answered request took, by who answered it."""
    state_changes: list[StateChange] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return self.answered_by.total() + self.errors

    def record(self, reply: Reply, latency: float) -> None:
        self.answered_by[reply.source] += 1
        self.latencies.setdefault(reply.source, []).append(latency)

    def percentile(self, fraction: float, *, source: str | None = None) -> float:
        """Nearest-rank percentile of the latencies (of one ``source``), in seconds; 0.0 if none."""
        if source is None:
            ordered = sorted(itertools.chain.from_iterable(self.latencies.values()))
        else:
            ordered = sorted(self.latencies.get(source, ()))
        if not ordered:
            return 0.0
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """How a demo run went: the client stats, the last snapshot, the seed to repeat it."""

    stats: DemoStats
    final: Snapshot
    seed: int
    interrupted: bool


def render_summary(result: DemoResult) -> Table:
    """The after-run summary, as a two-column table."""
    stats = result.stats
    total = stats.requests

    def share(count: int) -> str:
        return f"{count}  ({count / total:.0%})" if total else str(count)

    table = Table(title="summary", title_justify="left", show_header=False, box=None)
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row("requests", str(total))
    table.add_row("answered by upstream", share(stats.answered_by["upstream"]))
    table.add_row("answered by fallback", share(stats.answered_by["fallback"]))
    if stats.errors:
        table.add_row("failed outright", Text(share(stats.errors), style="red"))
    for label, source in (("", None), (", upstream", "upstream"), (", fallback", "fallback")):
        p50, p99 = (stats.percentile(q, source=source) * 1000 for q in (0.5, 0.99))
        table.add_row(f"latency p50 / p99{label}", f"{p50:.1f} ms / {p99:.1f} ms")
    changes = Text()
    for change in stats.state_changes:
        if changes:
            changes.append("\n")
        changes.append(f"{change.at:5.1f}s  ")
        changes.append(change.previous.value, style=_STATE_STYLES[change.previous])
        changes.append(" -> ")
        changes.append(change.state.value, style=_STATE_STYLES[change.state])
    table.add_row("breaker state changes", changes if changes else Text("none", style="dim"))
    seed_note = f"{result.seed}" + ("  (interrupted)" if result.interrupted else "")
    table.add_row("seed", seed_note)
    return table


async def _client(
    call: Callable[[int], Awaitable[Reply]],
    keys: itertools.count[int],
    stats: DemoStats,
    *,
    clock: Clock,
    rng: random.Random,
) -> None:
    while True:
        start = clock.now()
        try:
            reply = await call(next(keys))
        except Exception:
            # The fallback answers every Exception; this counts only a fallback that failed.
            stats.errors += 1
        else:
            stats.record(reply, clock.now() - start)
        # Think time, so that clients answered at once by the fallback do not spin.
        await clock.sleep_async(rng.uniform(0.005, 0.03))


async def _drive(
    duration: float,
    seed: int,
    concurrency: int,
    console: Console,
    clock: Clock,
) -> DemoResult:
    rng = random.Random(seed)
    schedule = PhaseSchedule(duration, clock=clock)
    upstream = FlakyUpstream(schedule, rng=rng, clock=clock)
    pipeline = build_pipeline(
        upstream, clock=clock, rng=rng, duration=duration, concurrency=concurrency
    )
    stats = DemoStats()

    def on_event(event: ResilienceEvent) -> None:
        if event.kind == "state_change":
            attrs = event.attributes
            stats.state_changes.append(
                StateChange(schedule.elapsed(), attrs["previous"], attrs["state"])
            )

    pipeline.breaker.add_listener(on_event)
    keys = itertools.count(1)
    clients = [
        asyncio.create_task(_client(pipeline.call, keys, stats, clock=clock, rng=rng))
        for _ in range(concurrency)
    ]
    interrupted = False
    # Rendering happens here on the event loop, not in Live's refresh thread, so
    # the metrics are read between requests rather than in the middle of one.
    with Live(
        render_table(Snapshot.take(pipeline, upstream)),
        console=console,
        auto_refresh=False,
        transient=False,
    ) as live:
        try:
            while (left := duration - schedule.elapsed()) > 0:
                await clock.sleep_async(min(1 / REFRESH_PER_SECOND, left))
                live.update(render_table(Snapshot.take(pipeline, upstream)), refresh=True)
        except asyncio.CancelledError:
            # Ctrl-C: asyncio.run cancels this task; stop early and still summarise.
            interrupted = True
        final = Snapshot.take(pipeline, upstream)
        live.update(render_table(final), refresh=True)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return DemoResult(stats, final, seed, interrupted)


def run_demo(
    *,
    duration: float = 20.0,
    seed: int | None = None,
    concurrency: int = 16,
    console: Console | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> DemoResult:
    """Run the demo for ``duration`` seconds, showing the live table, then the summary."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    console = console or Console()
    result = asyncio.run(_drive(duration, seed, concurrency, console, clock))
    console.print()
    console.print(render_summary(result))
    return result

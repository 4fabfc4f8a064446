"""buttress's resilience primitives side by side with the libraries people use today.

Each group times the same trivial function bare and through each wrapper, in one
process, with interleaved repeats, and reports the *overhead*: ns per call through
the wrapper minus ns per bare call measured in the same run. The bare call is what
the application pays anyway; the difference is what the wrapper adds.

    .venv/bin/python benchmarks/resilience.py             # about 1-2 minutes
    .venv/bin/python benchmarks/resilience.py --quick     # a smoke run, seconds
    .venv/bin/python benchmarks/resilience.py --markdown  # tables for the README
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiobreaker
import backoff
import circuitbreaker
import limits
import limits.storage
import limits.strategies
import purgatory
import pybreaker
import pyrate_limiter
import stamina
import tenacity
from rich.console import Console

import buttress
from _harness import (
    AsyncCase,
    Report,
    Settings,
    SyncCase,
    Target,
    Timing,
    machine_facts,
    print_header,
    print_summary,
    ratio,
    time_async,
    time_sync,
    version_of,
)
from buttress import Bulkhead, CircuitBreaker, Pipeline, RateLimiter, fallback, retry

BUTTRESS = version_of("buttress")
COLUMNS = ["implementation", "version", "ns/call", "overhead ns", "buttress / peer", "spread"]
SPREAD_NOTE = (
    "ns/call is the best of the repeats; overhead = ns/call - bare ns/call; "
    "spread = how far the median repeat lies above the best (a noise gauge)."
)


def f() -> int:
    return 1


async def af() -> int:
    return 1


# -- reporting ------------------------------------------------------------------------


def _ns(value: float) -> str:
    return f"{value:,.0f}"


def overhead_report(
    title: str,
    timings: dict[str, Timing],
    *,
    bare: str,
    ours: str,
    peers_of: str | None = None,
) -> Report:
    """Rows of ns/call and overhead; each peer's row holds buttress's ratio to it.

    ``peers_of`` names the buttress row the peers are compared with (``ours`` by default).
    """
    base = timings[bare].best
    compared = peers_of or ours
    own = timings[compared].best - base
    report = Report(title, COLUMNS)
    for label, timing in timings.items():
        overhead = timing.best - base
        if label == bare:
            cells = ["(baseline)", ""]
        elif label.startswith("buttress"):
            cells = [_ns(overhead), ""]
        else:
            cells = [_ns(overhead), f"{compared} / {label} = {ratio(own, overhead)}"]
        spread = f"+{timing.spread:.0%}"
        report.rows.append([label, timing.version, _ns(timing.best), *cells, spread])
    return report


def overhead(timings: dict[str, Timing], label: str, bare: str) -> float:
    return timings[label].best - timings[bare].best


def fraction_target(
    timings: dict[str, Timing], *, ours: str, peer: str, bare: str, at_most: float, goal: str
) -> Target:
    """Met when buttress's overhead is at most ``at_most`` times the peer's."""
    mine, theirs = overhead(timings, ours, bare), overhead(timings, peer, bare)
    share = mine / theirs if theirs > 0 else float("inf")
    return Target(
        goal,
        f"{_ns(mine)} ns vs {_ns(theirs)} ns = {ratio(mine, theirs)}",
        share <= at_most,
    )


# -- 1. circuit breaker, closed -----------------------------------------------------------


def breaker_sync(settings: Settings) -> Report:
    cases = [
        SyncCase("bare call", "f()", {"f": f}),
        SyncCase("buttress", "f()", {"f": CircuitBreaker("b", registry=None)(f)}, BUTTRESS),
        SyncCase(
            "pybreaker",
            "f()",
            {"f": pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(f)},
            version_of("pybreaker"),
        ),
        SyncCase(
            "circuitbreaker",
            "f()",
            {"f": circuitbreaker.circuit(failure_threshold=5)(f)},
            version_of("circuitbreaker"),
        ),
        SyncCase(
            "purgatory",
            "f()",
            {"f": purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)("p")(f)},
            version_of("purgatory"),
        ),
    ]
    timings = time_sync(cases, settings)
    report = overhead_report(
        "1a. Circuit breaker, closed state, sync (decorated def f(): return 1)",
        timings,
        bare="bare call",
        ours="buttress",
    )
    report.notes.append(
        'buttress CircuitBreaker("b", registry=None); pybreaker CircuitBreaker(fail_max=5, '
        "reset_timeout=30); circuitbreaker circuit(failure_threshold=5); purgatory "
        'SyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)("p"). All as decorators.'
    )
    report.notes.append(SPREAD_NOTE)
    report.targets += [
        fraction_target(
            timings,
            ours="buttress",
            peer="pybreaker",
            bare="bare call",
            at_most=0.25,
            goal="closed-breaker overhead <= 1/4 of pybreaker's",
        ),
        fraction_target(
            timings,
            ours="buttress",
            peer="circuitbreaker",
            bare="bare call",
            at_most=1.0,
            goal="closed-breaker overhead below circuitbreaker's",
        ),
    ]
    return report


def breaker_async(settings: Settings) -> Report:
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    cases = [
        AsyncCase("bare await", af),
        AsyncCase("buttress", CircuitBreaker("ab", registry=None)(af), BUTTRESS),
        AsyncCase(
            "aiobreaker",
            aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=dt.timedelta(seconds=30))(af),
            version_of("aiobreaker"),
        ),
        AsyncCase("purgatory", factory("p")(af), version_of("purgatory")),
        AsyncCase(
            "circuitbreaker",
            circuitbreaker.circuit(failure_threshold=5)(af),
            version_of("circuitbreaker"),
        ),
    ]
    timings = time_async(cases, settings)
    report = overhead_report(
        "1b. Circuit breaker, closed state, async (decorated async def f(): return 1)",
        timings,
        bare="bare await",
        ours="buttress",
    )
    report.notes.append(
        "N awaits in a loop inside one coroutine, one asyncio.run per repeat (not timed). "
        "aiobreaker CircuitBreaker(fail_max=5, timeout_duration=30 s); purgatory "
        'AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)("p") as decorator '
        "(in-memory unit of work); circuitbreaker circuit(failure_threshold=5) on async def."
    )
    return report


# -- 2. retry, first attempt succeeds -------------------------------------------------------


def retry_sync(settings: Settings) -> Report:
    cases = [
        SyncCase("bare call", "f()", {"f": f}),
        SyncCase("buttress", "f()", {"f": retry(attempts=3)(f)}, BUTTRESS),
        SyncCase(
            "tenacity",
            "f()",
            {"f": tenacity.retry(stop=tenacity.stop_after_attempt(3))(f)},
            version_of("tenacity"),
        ),
        SyncCase(
            "stamina",
            "f()",
            {"f": stamina.retry(on=ConnectionError, attempts=3)(f)},
            version_of("stamina"),
        ),
        SyncCase(
            "backoff",
            "f()",
            {"f": backoff.on_exception(backoff.expo, ConnectionError, max_tries=3)(f)},
            version_of("backoff"),
        ),
    ]
    timings = time_sync(cases, settings)
    report = overhead_report(
        "2a. Retry, success on the first attempt, sync", timings, bare="bare call", ours="buttress"
    )
    report.notes.append(
        "buttress retry(attempts=3); tenacity retry(stop=stop_after_attempt(3)); stamina "
        "retry(on=ConnectionError, attempts=3); backoff on_exception(expo, ConnectionError, "
        "max_tries=3)."
    )
    report.targets += [
        fraction_target(
            timings,
            ours="buttress",
            peer="tenacity",
            bare="bare call",
            at_most=1 / 50,
            goal="retry success-path overhead <= 1/50 of tenacity's",
        ),
        fraction_target(
            timings,
            ours="buttress",
            peer="backoff",
            bare="bare call",
            at_most=1 / 5,
            goal="retry success-path overhead <= 1/5 of backoff's",
        ),
    ]
    return report


def retry_async(settings: Settings) -> Report:
    cases = [
        AsyncCase("bare await", af),
        AsyncCase("buttress", retry(attempts=3)(af), BUTTRESS),
        AsyncCase(
            "tenacity",
            tenacity.retry(stop=tenacity.stop_after_attempt(3))(af),
            version_of("tenacity"),
        ),
        AsyncCase(
            "stamina", stamina.retry(on=ConnectionError, attempts=3)(af), version_of("stamina")
        ),
        AsyncCase(
            "backoff",
            backoff.on_exception(backoff.expo, ConnectionError, max_tries=3)(af),
            version_of("backoff"),
        ),
    ]
    timings = time_async(cases, settings)
    report = overhead_report(
        "2b. Retry, success on the first attempt, async",
        timings,
        bare="bare await",
        ours="buttress",
    )
    report.notes.append("Same configurations as 2a, decorating async def f().")
    return report


# -- 3. a four-strategy pipeline --------------------------------------------------------------

PIPELINE = "buttress Pipeline (4)"
PAIR = "buttress retry+breaker"
PIPELINE_TARGET_NS = 2_000


def pipeline_sync(settings: Settings) -> Report:
    four = Pipeline(
        fallback(None), retry(attempts=3), CircuitBreaker("p", registry=None), Bulkhead(10)
    )
    pair = Pipeline(retry(attempts=3), CircuitBreaker("p2", registry=None))
    peer = tenacity.retry(stop=tenacity.stop_after_attempt(3))(
        pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(f)
    )
    cases = [
        SyncCase("bare call", "f()", {"f": f}),
        SyncCase(PIPELINE, "f()", {"f": four(f)}, BUTTRESS),
        SyncCase(PAIR, "f()", {"f": pair(f)}, BUTTRESS),
        SyncCase(
            "tenacity + pybreaker",
            "f()",
            {"f": peer},
            f"{version_of('tenacity')} + {version_of('pybreaker')}",
        ),
    ]
    timings = time_sync(cases, settings)
    report = overhead_report(
        "3. Pipeline: fallback + retry + circuit breaker + bulkhead, sync",
        timings,
        bare="bare call",
        ours=PIPELINE,
        peers_of=PAIR,
    )
    report.notes.append(
        'buttress Pipeline(fallback(None), retry(attempts=3), CircuitBreaker("p", '
        "registry=None), Bulkhead(10)); the retry+breaker row is Pipeline(retry(attempts=3), "
        "CircuitBreaker(...)) alone."
    )
    report.notes.append(
        "tenacity retry(stop_after_attempt(3)) around a pybreaker CircuitBreaker is only a "
        "partial equivalent: neither library offers a fallback or bulkhead strategy to compose, "
        "so the ratio compares it with buttress's retry+breaker pair, like for like."
    )
    four_overhead = overhead(timings, PIPELINE, "bare call")
    report.targets.append(
        Target(
            "4-strategy pipeline overhead < 2 us",
            f"{_ns(four_overhead)} ns",
            four_overhead < PIPELINE_TARGET_NS,
        )
    )
    return report


# -- 4. rate limiter check --------------------------------------------------------------------

KEY_COUNT = 10_000
HUGE = 10**9


class _PerKeyBuckets(pyrate_limiter.BucketFactory):
    """One pyrate-limiter bucket per name, as its README's ``PerNameFactory`` does.

    ``Limiter(bucket)`` routes every name to that one bucket, so a per-key limit
    needs a factory like this one.
    """

    def __init__(self, make_bucket: Callable[[], pyrate_limiter.AbstractBucket]) -> None:
        self._make_bucket = make_bucket
        self._clock = pyrate_limiter.MonotonicClock()
        self._buckets: dict[str, pyrate_limiter.AbstractBucket] = {}

    def wrap_item(self, name: str, weight: int = 1) -> pyrate_limiter.RateItem:
        return pyrate_limiter.RateItem(name, self._clock.now(), weight=weight)

    def get(self, item: pyrate_limiter.RateItem) -> pyrate_limiter.AbstractBucket:
        bucket = self._buckets.get(item.name)
        if bucket is None:
            bucket = self._buckets[item.name] = self._make_bucket()
            self.schedule_leak(bucket)
        return bucket


def _pyrate_rates() -> list[pyrate_limiter.Rate]:
    return [pyrate_limiter.Rate(HUGE, pyrate_limiter.Duration.SECOND)]


def _log_bucket() -> pyrate_limiter.AbstractBucket:
    return pyrate_limiter.InMemoryBucket(_pyrate_rates())


def _gcra_bucket() -> pyrate_limiter.AbstractBucket:
    return pyrate_limiter.StateBucket(_pyrate_rates())


@dataclass(frozen=True, slots=True)
class _LimiterSetup:
    cases: list[SyncCase]
    pyrate: list[pyrate_limiter.Limiter]


def _limiter_cases(*, many_keys: bool) -> _LimiterSetup:
    keys = [f"user:{number}" for number in range(KEY_COUNT)]

    def key_names() -> dict[str, object]:
        return {"keys": itertools.cycle(keys)} if many_keys else {"key": "k"}

    key = "next(keys)" if many_keys else "key"
    item = limits.parse(f"{HUGE}/second")
    pyrate = [
        pyrate_limiter.Limiter(_PerKeyBuckets(make) if many_keys else make())
        for make in (_log_bucket, _gcra_bucket)
    ]
    limits_version = version_of("limits")
    pyrate_version = version_of("pyrate-limiter")
    limiter = RateLimiter(rate=1e9, per=1, burst=HUGE)
    cases = [
        SyncCase("loop only", key, key_names()),
        SyncCase(
            "buttress", f"acquire({key})", {"acquire": limiter.try_acquire, **key_names()}, BUTTRESS
        ),
    ]
    for label, strategy in (
        ("limits moving window", limits.strategies.MovingWindowRateLimiter),
        ("limits fixed window", limits.strategies.FixedWindowRateLimiter),
    ):
        hit = strategy(limits.storage.MemoryStorage()).hit
        cases.append(
            SyncCase(
                label,
                f"hit(item, {key})",
                {"hit": hit, "item": item, **key_names()},
                limits_version,
            )
        )
    for label, pyrate_one in zip(
        ("pyrate-limiter log", "pyrate-limiter GCRA"), pyrate, strict=True
    ):
        cases.append(
            SyncCase(
                label,
                f"acquire({key}, blocking=False)",
                {"acquire": pyrate_one.try_acquire, **key_names()},
                pyrate_version,
            )
        )
    return _LimiterSetup(cases, pyrate)


def rate_limiter(settings: Settings, *, many_keys: bool) -> Report:
    setup = _limiter_cases(many_keys=many_keys)
    try:
        timings = time_sync(setup.cases, settings)
    finally:
        for limiter in setup.pyrate:
            limiter.close()
    which = f"{KEY_COUNT:,} keys in turn" if many_keys else "one key"
    report = overhead_report(
        f"4{'b' if many_keys else 'a'}. Rate limiter check, never limited, {which}",
        timings,
        bare="loop only",
        ours="buttress",
    )
    if many_keys:
        report.notes.append(
            f"Keys cycle over {KEY_COUNT:,} distinct strings; every limiter keeps per-key state "
            "(pyrate-limiter through a one-bucket-per-name BucketFactory, since Limiter(bucket) "
            "sends every name to the same bucket)."
        )
    else:
        report.notes.append(
            "buttress RateLimiter(rate=1e9, per=1, burst=10**9).try_acquire(key); limits "
            "MemoryStorage + MovingWindowRateLimiter / FixedWindowRateLimiter "
            '.hit(parse("1000000000/second"), key); pyrate-limiter '
            "Limiter(InMemoryBucket([Rate(10**9, Duration.SECOND)])) (the sliding-window log) "
            "and Limiter(StateBucket(...)) (GCRA, like buttress), "
            ".try_acquire(key, blocking=False)."
        )
        report.notes.append(
            "Overhead here is the whole cost of the check: only the loop (and the key lookup) is "
            "subtracted, since without a limiter there is no call at all."
        )
        report.notes.append(
            "limits' moving window keeps one entry per hit inside the window and inserts at the "
            "front of a list, so with a huge limit on one key its cost grows with the call rate "
            "(entries alive in the last second); the number depends on how fast the loop runs."
        )
    return report


# -- 5. contention ----------------------------------------------------------------------------

THREADS = 8
SLEEP = 0.010


def sleepy() -> None:
    time.sleep(SLEEP)


def _contended_wall(call: Callable[[], object], calls: int) -> float:
    """Wall seconds for THREADS threads making ``calls`` calls each, from one start line."""
    start_line = threading.Barrier(THREADS + 1)

    def worker() -> None:
        start_line.wait()
        for _ in range(calls):
            call()

    workers = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in workers:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    return time.perf_counter() - start


def contention(*, calls: int, rounds: int) -> Report:
    # pybreaker holds its lock for the whole protected call, so its threads run one
    # at a time: 8x the wall time. It runs an eighth of the calls and is scaled up,
    # to keep the group to a few seconds per variant.
    scaled_calls = max(1, calls // THREADS)
    variants: list[tuple[str, str, Callable[[], object], int]] = [
        ("bare calls", "", sleepy, calls),
        ("buttress", BUTTRESS, CircuitBreaker("shared", registry=None)(sleepy), calls),
        (
            "pybreaker",
            version_of("pybreaker"),
            pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(sleepy),
            scaled_calls,
        ),
    ]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for label, _version, call, count in variants:
            wall = _contended_wall(call, count) * calls / count
            best[label] = min(best.get(label, wall), wall)
    bare = best["bare calls"]
    ideal = calls * SLEEP
    report = Report(
        f"5. Contention: {THREADS} threads x {calls} calls of a {SLEEP * 1000:.0f} ms function, "
        "one shared breaker",
        ["implementation", "version", "calls timed", "wall s", "vs bare"],
    )
    for label, version, _call, count in variants:
        wall = best[label]
        timed = f"{THREADS} x {count}" + (f" (scaled x{calls / count:g})" if count != calls else "")
        report.rows.append([label, version, timed, f"{wall:.3f}", f"{wall / bare:.3f}x"])
    report.notes.append(
        f"Wall clock from a common start line to the last thread done; best of {rounds} "
        f"round(s). Ideal: {calls} x {SLEEP * 1000:.0f} ms = {ideal:.2f} s."
    )
    report.notes.append(
        "pybreaker holds its lock for the whole protected call, so the threads queue behind "
        f"each other; it is timed on {THREADS} x {scaled_calls} calls and the wall time scaled "
        f"by {calls / scaled_calls:g} to keep the run short."
    )
    report.targets.append(
        Target(
            f"{THREADS} threads through one breaker within 10 % of bare",
            f"{best['buttress']:.3f} s vs {bare:.3f} s = {best['buttress'] / bare:.3f}x",
            best["buttress"] <= bare * 1.10,
        )
    )
    return report


# -- main ---------------------------------------------------------------------------------------


def _header(console: Console, settings: Settings, mode: str) -> None:
    facts = machine_facts()
    peers = ", ".join(
        f"{name} {version_of(name)}"
        for name in (
            "pybreaker",
            "circuitbreaker",
            "aiobreaker",
            "purgatory",
            "tenacity",
            "stamina",
            "backoff",
            "limits",
            "pyrate-limiter",
        )
    )
    facts.append(("peers", peers))
    facts.append(
        (
            "method",
            f"{mode}: best of {settings.repeats} interleaved repeats of "
            f"~{settings.seconds_per_repeat:g} s each",
        )
    )
    print_header(console, "buttress resilience benchmarks", facts, markdown=settings.markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats: a smoke run")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--group",
        action="append",
        choices=["1", "2", "3", "4", "5"],
        help="run only this group (repeatable); all groups by default",
    )
    args = parser.parse_args(argv)
    settings = (
        Settings(repeats=3, seconds_per_repeat=0.02, markdown=args.markdown)
        if args.quick
        else Settings(repeats=7, seconds_per_repeat=0.15, markdown=args.markdown)
    )
    groups = set(args.group or ["1", "2", "3", "4", "5"])
    console = Console(width=None if Console().is_terminal else 140)
    started = time.perf_counter()
    _header(console, settings, "quick" if args.quick else "full")

    steps: list[tuple[str, Callable[[], Report]]] = [
        ("1", lambda: breaker_sync(settings)),
        ("1", lambda: breaker_async(settings)),
        ("2", lambda: retry_sync(settings)),
        ("2", lambda: retry_async(settings)),
        ("3", lambda: pipeline_sync(settings)),
        ("4", lambda: rate_limiter(settings, many_keys=False)),
        ("4", lambda: rate_limiter(settings, many_keys=True)),
        (
            "5",
            lambda: contention(calls=40 if args.quick else 200, rounds=1 if args.quick else 2),
        ),
    ]
    targets: list[Target] = []
    for group, step in steps:
        if group in groups:
            report = step()
            report.render(console, markdown=settings.markdown)
            targets += report.targets
    if targets:
        print_summary(console, targets, markdown=settings.markdown)
    elapsed = time.perf_counter() - started
    if settings.markdown:
        print(f"_Run took {elapsed:.0f} s (buttress {buttress.__version__})._")
    else:
        console.print(f"run took {elapsed:.0f} s", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

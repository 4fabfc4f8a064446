"""buttress's in-process cache, MemoryCache, against cachetools, theine and cachebox.

Group 1, speed: ns per ``get`` (hit and miss) and per ``set`` of a new key into a
full cache, timed in ``timeit`` loops with interleaved repeats (best counts).
Keys are strings; each row fetches its next key from the same pre-drawn
sequence, and that fetch alone (the "key only" row) is subtracted: the "net"
column is what the cache costs. MemoryCache runs with its locking and read
buffer as always (it is thread-safe; cachetools is not, theine and cachebox are).

Group 2, hit ratios: each policy replays whole traces cache-aside (a miss is
followed by a set), at 100, 1,000 and 10,000 entries, against Belady's optimum
(offline: evict the entry used farthest in the future, or skip caching the new
one if it is). Traces: Zipf s=0.8 and s=1.0 (1M requests over 500k keys), a
Zipf s=1.0 polluted by scans (10,000 never-seen keys after every 40,000
requests), and the ARC OLTP trace (/work/shared/traces/oltp.gz, 914,145
requests). Simulations run in two worker processes; they are not timed.

    .venv/bin/python benchmarks/cache_memory.py             # about 3-4 minutes
    .venv/bin/python benchmarks/cache_memory.py --quick     # a smoke run, under a minute
    .venv/bin/python benchmarks/cache_memory.py --markdown  # Markdown tables
    .venv/bin/python benchmarks/cache_memory.py --group 2   # hit ratios only
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import itertools
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from _harness import (
    Report,
    Settings,
    SyncCase,
    Target,
    machine_facts,
    print_header,
    print_summary,
    ratio,
    time_sync,
    version_of,
)
from buttress.cache._memory import MemoryCache
from buttress.cache._missing import MISSING
from buttress.clock import ManualClock

BUTTRESS = version_of("buttress")
OLTP = Path(os.environ.get("BUTTRESS_OLTP_TRACE", "/work/shared/traces/oltp.gz"))
CAPACITIES = (100, 1_000, 10_000)
SEED = 20_260_522

# -- traces ---------------------------------------------------------------------------------


def zipf(requests: int, keys: int, s: float, seed: int) -> list[int]:
    """``requests`` draws of a Zipf(s) popularity over ``keys`` keys, ranks shuffled."""
    rng = random.Random(seed)
    weights = itertools.accumulate(1 / rank**s for rank in range(1, keys + 1))
    ranks = rng.choices(range(keys), cum_weights=list(weights), k=requests)
    names = list(range(keys))
    rng.shuffle(names)  # popularity unrelated to the key's value
    return [names[rank] for rank in ranks]


def scan_polluted(requests: int, keys: int, every: int, length: int, seed: int) -> list[int]:
    """Zipf s=1.0, with a scan of ``length`` never-seen keys after every ``every`` requests."""
    base = zipf(requests, keys, 1.0, seed)
    trace: list[int] = []
    fresh = keys
    for start in range(0, len(base), every):
        trace += base[start : start + every]
        trace += range(fresh, fresh + length)
        fresh += length
    return trace[:requests]


def oltp(path: Path) -> list[int]:
    """The ARC OLTP trace: each line ``start count _ _`` asks for blocks start…start+count-1."""
    trace: list[int] = []
    with gzip.open(path, "rt") as lines:
        for line in lines:
            start, count = line.split()[:2]
            trace += range(int(start), int(start) + int(count))
    return trace


def load_traces(quick: bool) -> dict[str, list[int]]:
    traces = {
        "OLTP (ARC)": oltp(OLTP),
        "Zipf s=1.0": zipf(1_000_000, 500_000, 1.0, SEED),
    }
    if not quick:
        traces["Zipf s=0.8"] = zipf(1_000_000, 500_000, 0.8, SEED + 1)
        traces["Zipf s=1.0 + scans"] = scan_polluted(1_000_000, 100_000, 40_000, 10_000, SEED + 2)
    return traces


# -- hit-ratio simulations (run in worker processes) ---------------------------------------

_TRACES: dict[str, list[int]] = {}  # filled before the workers fork


def _ours(policy: str) -> Callable[[list[int], int], int]:
    def simulate(trace: list[int], capacity: int) -> int:
        random.seed(SEED)  # W-TinyLFU breaks some ties with a coin: a repeatable table
        cache: MemoryCache[int, int] = MemoryCache(capacity, policy=policy, clock=ManualClock())
        get, put, missing = cache.get, cache.set, MISSING
        hits = 0
        for key in trace:
            if get(key, missing) is missing:
                put(key, key)
            else:
                hits += 1
        return hits

    return simulate


def _mapping_cache(make: Callable[[int], Any]) -> Callable[[list[int], int], int]:
    """cachetools and cachebox: ``get`` then ``cache[key] = value`` on a miss."""

    def simulate(trace: list[int], capacity: int) -> int:
        cache = make(capacity)
        get, missing = cache.get, MISSING
        hits = 0
        for key in trace:
            if get(key, missing) is missing:
                cache[key] = key
            else:
                hits += 1
        return hits

    return simulate


def _theine(trace: list[int], capacity: int) -> int:
    """theine's W-TinyLFU core, told of every hit and every insert at once (no buffering)."""
    from theine_core import TlfuCore, spread

    core = TlfuCore(capacity)
    resident: set[int] = set()
    hits = 0
    for key in trace:
        hashed = spread(hash(key))
        if hashed in resident:
            hits += 1
            core.access([hashed])
        else:
            resident.add(hashed)
            resident.difference_update(core.set([(hashed, 0)]))
    return hits


def _belady(trace: list[int], capacity: int) -> int:
    """The offline optimum: keep what is used soonest; a newcomer used later is not kept."""
    never = len(trace)
    next_use = [never] * len(trace)
    seen: dict[int, int] = {}
    for index in range(len(trace) - 1, -1, -1):
        key = trace[index]
        next_use[index] = seen.get(key, never)
        seen[key] = index
    cached: dict[int, int] = {}  # key -> its next use
    farthest: list[tuple[int, int]] = []  # max-heap of (-next use, key), stale entries skipped
    hits = 0
    for key, upcoming in zip(trace, next_use, strict=True):
        if key in cached:
            hits += 1
        elif len(cached) >= capacity:
            while cached.get(farthest[0][1]) != -farthest[0][0]:
                heapq.heappop(farthest)
            if -farthest[0][0] <= upcoming:
                continue  # the newcomer is needed last: do not cache it
            del cached[heapq.heappop(farthest)[1]]
        cached[key] = upcoming
        heapq.heappush(farthest, (-upcoming, key))
        if len(farthest) > 8 * capacity + 1024:
            farthest = [(-use, k) for k, use in cached.items()]
            heapq.heapify(farthest)
    return hits


def _competitors() -> dict[str, Callable[[list[int], int], int]]:
    import cachebox
    import cachetools

    return {
        "buttress tinylfu": _ours("tinylfu"),
        "buttress lru": _ours("lru"),
        "buttress lfu": _ours("lfu"),
        "buttress fifo": _ours("fifo"),
        "theine (W-TinyLFU)": _theine,
        "cachetools LRUCache": _mapping_cache(cachetools.LRUCache),
        "cachetools LFUCache": _mapping_cache(cachetools.LFUCache),
        "cachebox LRUCache": _mapping_cache(cachebox.LRUCache),
        "cachebox LFUCache": _mapping_cache(cachebox.LFUCache),
        "cachebox FIFOCache": _mapping_cache(cachebox.FIFOCache),
        "Belady's optimum (offline)": _belady,
    }


def _simulate(task: tuple[str, str, tuple[int, ...]]) -> tuple[str, str, list[float], float]:
    trace_name, competitor, capacities = task
    trace = _TRACES[trace_name]
    simulate = _competitors()[competitor]
    started = time.perf_counter()
    ratios = [simulate(trace, capacity) / len(trace) for capacity in capacities]
    return trace_name, competitor, ratios, time.perf_counter() - started


def hit_ratios(quick: bool) -> list[Report]:
    capacities = (1_000,) if quick else CAPACITIES
    _TRACES.update(load_traces(quick))
    names = list(_competitors())
    tasks = [(trace, name, capacities) for trace in _TRACES for name in names]
    # The longest first, so two workers finish together.
    slow = ("buttress", "cachetools", "Belady")
    tasks.sort(key=lambda task: not task[1].startswith(slow))
    context = multiprocessing.get_context("fork")  # the workers inherit the traces
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        results = list(pool.map(_simulate, tasks))
    found = {(trace, name): ratios for trace, name, ratios, _ in results}
    reports = []
    for trace_name, trace in _TRACES.items():
        columns = ["policy", *(f"{c:,} entries" for c in capacities)]
        report = Report(
            f"2. Hit ratio, {trace_name} ({len(trace):,} requests, "
            f"{len(set(trace)):,} distinct keys)",
            columns,
        )
        ours = found[(trace_name, "buttress tinylfu")]
        for name in names:
            cells = [f"{r:.2%}" for r in found[(trace_name, name)]]
            if name != "buttress tinylfu":
                cells = [
                    f"{cell} ({(mine - theirs) * 100:+.1f})"
                    for cell, mine, theirs in zip(
                        cells, ours, found[(trace_name, name)], strict=True
                    )
                ]
            report.rows.append([name, *cells])
        report.notes.append(
            "in brackets: buttress tinylfu minus that row, in percentage points "
            "(positive: buttress hits more)"
        )
        theine = found[(trace_name, "theine (W-TinyLFU)")]
        report.targets.append(
            Target(
                f"tinylfu >= theine on {trace_name}, every size",
                ", ".join(f"{m:.2%} vs {t:.2%}" for m, t in zip(ours, theine, strict=True)),
                all(m >= t for m, t in zip(ours, theine, strict=True)),
            )
        )
        if trace_name.startswith("OLTP") and 1_000 in capacities:
            at = capacities.index(1_000)
            lru = found[(trace_name, "buttress lru")][at]
            report.targets.append(
                Target(
                    "tinylfu >= LRU + 5 points on OLTP at 1,000 entries",
                    f"{ours[at]:.2%} vs {lru:.2%} ({(ours[at] - lru) * 100:+.1f} points)",
                    ours[at] >= lru + 0.05,
                )
            )
        reports.append(report)
    seconds = dict.fromkeys(names, 0.0)
    for _, name, _, elapsed in results:
        seconds[name] += elapsed
    reports[-1].notes.append(
        "simulation time per policy, all traces (not a benchmark): "
        + ", ".join(f"{name} {elapsed:.0f} s" for name, elapsed in seconds.items())
    )
    return reports


# -- throughput ---------------------------------------------------------------------------

KEYS = [f"user:{i}" for i in range(10_000)]
MISSES = [f"absent:{i}" for i in range(10_000)]
NEW = [f"new:{i}" for i in range(20_000)]  # twice the capacity: every set inserts and evicts
TTL = 3600


def _cycle(keys: Sequence[str]) -> Callable[[], str]:
    return itertools.cycle(keys).__next__


def _draws(distribution: str) -> list[str]:
    rng = random.Random(SEED)
    if distribution == "uniform":
        return [rng.choice(KEYS) for _ in range(1 << 16)]
    return [KEYS[i] for i in zipf(1 << 16, len(KEYS), 0.99, SEED)]


@dataclass(frozen=True, slots=True)
class Peer:
    """A candidate: how to make one, and which API it has."""

    label: str
    version: str
    make: Callable[[], Any]
    api: str  # "ours", "map" (get / []=), "item" ([] / []=) or "theine"
    ttl: timedelta | None = None

    def operations(self, cache: Any) -> tuple[Callable[..., Any], Callable[[str, str], object]]:
        """The candidate's ``get`` and ``set`` as plain callables."""
        if self.api == "ours":
            return cache.get, cache.set
        if self.api == "item":
            return cache.__getitem__, cache.__setitem__
        if self.api == "map":
            return cache.get, cache.__setitem__
        ttl = self.ttl
        return cache.get, lambda key, value: cache.set(key, value, ttl)


def _peers() -> list[Peer]:
    import cachebox
    import cachetools
    import theine

    cachetools_version, cachebox_version = version_of("cachetools"), version_of("cachebox")
    return [
        Peer("buttress tinylfu + ttl", BUTTRESS, lambda: MemoryCache(10_000, ttl=TTL), "ours"),
        Peer("buttress tinylfu", BUTTRESS, lambda: MemoryCache(10_000), "ours"),
        Peer("buttress lru", BUTTRESS, lambda: MemoryCache(10_000, policy="lru"), "ours"),
        Peer(
            "cachetools LRUCache .get",
            cachetools_version,
            lambda: cachetools.LRUCache(10_000),
            "map",
        ),
        Peer(
            "cachetools LRUCache []",
            cachetools_version,
            lambda: cachetools.LRUCache(10_000),
            "item",
        ),
        Peer(
            "cachetools TTLCache .get",
            cachetools_version,
            lambda: cachetools.TTLCache(10_000, ttl=TTL),
            "map",
        ),
        Peer(
            "theine Cache + ttl",
            version_of("theine"),
            lambda: theine.Cache(10_000),
            "theine",
            timedelta(seconds=TTL),
        ),
        Peer("theine Cache", version_of("theine"), lambda: theine.Cache(10_000), "theine"),
        Peer("cachebox LRUCache", cachebox_version, lambda: cachebox.LRUCache(10_000), "map"),
        Peer(
            "cachebox TTLCache",
            cachebox_version,
            lambda: cachebox.TTLCache(10_000, global_ttl=TTL),
            "map",
        ),
    ]


def throughput(settings: Settings) -> list[Report]:
    peers = _peers()
    tables = [
        ("1a. get, hit, Zipf(0.99) keys", "get", _draws("zipf")),
        ("1b. get, hit, uniform keys", "get", _draws("uniform")),
        ("1c. get, miss", "get", MISSES),
        ("1d. set of a new key into a full cache (insert + evict)", "set", NEW),
    ]
    reports = []
    for title, operation, keys in tables:
        cases = [
            SyncCase("key only (subtracted)", "nk()", {"nk": _cycle(keys)}),
            # What a TTL check pays for reading the clock on this machine.
            SyncCase(
                "clock read alone", "nk(); now()", {"nk": _cycle(keys), "now": time.monotonic}
            ),
        ]
        for peer in peers:
            if peer.api == "item" and keys is MISSES:
                continue  # [] raises on a miss
            get, put = peer.operations(peer.make())
            for key in KEYS:
                put(key, key)
            if operation == "get":
                case = SyncCase(peer.label, "f(nk())", {"f": get, "nk": _cycle(keys)}, peer.version)
            else:
                case = SyncCase(
                    peer.label, "f(k := nk(), k)", {"f": put, "nk": _cycle(keys)}, peer.version
                )
            cases.append(case)
        timings = time_sync(cases, settings)
        base = timings["key only (subtracted)"].best
        ours = timings["buttress tinylfu + ttl"].best - base
        report = Report(
            title,
            ["implementation", "version", "ns/op", "net ns", "tinylfu+ttl / peer", "spread"],
        )
        for label, timing in timings.items():
            net = timing.best - base
            reference = label.startswith(("buttress tinylfu +", "key only", "clock read"))
            versus = "" if reference else ratio(ours, net)
            report.rows.append(
                [
                    label,
                    timing.version,
                    f"{timing.best:,.0f}",
                    "" if label.startswith("key only") else f"{net:,.0f}",
                    versus,
                    f"+{timing.spread:.0%}",
                ]
            )
        report.notes.append(
            "net ns = ns/op minus the key-only loop; the ratio divides buttress tinylfu+ttl's "
            'net ns by the peer\'s (below 1: buttress is faster). "clock read alone" is '
            "time.monotonic(), which every get of an entry with a TTL pays (cachetools "
            "LRUCache and cachebox LRUCache have no TTL and read no clock)"
        )
        if operation == "get" and keys is not MISSES:
            for rival in ("cachetools LRUCache .get", "cachetools LRUCache []"):
                theirs = timings[rival].best - base
                report.targets.append(
                    Target(
                        f"{title.split(', ', 2)[2]}: get-hit of MemoryCache(tinylfu, ttl) "
                        f"at most {rival}",
                        f"{ours:,.0f} ns vs {theirs:,.0f} ns = {ratio(ours, theirs)}",
                        ours <= theirs,
                    )
                )
        reports.append(report)
    return reports


# -- main ------------------------------------------------------------------------------------


def _header(console: Console, settings: Settings, mode: str) -> None:
    facts = machine_facts()
    facts.append(
        ("peers", ", ".join(f"{n} {version_of(n)}" for n in ("cachetools", "theine", "cachebox")))
    )
    facts.append(
        (
            "method",
            f"{mode}: speed is the best of {settings.repeats} interleaved repeats of "
            f"~{settings.seconds_per_repeat:g} s each; hit ratios are exact replays",
        )
    )
    print_header(
        console, "buttress cache benchmarks: MemoryCache (L1)", facts, markdown=settings.markdown
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, fewer traces")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument(
        "--group", action="append", choices=["1", "2"], help="1: speed, 2: hit ratios"
    )
    args = parser.parse_args(argv)
    settings = (
        Settings(repeats=3, seconds_per_repeat=0.02, markdown=args.markdown)
        if args.quick
        else Settings(repeats=7, seconds_per_repeat=0.1, markdown=args.markdown)
    )
    groups = set(args.group or ["1", "2"])
    console = Console(width=None if Console().is_terminal else 160)
    started = time.perf_counter()
    _header(console, settings, "quick" if args.quick else "full")
    reports: list[Report] = []
    if "2" in groups:  # first: the workers fork before theine starts its thread
        reports += hit_ratios(args.quick)
    if "1" in groups:
        reports = throughput(settings) + reports
    targets: list[Target] = []
    for report in reports:
        report.render(console, markdown=settings.markdown)
        targets += report.targets
    print_summary(console, targets, markdown=settings.markdown, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

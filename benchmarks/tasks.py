"""buttress's SQLite task queue against huey with SQLite storage (``SqliteHuey``).

Three measurements, each on a fresh database file in a temporary directory:

1. **enqueue rate**, in this process: one task per call (one transaction each),
   and in bulk (buttress ``queue.enqueue_many(queue.prepare(...) for ...)``, one
   transaction per batch; huey has no bulk enqueue);
2. **drain rate**: N no-op tasks already queued, drained by ONE worker process
   (this script re-run with ``--role worker``), timed inside that process from
   just before its run loop starts to the last task done;
3. **latency from enqueue to start** at a steady 200 tasks/s: this process
   enqueues at 200/s while one worker process runs; each task writes
   ``time it started - time.time() taken just before its enqueue call``.

The guarantees differ, and so does the work per task: huey deletes a task
from its table when it dequeues it, before running it (at most once: a worker
killed mid-task loses it); buttress claims under a lease, and writes the
outcome afterwards (at least once: a lapsed lease is re-queued). Both commit
with ``PRAGMA synchronous=FULL`` in WAL mode (buttress sets it; huey keeps
SQLite's default, checked at run time), so each commit is one fsync of the WAL.

    .venv/bin/python benchmarks/tasks.py             # a few minutes
    .venv/bin/python benchmarks/tasks.py --quick     # a smoke run, under a minute
    .venv/bin/python benchmarks/tasks.py --markdown  # tables for the README
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from _harness import Report, Target, machine_facts, print_header, print_summary, ratio, version_of
from buttress.tasks import Queue, Worker

HERE = Path(__file__).resolve()
BULK_BATCH = 1000
LATENCY_RATE = 200.0  # tasks per second from the producer
HUEY_WORKERS = (1, 4)  # huey consumer worker threads tried for the drain
BUTTRESS_CONCURRENCY = 10  # the Worker default
BUTTRESS_POLL = 0.1  # the Worker default poll_interval
TARGET_DRAIN = 1.5


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure."""

    enqueue_one: int  # tasks enqueued one per call, per repeat
    enqueue_bulk: int  # tasks enqueued in batches of BULK_BATCH, per repeat
    enqueue_repeats: int
    drain: int  # tasks drained per run
    drain_repeats: int
    latency_seconds: float
    markdown: bool


QUICK = Plan(300, 5000, 2, 2000, 1, 2.0, markdown=False)
FULL = Plan(2000, 20000, 3, 10000, 2, 5.0, markdown=False)


# -- the tasks (the same functions run in the worker processes) ------------------------

_record_lock = threading.Lock()
_record_file: IO[str] | None = None


def _record(enqueued: float) -> None:
    delay = time.time() - enqueued
    assert _record_file is not None, "latency tasks only run in a --role worker process"
    with _record_lock:
        _record_file.write(f"{delay!r}\n")
        _record_file.flush()


async def noop_async() -> None:
    return None


def noop_sync() -> None:
    return None


async def latency_async(enqueued: float) -> None:
    _record(enqueued)


def noop_huey() -> None:
    return None


def latency_huey(enqueued: float) -> None:
    _record(enqueued)


def buttress_queue(path: Path) -> Queue:
    queue = Queue.from_url(f"sqlite:///{path}")  # path is absolute: sqlite:////tmp/...
    queue.task(noop_async)
    queue.task(noop_sync)
    queue.task(latency_async)
    return queue


def huey_app(path: Path, *, fsync: bool | None = None) -> tuple[Any, Any, Any]:
    """A SqliteHuey on ``path`` and its two tasks (registered by explicit name, so the
    producer and the consumer agree). ``fsync=None`` keeps SQLite's default."""
    from huey import SqliteHuey

    huey = SqliteHuey(name="bench", filename=str(path), fsync=fsync)
    noop = huey.task(name="noop")(noop_huey)
    latency = huey.task(name="latency")(latency_huey)
    return huey, noop, latency


# -- worker processes ----------------------------------------------------------------------


def _timed(stats: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` counting its calls, seconds and (for lists) items into ``stats``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        stats[f"{name}_s"] = stats.get(f"{name}_s", 0.0) + time.perf_counter() - start
        stats[f"{name}_calls"] = stats.get(f"{name}_calls", 0) + 1
        if isinstance(result, list):
            stats[f"{name}_items"] = stats.get(f"{name}_items", 0) + len(result)
            if not result:
                stats[f"{name}_empty"] = stats.get(f"{name}_empty", 0) + 1
        return result

    return wrapper


def _locked(lock: threading.Lock, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return fn(*args, **kwargs)

    return wrapper


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_worker(args: argparse.Namespace) -> int:
    """The child side: ``--role worker``. Prints ``{"ready": ...}``, then (drain) the result."""
    global _record_file
    db = Path(args.db)
    if args.out:
        _record_file = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 - lives with the process
    if args.system == "buttress":
        return _buttress_worker(args, db)
    return _huey_worker(args, db)


def _buttress_worker(args: argparse.Namespace, db: Path) -> int:
    queue = buttress_queue(db)
    backend = queue.backend
    if args.sync_normal:  # diagnostic only: what the per-commit fsync costs
        connect = backend._connect  # type: ignore[attr-defined]

        def connect_normal() -> sqlite3.Connection:
            conn: sqlite3.Connection = connect()
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn

        setattr(backend, "_connect", connect_normal)  # noqa: B010
    stats: dict[str, float] = {}
    write_lock = threading.Lock()
    for name in ("claim", "succeed"):
        method = getattr(backend, name)
        if args.serialize:  # diagnostic only: queue this process's writers on a Python lock
            method = _locked(write_lock, method)
        setattr(backend, name, _timed(stats, name, method))
    worker = Worker(queue, concurrency=args.concurrency, poll_interval=args.poll)
    _say({"ready": time.time()})
    start = time.perf_counter()
    asyncio.run(worker.run(until_empty=args.mode == "drain"))
    seconds = time.perf_counter() - start
    queue.close()
    if args.mode == "drain":
        _say({"seconds": seconds, "done": worker.events["succeeded"], **stats})
    return 0


def _huey_worker(args: argparse.Namespace, db: Path) -> int:
    from huey.signals import SIGNAL_COMPLETE

    huey, _, _ = huey_app(db)
    stats: dict[str, float] = {}
    setattr(huey.storage, "dequeue", _timed(stats, "dequeue", huey.storage.dequeue))  # noqa: B010
    done = 0
    lock = threading.Lock()
    start = 0.0

    def completed(signal_name: str, task: Any, *rest: Any) -> None:
        nonlocal done
        with lock:
            done += 1
            if done == args.expect:
                _say({"seconds": time.perf_counter() - start, "done": done, **stats})

    huey.signal(SIGNAL_COMPLETE)(completed)

    consumer = huey.create_consumer(
        workers=args.concurrency,
        worker_type="thread",
        periodic=False,
        initial_delay=args.poll,
        backoff=args.backoff,
        max_delay=args.max_delay,
    )
    _say({"ready": time.time()})
    start = time.perf_counter()
    consumer.run()  # until SIGTERM from the parent
    return 0


@contextlib.contextmanager
def worker_process(
    system: str,
    db: Path,
    *,
    mode: str,
    concurrency: int,
    poll: float,
    backoff: float = 1.15,
    max_delay: float = 10.0,
    expect: int = 0,
    out: Path | None = None,
    sync_normal: bool = False,
    serialize: bool = False,
) -> Iterator[subprocess.Popen[str]]:
    """One worker process, started and ready (imports done, queue open); stopped after."""
    command = [
        sys.executable,
        str(HERE),
        "--role=worker",
        f"--system={system}",
        f"--db={db}",
        f"--mode={mode}",
        f"--concurrency={concurrency}",
        f"--poll={poll}",
        f"--backoff={backoff}",
        f"--max-delay={max_delay}",
        f"--expect={expect}",
    ]
    if out is not None:
        command.append(f"--out={out}")
    if sync_normal:
        command.append("--sync-normal")
    if serialize:
        command.append("--serialize")
    errors = db.with_suffix(".stderr")
    with errors.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        _expect_line(process, "ready", errors)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _expect_line(process: subprocess.Popen[str], key: str, errors: Path) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        tail = errors.read_text(encoding="utf-8")[-2000:]
        raise RuntimeError(f"the worker process exited ({process.returncode}):\n{tail}")
    message: dict[str, Any] = json.loads(line)
    if key not in message:
        raise RuntimeError(f"unexpected message from the worker: {line!r}")
    return message


# -- 1. enqueue --------------------------------------------------------------------------


def enqueue_buttress(path: Path, count: int, *, bulk: bool) -> float:
    """Seconds to enqueue ``count`` no-op tasks into a fresh buttress queue."""

    async def go() -> float:
        queue = buttress_queue(path)
        try:
            await queue.enqueue("noop_async")  # warm up: the executor thread and its connection
            start = time.perf_counter()
            if bulk:
                for _ in range(count // BULK_BATCH):
                    await queue.enqueue_many(queue.prepare("noop_async") for _ in range(BULK_BATCH))
            else:
                for _ in range(count):
                    await queue.enqueue("noop_async")
            return time.perf_counter() - start
        finally:
            queue.close()

    return asyncio.run(go())


def enqueue_huey(path: Path, count: int) -> float:
    huey, noop, _ = huey_app(path)
    try:
        noop()  # warm up: the connection
        start = time.perf_counter()
        for _ in range(count):
            noop()
        return time.perf_counter() - start
    finally:
        huey.storage.close()


def huey_synchronous(path: Path) -> int:
    """The ``PRAGMA synchronous`` huey's own connection runs with (2 = FULL)."""
    huey, _, _ = huey_app(path)
    try:
        value: int = huey.storage.conn.execute("PRAGMA synchronous").fetchone()[0]
        return value
    finally:
        huey.storage.close()


def measure_enqueue(plan: Plan, tmp: Path) -> Report:
    best = {"b1": float("inf"), "bn": float("inf"), "h1": float("inf")}
    for repeat in range(plan.enqueue_repeats):
        best["b1"] = min(
            best["b1"],
            enqueue_buttress(tmp / f"enq-b1-{repeat}.db", plan.enqueue_one, bulk=False)
            / plan.enqueue_one,
        )
        best["h1"] = min(
            best["h1"],
            enqueue_huey(tmp / f"enq-h1-{repeat}.db", plan.enqueue_one) / plan.enqueue_one,
        )
        best["bn"] = min(
            best["bn"],
            enqueue_buttress(tmp / f"enq-bn-{repeat}.db", plan.enqueue_bulk, bulk=True)
            / plan.enqueue_bulk,
        )
    report = Report(
        "1. Enqueue rate (in process, fresh file)",
        ["candidate", "version", "µs/task", "tasks/s", "buttress / huey (rate)"],
    )
    rate = {key: 1 / seconds for key, seconds in best.items()}
    report.rows = [
        [
            "buttress `await queue.enqueue(...)`, one per call",
            version_of("buttress"),
            f"{best['b1'] * 1e6:,.0f}",
            f"{rate['b1']:,.0f}",
            ratio(rate["b1"], rate["h1"]),
        ],
        [
            "huey `task()`, one per call",
            version_of("huey"),
            f"{best['h1'] * 1e6:,.0f}",
            f"{rate['h1']:,.0f}",
            "(peer)",
        ],
        [
            f"buttress `enqueue_many(prepare(...) x {BULK_BATCH})`",
            version_of("buttress"),
            f"{best['bn'] * 1e6:,.1f}",
            f"{rate['bn']:,.0f}",
            f"{ratio(rate['bn'], rate['h1'])} (vs huey one per call)",
        ],
        ["huey bulk enqueue", version_of("huey"), "—", "—", "n/a: huey has no bulk enqueue"],
    ]
    report.notes += [
        f"Best of {plan.enqueue_repeats} interleaved repeats; {plan.enqueue_one:,} tasks "
        f"one per call, {plan.enqueue_bulk:,} in batches of {BULK_BATCH:,}.",
        "One per call is one transaction, so one WAL fsync, per task for both: the disk's "
        "fsync time bounds it. buttress's enqueue is async: each call also hops to the "
        "queue's backend thread (`run_in_executor`).",
        "huey's closest thing to bulk is enqueueing a pipeline or calling `.map()` "
        "on a task, which still stores one row per task in its own commit.",
    ]
    return report


# -- 2. drain ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrainCase:
    label: str
    system: str
    concurrency: int
    task: str = "noop_async"
    sync_normal: bool = False
    serialize: bool = False


def fill_buttress(path: Path, count: int, task: str) -> None:
    async def go() -> None:
        queue = buttress_queue(path)
        try:
            for start in range(0, count, BULK_BATCH):
                size = min(BULK_BATCH, count - start)
                await queue.enqueue_many(queue.prepare(task) for _ in range(size))
        finally:
            queue.close()

    asyncio.run(go())


def fill_huey(path: Path, count: int) -> None:
    # Filling is not measured: commit without fsync (this connection only; the
    # consumer process opens its own with the default).
    huey, noop, _ = huey_app(path, fsync=False)
    try:
        for _ in range(count):
            noop()
    finally:
        huey.storage.close()


def drain_once(case: DrainCase, path: Path, count: int) -> dict[str, float]:
    if case.system == "buttress":
        fill_buttress(path, count, case.task)
    else:
        fill_huey(path, count)
    with worker_process(
        case.system,
        path,
        mode="drain",
        concurrency=case.concurrency,
        poll=BUTTRESS_POLL if case.system == "buttress" else 0.1,
        expect=count,
        sync_normal=case.sync_normal,
        serialize=case.serialize,
    ) as process:
        result = _expect_line(process, "seconds", path.with_suffix(".stderr"))
    if int(result["done"]) != count:
        raise RuntimeError(f"{case.label}: {result['done']} of {count} tasks done")
    return result


def measure_drain(plan: Plan, tmp: Path) -> tuple[Report, Report, float, float]:
    cases = [
        DrainCase(
            f"buttress `async def`, concurrency={BUTTRESS_CONCURRENCY}",
            "buttress",
            BUTTRESS_CONCURRENCY,
        ),
        DrainCase("buttress `async def`, concurrency=50", "buttress", 50),
        DrainCase(
            f"buttress `def` (thread pool), concurrency={BUTTRESS_CONCURRENCY}",
            "buttress",
            BUTTRESS_CONCURRENCY,
            task="noop_sync",
        ),
        *(
            DrainCase(f"huey consumer, {n} worker thread{'s' * (n > 1)}", "huey", n)
            for n in HUEY_WORKERS
        ),
    ]
    diagnostics = [
        DrainCase("buttress `async def`, concurrency=1", "buttress", 1),
        DrainCase(
            f"buttress `async def`, concurrency={BUTTRESS_CONCURRENCY}, synchronous=NORMAL",
            "buttress",
            BUTTRESS_CONCURRENCY,
            sync_normal=True,
        ),
        DrainCase(
            f"buttress `async def`, concurrency={BUTTRESS_CONCURRENCY}, "
            "claim/succeed behind one Python lock",
            "buttress",
            BUTTRESS_CONCURRENCY,
            serialize=True,
        ),
    ]
    best: dict[str, dict[str, float]] = {}
    for repeat in range(plan.drain_repeats):
        for case in cases + diagnostics:
            if case in diagnostics and repeat > 0:
                continue
            result = drain_once(case, tmp / f"drain-{len(best)}-{repeat}.db", plan.drain)
            if case.label not in best or result["seconds"] < best[case.label]["seconds"]:
                best[case.label] = result
    rates = {label: plan.drain / result["seconds"] for label, result in best.items()}
    huey_best = max(rates[c.label] for c in cases if c.system == "huey")
    # Like huey's, buttress's best configuration counts (each is a documented option).
    ours = max(rates[c.label] for c in cases if c.system == "buttress")
    report = Report(
        f"2. Drain rate: {plan.drain:,} no-op tasks, one worker process",
        ["candidate", "version", "seconds", "tasks/s", "buttress / best huey"],
    )
    for case in cases:
        report.rows.append(
            [
                case.label,
                version_of(case.system),
                f"{best[case.label]['seconds']:.2f}",
                f"{rates[case.label]:,.0f}",
                "(peer)" if case.system == "huey" else ratio(rates[case.label], huey_best),
            ]
        )
    report.notes += [
        f"Best of {plan.drain_repeats}; timed inside the worker process, from just before "
        "its run loop to the last task done (buttress: `Worker.run(until_empty=True)` "
        "returns; huey: its `SIGNAL_COMPLETE` handler counts the last task), so process "
        "start-up and imports are not counted.",
        "huey: `huey.create_consumer(workers=n, worker_type='thread', periodic=False)`; its "
        "SQLite storage serializes all threads on one connection and one lock, so more "
        "threads do not add throughput for no-op tasks.",
        "Per task, huey commits once (dequeue = select + delete, one fsync). buttress commits "
        "a claim (a batch of up to `concurrency - running` tasks, one fsync) and its "
        "successes by group commit (those that finish while a commit is under way are "
        "written together, one fsync), so a busy worker pays well under one fsync per task.",
    ]
    report.targets.append(
        Target(
            f"drain rate at least {TARGET_DRAIN}x huey's (best configuration of each), "
            "at-least-once kept",
            f"{ours:,.0f} vs {huey_best:,.0f} tasks/s = {ours / huey_best:.2f}x",
            ours >= TARGET_DRAIN * huey_best,
        )
    )
    where = Report(
        "2b. Where the drain time goes (one run each; backend calls timed in the worker)",
        [
            "candidate",
            "tasks/s",
            "commits/task",
            "claims (empty)",
            "tasks/claim",
            "ms in claim",
            "ms in succeed / dequeue",
            "µs/commit",
        ],
    )
    for case in cases + diagnostics:
        result = best[case.label]
        if case.system == "buttress":
            claims = result.get("claim_calls", 0)
            empty = result.get("claim_empty", 0)
            items = result.get("claim_items", 0)
            succeeds = result.get("succeed_calls", 0)
            commit_s = result.get("claim_s", 0.0) + result.get("succeed_s", 0.0)
            commits = claims + succeeds
            where.rows.append(
                [
                    case.label,
                    f"{rates[case.label]:,.0f}",
                    f"{commits / plan.drain:.2f}",
                    f"{claims:,.0f} ({empty:,.0f})",
                    f"{items / max(1, claims - empty):.1f}",
                    f"{result.get('claim_s', 0.0) * 1e3:,.0f}",
                    f"{result.get('succeed_s', 0.0) * 1e3:,.0f}",
                    f"{commit_s / max(1, commits) * 1e6:,.0f}",
                ]
            )
        else:
            calls = result.get("dequeue_calls", 0)
            where.rows.append(
                [
                    case.label,
                    f"{rates[case.label]:,.0f}",
                    f"{plan.drain / plan.drain:.2f}",
                    "—",
                    "1",
                    "—",
                    f"{result.get('dequeue_s', 0.0) * 1e3:,.0f}",
                    f"{result.get('dequeue_s', 0.0) / max(1, calls) * 1e6:,.0f}",
                ]
            )
    where.notes += [
        "ms columns sum the wall time spent inside each backend call, in whatever thread "
        "ran it (buttress runs them in the queue's 4-thread pool, so calls can overlap and "
        "wait on each other's write lock; the sum can exceed the run).",
        "The last four buttress rows are diagnostics, patched into the worker process only, "
        "not configurations on offer: concurrency sets the claim batch; synchronous=NORMAL "
        "shows what the fsync per commit costs (and gives up durability on power loss); "
        "the Python lock makes the pool's threads queue for the write lock in-process "
        "instead of in SQLite's busy handler, which sleeps (1, 2, 5, 10 … ms) rather than "
        "waking when the lock frees: compare its µs/commit with the unpatched row.",
    ]
    return report, where, ours, huey_best


# -- 3. latency ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyCase:
    label: str
    system: str
    poll: float
    backoff: float = 1.15
    max_delay: float = 10.0


def latency_once(case: LatencyCase, tmp: Path, seconds: float) -> tuple[list[float], float]:
    """Each task's start minus its enqueue time, and the rate the producer achieved."""
    path = tmp / f"lat-{case.system}-{case.poll}.db"
    out = path.with_suffix(".txt")
    out.touch()
    count = round(seconds * LATENCY_RATE)
    with worker_process(
        case.system,
        path,
        mode="latency",
        concurrency=BUTTRESS_CONCURRENCY if case.system == "buttress" else 1,
        poll=case.poll,
        backoff=case.backoff,
        max_delay=case.max_delay,
        out=out,
    ):
        if case.system == "buttress":
            elapsed = asyncio.run(_produce_buttress(path, count))
        else:
            elapsed = _produce_huey(path, count)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _lines(out) < count:
            time.sleep(0.05)
    delays = [float(line) for line in out.read_text(encoding="utf-8").split()]
    if len(delays) != count:
        raise RuntimeError(f"{case.label}: {len(delays)} of {count} tasks started")
    return delays, count / elapsed


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def _pace(i: int, start: float) -> float:
    """How long to sleep before sending task ``i`` (a fixed schedule, no drift)."""
    return start + i / LATENCY_RATE - time.perf_counter()


async def _produce_buttress(path: Path, count: int) -> float:
    queue = Queue.from_url(f"sqlite:///{path}")
    try:
        start = time.perf_counter()
        for i in range(count):
            pause = _pace(i, start)
            if pause > 0:
                await asyncio.sleep(pause)
            await queue.enqueue("latency_async", time.time())
        return time.perf_counter() - start
    finally:
        queue.close()


def _produce_huey(path: Path, count: int) -> float:
    huey, _, latency = huey_app(path)
    try:
        start = time.perf_counter()
        for i in range(count):
            pause = _pace(i, start)
            if pause > 0:
                time.sleep(pause)
            latency(time.time())
        return time.perf_counter() - start
    finally:
        huey.storage.close()


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure_latency(plan: Plan, tmp: Path) -> tuple[Report, dict[str, tuple[float, float]]]:
    groups = [
        (
            "defaults",
            LatencyCase(
                f"buttress, default poll_interval={BUTTRESS_POLL:g} s", "buttress", BUTTRESS_POLL
            ),
            LatencyCase(
                "huey, default idle delay 0.1 s (x1.15 per empty poll, max 10 s)", "huey", 0.1
            ),
        ),
        (
            "10 ms polling",
            LatencyCase("buttress, poll_interval=0.01 s", "buttress", 0.01),
            LatencyCase("huey, initial_delay=max_delay=0.01 s, backoff=1", "huey", 0.01, 1.0, 0.01),
        ),
    ]
    report = Report(
        f"3. Latency from enqueue to start at {LATENCY_RATE:.0f} tasks/s "
        f"({plan.latency_seconds:g} s, one worker process)",
        ["candidate", "sent/s", "p50 ms", "p99 ms", "max ms", "buttress / huey (p50, p99)"],
    )
    found: dict[str, tuple[float, float]] = {}
    for group, ours, peer in groups:
        results = {
            case.system: latency_once(case, tmp, plan.latency_seconds) for case in (ours, peer)
        }
        (b, b_rate), (h, h_rate) = results["buttress"], results["huey"]
        b50, b99 = _quantile(b, 0.5), _quantile(b, 0.99)
        h50, h99 = _quantile(h, 0.5), _quantile(h, 0.99)
        found[group] = (b50 / h50, b99 / h99)
        report.rows += [
            [
                ours.label,
                f"{b_rate:,.0f}",
                f"{b50 * 1e3:,.1f}",
                f"{b99 * 1e3:,.1f}",
                f"{max(b) * 1e3:,.1f}",
                f"{ratio(b50, h50)}, {ratio(b99, h99)}",
            ],
            [
                peer.label,
                f"{h_rate:,.0f}",
                f"{h50 * 1e3:,.1f}",
                f"{h99 * 1e3:,.1f}",
                f"{max(h) * 1e3:,.1f}",
                "(peer)",
            ],
        ]
    report.notes += [
        "Each task gets `time.time()` taken just before its enqueue call and records "
        "`time.time()` at its start minus that, so the enqueue commit (one fsync) is "
        "included for both. Lower is better; a ratio below 1x means buttress is faster.",
        "Neither worker is woken by an enqueue from another process: both poll. buttress "
        "claims again at once when a task finishes and otherwise sleeps `poll_interval`; "
        "huey's worker sleeps `initial_delay` after an empty dequeue, growing by `backoff` "
        "per empty poll. So the poll interval dominates; the 10 ms rows compare the "
        "queues with polling equalized.",
    ]
    return report, found


# -- main --------------------------------------------------------------------------------


def _header(console: Console, plan: Plan, mode: str, tmp: Path, synchronous: int) -> None:
    facts = machine_facts()
    facts += [
        ("peers", f"huey {version_of('huey')} (SqliteHuey)"),
        ("sqlite", f"{sqlite3.sqlite_version} (Python's sqlite3 module)"),
        (
            "storage",
            f"temporary files under {tmp.parent} (WAL); synchronous=FULL for buttress, "
            f"{synchronous} for huey (SQLite's default; 2 = FULL)",
        ),
        (
            "method",
            f"{mode}: enqueue best of {plan.enqueue_repeats}, drain best of "
            f"{plan.drain_repeats} x {plan.drain:,} tasks, latency {plan.latency_seconds:g} s "
            f"at {LATENCY_RATE:.0f}/s",
        ),
    ]
    print_header(console, "buttress task queue benchmarks: SQLite", facts, markdown=plan.markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller runs: a smoke run")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", default="bench", choices=["bench", "worker"], help=hidden)
    parser.add_argument("--system", choices=["buttress", "huey"], help=hidden)
    parser.add_argument("--db", help=hidden)
    parser.add_argument("--mode", choices=["drain", "latency"], help=hidden)
    parser.add_argument("--concurrency", type=int, default=1, help=hidden)
    parser.add_argument("--poll", type=float, default=BUTTRESS_POLL, help=hidden)
    parser.add_argument("--backoff", type=float, default=1.15, help=hidden)
    parser.add_argument("--max-delay", type=float, default=10.0, help=hidden)
    parser.add_argument("--expect", type=int, default=0, help=hidden)
    parser.add_argument("--out", help=hidden)
    parser.add_argument("--sync-normal", action="store_true", help=hidden)
    parser.add_argument("--serialize", action="store_true", help=hidden)
    args = parser.parse_args(argv)
    if args.role == "worker":
        return run_worker(args)

    base = QUICK if args.quick else FULL
    plan = dataclasses.replace(base, markdown=args.markdown)
    console = Console(width=None if Console().is_terminal else 140)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="buttress-bench-tasks-") as name:
        tmp = Path(name)
        _header(
            console, plan, "quick" if args.quick else "full", tmp, huey_synchronous(tmp / "x.db")
        )
        enqueue = measure_enqueue(plan, tmp)
        enqueue.render(console, markdown=plan.markdown)
        drain, where, _, _ = measure_drain(plan, tmp)
        drain.render(console, markdown=plan.markdown)
        where.render(console, markdown=plan.markdown)
        latency, _ = measure_latency(plan, tmp)
        latency.render(console, markdown=plan.markdown)
    print_summary(console, drain.targets, markdown=plan.markdown, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ops service under load: buttress's app against a bare FastAPI app, both in uvicorn.

Each app runs in its own uvicorn process (one worker, ``--no-access-log``, log
level warning, ``loop="auto"``, ``http="auto"``), on loopback, started once and
left running for the whole benchmark. This process drives them with a small load
generator: ``CONNECTIONS`` keep-alive HTTP/1.1 connections, each with one
request in flight at a time (a closed loop, so the load is bounded), built on
``asyncio.Protocol`` with the request bytes made once: no HTTP client library,
because the client shares the machine's cores with the server and every
microsecond it spends is one the server does not get. Each measurement warms up,
then counts the responses that complete in a fixed window; it records each one's
latency (request written to response parsed).

Scenarios (buttress vs bare):

1. ``GET /api/v1/health``: the liveness route, no auth. The bare app returns the
   same JSON through the same kind of response model, so the difference is the
   middleware and the exception handlers: buttress's request middleware (request
   id, Server-Timing, body limit, HTTP metrics).
2. ``POST /api/v1/tasks`` with an admin key: validate the body, enqueue into the
   SQLite queue (one fsynced transaction), answer 202 with the task. Against a
   bare endpoint that validates an equivalent body and enqueues into a plain
   ``buttress.tasks.Queue`` on its own file (the fair peer: the same storage
   work), and one that only validates and answers (no storage: what the
   framework alone costs).
3. ``GET /api/v1/circuit-breakers`` with a user key: authentication, then with the
   API rate limit turned on too (a limit so high it never refuses), against a
   bare endpoint returning the same empty list.

Rounds interleave every candidate (A, B, C, A, B, C …); a candidate's best round
(highest requests/s) is reported, with that round's latencies.

    .venv/bin/python benchmarks/service.py             # about 3 minutes
    .venv/bin/python benchmarks/service.py --quick     # a smoke run, about 30 s
    .venv/bin/python benchmarks/service.py --markdown  # tables for the README
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from _harness import Report, Target, machine_facts, print_header, print_summary, ratio, version_of
from buttress.config import Settings, load_settings
from buttress.tasks import Queue
from buttress.web import Service, create_app, install

HERE = Path(__file__).resolve()
HOST = "127.0.0.1"
CONNECTIONS = 32
ADMIN_KEY = "bench-admin-key-000000000000000000"
USER_KEY = "bench-user-key-0000000000000000000"
TARGET_HEALTH = 0.75  # buttress's GET /health at least 75 % of the bare app's throughput
TASK_BODY = b'{"name":"echo","kwargs":{"x":1}}'
READY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure."""

    rounds: int
    seconds: float  # the measured window of one candidate in one round
    warmup: float
    markdown: bool


QUICK = Plan(1, 2.0, 0.5, markdown=False)
FULL = Plan(3, 5.0, 1.0, markdown=False)


# -- the apps (built in the server processes) -----------------------------------------------


# The bare app's bodies, the same fields and constraints as buttress's (not imported
# from it: the bare app is what an application would write by hand).


class BareLive(BaseModel):
    status: Literal["ok"]


class BareTaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    args: list[Any] = Field(default_factory=list, max_length=1000)
    kwargs: dict[str, Any] = Field(default_factory=dict, max_length=1000)
    priority: Literal["critical", "high", "normal", "low", "bulk"] | None = None
    delay: float | None = Field(default=None, ge=0, le=31_536_000)
    tags: list[str] = Field(default_factory=list, max_length=50)
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=100)
    dedup_key: str | None = Field(default=None, min_length=1, max_length=200)
    retries: int | None = Field(default=None, ge=0, le=100)
    timeout: float | None = Field(default=None, gt=0, le=86_400)


class BareTaskError(BaseModel):
    type: str
    message: str


class BareTaskReply(BaseModel):
    id: str
    name: str
    status: str
    priority: str
    owner: str | None
    attempts: int
    max_retries: int
    args: list[Any]
    kwargs: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any]
    progress: float
    progress_message: str
    error: BareTaskError | None
    enqueued_at: float
    eta: float
    started_at: float | None
    finished_at: float | None


class BareBreaker(BaseModel):
    name: str
    state: str


def _settings(db: Path, *, rate_limit: bool) -> Settings:
    return load_settings(
        queue_url=f"sqlite:///{db}",
        cache_url="memory://",
        worker=False,  # POST /tasks measures the API and the enqueue, not a worker
        api_keys={
            ADMIN_KEY: {"owner": "bench", "role": "admin"},
            USER_KEY: {"owner": "alice", "role": "user"},
        },
        # On: a limit no client here reaches, so every request pays the check.
        api_rate_limit={"rate": 1e9, "per": 1.0, "burst": 10**9} if rate_limit else None,
        _env_file=None,
    )


def buttress_app(db: Path, *, rate_limit: bool) -> FastAPI:
    """The ops app as ``buttress serve`` builds it: a SQLite queue, worker off."""
    service = Service(_settings(db, rate_limit=rate_limit))

    @service.queue.task()
    async def echo(x: int = 0) -> int:
        return x

    return create_app(service=service)


def bare_app(db: Path | None, *, middleware: Path | None = None) -> FastAPI:
    """The same routes in plain FastAPI: no middleware, no auth; enqueues if ``db``.

    With ``middleware`` (a queue file for its service), buttress's ``install()`` adds
    its request middleware and problem handlers, and nothing else: a diagnostic that
    splits buttress's cost into the middleware and the rest (routing, the app's routes).
    """
    app = FastAPI()
    queue = None if db is None else Queue.from_url(f"sqlite:///{db}")
    if queue is not None:

        @queue.task()
        async def echo(x: int = 0) -> int:
            return x

    @app.get("/api/v1/health")
    async def health() -> BareLive:
        return BareLive(status="ok")

    @app.post("/api/v1/tasks", status_code=202)
    async def submit(body: BareTaskBody) -> BareTaskReply:
        if queue is None:
            now = time.time()
            return BareTaskReply(
                id=uuid.uuid4().hex,
                name=body.name,
                status="queued",
                priority=body.priority or "normal",
                owner="bench",
                attempts=0,
                max_retries=3,
                args=body.args,
                kwargs=body.kwargs,
                tags=body.tags,
                metadata=body.metadata,
                progress=0.0,
                progress_message="",
                error=None,
                enqueued_at=now,
                eta=now + (body.delay or 0.0),
                started_at=None,
                finished_at=None,
            )
        task = await queue.enqueue(
            body.name, *body.args, kwargs=body.kwargs, owner="bench", tags=body.tags
        )
        return BareTaskReply(
            id=task.id,
            name=task.name,
            status=task.status.value,
            priority=task.priority.name.lower(),
            owner=task.owner,
            attempts=task.attempts,
            max_retries=task.max_retries,
            args=list(task.args),
            kwargs=dict(task.kwargs),
            tags=list(task.tags),
            metadata=dict(task.metadata),
            progress=task.progress.fraction,
            progress_message=task.progress.message,
            error=None,
            enqueued_at=task.enqueued_at,
            eta=task.eta,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )

    @app.get("/api/v1/circuit-breakers")
    async def breakers() -> list[BareBreaker]:
        return []

    if middleware is not None:
        install(app, Service(_settings(middleware, rate_limit=False)))
    return app


def run_server(args: argparse.Namespace) -> int:
    """The child side: ``--role server``; serves until SIGTERM or SIGINT."""
    import uvicorn

    db = Path(args.db)
    if args.system == "buttress":
        app = buttress_app(db, rate_limit=args.rate_limit)
    else:
        app = bare_app(
            db if args.enqueue else None,
            middleware=db.with_suffix(".mw.db") if args.middleware else None,
        )
    if args.profile:  # diagnostics: where the server's time goes, written on shutdown
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            _serve(uvicorn, app, args.port)
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
        return 0
    _serve(uvicorn, app, args.port)
    return 0


def _serve(uvicorn: Any, app: FastAPI, port: int) -> None:
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        workers=None,
        loop="auto",
        http="auto",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


# -- the server processes -----------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """A running server process and what it serves."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextlib.contextmanager
def servers(tmp: Path, specs: Sequence[tuple[str, list[str]]]) -> Iterator[dict[str, Server]]:
    """Start one uvicorn process per ``(name, options)``; yield them once all answer."""
    started: dict[str, Server] = {}
    try:
        for name, options in specs:
            port = _free_port()
            command = [
                sys.executable,
                str(HERE),
                "--role=server",
                f"--port={port}",
                f"--db={tmp / (name + '.db')}",
                *options,
            ]
            with (tmp / f"{name}.stderr").open("wb") as stderr:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            started[name] = Server(name, port, process)
        deadline = time.monotonic() + READY_TIMEOUT
        for server in started.values():
            while not _answers(server.port):
                if server.process.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp / f"{server.name}.stderr").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the {server.name} server did not start:\n{tail}")
                time.sleep(0.05)
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        for server in started.values():
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


# -- the load generator ---------------------------------------------------------------------------


def _request(method: str, path: str, *, key: str | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(slots=True)
class _Load:
    """What all the connections of one measurement share."""

    request: bytes
    recording: bool = False
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lost: int = 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection with one request in flight: sends, parses, sends again."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.expected = -1  # length of the response being read, once its head is in
        self.sent = 0.0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent = time.perf_counter()
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.expected < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self.status = int(self.buffer[9:12])
                self.expected = end + 4 + _content_length(self.buffer[:end])
            if len(self.buffer) < self.expected:
                return
            done = time.perf_counter()
            self.buffer = self.buffer[self.expected :]
            self.expected = -1
            load = self.load
            if load.recording:
                load.latencies.append(done - self.sent)
                load.statuses[self.status] = load.statuses.get(self.status, 0) + 1
            if load.stopping:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.load.stopping:
            self.load.lost += 1


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"a response without Content-Length: {head!r}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement of one candidate."""

    rate: float  # responses per second in the window
    p50_ms: float
    p99_ms: float
    server_us: float  # server CPU per response
    client_cpu: float  # this process's CPU time over the window, as a share of one core
    statuses: dict[int, int]
    lost: int


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(server: Server, request: bytes, plan: Plan) -> Sample:
    loop = asyncio.get_running_loop()
    load = _Load(request)
    connections = [
        await loop.create_connection(lambda: _Connection(load), HOST, server.port)
        for _ in range(CONNECTIONS)
    ]
    await asyncio.sleep(plan.warmup)
    cpu, server_cpu, start = time.process_time(), server.cpu_seconds(), time.perf_counter()
    load.recording = True
    await asyncio.sleep(plan.seconds)
    load.recording = False
    elapsed = time.perf_counter() - start
    cpu, server_cpu = time.process_time() - cpu, server.cpu_seconds() - server_cpu
    load.stopping = True
    await asyncio.sleep(0.2)  # the requests in flight finish; their connections close
    for transport, _ in connections:
        transport.close()
    ordered = sorted(load.latencies)
    count = len(ordered)
    if not count:
        raise RuntimeError(f"no response from {server.name} in {plan.seconds} s")
    return Sample(
        rate=count / elapsed,
        p50_ms=_quantile(ordered, 0.50) * 1e3,
        p99_ms=_quantile(ordered, 0.99) * 1e3,
        server_us=server_cpu / count * 1e6,
        client_cpu=cpu / elapsed,
        statuses=dict(load.statuses),
        lost=load.lost,
    )


def measure(server: Server, request: bytes, plan: Plan) -> Sample:
    return asyncio.run(_drive(server, request, plan))


# -- the scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    label: str
    server: str
    request: bytes
    expect: int  # the status every response must have


@dataclass(frozen=True, slots=True)
class Scenario:
    title: str
    candidates: tuple[Candidate, ...]
    peer: str  # label of the candidate the buttress rows are compared with
    note: str


HEALTH = _request("GET", "/api/v1/health")
BREAKERS = _request("GET", "/api/v1/circuit-breakers", key=USER_KEY)
SCENARIOS = (
    Scenario(
        "1. GET /api/v1/health (no auth)",
        (
            Candidate("buttress", "buttress", HEALTH, 200),
            Candidate("bare FastAPI", "bare", HEALTH, 200),
            Candidate("bare FastAPI + buttress install() (diagnostic)", "bare_mw", HEALTH, 200),
        ),
        peer="bare FastAPI",
        note='All return {"status":"ok"} through a pydantic response model. The diagnostic '
        "row is the bare app (3 routes) with buttress's request middleware and problem "
        "handlers added by install(): the gap between it and the bare app is the "
        "middleware; the gap between it and buttress is the rest of the app (routing "
        "among its 29 routes, where the probes come first).",
    ),
    Scenario(
        "2. POST /api/v1/tasks (enqueue one task)",
        (
            Candidate(
                "buttress (admin key)",
                "buttress",
                _request("POST", "/api/v1/tasks", key=ADMIN_KEY, body=TASK_BODY),
                202,
            ),
            Candidate(
                "bare FastAPI + Queue.enqueue",
                "bare_enqueue",
                _request("POST", "/api/v1/tasks", body=TASK_BODY),
                202,
            ),
            Candidate(
                "bare FastAPI, validate only",
                "bare",
                _request("POST", "/api/v1/tasks", body=TASK_BODY),
                202,
            ),
        ),
        peer="bare FastAPI + Queue.enqueue",
        note="Body `" + TASK_BODY.decode() + "`. buttress authenticates the key, checks the "
        "task name and enqueues into its SQLite queue (one fsynced transaction per task, "
        "synchronous=FULL, WAL); the bare peer validates an equivalent pydantic body and "
        "enqueues into a plain buttress Queue on its own file, with no auth; the "
        "validate-only app answers a same-shaped task without storing it.",
    ),
    Scenario(
        "3. GET /api/v1/circuit-breakers (user key)",
        (
            Candidate("buttress, auth", "buttress", BREAKERS, 200),
            Candidate("buttress, auth + rate limit", "buttress_limited", BREAKERS, 200),
            Candidate("bare FastAPI", "bare", BREAKERS, 200),
        ),
        peer="bare FastAPI",
        note="No breaker is registered: every app answers []. Auth is a SHA-256 of the key "
        "compared with each stored digest; the rate limit (1e9/s, never reached) adds a "
        "limiter decision and four RateLimit-* response headers.",
    ),
)
SERVER_SPECS: list[tuple[str, list[str]]] = [
    ("buttress", ["--system=buttress"]),
    ("buttress_limited", ["--system=buttress", "--rate-limit"]),
    ("bare", ["--system=bare"]),
    ("bare_enqueue", ["--system=bare", "--enqueue"]),
    ("bare_mw", ["--system=bare", "--middleware"]),
]


Samples = dict[tuple[str, str], list[tuple[Sample, Candidate]]]
"""Every sample, by scenario title and candidate label."""


def run_scenarios(running: dict[str, Server], plan: Plan) -> Samples:
    """Every candidate once per round, interleaved."""
    samples: Samples = {}
    for _ in range(plan.rounds):
        for scenario in SCENARIOS:
            for candidate in scenario.candidates:
                sample = measure(running[candidate.server], candidate.request, plan)
                key = (scenario.title, candidate.label)
                samples.setdefault(key, []).append((sample, candidate))
    return samples


def _best(found: list[tuple[Sample, Candidate]]) -> Sample:
    return max((sample for sample, _ in found), key=lambda s: s.rate)


def _problems(found: list[tuple[Sample, Candidate]]) -> list[str]:
    out = []
    for sample, candidate in found:
        wrong = {s: n for s, n in sample.statuses.items() if s != candidate.expect}
        if wrong or sample.lost:
            out.append(f"{candidate.label}: statuses {sample.statuses}, {sample.lost} lost")
    return out


def report(scenario: Scenario, samples: Samples) -> Report:
    table = Report(
        scenario.title,
        ["candidate", "req/s", "vs peer", "p50 ms", "p99 ms", "server CPU µs/req", "client CPU"],
    )
    peer = _best(samples[scenario.title, scenario.peer])
    problems: list[str] = []
    for candidate in scenario.candidates:
        found = samples[scenario.title, candidate.label]
        best = _best(found)
        table.rows.append(
            [
                candidate.label,
                f"{best.rate:,.0f}",
                "(peer)" if candidate.label == scenario.peer else ratio(best.rate, peer.rate),
                f"{best.p50_ms:.2f}",
                f"{best.p99_ms:.2f}",
                f"{best.server_us:,.0f}",
                f"{best.client_cpu:.0%}",
            ]
        )
        problems += _problems(found)
    table.notes.append(scenario.note)
    table.notes += [f"unexpected responses: {problem}" for problem in problems]
    return table


# -- main --------------------------------------------------------------------------------------


def _implementations() -> str:
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop not installed)"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11 (httptools not installed)"
    return f"loop={loop}, http={http}"


def _header(console: Console, plan: Plan, mode: str) -> None:
    facts = machine_facts()
    facts += [
        (
            "stack",
            f"uvicorn {version_of('uvicorn')}, FastAPI {version_of('fastapi')}, "
            f"Starlette {version_of('starlette')}, pydantic {version_of('pydantic')}",
        ),
        ("server", f"one uvicorn process per app, loop/http auto: {_implementations()}"),
        (
            "load",
            f"{CONNECTIONS} keep-alive connections, one request in flight each, from this "
            "process (asyncio.Protocol, raw HTTP/1.1)",
        ),
        (
            "method",
            f"{mode}: {plan.rounds} interleaved round(s); each candidate {plan.warmup:g} s "
            f"warm-up then {plan.seconds:g} s measured; best round shown",
        ),
    ]
    print_header(console, "buttress ops service under load", facts, markdown=plan.markdown)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    hidden = argparse.SUPPRESS
    parser.add_argument("--role", default="bench", choices=["bench", "server"], help=hidden)
    parser.add_argument("--system", choices=["buttress", "bare"], help=hidden)
    parser.add_argument("--port", type=int, help=hidden)
    parser.add_argument("--db", help=hidden)
    parser.add_argument("--rate-limit", action="store_true", help=hidden)
    parser.add_argument("--enqueue", action="store_true", help=hidden)
    parser.add_argument("--middleware", action="store_true", help=hidden)
    parser.add_argument("--profile", help=hidden)
    args = parser.parse_args(argv)
    if args.role == "server":
        return run_server(args)

    plan = dataclasses.replace(QUICK if args.quick else FULL, markdown=args.markdown)
    console = Console(width=None if Console().is_terminal else 140)
    started = time.perf_counter()
    _header(console, plan, "quick" if args.quick else "full")
    with (
        tempfile.TemporaryDirectory(prefix="buttress-bench-service-") as name,
        servers(Path(name), SERVER_SPECS) as running,
    ):
        samples = run_scenarios(running, plan)
    targets: list[Target] = []
    for scenario in SCENARIOS:
        table = report(scenario, samples)
        if scenario is SCENARIOS[0]:
            ours = _best(samples[scenario.title, "buttress"]).rate
            bare = _best(samples[scenario.title, scenario.peer]).rate
            table.targets.append(
                Target(
                    "GET /health: buttress at least 75 % of bare FastAPI's requests/s",
                    f"{ours:,.0f} vs {bare:,.0f} req/s = {ratio(ours, bare)}",
                    ours >= TARGET_HEALTH * bare,
                )
            )
            targets += table.targets
        table.render(console, markdown=plan.markdown)
    print_summary(console, targets, markdown=plan.markdown, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``buttress worker``: loading the app's queue, refusing bad input, running, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buttress.cli import app
from buttress.tasks import Queue, TaskStatus

runner = CliRunner()
TASKS_DIR = Path(__file__).parent / "tasks"  # where crash_app.py lives

APP_SOURCE = """
from buttress.tasks import Queue

queue = Queue.from_url("sqlite:///queue.db")
empty = Queue.from_url("sqlite:///empty.db")
not_a_queue = {"queue": queue}

@queue.task
async def double(x: int) -> int:
    return 2 * x

@queue.task
def shout(text: str) -> str:
    return text.upper()
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory holding ``workerapp.py`` (APP_SOURCE), made the current one; the
    modules the CLI imports from it are forgotten afterwards, and sys.path restored."""
    (tmp_path / "workerapp.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    # Only the app's own modules: forgetting a library that loaded lazily meanwhile
    # (rich's error panel, say) would give it two copies of its classes.
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").parent == tmp_path:
            del sys.modules[name]
            for queue in vars(module).values():
                if isinstance(queue, Queue):
                    queue.close()


def flat(text: str) -> str:
    """The output without rich's box and line wrapping, for matching messages."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("workerapp", "expected module:attribute (like myapp.tasks:queue), got 'workerapp'"),
        (":queue", "expected module:attribute"),
        ("no_such_module_here:queue", "cannot import module 'no_such_module_here'"),
        ("workerapp:nothing", "module 'workerapp' has no attribute 'nothing'"),
        ("workerapp:not_a_queue", "workerapp:not_a_queue is a builtins.dict ("),
        ("workerapp:double", "is a buttress.tasks.TaskDefinition"),
        ("workerapp:empty", "the queue workerapp:empty has no tasks registered"),
    ],
)
def test_a_bad_app_is_a_usage_error_that_says_what_was_found(
    app_dir: Path, ref: str, message: str
) -> None:
    result = runner.invoke(app, ["worker", "--app", ref])
    assert 2 == result.exit_code, result.output
    output = flat(result.output)
    assert "Invalid value for '--app'" in output
    assert message in output
    if "is a" in message:
        assert "not a buttress.tasks.Queue" in output


def test_an_app_that_fails_to_import_shows_its_own_error(app_dir: Path) -> None:
    """A module that exists but imports something missing is not reported as missing."""
    (app_dir / "brokenapp.py").write_text("import no_such_dependency_here\n")
    result = runner.invoke(app, ["worker", "--app", "brokenapp:queue"])
    assert 0 != result.exit_code
    assert isinstance(result.exception, ModuleNotFoundError)
    assert "no_such_dependency_here" == result.exception.name


def test_the_app_option_is_required() -> None:
    result = runner.invoke(app, ["worker"])
    assert 2 == result.exit_code
    assert "--app" in result.output


def test_a_queue_url_that_is_not_the_apps_is_refused(app_dir: Path) -> None:
    result = runner.invoke(
        app, ["worker", "--app", "workerapp:queue", "--queue", "sqlite:///other.db"]
    )
    assert 2 == result.exit_code
    output = flat(result.output)
    assert "Invalid value for '--queue'" in output
    assert "sqlite:///other.db is not the queue of workerapp:queue" in output
    assert "queue.db" in output
    assert not (app_dir / "other.db").exists()  # refusing it opened nothing


def test_unknown_task_names_are_refused(app_dir: Path) -> None:
    result = runner.invoke(app, ["worker", "--app", "workerapp:queue", "--names", "double,nope"])
    assert 2 == result.exit_code
    assert "'nope' not registered in workerapp:queue (it has double, shout)" in flat(result.output)


def test_until_empty_runs_the_tasks_then_exits_zero(app_dir: Path) -> None:
    """The queue named two ways (relative in the app, absolute here) is one queue."""
    queue = Queue.from_url(f"sqlite:///{app_dir}/queue.db")
    try:
        new = [queue.prepare("double", (21,)), queue.prepare("shout", ("hi",))]
        tasks = queue.backend.enqueue(new, queue.now())
        result = runner.invoke(
            app,
            [
                "worker",
                "--app",
                "workerapp:queue",
                "--queue",
                f"sqlite:///{app_dir}/queue.db",
                "--until-empty",
                "--concurrency",
                "2",
            ],
        )
        assert 0 == result.exit_code, result.output
        assert "stopped (2 succeeded, 0 failed)" in result.output
        done = [queue.backend.get(task.id) for task in tasks]
        assert [TaskStatus.SUCCEEDED] * 2 == [task.status if task else None for task in done]
    finally:
        queue.close()


def test_names_limits_the_worker_to_those_tasks(app_dir: Path) -> None:
    queue = Queue.from_url(f"sqlite:///{app_dir}/queue.db")
    try:
        double, shout = queue.backend.enqueue(
            [queue.prepare("double", (1,)), queue.prepare("shout", ("a",))], queue.now()
        )
        result = runner.invoke(
            app, ["worker", "--app", "workerapp:queue", "--names", "shout", "--until-empty"]
        )
        assert 0 == result.exit_code, result.output
        assert TaskStatus.QUEUED == _status(queue, double.id)
        assert TaskStatus.SUCCEEDED == _status(queue, shout.id)
    finally:
        queue.close()


def _status(queue: Queue, task_id: str) -> TaskStatus | None:
    task = queue.backend.get(task_id)
    return None if task is None else task.status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_process_runs_tasks_and_stops_cleanly_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """``python -m buttress worker`` works a SQLite queue until told to stop, then exits 0."""
    url = f"sqlite:///{tmp_path}/queue.db"
    (tmp_path / "runs").mkdir()
    queue = Queue.from_url(url)
    try:
        asyncio.run(queue.enqueue_many([queue.prepare("record", (n,)) for n in range(50)]))
    finally:
        queue.close()
    env = {
        **os.environ,
        "CRASH_APP_QUEUE_URL": url,
        "CRASH_APP_LOG_DIR": str(tmp_path / "runs"),
    }
    with (tmp_path / "worker.err").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "buttress", "worker", "--app", "crash_app:queue"],
            cwd=TASKS_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for(lambda: _succeeded(tmp_path / "queue.db") == 50, process, 30)
            process.send_signal(sig)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = (tmp_path / "worker.err").read_text()
    assert 0 == code, stderr
    assert "stopped (50 succeeded, 0 failed)" in stderr
    assert 50 == len((tmp_path / "runs" / f"{process.pid}.log").read_text().splitlines())


def _succeeded(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        count: int = conn.execute(
            "SELECT count(*) FROM tasks WHERE status = 'succeeded'"
        ).fetchone()[0]
    return count


def _wait_for(
    done: Callable[[], bool],
    process: subprocess.Popen[bytes],
    timeout: float,
    every: float = 0.05,
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, f"the worker exited early with {process.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(every)


def test_a_stop_signal_while_the_app_imports_exits_zero(tmp_path: Path) -> None:
    """SIGTERM before the worker has started holds no task: the command just ends, 0."""
    (tmp_path / "slowapp.py").write_text(
        "import sys, time\nprint('importing', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    with (tmp_path / "worker.err").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "buttress", "worker", "--app", "slowapp:queue"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for(lambda: "importing" in (tmp_path / "worker.err").read_text(), process, 30)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert 0 == code, (tmp_path / "worker.err").read_text()

"""``buttress serve`` end to end: the real command in a subprocess, driven over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from buttress.cli import app
from servers import free_port

HERE = Path(__file__).parent  # where serve_app.py lives
ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
STARTUP_SECONDS = 20.0
STOP_SECONDS = 15.0

runner = CliRunner()


class Served:
    """A running ``buttress serve`` subprocess, its URL and its log."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code (the process is killed if it does not stop in time)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"serve ignored SIGTERM; its log:\n{self.output()}") from None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``buttress serve ARGS`` on a free loopback port in ``tmp_path``; wait until
    it answers. Whatever the test leaves running is killed afterwards."""
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("BUTTRESS_")}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HERE), environment.get("PYTHONPATH")])
        )
        environment.update(env or {})
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "buttress", "serve", "--port", str(port), *args],
                cwd=tmp_path,
                env=environment,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        served = Served(process, f"http://127.0.0.1:{port}", log)
        started.append(served)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, f"serve exited early:\n{served.output()}"
            try:
                if httpx.get(f"{served.url}/api/v1/health", timeout=1).status_code == 200:
                    return served
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer:\n{served.output()}"
            time.sleep(0.1)

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def metric_samples(text: str) -> dict[str, list[Any]]:
    """Each metric family's samples, by family name (``buttress_tasks``, …)."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_serve_runs_an_apps_tasks_and_stops_cleanly_on_sigterm(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """An app's task submitted over HTTP is run by the in-process worker, kept from
    other users, counted in /metrics, and SIGTERM ends the service with exit 0."""
    keys = {
        ALICE: {"owner": "alice", "role": "user"},
        BOB: {"owner": "bob", "role": "user"},
        ADMIN: {"owner": "ops", "role": "admin"},
    }
    served = serve(
        "--app",
        "serve_app:queue",
        env={
            "BUTTRESS_API_KEYS": json.dumps(keys),
            "BUTTRESS_BREAKERS__PAYMENTS__FAILURE_THRESHOLD": "3",
        },
    )
    alice = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {ALICE}"})
    bob = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {BOB}"})
    admin = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {ADMIN}"})
    with alice, bob, admin:
        submitted = alice.post("/api/v1/tasks", json={"name": "add", "args": [2, 3]})
        assert 202 == submitted.status_code, submitted.text
        task_id = submitted.json()["id"]

        def finished() -> dict[str, Any] | None:
            task: dict[str, Any] = alice.get(f"/api/v1/tasks/{task_id}").json()
            return task if task["status"] == "succeeded" else None

        assert "alice" == wait_for(finished, 10, "the task to succeed")["owner"]
        assert [task_id] == [t["id"] for t in alice.get("/api/v1/tasks").json()["tasks"]]
        assert 404 == bob.get(f"/api/v1/tasks/{task_id}").status_code
        assert [] == bob.get("/api/v1/tasks").json()["tasks"]
        assert 401 == httpx.get(f"{served.url}/api/v1/tasks").status_code

        breakers = admin.get("/api/v1/circuit-breakers").json()
        assert ["payments"] == [b["name"] for b in breakers]
        assert 200 == admin.get("/api/v1/health/ready").status_code

        families = metric_samples(httpx.get(f"{served.url}/metrics").text)
        task_samples = families["buttress_tasks"]
        assert any(
            s.labels == {"task": "add", "outcome": "succeeded"} and s.value == 1
            for s in task_samples
        )
        assert any(s.value > 0 for s in families["buttress_http_requests"])

    health = runner.invoke(app, ["health", "--url", served.url])
    assert 0 == health.exit_code, health.output
    assert "healthy" in health.output
    listed = runner.invoke(app, ["breakers", "list", "--url", served.url, "--api-key", ADMIN])
    assert 0 == listed.exit_code, listed.output
    assert "payments" in listed.output
    mine = runner.invoke(app, ["tasks", "list", "--json", "--url", served.url, "--api-key", ALICE])
    assert 0 == mine.exit_code, mine.output
    assert [task_id] == [t["id"] for t in json.loads(mine.stdout)["tasks"]]

    assert 0 == served.stop(), served.output()
    output = served.output()
    assert "Traceback" not in output, output
    assert "open to local callers only" not in output  # keys are configured
    assert (tmp_path / "serve_app.db").exists()


def test_serve_demo_shows_live_numbers_within_seconds(
    serve: Callable[..., Served], tmp_path: Path
) -> None:
    """``--demo`` feeds the breaker, the cache and the queue at once: breaker calls,
    succeeded and dead tasks show up quickly, in a temporary queue."""
    served = serve("--demo")

    def lively() -> bool:
        families = metric_samples(httpx.get(f"{served.url}/metrics").text)
        calls = sum(
            s.value
            for s in families["buttress_circuit_breaker_calls"]
            if s.labels.get("name") == "demo.upstream"
        )
        by_status: dict[str, int] = httpx.get(f"{served.url}/api/v1/tasks/stats").json()[
            "by_status"
        ]
        return calls > 0 and by_status["succeeded"] > 0 and by_status["dead"] > 0

    wait_for(lively, 15, "the demo's numbers")
    families = metric_samples(httpx.get(f"{served.url}/metrics").text)
    limiter = {s.labels["name"] for s in families["buttress_rate_limiter_decisions"]}
    bulkheads = {s.labels["name"] for s in families["buttress_bulkhead_active"]}
    assert "demo.clients" in limiter
    assert "demo.upstream" in bulkheads
    assert any(s.value > 0 for s in families["buttress_cache_misses"])

    listed = runner.invoke(app, ["breakers", "list", "--url", served.url])
    assert 0 == listed.exit_code, listed.output
    assert "demo.upstream" in listed.output

    assert 0 == served.stop(), served.output()
    output = served.output()
    found = re.search(r"a temporary directory \((.+?)\), deleted at exit", output)
    assert found is not None, output
    assert not Path(found[1]).exists()  # the demo's queue went with the service
    assert "open to local callers only" in output  # no keys: the warning is shown
    assert "Traceback" not in output, output
    assert not (tmp_path / "buttress.db").exists()

"""The ops commands: ``tasks`` on a local queue and through the service, ``breakers``,
``cache``, ``health``, and ``serve``'s refusals."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner, Result

from buttress.cli import app
from buttress.config import is_loopback, load_settings
from buttress.tasks import Backoff, Queue, TaskStatus, Worker
from buttress.web import Service, create_app
from servers import free_port

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
WIDE = {"COLUMNS": "200"}  # tables at full width, so ids and names are whole


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner()
    return runner.invoke(app, list(args), env={**WIDE, **(env or {})})


def flat(text: str) -> str:
    """The output with line wrapping undone, for matching messages."""
    return " ".join(text.split())


def make_queue(url: str) -> Queue:
    queue = Queue.from_url(url)

    @queue.task
    async def ok(x: int) -> int:
        return x

    @queue.task(retries=1, backoff=Backoff(base=0.0))
    async def boom() -> None:
        raise ValueError("boom")

    return queue


@dataclass
class Tasks:
    """A queue file with one succeeded, three dead and three queued tasks."""

    url: str
    succeeded: str
    dead: list[str]
    queued: list[str]

    def statuses(self) -> dict[str, TaskStatus]:
        async def read() -> dict[str, TaskStatus]:
            queue = Queue.from_url(self.url)
            try:
                page = await queue.list(limit=1000)
                return {t.id: t.status for t in page.tasks}
            finally:
                queue.close()

        return asyncio.run(read())


def fill(url: str, *, owner: str | None = None) -> Tasks:
    """Run one ``ok`` and three ``boom`` tasks to the end, then queue three more ``ok``."""

    async def go() -> Tasks:
        queue = make_queue(url)
        try:
            done = await queue.enqueue("ok", 1, owner=owner)
            dead = [(await queue.enqueue("boom", owner=owner)).id for _ in range(3)]
            await Worker(queue, concurrency=4, signals=False, schedule=False).run(until_empty=True)
            queued = [
                (await queue.enqueue("ok", 2, priority="high", owner=owner or "alice")).id,
                (await queue.enqueue("ok", 3, owner=owner or "bob")).id,
                (await queue.enqueue("ok", 4, priority="bulk", owner=owner)).id,
            ]
            return Tasks(url, done.id, dead, queued)
        finally:
            queue.close()

    return asyncio.run(go())


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tasks:
    monkeypatch.chdir(tmp_path)
    for name in ("BUTTRESS_URL", "BUTTRESS_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return fill(f"sqlite:///{tmp_path}/tasks.db")


# --- tasks on a local queue -----------------------------------------------------------------


def test_list_shows_every_task_with_its_status_priority_and_owner(tasks: Tasks) -> None:
    """The table lists each task's id whole, its status, priority and owner."""
    result = invoke("tasks", "list", "--queue", tasks.url)
    assert 0 == result.exit_code, result.output
    for task_id in [tasks.succeeded, *tasks.dead, *tasks.queued]:
        assert task_id in result.output
    for word in ("succeeded", "dead", "queued", "high", "bulk", "alice", "bob", "boom"):
        assert word in result.output


def test_list_filters_and_prints_json(tasks: Tasks) -> None:
    """--status and --owner narrow the listing; --json prints the API's task shape."""
    dead = invoke("tasks", "list", "--queue", tasks.url, "--status", "dead", "--json")
    assert 0 == dead.exit_code, dead.output
    listed = json.loads(dead.stdout)
    assert set(tasks.dead) == {t["id"] for t in listed["tasks"]}
    assert {"ValueError"} == {t["error"]["type"] for t in listed["tasks"]}
    assert listed["cursor"] is None
    mine = invoke("tasks", "list", "--queue", tasks.url, "--owner", "alice", "--json")
    assert [tasks.queued[0]] == [t["id"] for t in json.loads(mine.stdout)["tasks"]]
    bad = invoke("tasks", "list", "--queue", tasks.url, "--status", "done")
    assert 2 == bad.exit_code
    assert "'done' is not a task status" in flat(bad.output)


def test_show_prints_one_task_and_a_missing_one_is_one_clear_line(tasks: Tasks) -> None:
    """``show`` prints the task's fields; an unknown id exits 1 with a one-line error."""
    result = invoke("tasks", "show", tasks.dead[0], "--queue", tasks.url)
    assert 0 == result.exit_code, result.output
    for text in (tasks.dead[0], "boom", "dead", "2 of 2", "ValueError: boom"):
        assert text in result.output
    missing = invoke("tasks", "show", "NO-SUCH-TASK", "--queue", tasks.url)
    assert 1 == missing.exit_code
    assert "error: Not Found: task not found" == flat(missing.output)


def test_cancel_then_retry_one_task(tasks: Tasks) -> None:
    """``cancel ID`` cancels a queued task; ``retry ID`` queues it again; retrying a
    succeeded task is a conflict."""
    target = tasks.queued[0]
    cancelled = invoke("tasks", "cancel", target, "--queue", tasks.url)
    assert 0 == cancelled.exit_code, cancelled.output
    assert TaskStatus.CANCELLED == tasks.statuses()[target]
    retried = invoke("tasks", "retry", target, "--queue", tasks.url)
    assert 0 == retried.exit_code, retried.output
    assert "queued again" in retried.output
    assert TaskStatus.QUEUED == tasks.statuses()[target]
    conflict = invoke("tasks", "retry", tasks.succeeded, "--queue", tasks.url)
    assert 1 == conflict.exit_code
    assert "Conflict" in conflict.output
    assert "only failed, dead or cancelled tasks can be retried" in flat(conflict.output)


def test_cancel_by_status_cancels_every_match_with_a_progress_bar(tasks: Tasks) -> None:
    """``cancel --status queued`` cancels all queued tasks and nothing else."""
    result = invoke("tasks", "cancel", "--status", "queued", "--queue", tasks.url)
    assert 0 == result.exit_code, result.output
    assert "cancelling" in result.output
    assert "cancelled 3 of 3 tasks" in result.output
    statuses = tasks.statuses()
    assert {TaskStatus.CANCELLED} == {statuses[i] for i in tasks.queued}
    assert TaskStatus.SUCCEEDED == statuses[tasks.succeeded]
    both = invoke("tasks", "cancel", tasks.queued[0], "--status", "queued", "--queue", tasks.url)
    assert 2 == both.exit_code


def test_cancel_force_takes_one_task_id_only(tasks: Tasks) -> None:
    """Bulk cancelling has no force: ``--force`` with several ids or with ``--status``
    is a usage error, and cancels nothing; with one id it works."""
    for args in (tasks.queued[:2], ["--status", "queued"]):
        result = invoke("tasks", "cancel", *args, "--force", "--queue", tasks.url)
        assert 2 == result.exit_code, result.output
        assert "works on one task id at a time" in flat(result.output)
    assert {TaskStatus.QUEUED} == {tasks.statuses()[i] for i in tasks.queued}
    one = invoke("tasks", "cancel", tasks.queued[0], "--force", "--queue", tasks.url)
    assert 0 == one.exit_code, one.output
    assert TaskStatus.CANCELLED == tasks.statuses()[tasks.queued[0]]


def test_dlq_lists_dead_tasks_with_their_errors(tasks: Tasks) -> None:
    result = invoke("tasks", "dlq", "--queue", tasks.url)
    assert 0 == result.exit_code, result.output
    for task_id in tasks.dead:
        assert task_id in result.output
    assert "ValueError: boom" in result.output
    assert tasks.queued[0] not in result.output


def test_reprocess_sends_dead_tasks_back(tasks: Tasks) -> None:
    """``reprocess ID`` sends one back; ``reprocess`` with no ids sends the rest."""
    one = invoke("tasks", "reprocess", tasks.dead[0], "--queue", tasks.url)
    assert 0 == one.exit_code, one.output
    assert "reprocessed 1 dead task" in one.output
    assert TaskStatus.QUEUED == tasks.statuses()[tasks.dead[0]]
    rest = invoke("tasks", "reprocess", "--queue", tasks.url)
    assert 0 == rest.exit_code, rest.output
    assert "reprocessed 2 dead tasks" in rest.output
    statuses = tasks.statuses()
    assert {TaskStatus.QUEUED} == {statuses[i] for i in tasks.dead}
    none = invoke("tasks", "reprocess", "--queue", tasks.url)
    assert "no dead tasks to reprocess" in none.output


def test_stats_counts_by_status_and_groups_dead_letters(tasks: Tasks) -> None:
    as_json = invoke("tasks", "stats", "--queue", tasks.url, "--json")
    assert 0 == as_json.exit_code, as_json.output
    stats = json.loads(as_json.stdout)
    assert 1 == stats["by_status"]["succeeded"]
    assert 3 == stats["by_status"]["dead"]
    assert 3 == stats["by_status"]["queued"]
    assert {"high": 1, "normal": 1, "bulk": 1} == {
        k: v for k, v in stats["by_priority"].items() if v
    }
    assert [{"name": "boom", "error_type": "ValueError", "count": 3}] == stats["dead_letters"]
    table = invoke("tasks", "stats", "--queue", tasks.url)
    assert 0 == table.exit_code, table.output
    assert "dead letters" in table.output
    assert "ValueError" in table.output


def test_a_queue_file_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = invoke("tasks", "list", "--queue", f"sqlite:///{missing}")
    assert 2 == result.exit_code
    assert "no queue at" in flat(result.output)
    assert not missing.exists()
    other = invoke("tasks", "list", "--queue", "redis://localhost/0")
    assert 2 == other.exit_code
    assert "use sqlite:///path.db" in flat(other.output)


# --- serve's refusals ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No BUTTRESS_* variables and no .env: the defaults, unless the test sets some."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in __import__("os").environ if n.startswith("BUTTRESS_")]:
        monkeypatch.delenv(name)
    return tmp_path


def test_a_bad_setting_exits_2_naming_the_variable(clean_env: Path) -> None:
    """BUTTRESS_PORT=abc: exit 2, the message names BUTTRESS_PORT, no traceback."""
    result = invoke("serve", env={"BUTTRESS_PORT": "abc"})
    assert 2 == result.exit_code
    assert isinstance(result.exception, SystemExit)
    assert "error: invalid settings: BUTTRESS_PORT: Input should be a valid integer" in flat(
        result.stderr
    )
    assert "Traceback" not in result.output
    assert not (clean_env / "buttress.db").exists()


def test_a_public_host_without_api_keys_is_refused(clean_env: Path) -> None:
    """Open access (no keys) only ever listens on loopback."""
    result = invoke("serve", "--host", "0.0.0.0")
    assert 2 == result.exit_code
    message = flat(result.stderr)
    assert "refusing to listen on 0.0.0.0: no API keys are configured" in message
    assert "Set BUTTRESS_API_KEYS" in message
    from_env = invoke("serve", env={"BUTTRESS_HOST": "192.0.2.10"})
    assert 2 == from_env.exit_code
    assert "refusing to listen on 192.0.2.10" in flat(from_env.stderr)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert loopback == is_loopback(host)


# --- through a running service ----------------------------------------------------------------


@dataclass
class Running:
    url: str
    queue_url: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The ops app in uvicorn, in a thread, on a free port: API keys for alice, bob
    (users) and an admin, a ``cli.payments`` breaker, no worker."""
    directory = tmp_path_factory.mktemp("service")
    queue_url = f"sqlite:///{directory}/service.db"
    settings = load_settings(
        queue_url=queue_url,
        worker=False,
        api_keys={
            ALICE: {"owner": "alice", "role": "user"},
            BOB: {"owner": "bob", "role": "user"},
            ADMIN: {"owner": "ops", "role": "admin"},
        },
        breakers={"cli.payments": {"failure_threshold": 3}},
    )
    service = Service(settings, queue=make_queue(queue_url))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service=service),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="none",
        )
    )
    thread = threading.Thread(target=server.run, name="cli-ops-service")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the service failed to start"
        assert time.monotonic() < deadline, "the service did not start in time"
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", queue_url)
    finally:
        server.should_exit = True
        thread.join(10)


def remote(running: Running, *args: str, key: str | None = ADMIN) -> Result:
    extra = ["--url", running.url] + ([] if key is None else ["--api-key", key])
    return invoke(*args, *extra)


def test_health_reports_readiness_and_exit_codes(running: Running) -> None:
    """0 when ready; 2, with a clear message, when nothing listens at --url."""
    ready = remote(running, "health", key=None)
    assert 0 == ready.exit_code, ready.output
    assert f"{running.url}: healthy" in ready.output
    assert "queue" in ready.output
    report = json.loads(remote(running, "health", "--json").stdout)
    assert "healthy" == report["status"]
    nowhere = invoke("health", "--url", f"http://127.0.0.1:{free_port()}")
    assert 2 == nowhere.exit_code
    assert "cannot reach the buttress service at http://127.0.0.1:" in flat(nowhere.stderr)
    assert "is `buttress serve` running there?" in flat(nowhere.stderr)


def test_breakers_list_and_reset(running: Running) -> None:
    """Users list breakers; resetting one needs an admin; an unknown one is a 404."""
    listed = remote(running, "breakers", "list", key=ALICE)
    assert 0 == listed.exit_code, listed.output
    assert "cli.payments" in listed.output
    assert "closed" in listed.output
    as_json = json.loads(remote(running, "breakers", "list", "--json").stdout)
    assert "cli.payments" in {b["name"] for b in as_json}
    forbidden = remote(running, "breakers", "reset", "cli.payments", key=ALICE)
    assert 1 == forbidden.exit_code
    assert "403 Forbidden" in forbidden.stderr
    assert "(this needs an admin's API key)" in flat(forbidden.stderr)
    reset = remote(running, "breakers", "reset", "cli.payments")
    assert 0 == reset.exit_code, reset.output
    assert "breaker cli.payments reset: closed" in reset.output
    unknown = remote(running, "breakers", "reset", "no.such.breaker")
    assert 1 == unknown.exit_code
    assert "404 Not Found" in unknown.stderr
    anonymous = remote(running, "breakers", "list", key=None)
    assert 1 == anonymous.exit_code
    assert "401" in anonymous.stderr
    assert "pass --api-key or set BUTTRESS_API_KEY" in flat(anonymous.stderr)


def test_cache_stats_clear_and_invalidate(running: Running) -> None:
    stats = remote(running, "cache", "stats")
    assert 0 == stats.exit_code, stats.output
    assert "memory" in stats.output
    assert (
        "memory"
        == json.loads(remote(running, "cache", "stats", "--json").stdout)["tiers"][0]["name"]
    )
    invalidated = remote(running, "cache", "invalidate", "--tag", "a", "--tag", "b")
    assert 0 == invalidated.exit_code, invalidated.output
    assert "invalidated tags a, b" in invalidated.output
    by_pattern = remote(running, "cache", "invalidate", "--pattern", "user:*")
    assert "deleted 0 keys matching 'user:*'" in by_pattern.output
    nothing = remote(running, "cache", "invalidate")
    assert 2 == nothing.exit_code
    cleared = remote(running, "cache", "clear")
    assert 0 == cleared.exit_code, cleared.output
    assert "cache cleared" in cleared.output
    forbidden = remote(running, "cache", "clear", key=BOB)
    assert 1 == forbidden.exit_code


def test_tasks_through_the_service_are_scoped_to_the_caller(running: Running) -> None:
    """Through the service a user sees only its own tasks; admins act in bulk."""
    from buttress._client import ServiceClient

    with ServiceClient(running.url, api_key=ALICE) as client:
        mine = client.submit_task("ok", [7], priority="low")["id"]
    listed = remote(running, "tasks", "list", "--json", key=ALICE)
    assert 0 == listed.exit_code, listed.output
    assert mine in {t["id"] for t in json.loads(listed.stdout)["tasks"]}
    table = remote(running, "tasks", "list", key=ALICE)
    assert mine in table.output
    assert "low" in table.output
    hidden = remote(running, "tasks", "show", mine, key=BOB)
    assert 1 == hidden.exit_code
    assert "404 Not Found" in hidden.stderr
    shown = remote(running, "tasks", "show", mine, key=ALICE)
    assert 0 == shown.exit_code, shown.output
    assert "[7]" in shown.output

    cancelled = remote(running, "tasks", "cancel", mine, key=ALICE)
    assert 0 == cancelled.exit_code, cancelled.output
    assert "cancelled" in cancelled.output
    retried = remote(running, "tasks", "retry", mine, key=ALICE)
    assert 0 == retried.exit_code, retried.output
    assert "queued" == json.loads(remote(running, "tasks", "show", mine, "--json").stdout)["status"]

    # Dead tasks, made by a worker of our own on the service's queue file.
    dead = fill(running.queue_url, owner="carol").dead
    dlq = remote(running, "tasks", "dlq", "--owner", "carol")
    assert 0 == dlq.exit_code, dlq.output
    for task_id in dead:
        assert task_id in dlq.output
    nothing = remote(running, "tasks", "reprocess", key=ALICE)
    assert "no dead tasks to reprocess" in nothing.output  # alice has none of her own
    refused = remote(running, "tasks", "reprocess", *dead, key=ALICE)
    assert 1 == refused.exit_code
    assert "403" in refused.stderr
    reprocessed = remote(running, "tasks", "reprocess", *dead)
    assert 0 == reprocessed.exit_code, reprocessed.output
    assert "reprocessed 3 dead tasks" in reprocessed.output
    stats = json.loads(remote(running, "tasks", "stats", "--json", "--owner", "carol").stdout)
    assert 0 == stats["by_status"]["dead"]
    assert 3 <= stats["by_status"]["queued"]

    bulk = remote(running, "tasks", "cancel", "--status", "queued", "--name", "ok")
    assert 0 == bulk.exit_code, bulk.output
    assert "cancelled" in bulk.output
    after = json.loads(remote(running, "tasks", "list", "--json", "--status", "queued").stdout)
    assert [] == [t for t in after["tasks"] if t["name"] == "ok"]

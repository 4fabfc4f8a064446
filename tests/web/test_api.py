"""The ops API over HTTP (httpx against the ASGI app): auth, ownership, every
resource, problem details, the middleware and the API's own rate limit."""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from webkit import ADMIN, ALICE, BOB, KEYS, MakeService, auth, client_for

from buttress.cache import Cache
from buttress.clock import ManualClock
from buttress.config import load_settings
from buttress.resilience import Bulkhead, RateLimiter, Registry
from buttress.tasks import TaskStatus, Worker
from buttress.web import Service, create_app, install, router

pytest_plugins = ["webfixtures"]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:buttress:error:{code}"
    assert len(body["error_id"]) == 32
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


async def submit(client: httpx.AsyncClient, key: str, name: str = "echo", **body: Any) -> str:
    response = await client.post("/api/v1/tasks", json={"name": name, **body}, headers=auth(key))
    assert response.status_code == 202, response.text
    task_id: str = response.json()["id"]
    return task_id


# --- middleware and problem details ----------------------------------------------------------


async def test_a_request_id_is_echoed_or_made_and_server_timing_is_sent(
    client: httpx.AsyncClient,
) -> None:
    """Every answer carries a request id (the client's, if safe to log) and a Server-Timing."""
    given = await client.get("/api/v1/health", headers={"x-request-id": "req-42.a"})
    assert given.headers["x-request-id"] == "req-42.a"
    assert given.headers["server-timing"].startswith("app;dur=")
    made = await client.get("/api/v1/health")
    assert len(made.headers["x-request-id"]) == 32
    # An id that could forge log lines is replaced, not echoed.
    forged = await client.get("/api/v1/health", headers={"x-request-id": "a b\tfake=1"})
    assert forged.headers["x-request-id"] != "a b\tfake=1"


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    """An unknown route is a 404 problem; a wrong method a 405 with an Allow header."""
    assert_problem(await client.get("/api/v1/nothing-here", headers=auth(ADMIN)), 404, "not_found")
    wrong = await client.delete("/api/v1/health")
    assert_problem(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "GET"


async def test_validation_errors_name_the_field_paths(client: httpx.AsyncClient) -> None:
    """A bad body is a 400 problem naming each wrong field by its path."""
    response = await client.post(
        "/api/v1/tasks",
        json={"name": "echo", "priority": "urgent", "delay": -1, "extra": 1},
        headers=auth(ALICE),
    )
    body = assert_problem(response, 400, "validation_failed")
    fields = {error["field"] for error in body["errors"]}
    assert {"body.priority", "body.delay", "body.extra"} <= fields
    malformed = await client.post(
        "/api/v1/tasks",
        content=b"{not json",
        headers={**auth(ALICE), "content-type": "application/json"},
    )
    assert_problem(malformed, 400, "validation_failed")


async def test_arguments_the_task_cannot_take_are_refused_before_storing(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A task submitted with arguments its function can't take is refused, not stored."""
    response = await client.post(
        "/api/v1/tasks", json={"name": "echo", "kwargs": {"y": 1}}, headers=auth(ALICE)
    )
    body = assert_problem(response, 400, "validation_failed")
    assert "cannot take these arguments" in body["errors"][0]["message"]
    assert (await service.queue.list()).tasks == ()


async def test_an_unregistered_task_name_is_refused_listing_the_known_ones(
    client: httpx.AsyncClient,
) -> None:
    """Submitting an unknown task name is a 400 that lists the registered tasks."""
    response = await client.post("/api/v1/tasks", json={"name": "nope"}, headers=auth(ALICE))
    body = assert_problem(response, 400, "validation_failed")
    assert body["errors"][0]["field"] == "body.name"
    assert "echo" in body["errors"][0]["message"]


async def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(
    make_service: MakeService,
) -> None:
    """A body over `max_body_bytes` is a 413, with or without a Content-Length."""
    service = make_service(max_body_bytes=1000)
    async with client_for(create_app(service=service)) as client:
        big = {"name": "echo", "metadata": {"pad": "x" * 2000}}
        declared = await client.post("/api/v1/tasks", json=big, headers=auth(ALICE))
        assert_problem(declared, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"name": "echo", "metadata": {"pad": "'
            for _ in range(10):
                yield b"x" * 200
            yield b'"}}'

        streamed = await client.post("/api/v1/tasks", content=chunks(), headers=auth(ALICE))
        assert_problem(streamed, 413, "payload_too_large")
        assert (await service.queue.stats()).by_status.get(TaskStatus.QUEUED, 0) == 0
    await service.stop()


async def test_an_unhandled_error_is_a_500_problem_with_its_id_logged_not_sent(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """An unhandled error is a 500 problem hiding its message, logged under its error id."""
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 in the database driver's message")

    app.include_router(router)
    install(app, service)
    async with client_for(app) as client:
        with caplog.at_level(logging.ERROR, logger="buttress.web"):
            response = await client.get("/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "database" not in response.text
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == body["error_id"]]
    assert logged, "the error id returned must be findable in the logs"
    assert logged[0].exc_info is not None


async def test_the_router_mounts_under_a_prefix_in_another_app(service: Service) -> None:
    """The ops router works mounted under a prefix in an application's own app."""
    app = FastAPI()
    app.include_router(router, prefix="/ops")
    install(app, service)
    async with client_for(app) as client:
        assert (await client.get("/ops/api/v1/health")).json() == {"status": "ok"}
        listed = await client.get("/ops/api/v1/circuit-breakers", headers=auth(ADMIN))
        assert listed.status_code == 200
        assert_problem(await client.get("/ops/api/v1/circuit-breakers"), 401, "unauthenticated")


# --- auth ------------------------------------------------------------------------------------


async def test_requests_without_a_valid_key_are_401_with_a_challenge(
    client: httpx.AsyncClient,
) -> None:
    """A missing, unknown or non-Bearer key is a 401 with a Bearer challenge."""
    missing = await client.get("/api/v1/tasks")
    assert_problem(missing, 401, "unauthenticated")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(
        await client.get("/api/v1/tasks", headers=auth("x" * 22)), 401, "unauthenticated"
    )
    basic = await client.get("/api/v1/tasks", headers={"authorization": f"Basic {ALICE}"})
    assert_problem(basic, 401, "unauthenticated")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/circuit-breakers", {"name": "x"}),
        ("post", "/api/v1/circuit-breakers/payments/reset", None),
        ("post", "/api/v1/circuit-breakers/payments/force-open", None),
        ("get", "/api/v1/cache/keys/k", None),
        ("put", "/api/v1/cache/keys/k", {"value": 1}),
        ("delete", "/api/v1/cache/keys/k", None),
        ("post", "/api/v1/cache/batch/set", {"items": {"k": 1}}),
        ("post", "/api/v1/cache/invalidate", {"tags": ["t"]}),
        ("post", "/api/v1/cache/warm", {"keys": ["k"]}),
        ("post", "/api/v1/cache/clear", None),
        ("post", "/api/v1/tasks/cleanup", {"older_than": 0}),
        ("post", "/api/v1/tasks/bulk", {"action": "delete", "status": ["queued"]}),
        ("post", "/api/v1/dead-letters/reprocess", {}),
    ],
)
async def test_mutating_ops_endpoints_need_the_admin_role(
    client: httpx.AsyncClient, service: Service, method: str, path: str, body: Any
) -> None:
    """Endpoints that change breakers, the cache or many tasks refuse a user: 403, no change."""
    service.add_breaker("payments", load_settings(_env_file=None).breakers.get("x") or _breaker())
    await service.cache.set("k", "kept")
    task_id = await submit(client, ALICE)
    kwargs: dict[str, Any] = {"headers": auth(ALICE)}
    if body is not None:
        kwargs["json"] = body
    assert_problem(await client.request(method, path, **kwargs), 403, "forbidden")
    # Nothing changed.
    assert service.breakers["payments"].state.value == "closed"
    assert await service.cache.get("k") == "kept"
    assert (await service.queue.get(task_id)).status is TaskStatus.QUEUED


def _breaker() -> Any:
    from buttress.config import BreakerSettings

    return BreakerSettings()


async def test_with_no_keys_configured_every_local_caller_is_admin(
    make_service: MakeService,
) -> None:
    """With no API keys configured, a local caller is an admin and its tasks are `local`'s."""
    service = make_service(api_keys={})
    assert service.open_access
    async with client_for(create_app(service=service)) as client:
        created = await client.post("/api/v1/circuit-breakers", json={"name": "open"})
        assert created.status_code == 201
        task_id = await submit(client, "")
        assert (await service.queue.get(task_id)).owner == "local"
    await service.stop()


def test_api_keys_are_held_hashed() -> None:
    """Settings hold only digests of the API keys: no dump or repr shows a key."""
    settings = load_settings(api_keys=KEYS, _env_file=None)
    dumped = settings.model_dump_json() + repr(settings)
    for key in KEYS:
        assert key not in dumped
    assert len(settings.api_keys) == 3


# --- tasks and ownership -----------------------------------------------------------------------


async def test_a_submitted_task_is_the_callers_and_answers_202(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A submitted task is stored as the caller's and answered with a 202 describing it."""
    response = await client.post(
        "/api/v1/tasks",
        json={"name": "echo", "kwargs": {"x": 7}, "priority": "high", "tags": ["t1"]},
        headers=auth(ALICE),
    )
    assert response.status_code == 202
    body = response.json()
    assert body["owner"] == "alice"
    assert body["status"] == "queued"
    assert body["priority"] == "high"
    assert body["kwargs"] == {"x": 7}
    stored = await service.queue.get(body["id"])
    assert stored.owner == "alice"
    assert stored.kwargs == {"x": 7}
    fetched = await client.get(f"/api/v1/tasks/{body['id']}", headers=auth(ALICE))
    assert fetched.json()["id"] == body["id"]


async def test_a_user_never_sees_counts_or_changes_another_owners_task(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A user sees, counts and changes only their own tasks; an admin sees everyone's."""
    alices = await submit(client, ALICE)
    await submit(client, BOB)
    for method, path in [
        ("get", f"/api/v1/tasks/{alices}"),
        ("post", f"/api/v1/tasks/{alices}/cancel"),
        ("post", f"/api/v1/tasks/{alices}/retry"),
    ]:
        response = await client.request(method, path, headers=auth(BOB))
        assert_problem(response, 404, "not_found")
    assert (await service.queue.get(alices)).status is TaskStatus.QUEUED

    listed = (await client.get("/api/v1/tasks", headers=auth(BOB))).json()["tasks"]
    assert [t["owner"] for t in listed] == ["bob"]
    stats = (await client.get("/api/v1/tasks/stats", headers=auth(BOB))).json()
    assert stats["by_status"]["queued"] == 1
    snooping = await client.get("/api/v1/tasks", params={"owner": "alice"}, headers=auth(BOB))
    assert_problem(snooping, 403, "forbidden")
    everyone = (await client.get("/api/v1/tasks", headers=auth(ADMIN))).json()["tasks"]
    assert sorted(t["owner"] for t in everyone) == ["alice", "bob"]
    just_alice = await client.get("/api/v1/tasks", params={"owner": "alice"}, headers=auth(ADMIN))
    assert [t["id"] for t in just_alice.json()["tasks"]] == [alices]


async def test_listing_filters_and_pages(client: httpx.AsyncClient) -> None:
    """Task listings page by cursor and filter by priority."""
    ids = [await submit(client, ALICE, priority="low") for _ in range(3)]
    high = await submit(client, ALICE, priority="high")
    first = (await client.get("/api/v1/tasks", params={"limit": 2}, headers=auth(ALICE))).json()
    assert len(first["tasks"]) == 2
    rest = await client.get(
        "/api/v1/tasks", params={"limit": 2, "cursor": first["cursor"]}, headers=auth(ALICE)
    )
    seen = [t["id"] for t in first["tasks"] + rest.json()["tasks"]]
    assert sorted(seen) == sorted([*ids, high])
    only_high = await client.get("/api/v1/tasks", params={"priority": "high"}, headers=auth(ALICE))
    assert [t["id"] for t in only_high.json()["tasks"]] == [high]


async def test_cancel_and_retry_act_on_the_callers_task(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A user cancels and retries their own task; retrying a queued task is a 409."""
    task_id = await submit(client, ALICE)
    retry_queued = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=auth(ALICE))
    assert_problem(retry_queued, 409, "conflict")
    cancelled = await client.post(f"/api/v1/tasks/{task_id}/cancel", headers=auth(ALICE))
    assert cancelled.json()["status"] == "cancelled"
    retried = await client.post(f"/api/v1/tasks/{task_id}/retry", headers=auth(ALICE))
    assert retried.json()["status"] == "queued"
    assert (await service.queue.get(task_id)).status is TaskStatus.QUEUED


async def test_dead_letters_are_listed_per_owner_and_reprocessed_by_an_admin(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Each owner lists their own dead letters, counted by error; an admin requeues them."""
    dead = await submit(client, ALICE, name="explode")
    await submit(client, BOB, name="explode")
    await Worker(service.queue, signals=False).run(until_empty=True)
    letters = (await client.get("/api/v1/dead-letters", headers=auth(ALICE))).json()["tasks"]
    assert [t["id"] for t in letters] == [dead]
    assert letters[0]["error"]["type"] == "ConnectionError"
    stats = (await client.get("/api/v1/tasks/stats", headers=auth(ADMIN))).json()
    assert stats["dead_letters"] == [
        {"name": "explode", "error_type": "ConnectionError", "count": 2}
    ]
    again = await client.post(
        "/api/v1/dead-letters/reprocess", json={"ids": [dead]}, headers=auth(ADMIN)
    )
    assert again.json() == {"action": "reprocess", "count": 1, "ids": [dead]}
    assert (await service.queue.get(dead)).status is TaskStatus.QUEUED


async def test_bulk_actions_and_cleanup(client: httpx.AsyncClient, service: Service) -> None:
    """An admin cancels, retries and deletes tasks in bulk and cleans up old ones."""
    ids = [await submit(client, ALICE) for _ in range(3)]
    refused = await client.post(
        "/api/v1/tasks/bulk", json={"action": "cancel"}, headers=auth(ADMIN)
    )
    assert_problem(refused, 400, "validation_failed")
    cancelled = await client.post(
        "/api/v1/tasks/bulk",
        json={"action": "cancel", "owner": "alice", "status": ["queued"]},
        headers=auth(ADMIN),
    )
    assert cancelled.json()["count"] == 3
    assert sorted(cancelled.json()["ids"]) == sorted(ids)
    retried = await client.post(
        "/api/v1/tasks/bulk", json={"action": "retry", "ids": ids[:1]}, headers=auth(ADMIN)
    )
    assert retried.json()["ids"] == ids[:1]
    cleaned = await client.post(
        "/api/v1/tasks/cleanup",
        json={"older_than": 0, "statuses": ["cancelled"]},
        headers=auth(ADMIN),
    )
    assert cleaned.json() == {"count": 2}
    deleted = await client.post(
        "/api/v1/tasks/bulk", json={"action": "delete", "ids": ids[:1]}, headers=auth(ADMIN)
    )
    assert deleted.json()["count"] == 1
    assert (await service.queue.list()).tasks == ()


# --- resilience --------------------------------------------------------------------------------


async def test_breakers_are_listed_registered_reset_and_forced_open(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Circuit breakers are listed, registered, forced open and reset over the API."""
    created = await client.post(
        "/api/v1/circuit-breakers",
        json={"name": "payments", "failure_threshold": 2},
        headers=auth(ADMIN),
    )
    assert created.status_code == 201
    assert created.json()["state"] == "closed"
    again = await client.post(
        "/api/v1/circuit-breakers", json={"name": "payments"}, headers=auth(ADMIN)
    )
    assert_problem(again, 409, "already_exists")
    breaker = service.breakers["payments"]
    forced = await client.post("/api/v1/circuit-breakers/payments/force-open", headers=auth(ADMIN))
    assert forced.json()["state"] == "open"
    assert forced.json()["retry_after"] is None  # forced: until reset
    assert breaker.state.value == "open"
    listed = await client.get("/api/v1/circuit-breakers", headers=auth(ALICE))
    assert [(b["name"], b["state"]) for b in listed.json()] == [("payments", "open")]
    reset = await client.post("/api/v1/circuit-breakers/payments/reset", headers=auth(ADMIN))
    assert reset.json()["state"] == "closed"
    assert breaker.state.value == "closed"
    missing = await client.get("/api/v1/circuit-breakers/nope", headers=auth(ALICE))
    assert_problem(missing, 404, "not_found")


async def test_breakers_from_settings_are_registered_at_start(make_service: MakeService) -> None:
    """Breakers configured in the settings are there from the start."""
    service = make_service(breakers={"openai": {"failure_threshold": 3}})
    async with client_for(create_app(service=service)) as client:
        got = await client.get("/api/v1/circuit-breakers/openai", headers=auth(ALICE))
        assert got.status_code == 200
        assert got.json()["name"] == "openai"
    await service.stop()


async def test_bulkheads_and_rate_limiters_are_listed(
    client: httpx.AsyncClient, service: Service
) -> None:
    """The registry's bulkheads and rate limiters are listed with their live counts."""
    bulkhead = Bulkhead(3, max_queue=1, name="db", registry=service.registry)
    limiter = RateLimiter(5, per=1, name="outbound", registry=service.registry)
    limiter.try_acquire("k")
    bulkheads = (await client.get("/api/v1/bulkheads", headers=auth(ALICE))).json()
    assert bulkheads == [
        {"name": "db", "max_concurrent": 3, "max_queue": 1, "active": 0, "queued": 0, "rejected": 0}
    ]
    limiters = (await client.get("/api/v1/rate-limiters", headers=auth(ALICE))).json()
    outbound = next(item for item in limiters if item["name"] == "outbound")
    assert outbound["allowed"] == 1
    del bulkhead, limiter


# --- cache ---------------------------------------------------------------------------------------


async def test_cache_keys_batches_invalidation_warming_and_clearing(
    client: httpx.AsyncClient, service: Service
) -> None:
    """The cache is read, written, invalidated, warmed and cleared over the API."""
    admin = auth(ADMIN)
    put = await client.put(
        "/api/v1/cache/keys/user:1", json={"value": {"n": 1}, "tags": ["users"]}, headers=admin
    )
    assert put.status_code == 204
    assert await service.cache.get("user:1") == {"n": 1}
    got = await client.get("/api/v1/cache/keys/user:1", headers=admin)
    assert got.json() == {"key": "user:1", "value": {"n": 1}}
    assert_problem(await client.get("/api/v1/cache/keys/none", headers=admin), 404, "not_found")

    await client.post(
        "/api/v1/cache/batch/set", json={"items": {"user:2": 2, "item:1": "a"}}, headers=admin
    )
    batch = await client.post(
        "/api/v1/cache/batch/get", json={"keys": ["user:2", "item:1", "gone"]}, headers=admin
    )
    assert batch.json() == {"values": {"user:2": 2, "item:1": "a"}, "missing": ["gone"]}

    by_tag = await client.post("/api/v1/cache/invalidate", json={"tags": ["users"]}, headers=admin)
    assert by_tag.status_code == 200
    assert await service.cache.get("user:1") is None
    by_pattern = await client.post(
        "/api/v1/cache/invalidate", json={"pattern": "user:*"}, headers=admin
    )
    assert by_pattern.json() == {"count": 1}
    assert await service.cache.get("user:2") is None
    assert await service.cache.get("item:1") == "a"
    empty = await client.post("/api/v1/cache/invalidate", json={}, headers=admin)
    assert_problem(empty, 400, "validation_failed")

    warmed = await client.post("/api/v1/cache/warm", json={"keys": ["item:1", "x"]}, headers=admin)
    assert warmed.json() == {"warmed": 1, "missing": ["x"]}
    deleted = await client.delete("/api/v1/cache/keys/item:1", headers=admin)
    assert deleted.status_code == 204
    assert await service.cache.get("item:1") is None

    await service.cache.set("left", 1)
    assert (await client.post("/api/v1/cache/clear", headers=admin)).status_code == 204
    assert await service.cache.get("left") is None

    stats = (await client.get("/api/v1/cache/stats", headers=auth(ALICE))).json()
    assert stats["tiers"][0]["name"] == "memory"
    assert stats["tiers"][0]["hits"] >= 2


# --- health and metrics --------------------------------------------------------------------------


async def test_readiness_is_200_when_healthy_or_degraded_and_503_when_the_queue_is_dead(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Readiness is 200 while healthy or degraded and 503 once the queue is gone."""
    ready = await client.get("/api/v1/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "healthy"
    assert set(ready.json()["components"]) == {"queue", "cache", "breakers"}

    service.add_breaker("payments", _breaker()).force_open()
    degraded = await client.get("/api/v1/health/ready")
    assert degraded.status_code == 200
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["components"]["breakers"]["status"] == "degraded"

    service.queue.backend.close()
    dead = await client.get("/api/v1/health/ready")
    assert dead.status_code == 503
    assert dead.json()["status"] == "unhealthy"
    assert dead.json()["components"]["queue"]["status"] == "unhealthy"
    live = await client.get("/api/v1/health")
    assert live.status_code == 200  # the process still answers


async def test_readiness_is_degraded_when_the_redis_tier_is_lost(
    tmp_path: Path, clock: ManualClock, fresh_redis: Any
) -> None:
    """Losing the Redis cache tier makes readiness degraded, not unhealthy."""
    cache = Cache.from_url(fresh_redis.url, name="ops")
    service = Service(
        load_settings(queue_url=f"sqlite:///{tmp_path}/q.db", worker=False, _env_file=None),
        cache=cache,
        registry=Registry(),
    )
    async with client_for(create_app(service=service)) as client:
        assert (await client.get("/api/v1/health/ready")).json()["status"] == "healthy"
        fresh_redis.kill()
        report = (await client.get("/api/v1/health/ready")).json()
        assert report["status"] == "degraded"
        assert report["components"]["cache"]["status"] == "degraded"
    await service.stop()


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Request metrics are labelled by route template, never by ids in the path."""
    task_id = await submit(client, ALICE)
    await client.get(f"/api/v1/tasks/{task_id}", headers=auth(ALICE))
    await client.get("/api/v1/tasks/another-id", headers=auth(ALICE))
    await client.get("/no/such/route")
    text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    by_route = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "buttress_http_requests_total"
    }
    get_task = (("method", "GET"), ("route", "/api/v1/tasks/{task_id}"), ("status", "200"))
    assert by_route[get_task] == 1
    missing = (("method", "GET"), ("route", "/api/v1/tasks/{task_id}"), ("status", "404"))
    assert by_route[missing] == 1
    assert not any(task_id in dict(labels)["route"] for labels in by_route)
    assert any(dict(labels)["route"] == "<unmatched>" for labels in by_route)
    queued = ("buttress_queue_tasks", (("queue", "default"), ("status", "queued")))
    assert samples[queued] == 1


# --- the API's own rate limit --------------------------------------------------------------


async def test_each_principal_is_rate_limited_with_ratelimit_headers(
    make_service: MakeService, clock: ManualClock
) -> None:
    """Each principal has its own API rate limit, announced in RateLimit headers."""
    service = make_service(api_rate_limit={"rate": 1, "per": 1, "burst": 2})
    async with client_for(create_app(service=service)) as client:
        first = await client.get("/api/v1/circuit-breakers", headers=auth(ALICE))
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-remaining"] == "1"
        await client.get("/api/v1/circuit-breakers", headers=auth(ALICE))
        limited = await client.get("/api/v1/circuit-breakers", headers=auth(ALICE))
        body = assert_problem(limited, 429, "rate_limited")
        assert limited.headers["retry-after"] == "1"
        assert limited.headers["ratelimit-remaining"] == "0"
        assert body["retry_after"] == 1
        # Another principal has its own allowance; time gives Alice hers back.
        assert (await client.get("/api/v1/circuit-breakers", headers=auth(BOB))).status_code == 200
        clock.advance(1.0)
        assert (
            await client.get("/api/v1/circuit-breakers", headers=auth(ALICE))
        ).status_code == 200
    await service.stop()


async def test_values_json_cannot_carry_are_shown_not_a_500(
    client: httpx.AsyncClient, service: Service
) -> None:
    """Bytes, datetimes and infinities in tasks or the cache are shown as JSON, not a 500."""

    @service.queue.task
    async def archive(blob: bytes, when: datetime.datetime) -> None:
        return None

    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    task = await service.queue.enqueue(archive, b"\xff\x00", when, owner="alice")
    shown = await client.get(f"/api/v1/tasks/{task.id}", headers=auth(ALICE))
    assert shown.status_code == 200
    assert shown.json()["args"] == ["_wA=", "2026-01-02T03:04:05+00:00"]  # URL-safe base64
    await service.cache.set("raw", {"blob": b"\xff", "n": float("inf")})
    cached = await client.get("/api/v1/cache/keys/raw", headers=auth(ADMIN))
    assert cached.json()["value"] == {"blob": "_w==", "n": None}


async def test_failed_authentication_is_charged_to_the_client_address(
    make_service: MakeService,
) -> None:
    """Failed authentication is rate limited per client address; the right key still works."""
    service = make_service(api_rate_limit={"rate": 1, "per": 1, "burst": 2})
    async with client_for(create_app(service=service)) as client:
        for _ in range(2):
            guess = await client.get("/api/v1/tasks", headers=auth("guess-" + "0" * 20))
            assert_problem(guess, 401, "unauthenticated")
        throttled = await client.get("/api/v1/tasks", headers=auth("guess-" + "1" * 20))
        assert_problem(throttled, 429, "rate_limited")
        # The right key still works: its owner has an allowance of its own.
        assert (await client.get("/api/v1/tasks", headers=auth(ALICE))).status_code == 200
    await service.stop()


async def test_with_no_keys_only_local_callers_are_served(make_service: MakeService) -> None:
    """With no API keys configured, only local callers are served."""
    service = make_service(api_keys={})
    app = create_app(service=service)
    remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
    async with httpx.AsyncClient(transport=remote, base_url="http://buttress") as client:
        assert_problem(await client.get("/api/v1/tasks"), 403, "forbidden")
    local = httpx.ASGITransport(app=app, client=("::1", 5000))
    async with httpx.AsyncClient(transport=local, base_url="http://buttress") as client:
        assert (await client.get("/api/v1/tasks")).status_code == 200
    await service.stop()


async def test_cache_keys_may_hold_slashes(client: httpx.AsyncClient, service: Service) -> None:
    """Cache keys may contain slashes."""
    admin = auth(ADMIN)
    put = await client.put("/api/v1/cache/keys/users/42/profile", json={"value": 1}, headers=admin)
    assert put.status_code == 204
    assert await service.cache.get("users/42/profile") == 1
    got = await client.get("/api/v1/cache/keys/users/42/profile", headers=admin)
    assert got.json() == {"key": "users/42/profile", "value": 1}


async def test_a_stopped_service_does_not_start_again(service: Service) -> None:
    """Stopping a service twice is harmless; a stopped service refuses to start again."""
    await service.stop()
    await service.stop()  # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        await service.start()


async def test_the_cache_url_setting_puts_redis_behind_memory(
    make_service: MakeService, redis_url: str
) -> None:
    """`cache_url` puts a shared Redis tier behind the memory one, visible in the metrics."""
    service = make_service(cache_url=redis_url)
    async with client_for(create_app(service=service)) as client:
        admin = auth(ADMIN)
        await client.put("/api/v1/cache/keys/shared", json={"value": [1, 2]}, headers=admin)
        stats = (await client.get("/api/v1/cache/stats", headers=admin)).json()
        assert [tier["name"] for tier in stats["tiers"]] == ["memory", "redis"]
        # Another process's cache over the same Redis sees the value.
        other = Cache.from_url(redis_url, l1_size=None, namespace="buttress")
        assert await other.get("shared") == [1, 2]
        await other.close()
        text = (await client.get("/metrics")).text
        tiers = {
            s.labels["tier"]
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "buttress_cache_tier_available"
        }
        assert tiers == {"memory", "redis"}
    await service.stop()


async def test_an_app_that_only_includes_the_router_gets_a_service_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`install(app)` without a service: one is built from BUTTRESS_* on first use,
    and its settings hold, the body limit included."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BUTTRESS_QUEUE_URL", f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("BUTTRESS_MAX_BODY_BYTES", "200")
    monkeypatch.setenv("BUTTRESS_WORKER", "false")
    app = FastAPI()
    app.include_router(router)
    install(app)
    async with client_for(app) as client:
        assert (await client.get("/api/v1/health/ready")).json()["status"] == "healthy"
        service: Service = app.state.buttress
        assert service.settings.max_body_bytes == 200
        big = await client.post("/api/v1/tasks", json={"name": "x", "metadata": {"p": "x" * 300}})
        assert_problem(big, 413, "payload_too_large")
    await service.stop()

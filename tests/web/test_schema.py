"""schemathesis against the ops app's live OpenAPI schema: no 5xx, every response as declared.

The schema is the one the app serves (``GET /openapi.json``, over ASGI in this
process), so what is tested is what a client downloads. schemathesis makes one
test per operation and runs its three phases: the schema's examples, its
coverage cases (each constraint's boundaries and the values just past them) and
Hypothesis fuzzing, with valid and invalid requests alike, every one sent with an
admin key. Hypothesis is derandomized: a run sends the same requests every time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from buttress.config import load_settings
from buttress.resilience import Registry
from buttress.web import Service, create_app

ADMIN_KEY = "schemathesis-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FUZZED_PER_OPERATION = 40  # Hypothesis examples, on top of the examples and coverage phases
MIN_REQUESTS = 500
MIN_PER_OPERATION = 10
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
PROBLEM_REF = "#/components/schemas/ProblemOut"

sent: dict[str, int] = {}
"""Requests sent by test_api, by operation (``"GET /api/v1/health"``)."""


def _service(queue_url: str) -> Service:
    settings = load_settings(
        queue_url=queue_url,
        cache_url="memory://",
        worker=False,  # tasks stay queued: nothing runs what the fuzzer submits
        api_rate_limit=None,  # hundreds of requests a second from one key
        api_keys={ADMIN_KEY: {"owner": "schemathesis", "role": "admin"}},
        _env_file=None,
    )
    # A registry of its own: the breakers the fuzzer registers stay out of other tests.
    service = Service(settings, registry=Registry())

    @service.queue.task()
    async def echo(x: int = 0) -> int:
        return x

    return service


def _app(queue_url: str) -> FastAPI:
    return create_app(service=_service(queue_url))


# Collected with the module, from an app that holds no files.
schema = schemathesis.openapi.from_asgi("/openapi.json", _app("sqlite:///:memory:"))


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Most task bodies name the registered task, some with no arguments too, so POST
    /tasks gets past the checks into the enqueue (a random name is always refused)."""
    operation = context.operation
    if operation is None or (operation.method, operation.path) != ("post", "/api/v1/tasks"):
        return st.just(body)
    if not isinstance(body, dict):
        return st.just(body)
    echo = {**body, "name": "echo"}
    return st.sampled_from([body, echo, {**echo, "args": [], "kwargs": {}}])


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    """A fresh app per operation, its queue in a file. schemathesis's plugin ends the
    app's lifespan after each test, and the service's stores close with it."""
    return _app(f"sqlite:///{tmp_path / 'queue.db'}")


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZED_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture,  # one app per operation, on purpose
        hypothesis.HealthCheck.too_slow,
        hypothesis.HealthCheck.filter_too_much,
        hypothesis.HealthCheck.data_too_large,
    ],
)
def test_api(case: schemathesis.Case[Any], app: FastAPI) -> None:
    """Every generated request gets a response that is no 5xx and matches the schema."""
    label = f"{case.operation.method.upper()} {case.operation.path}"
    try:
        case.call_and_validate(headers=ADMIN, checks=CHECKS, app=app)
    finally:
        sent[label] = sent.get(label, 0) + 1


def test_enough_requests(request: pytest.FixtureRequest) -> None:
    """The whole schema's run above sent at least 500 requests and gave every operation
    a real workout."""
    operations: dict[str, dict[str, Any]] = {
        f"{method.upper()} {path}": operation
        for path, methods in schema.raw_schema["paths"].items()
        for method, operation in methods.items()
    }
    ran = [
        item for item in request.session.items if getattr(item, "originalname", "") == "test_api"
    ]
    if len(ran) < len(operations):
        pytest.skip(f"counts a run of every operation; this one selected {len(ran)}")
    total = sum(sent.values())
    assert total >= MIN_REQUESTS, f"only {total} requests: {sent}"
    # An operation with no parameters and no body has one request to make (Hypothesis
    # stops once it has seen them all, and only other methods are tried on its path).
    wanted = {
        label: MIN_PER_OPERATION if "parameters" in op or "requestBody" in op else 1
        for label, op in operations.items()
    }
    short = {label: sent.get(label, 0) for label, n in wanted.items() if sent.get(label, 0) < n}
    assert {} == short


def _response_schemas(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        status: response.get("content", {}) for status, response in operation["responses"].items()
    }


def _api_routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute]]:
    """(method, path template, route) of every API route of ``app``, routers included."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            assert context.path_format is not None
            for method in sorted(context.methods or ()):
                yield method, context.path_format, route


def test_every_route_is_in_the_schema_with_a_typed_response() -> None:
    """Each route has an operation whose success response has a model (or no body: 204,
    or Prometheus text), and each API operation declares its errors as problem details."""
    served: dict[str, dict[str, Any]] = schema.raw_schema["paths"]
    routes = list(_api_routes(_app("sqlite:///:memory:")))
    for method, path, route in routes:
        label = f"{method} {path}"
        responses = _response_schemas(served[path][method.lower()])
        successes = {status: content for status, content in responses.items() if status[0] == "2"}
        assert successes, label
        for status, content in successes.items():
            if status == "204":
                assert {} == content, label
            elif path == "/metrics":
                assert {"text/plain"} == set(content), label
            else:
                assert route.response_model is not None, label
                body = content["application/json"]["schema"]
                model = body.get("items", body)  # one model, or a list of them
                assert "$ref" in model, f"{label}: untyped {status} body {body}"
        if path.startswith("/api/v1/"):
            for errors in ("4XX", "5XX"):
                problem = responses[errors]["application/problem+json"]["schema"]
                assert {"$ref": PROBLEM_REF} == problem, label
    assert len(routes) == sum(len(methods) for methods in served.values())
    assert len(routes) >= 29


# Requests schemathesis found a 500 for, each cut down to what triggers it: a value
# the request model lets through and the layer below refuses with a ValueError.
FOUND = [
    pytest.param(
        "POST",
        "/api/v1/circuit-breakers",
        {"name": "never-opens", "failure_threshold": None},
        id="breaker-with-no-rule-to-open",
    ),
    pytest.param(
        "POST",
        "/api/v1/circuit-breakers",
        {"name": "rate", "failure_rate_threshold": 0.5, "minimum_calls": 1000},
        id="breaker-minimum-calls-above-count-window",
    ),
    pytest.param(
        "PUT", "/api/v1/cache/keys/k", {"value": 1, "tags": [""]}, id="cache-set-empty-tag"
    ),
    pytest.param("POST", "/api/v1/cache/batch/get", {"keys": [""]}, id="cache-get-many-empty-key"),
    pytest.param(
        "POST", "/api/v1/cache/batch/set", {"items": {"": 1}}, id="cache-set-many-empty-key"
    ),
    pytest.param(
        "POST",
        "/api/v1/cache/batch/set",
        {"items": {"k": 1}, "tags": [""]},
        id="cache-set-many-empty-tag",
    ),
    pytest.param(
        "POST", "/api/v1/cache/invalidate", {"tags": [""]}, id="cache-invalidate-empty-tag"
    ),
    pytest.param("POST", "/api/v1/cache/warm", {"keys": [""]}, id="cache-warm-empty-key"),
    pytest.param(
        "POST", "/api/v1/tasks/bulk", {"action": "retry", "ids": [""]}, id="tasks-bulk-empty-id"
    ),
    pytest.param("POST", "/api/v1/dead-letters/reprocess", {"ids": [""]}, id="reprocess-empty-id"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    service = _service(f"sqlite:///{tmp_path / 'queue.db'}")
    transport = httpx.ASGITransport(app=create_app(service=service))
    async with httpx.AsyncClient(transport=transport, base_url="http://buttress") as client:
        yield client
    await service.stop()


@pytest.mark.parametrize(("method", "path", "body"), FOUND)
async def test_found_by_schemathesis(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]
) -> None:
    """A request the layer below refuses is a 400 problem naming the field, not a 500."""
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert 400 == response.status_code, response.text
    assert "application/problem+json" == response.headers["content-type"]
    assert "validation_failed" == response.json()["code"]

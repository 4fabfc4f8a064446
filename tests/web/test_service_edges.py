"""Edge cases of the ops service found in review: each test's docstring states
what a user relies on, then what used to happen instead."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families
from webkit import ADMIN, BOB, MakeService, auth, client_for

from buttress.config import load_settings
from buttress.errors import ConfigurationError
from buttress.observability import configure_logging
from buttress.tasks import Worker
from buttress.web import Service, create_app, install, router

pytest_plugins = ["webfixtures"]

JSON = {"content-type": "application/json"}


def route_labels(text: str) -> set[tuple[str, str]]:
    """(method, route) of every ``buttress_http_requests_total`` sample."""
    return {
        (sample.labels["method"], sample.labels["route"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "buttress_http_requests_total"
    }


@pytest.fixture
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Config tests see only the variables they set, and no .env of the checkout."""
    for name in list(os.environ):
        if name.startswith("BUTTRESS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# --- auth ------------------------------------------------------------------------------------


async def test_a_64_hex_character_api_key_authenticates(make_service: MakeService) -> None:
    """A key made by `secrets.token_hex(32)` (64 lowercase hex digits) authenticates.
    (It used to be taken for an already-hashed key, so every request with it was a 401.)"""
    key = "3f" * 32  # what secrets.token_hex(32) looks like
    service = make_service(api_keys={key: {"owner": "ops", "role": "admin"}})
    async with client_for(create_app(service=service)) as client:
        response = await client.get("/api/v1/tasks", headers=auth(key))
    await service.stop()
    assert response.status_code == 200, response.text


# --- problem details -------------------------------------------------------------------------


async def test_install_keeps_the_status_of_the_host_apps_http_exceptions(service: Service) -> None:
    """`install(app, service)` keeps the status (409, 503, ...) of the host app's own
    `HTTPException`s in their problem details. (All but 404/405/413 used to become 400.)"""
    app = FastAPI()

    @app.get("/conflict")
    async def conflict() -> None:
        raise HTTPException(409, "name taken")

    @app.get("/maintenance")
    async def maintenance() -> None:
        raise HTTPException(503, "down for maintenance", headers={"Retry-After": "30"})

    app.include_router(router)
    install(app, service)
    async with client_for(app) as client:
        conflicted = await client.get("/conflict")
        down = await client.get("/maintenance")
    assert conflicted.headers["content-type"] == "application/problem+json"
    assert (conflicted.status_code, conflicted.json()["status"]) == (409, 409)
    assert (down.status_code, down.json()["status"]) == (503, 503)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"name": "b", "failure_threshold": null}', id="no-rule-to-open"),
        pytest.param(b'{"name": "b", "slow_call_rate_threshold": 0.5}', id="slow-rate-no-duration"),
        pytest.param(
            b'{"name": "b", "failure_rate_threshold": 0.5, "window": 5, "minimum_calls": 10}',
            id="minimum-calls-over-window",
        ),
        pytest.param(b'{"name": "b", "window": 1e400}', id="infinite-count-window"),
    ],
)
async def test_registering_an_impossible_breaker_is_a_validation_error_not_a_500(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """`POST /circuit-breakers` answers a breaker CircuitBreaker refuses with a 4xx
    naming the problem. (Its ValueError, or an OverflowError from `int(inf)`, used
    to escape as a 500.)"""
    response = await client.post(
        "/api/v1/circuit-breakers", content=body, headers={**auth(ADMIN), **JSON}
    )
    assert response.status_code < 500, response.text
    assert response.json()["code"] == "validation_failed"


# --- tasks -----------------------------------------------------------------------------------


async def test_the_dead_letter_cursor_fetches_the_next_page(
    client: httpx.AsyncClient, service: Service
) -> None:
    """The `cursor` `GET /dead-letters` answers fetches the next page. (It used to be
    ignored: the first page again, so later dead letters could not be listed.)"""
    for _ in range(3):
        submitted = await client.post("/api/v1/tasks", json={"name": "explode"}, headers=auth(BOB))
        assert submitted.status_code == 202
    await Worker(service.queue, signals=False).run(until_empty=True)
    first = (await client.get("/api/v1/dead-letters?limit=2", headers=auth(BOB))).json()
    assert first["cursor"] is not None
    second = await client.get(
        "/api/v1/dead-letters", params={"limit": 2, "cursor": first["cursor"]}, headers=auth(BOB)
    )
    first_ids = {task["id"] for task in first["tasks"]}
    second_ids = {task["id"] for task in second.json()["tasks"]}
    assert not first_ids & second_ids, "the cursor was ignored: the first page again"
    assert len(second_ids) == 1


async def test_a_users_deeply_nested_task_args_do_not_break_the_admins_task_list(
    client: httpx.AsyncClient,
) -> None:
    """A user's task args nested 300 lists deep leave the admin's `GET /tasks` working.
    (They used to be stored and then make every task listing a 500.)"""
    nested = b"[" * 300 + b"]" * 300
    await client.post(
        "/api/v1/tasks",
        content=b'{"name": "echo", "args": [' + nested + b"]}",
        headers={**auth(BOB), **JSON},
    )
    listing = await client.get("/api/v1/tasks", headers=auth(ADMIN))
    assert listing.status_code == 200, listing.text


async def test_a_task_tag_json_can_carry_is_not_a_500(
    client: httpx.AsyncClient, service: Service
) -> None:
    """A tag JSON can carry but UTF-8 can't (`"\\ud800"`) is refused before it is
    stored, or shown; never a 500. (The task used to be queued and its 202 answer to
    fail, so a client's retry queued it twice.)"""
    response = await client.post(
        "/api/v1/tasks",
        content=b'{"name": "echo", "tags": ["\\ud800"]}',
        headers={**auth(BOB), **JSON},
    )
    stored = sum((await service.queue.stats()).by_status.values())
    assert response.status_code < 500, response.text
    assert response.status_code == 202 or stored == 0


# --- metrics labels --------------------------------------------------------------------------


async def test_the_method_label_is_bounded(client: httpx.AsyncClient) -> None:
    """The request metrics' method label is bounded, whatever methods clients send.
    (Each new method used to add a time series, even unauthenticated.)"""
    for index in range(5):
        await client.request(f"PROBE{index}", "/api/v1/health")
    labels = route_labels((await client.get("/metrics")).text)
    methods = {method for method, _ in labels}
    assert not any(method.startswith("PROBE") for method in methods), methods


async def test_the_route_label_under_a_root_path_is_not_doubled(service: Service) -> None:
    """Behind a proxy (`uvicorn --root-path /ops`) or mounted in another app, the route
    label holds the prefix at most once. (It used to be `/ops/ops/api/v1/health`.)"""
    async with client_for(create_app(service=service), root_path="/ops") as client:
        assert (await client.get("/ops/api/v1/health")).status_code == 200
        labels = route_labels((await client.get("/ops/metrics")).text)
    routes = {route for _, route in labels}
    assert not any(route.startswith("/ops/ops") for route in routes), routes
    assert routes & {"/api/v1/health", "/ops/api/v1/health"}, routes


async def test_the_route_label_when_an_id_equals_a_later_literal_segment(
    client: httpx.AsyncClient,
) -> None:
    """The route label is the route's template even when an id equals a later literal
    segment. (`POST /tasks/cancel/cancel` used to be labelled
    `/api/v1/tasks/cancel/{task_id}`, a route that does not exist.)"""
    await client.post("/api/v1/tasks/cancel/cancel", headers=auth(ADMIN))
    labels = route_labels((await client.get("/metrics")).text)
    assert ("POST", "/api/v1/tasks/{task_id}/cancel") in labels, labels


# --- settings --------------------------------------------------------------------------------


@pytest.mark.usefixtures("_no_ambient_settings")
def test_an_api_key_error_does_not_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start-up error in an API key's settings names `BUTTRESS_API_KEYS`, never the
    key. (A typo in a key's role used to put the key in the error, and so the logs.)"""
    key = "live-key-7f3a9c2e5b"
    monkeypatch.setenv("BUTTRESS_API_KEYS", json.dumps({key: {"owner": "a", "role": "root"}}))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "BUTTRESS_API_KEYS" in str(raised.value)
    assert key.lower() not in str(raised.value).lower()


@pytest.mark.usefixtures("_no_ambient_settings")
def test_an_infinite_count_window_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`BUTTRESS_BREAKERS__OPENAI__WINDOW=inf` is a ConfigurationError naming the
    variable. (The OverflowError from `int(inf)` used to escape `load_settings`.)"""
    monkeypatch.setenv("BUTTRESS_BREAKERS__OPENAI__WINDOW", "inf")
    with pytest.raises(ConfigurationError, match="BUTTRESS_BREAKERS__OPENAI__WINDOW"):
        load_settings()


@pytest.mark.usefixtures("_no_ambient_settings")
def test_an_error_in_a_union_setting_names_the_real_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An invalid `int | float` setting names its own variable. (It used to name ones
    that don't exist: `BUTTRESS_BREAKERS__OPENAI__WINDOW__INT`, `…__WINDOW__FLOAT`.)"""
    monkeypatch.setenv("BUTTRESS_BREAKERS__OPENAI__WINDOW", "wide")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert "BUTTRESS_BREAKERS__OPENAI__WINDOW:" in message, message
    assert "WINDOW__" not in message, message


# --- log redaction ---------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(level="INFO", format="json", stream=stream)
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_secrets_in_header_pairs_are_redacted(log_stream: io.StringIO) -> None:
    """Secrets in (name, value) header pairs, as in ASGI `scope["headers"]` or httpx
    `headers.raw`, are redacted in the logs. (They used to be written out as is.)"""
    logging.getLogger("app").info(
        "request",
        extra={
            "headers": [
                (b"authorization", b"Basic YWxpY2U6aHVudGVyMg=="),
                ("x-api-key", "k3y-7f3a9c2e5b1d"),
            ]
        },
    )
    output = log_stream.getvalue()
    assert "YWxpY2U6aHVudGVyMg" not in output, output
    assert "k3y-7f3a9c2e5b1d" not in output, output


def test_plural_secret_keys_are_redacted(log_stream: io.StringIO) -> None:
    """Values under plural secret keys (`api_keys`, `secrets`, `passwords`) are
    redacted like the singular ones. (They used to be written out.)"""
    logging.getLogger("app").info(
        "loaded",
        extra={
            "api_keys": ["k3y-0a1b2c3d4e5f"],
            "secrets": {"stripe": "plain-value-1"},
            "passwords": ["plain-value-2"],
        },
    )
    output = log_stream.getvalue()
    for leaked in ("k3y-0a1b2c3d4e5f", "plain-value-1", "plain-value-2"):
        assert leaked not in output, output

"""The fixtures of the ops API tests: ``make_service``, ``service`` and ``client``.
A test module loads them with ``pytest_plugins = ["webfixtures"]``. Not a
tests/web/conftest.py: with no packages under tests/, mypy would see two modules
named ``conftest``, so tests/conftest.py stays the only one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from webkit import KEYS, MakeService, client_for

from buttress.clock import ManualClock
from buttress.config import load_settings
from buttress.resilience import Registry
from buttress.web import Service, create_app


@pytest.fixture
def make_service(tmp_path: Path, clock: ManualClock) -> MakeService:
    """``make_service(**overrides)``: a Service over a temporary SQLite queue with
    ``webkit.KEYS`` and the tasks ``echo`` and ``explode``, its settings updated by
    ``overrides``. The test stops it."""

    def make(**overrides: Any) -> Service:
        settings = load_settings(
            **{
                "queue_url": f"sqlite:///{tmp_path}/queue.db",
                "worker": False,
                "api_keys": KEYS,
                "_env_file": None,
                **overrides,
            }
        )
        service = Service(settings, registry=Registry(), clock=clock)

        @service.queue.task(retries=0)
        async def echo(x: int = 0) -> int:
            return x

        @service.queue.task(retries=0)
        async def explode() -> None:
            raise ConnectionError("the upstream said no")

        return service

    return make


@pytest.fixture
async def service(make_service: MakeService) -> AsyncIterator[Service]:
    """The default Service, stopped after the test."""
    svc = make_service()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the ops app over ``service``."""
    async with client_for(create_app(service=service)) as c:
        yield c

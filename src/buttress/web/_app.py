"""The router, the standalone app, and ``install`` for an application's own app.

>>> from buttress.web import create_app
>>> app = create_app()                       # settings from BUTTRESS_* / .env

or, inside an existing FastAPI app::

    from buttress.web import install, router
    app.include_router(router, prefix="/ops")   # /ops/api/v1/...
    install(app, Service(settings, queue=my_queue))
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from buttress._version import __version__
from buttress.config import Settings

# isort: off
# Imported for their endpoints, which join the router in this order, after its
# own probes. FastAPI tries routes one by one, so the most used come first.
from buttress.web import _task_routes  # noqa: F401
from buttress.web import _resilience_routes  # noqa: F401
from buttress.web import _cache_routes  # noqa: F401

# isort: on
from buttress.web._http import RequestMiddleware, install_problem_handlers
from buttress.web._router import router
from buttress.web._service import Service

__all__ = ["create_app", "install", "router"]

log = logging.getLogger("buttress.web")


def install(app: FastAPI, service: Service | None = None) -> None:
    """Give ``app`` the service, problem-details errors and the request middleware.

    The service starts and stops with the app (its in-process worker, if any).
    """
    if service is not None:
        app.state.buttress = service
        _run_with(app, service)
    install_problem_handlers(app)

    def current_service() -> Service | None:
        found: Service | None = getattr(app.state, "buttress", None)
        return found

    app.add_middleware(RequestMiddleware, service=current_service)


def _run_with(app: FastAPI, service: Service) -> None:
    """Start ``service`` after the app's own start-up, stop it before its shutdown."""
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with outer(app) as state:
            await service.start()
            try:
                yield state
            finally:
                await service.stop()

    app.router.lifespan_context = lifespan


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    """The standalone ops app: the router, the middleware, and the service's lifespan."""
    app = FastAPI(
        title="buttress",
        version=__version__,
        description="Operate buttress: breakers, cache, tasks, health and metrics.",
    )
    app.include_router(router)
    install(app, service if service is not None else Service(settings))
    return app

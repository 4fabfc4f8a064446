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

from fastapi import APIRouter, FastAPI, Response

from buttress._version import __version__
from buttress.config import Settings
from buttress.observability import HealthStatus, Metrics
from buttress.web import _cache_routes, _resilience_routes, _task_routes
from buttress.web._auth import ServiceDep
from buttress.web._http import PROBLEM_JSON, RequestMiddleware, install_problem_handlers
from buttress.web._models import ComponentOut, LiveOut, ProblemOut, ReadyOut
from buttress.web._service import Service

__all__ = ["create_app", "install", "router"]

log = logging.getLogger("buttress.web")

_PROBLEM: dict[str, Any] = {
    "model": ProblemOut,
    "description": "RFC 9457 problem details",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}},
}
# Declared for every operation, so the schema tells clients (and schemathesis)
# what an error looks like; it also stands in for FastAPI's own 422 shape.
_ERRORS: dict[int | str, dict[str, Any]] = {"4XX": _PROBLEM, "5XX": _PROBLEM}

api = APIRouter(prefix="/api/v1", responses=_ERRORS)
api.include_router(_resilience_routes.router)
api.include_router(_cache_routes.router)
api.include_router(_task_routes.router)


@api.get("/health", tags=["health"])
async def liveness() -> LiveOut:
    """Liveness: the process answers. No dependencies are checked (see ``/health/ready``)."""
    return LiveOut(status="ok")


@api.get(
    "/health/ready",
    tags=["health"],
    responses={503: {"model": ReadyOut, "description": "A critical component is down"}},
)
async def readiness(service: ServiceDep, response: Response) -> ReadyOut:
    """Readiness: every component checked at once; 503 when the service can't work."""
    report = await service.health.check()
    if report.status is HealthStatus.UNHEALTHY:
        response.status_code = 503
    return ReadyOut(
        status=report.status.value,
        components={
            name: ComponentOut(
                status=c.status.value,
                latency_seconds=c.latency_seconds,
                detail=c.detail,
                error=c.error,
            )
            for name, c in report.components.items()
        },
    )


metrics_router = APIRouter()


@metrics_router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text exposition of every primitive, cache, queue and route."""
    await service.metrics.refresh()
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


router = APIRouter()
"""Everything: ``/api/v1/...`` and ``/metrics``. Include it, then :func:`install`."""
router.include_router(api)
router.include_router(metrics_router)


def install(app: FastAPI, service: Service | None = None) -> None:
    """Give ``app`` the service, problem-details errors and the request middleware.

    The service starts and stops with the app (its in-process worker, if any).
    """
    if service is not None:
        app.state.buttress = service
        _run_with(app, service)
    install_problem_handlers(app)

    def current_metrics() -> Metrics | None:
        found: Service | None = getattr(app.state, "buttress", None)
        return None if found is None else found.metrics

    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=(service.settings.max_body_bytes if service else 1_048_576),
        metrics=current_metrics,
    )


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

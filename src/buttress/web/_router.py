"""The ops API's one router, and its own endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from buttress.observability import HealthStatus
from buttress.web._auth import ServiceDep
from buttress.web._http import PROBLEM_JSON
from buttress.web._models import ComponentOut, LiveOut, ProblemOut, ReadyOut

__all__ = ["API", "router"]

API = "/api/v1"

_PROBLEM: dict[str, Any] = {
    "model": ProblemOut,
    "description": "RFC 9457 problem details",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemOut"}}},
}
# Declared for every operation, so the schema tells clients (and schemathesis)
# what an error looks like; it also stands in for FastAPI's own 422 shape.
_ERRORS: dict[int | str, dict[str, Any]] = {"4XX": _PROBLEM, "5XX": _PROBLEM}

router = APIRouter(responses=_ERRORS)
"""Everything: ``/api/v1/...`` and ``/metrics``. Include it, then :func:`install`.

One router, not one per resource nested in another: FastAPI matches nested
routers level by level on every request, which cost ~45 % of a cheap request's
time. The endpoints here come first, so the probes match at once; the resource
modules add theirs to this router when imported.
"""


@router.get(API + "/health", tags=["health"])
async def liveness() -> LiveOut:
    """Liveness: the process answers. No dependencies are checked (see ``/health/ready``)."""
    return LiveOut(status="ok")


@router.get(
    API + "/health/ready",
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


@router.get(
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

"""``/circuit-breakers``, ``/bulkheads``, ``/rate-limiters``: the resilience primitives."""

from __future__ import annotations

from fastapi import Path

from buttress.errors import AlreadyExistsError, NotFoundError
from buttress.resilience import Bulkhead, CircuitBreaker, RateLimiter
from buttress.web._auth import Admin, Caller, ServiceDep
from buttress.web._models import BreakerIn, BreakerOut, BulkheadOut, RateLimiterOut
from buttress.web._router import API, router

BreakerName = Path(min_length=1, max_length=200)


def _breaker(service: ServiceDep, name: str) -> CircuitBreaker:
    breaker = service.registry.get(name, CircuitBreaker)
    if breaker is None:
        raise NotFoundError(resource="circuit breaker", resource_id=name)
    return breaker


@router.get(API + "/circuit-breakers", tags=["resilience"])
async def list_breakers(service: ServiceDep, _: Caller) -> list[BreakerOut]:
    """Every registered circuit breaker, by name."""
    return [BreakerOut.of(b.metrics()) for b in service.registry.of_type(CircuitBreaker)]


@router.post(API + "/circuit-breakers", status_code=201, tags=["resilience"])
async def register_breaker(body: BreakerIn, service: ServiceDep, _: Admin) -> BreakerOut:
    """Register a breaker from configuration; 409 if the name is taken."""
    if service.registry.get(body.name, CircuitBreaker) is not None:
        raise AlreadyExistsError(f"a circuit breaker named {body.name!r} exists")
    return BreakerOut.of(service.add_breaker(body.name, body).metrics())


@router.get(API + "/circuit-breakers/{name}", tags=["resilience"])
async def get_breaker(service: ServiceDep, _: Caller, name: str = BreakerName) -> BreakerOut:
    return BreakerOut.of(_breaker(service, name).metrics())


@router.post(API + "/circuit-breakers/{name}/reset", tags=["resilience"])
async def reset_breaker(service: ServiceDep, _: Admin, name: str = BreakerName) -> BreakerOut:
    """Close the breaker and clear its counts (also lifts a force-open)."""
    breaker = _breaker(service, name)
    breaker.reset()
    return BreakerOut.of(breaker.metrics())


@router.post(API + "/circuit-breakers/{name}/force-open", tags=["resilience"])
async def force_open_breaker(service: ServiceDep, _: Admin, name: str = BreakerName) -> BreakerOut:
    """Open the breaker until it is reset: every call is rejected (for maintenance)."""
    breaker = _breaker(service, name)
    breaker.force_open()
    return BreakerOut.of(breaker.metrics())


@router.get(API + "/bulkheads", tags=["resilience"])
async def list_bulkheads(service: ServiceDep, _: Caller) -> list[BulkheadOut]:
    return [BulkheadOut.model_validate(b.metrics()) for b in service.registry.of_type(Bulkhead)]


@router.get(API + "/rate-limiters", tags=["resilience"])
async def list_rate_limiters(service: ServiceDep, _: Caller) -> list[RateLimiterOut]:
    return [
        RateLimiterOut.model_validate(r.metrics()) for r in service.registry.of_type(RateLimiter)
    ]

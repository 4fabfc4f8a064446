"""Who is calling: API keys to principals, roles, and the API's own rate limit."""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request

from buttress.config import hash_api_key, is_loopback
from buttress.errors import ForbiddenError, RateLimitedError, UnauthenticatedError
from buttress.web._http import STATE_HEADERS
from buttress.web._service import Service

__all__ = ["Admin", "Caller", "Principal", "get_service"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: the owner its tasks belong to, and its role."""

    owner: str
    role: Literal["admin", "user"]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL = Principal("local", "admin")
"""Everyone, when no API keys are configured (the service then listens on loopback only)."""


async def get_service(request: Request) -> Service:
    """The :class:`Service` of the app serving this request (a dependency)."""
    return service_of(request)


def service_of(request: Request) -> Service:
    """The :class:`Service` of the app serving this request.

    ``create_app`` and ``install`` put one on ``app.state.buttress``; an app that
    only included the router gets one built from the environment on first use.
    """
    state = request.app.state
    service: Service | None = getattr(state, "buttress", None)
    if service is None:
        service = state.buttress = Service()
    return service


def authenticate(
    service: Service, authorization: str | None, client: str | None = None
) -> Principal:
    """The principal an ``Authorization: Bearer <key>`` header from ``client`` stands for."""
    if service.open_access:
        # Everyone is admin, so only this machine may ask, however the app is served.
        if client is not None and not is_loopback(client):
            raise ForbiddenError(
                "no API keys are configured: only local callers may use this service"
            )
        return LOCAL
    if not authorization:
        raise UnauthenticatedError("send an API key in the Authorization header, as a Bearer token")
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise UnauthenticatedError("the Authorization header must hold a Bearer token")
    digest = hash_api_key(key)
    found = None
    # Compare with every stored digest, so the time taken says nothing about which
    # (or whether any) stored key shares a prefix with the one sent.
    for stored, principal in service.principals.items():
        if hmac.compare_digest(stored, digest):
            found = principal
    if found is None:
        raise UnauthenticatedError("the API key is not valid")
    return Principal(found.owner, found.role)


def _limit(request: Request, service: Service, key: str) -> None:
    limiter, limit = service.api_limiter, service.settings.api_rate_limit
    if limiter is None or limit is None:
        return
    decision = limiter.decide(key)
    window = decision.limit * limit.per / limit.rate  # a full burst refills in this long
    request.scope.setdefault("state", {})[STATE_HEADERS] = [
        (b"ratelimit-limit", str(decision.limit).encode()),
        (b"ratelimit-remaining", str(decision.remaining).encode()),
        (b"ratelimit-reset", str(math.ceil(decision.reset_after)).encode()),
        (b"ratelimit-policy", f"{decision.limit};w={math.ceil(window)}".encode()),
    ]
    if not decision.allowed:
        raise RateLimitedError(retry_after=decision.retry_after)


async def current_principal(request: Request) -> Principal:
    """Authenticate the request and charge it to the caller's rate limit.

    A request that fails to authenticate is charged to its client address, so
    guessing keys is as slow as the limit.
    """
    # The service is looked up here, not injected: each nested dependency costs
    # FastAPI a resolution pass on every request.
    service = service_of(request)
    client = request.client.host if request.client else None
    try:
        principal = authenticate(service, request.headers.get("authorization"), client)
    except UnauthenticatedError:
        _limit(request, service, f"client:{client}")
        raise
    _limit(request, service, f"owner:{principal.owner}")
    return principal


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise ForbiddenError("this operation needs the admin role")
    return principal


Caller = Annotated[Principal, Depends(current_principal)]
Admin = Annotated[Principal, Depends(admin_principal)]
ServiceDep = Annotated[Service, Depends(get_service)]

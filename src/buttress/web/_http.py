"""Request plumbing: request ids, Server-Timing, the body limit, metrics, problem details.

One pure ASGI middleware does all of it, because each ``BaseHTTPMiddleware``
layer costs a task and a copy of the response per request; the exception
handlers turn every failure into RFC 9457 ``application/problem+json``.
"""

from __future__ import annotations

import functools
import http
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from buttress.config import DEFAULT_MAX_BODY_BYTES
from buttress.errors import (
    BadRequestError,
    ButtressError,
    Category,
    ConflictError,
    FieldError,
    ForbiddenError,
    GoneError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
    classify_status,
    to_problem,
)
from buttress.observability import current_request_id, reset_request_id, set_request_id

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from buttress.observability import Metrics
    from buttress.web._service import Service

__all__ = ["PROBLEM_JSON", "RequestMiddleware", "install_problem_handlers", "problem_response"]

log = logging.getLogger("buttress.web")

PROBLEM_JSON = "application/problem+json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "<unmatched>"
STATE_HEADERS = "buttress_headers"
"""Key in the request's state of extra response headers (the rate limit's)."""


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` past the limit; an HTTP exception, so FastAPI's body
    parsing lets it through instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413)
        self.limit = limit


def problem_response(
    exc: BaseException,
    headers: dict[str, str] | None = None,
    *,
    problem: dict[str, object] | None = None,
) -> Response:
    """The problem details response for ``exc`` (or its ``problem``, already made),
    with Retry-After when it has a hint."""
    if problem is None:
        problem = to_problem(exc, request_id=current_request_id())
    extra = dict(headers or {})
    if "retry_after" in problem:
        extra["Retry-After"] = str(problem["retry_after"])
    if isinstance(exc, UnauthenticatedError):
        extra["WWW-Authenticate"] = 'Bearer realm="buttress"'
    return Response(
        json.dumps(problem, separators=(",", ":")).encode(),
        status_code=cast(int, problem["status"]),
        media_type=PROBLEM_JSON,
        headers=extra,
    )


def _field_path(location: tuple[Any, ...]) -> str:
    # ("body", "kwargs", "to") → "body.kwargs.to"; list positions as [0].
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _validation_error(exc: RequestValidationError) -> ValidationError:
    errors = [
        FieldError(_field_path(tuple(error.get("loc", ()))), str(error.get("msg", "invalid")))
        for error in exc.errors()
    ]
    return ValidationError(errors=errors)


# The error a framework HTTP exception stands for, by status; others get a class of
# their own (below), so a host app's 409 or 503 keeps its status through install().
_BY_STATUS: dict[int, type[ButtressError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        UnauthenticatedError,
        ForbiddenError,
        NotFoundError,
        MethodNotAllowedError,
        ConflictError,
        GoneError,
        PreconditionFailedError,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
        RateLimitedError,
        InternalError,
        UnavailableError,
    )
}


@functools.cache
def _phrase(status: int) -> str | None:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return None


@functools.cache
def _error_class(status: int) -> type[ButtressError]:
    known = _BY_STATUS.get(status)
    if known is not None:
        return known
    phrase = _phrase(status) or "Error"
    attributes = {
        "code": f"http_{status}",
        "status": status,
        "title": phrase,
        "default_message": phrase.lower(),
        "severity": classify_status(status),
        "category": Category.INTERNAL if status >= 500 else Category.VALIDATION,
    }
    return type(f"Http{status}Error", (ButtressError,), attributes)


def _http_error(exc: StarletteHTTPException) -> ButtressError:
    if isinstance(exc, _BodyTooLarge):
        return PayloadTooLargeError(max_bytes=exc.limit)
    if exc.status_code == 404:
        return NotFoundError("no such resource")
    cls = _error_class(exc.status_code)
    # A 4xx detail was written for the client; a 5xx detail stays in the logs.
    shown = (
        str(exc.detail)
        if exc.status_code < 500 and exc.detail != _phrase(exc.status_code)
        else None
    )
    return cls(shown, detail=None if shown else str(exc.detail))


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error ``app`` raises a problem details response."""

    async def on_buttress_error(request: Request, exc: Exception) -> Response:
        return problem_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(_validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        # Keep Allow on a 405 (and whatever else the framework set).
        return problem_response(_http_error(exc), headers=dict(exc.headers or {}))

    app.add_exception_handler(ButtressError, on_buttress_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class _Exchange:
    """One request's state as it passes through :class:`RequestMiddleware`."""

    __slots__ = (
        "limit",
        "receive",
        "received",
        "request_id",
        "response_started",
        "scope",
        "send",
        "started",
        "status",
    )

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, limit: int, request_id: str
    ) -> None:
        self.scope, self.receive, self.send, self.limit = scope, receive, send, limit
        self.started = time.perf_counter()
        self.request_id = request_id
        self.status = 500
        self.response_started = False
        self.received = 0

    async def receive_limited(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise _BodyTooLarge(self.limit)
        return message

    async def send_with_headers(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
            self.status = message["status"]
            headers = list(message.get("headers", ()))
            headers.append((b"x-request-id", self.request_id.encode()))
            elapsed = (time.perf_counter() - self.started) * 1000
            headers.append((b"server-timing", f"app;dur={elapsed:.1f}".encode()))
            extra = self.scope.get("state", {}).get(STATE_HEADERS)
            if extra:
                headers.extend(extra)
            message = {**message, "headers": headers}
        await self.send(message)

    async def refuse(self, exc: BaseException, problem: dict[str, object] | None = None) -> None:
        """Answer with the problem for ``exc`` instead of the app's response."""
        response = problem_response(exc, problem=problem)
        response.headers["x-request-id"] = self.request_id
        if isinstance(exc, PayloadTooLargeError):
            response.headers["connection"] = "close"  # the rest of the body is not read
        self.status = response.status_code
        await response(self.scope, self.receive, self.send)


class RequestMiddleware:
    """Per request: the id (``X-Request-ID`` kept or made, bound to the logs and sent
    back), ``Server-Timing``, the body size limit (413), HTTP metrics by route
    template, and a problem response for any error nothing else handled."""

    def __init__(self, app: ASGIApp, *, service: Callable[[], Service | None]) -> None:
        self.app = app
        self.service = service  # looked up per request: an app may get its service late

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service = self.service()
        limit = service.settings.max_body_bytes if service is not None else DEFAULT_MAX_BODY_BYTES
        request_id, declared = _read_headers(scope)
        exchange = _Exchange(scope, receive, send, limit, request_id)
        token = set_request_id(request_id)
        try:
            if declared is not None and declared > limit:
                await exchange.refuse(PayloadTooLargeError(max_bytes=exchange.limit))
            else:
                await self._call(exchange)
        finally:
            reset_request_id(token)
            if service is not None:
                _observe(service.metrics, scope, exchange.status, exchange.started)

    async def _call(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive_limited, exchange.send_with_headers)
        except _BodyTooLarge:
            if exchange.response_started:
                raise
            await exchange.refuse(PayloadTooLargeError(max_bytes=exchange.limit))
        except Exception as exc:
            if exchange.response_started:
                raise  # nothing sensible can be sent now; let the server close it
            problem = to_problem(exc, request_id=exchange.request_id)
            log.error(
                "unhandled error",
                exc_info=exc,
                extra={"error_id": problem["error_id"], "path": exchange.scope.get("path")},
            )
            await exchange.refuse(exc, problem)


def _observe(metrics: Metrics, scope: Scope, status: int, started: float) -> None:
    method = scope["method"]
    metrics.observe_request(
        method if method in _METHODS else "OTHER",  # clients may send any token
        route_template(scope),
        status,
        time.perf_counter() - started,
    )


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope) -> str:
    """The matched route's template, ``/api/v1/tasks/{task_id}``; ``<unmatched>`` if none.

    Labels must be templates: raw paths would grow the series without bound. The
    route knows its own template, but not always the prefixes it was included or
    mounted under, so those are taken from the front of the path.
    """
    template = getattr(scope.get("route"), "path_format", None)
    if not isinstance(template, str):
        return UNMATCHED
    own = template.count("/")
    segments = scope["path"].split("/")
    if ":path}" in template or len(segments) <= own:
        return template  # a {x:path} parameter spans segments: no prefix to recover
    return "/".join(segments[: len(segments) - own]) + template


def _read_headers(scope: Scope) -> tuple[str, int | None]:
    """The request id to use and the declared body length, in one pass."""
    request_id = declared = None
    for name, value in scope["headers"]:
        if name == b"x-request-id" and request_id is None:
            candidate: str = value.decode("latin-1")
            # A malformed id (or an attempt to inject into logs) is replaced.
            request_id = candidate if _REQUEST_ID.fullmatch(candidate) else ""
        elif name == b"content-length" and declared is None:
            declared = int(value) if value.isdigit() else -1
    return (
        request_id or os.urandom(16).hex(),  # as unique as a uuid4, without building one
        declared if declared is not None and declared >= 0 else None,
    )

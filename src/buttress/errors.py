"""Errors: one hierarchy, a severity for any exception, and RFC 9457 problem bodies.

Every error buttress raises is a `ButtressError` with a stable machine `code`, an
HTTP `status`, a `Category`, a `Severity` and a user-safe message:

```
ButtressError                       internal_error          500
├── BadRequestError                 bad_request             400
├── ValidationError                 validation_failed       400
├── UnauthenticatedError            unauthenticated         401
├── ForbiddenError                  forbidden               403
├── NotFoundError                   not_found               404
├── MethodNotAllowedError           method_not_allowed      405
├── ConflictError                   conflict                409
│   └── AlreadyExistsError          already_exists          409
├── GoneError                       gone                    410
├── PreconditionFailedError         precondition_failed     412
├── PayloadTooLargeError            payload_too_large       413
├── UnsupportedMediaTypeError       unsupported_media_type  415
├── RateLimitedError                rate_limited            429
│   └── RateLimitExceeded           rate_limit_exceeded     429
├── QuotaExceededError              quota_exceeded          429
├── OperationCancelledError         cancelled               499
├── InternalError                   internal_error          500
├── ConfigurationError              configuration_error     500
├── DataIntegrityError              data_integrity_error    500
├── SerializationError              serialization_error     500
├── NotImplementedFeatureError      not_implemented         501
├── ExternalServiceError            external_service_error  502
├── UnavailableError                unavailable             503
│   ├── CircuitOpenError            circuit_open            503
│   └── ResourceExhaustedError      resource_exhausted      503
│       └── BulkheadFullError       bulkhead_full           503
├── DependencyFailureError          dependency_failure      503
└── OperationTimeoutError           timeout                 504  (also a builtin TimeoutError)
```

`classify()` gives any exception, buttress's or not, a `Severity`; retry and the
circuit breaker decide with it. `to_problem()` turns any exception into a problem
details body that is safe to send to a client.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import enum
import math
import re
import socket
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "AlreadyExistsError",
    "BadRequestError",
    "BulkheadFullError",
    "ButtressError",
    "Category",
    "CircuitOpenError",
    "ConfigurationError",
    "ConflictError",
    "DataIntegrityError",
    "DependencyFailureError",
    "ExternalServiceError",
    "FieldError",
    "ForbiddenError",
    "GoneError",
    "InternalError",
    "MethodNotAllowedError",
    "NotFoundError",
    "NotImplementedFeatureError",
    "OperationCancelledError",
    "OperationTimeoutError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "RateLimitExceeded",
    "RateLimitedError",
    "ResourceExhaustedError",
    "SerializationError",
    "Severity",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "classify",
    "classify_status",
    "redact",
    "retry_after_of",
    "to_problem",
]


class Severity(enum.Enum):
    """How an error should be handled, from "just retry" to "wake someone up"."""

    TRANSIENT = "transient"
    """Retry soon: a connection reset, a timeout."""
    RECOVERABLE = "recoverable"
    """Retry after a backoff or the server's hint: 429, 502, 503."""
    PERMANENT = "permanent"
    """Retrying cannot help: bad input, most 4xx, a programming error (TypeError...)."""
    CRITICAL = "critical"
    """An operator must act: misconfiguration, data corruption."""


class Category(enum.Enum):
    """What kind of thing went wrong, for dashboards and metrics labels."""

    VALIDATION = "validation"
    AUTHENTICATION = "authentication"
    AUTHORIZATION = "authorization"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    AVAILABILITY = "availability"
    EXTERNAL = "external"
    DEPENDENCY = "dependency"
    CONFIGURATION = "configuration"
    INTERNAL = "internal"
    DATA = "data"
    CANCELLED = "cancelled"


_RETRYABLE = frozenset({Severity.TRANSIENT, Severity.RECOVERABLE})
_CODE_RE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

_E = TypeVar("_E", bound=BaseException)


def _restore(cls: type[_E], args: tuple[object, ...], state: dict[str, Any]) -> _E:
    # Rebuilds a pickled error without calling __init__, whose keyword-only
    # parameters differ per subclass and are not recorded in ``args``.
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _seconds(value: float) -> str:
    """Format seconds for a message: ``12.5``, ``30``, ``0.25``."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


class ButtressError(Exception):
    """Base class of every buttress error.

    `message` is user-safe text that may be shown to a client; `detail` and any
    other keyword arguments (kept in `context`) are for logs only and never reach
    a problem body.

    >>> err = NotFoundError("user not found", detail="SELECT ... returned 0 rows", user_id=42)
    >>> str(err), err.code, err.status, err.context
    ('user not found', 'not_found', 404, {'user_id': 42})
    """

    code: ClassVar[str] = "internal_error"
    """Stable snake_case machine code, unique per class."""
    status: ClassVar[int] = 500
    """HTTP status a problem body for this error carries."""
    category: ClassVar[Category] = Category.INTERNAL
    severity: ClassVar[Severity] = Severity.RECOVERABLE
    title: ClassVar[str] = "Internal Server Error"
    """Short human title of the error type (the problem's ``title``)."""
    default_message: ClassVar[str] = "an internal error occurred"
    """User-safe message used when none is given."""
    retryable: ClassVar[bool] = True
    """Whether retrying may succeed: the severity is transient or recoverable.
    Derived from ``severity`` for every subclass, so ``NotFoundError.retryable``
    reads right on the class too."""

    message: str
    detail: str | None
    context: dict[str, object]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.retryable = cls.severity in _RETRYABLE
        # Fail at import, not in the middle of an incident, when a subclass
        # declares a code or status that cannot appear in a problem body.
        code = cls.__dict__.get("code")
        if code is not None and not (isinstance(code, str) and _CODE_RE.fullmatch(code)):
            msg = f"{cls.__qualname__}.code must be a snake_case string, got {code!r}"
            raise TypeError(msg)
        if not 100 <= cls.status <= 599:
            msg = f"{cls.__qualname__}.status must be an HTTP status (100-599), got {cls.status!r}"
            raise TypeError(msg)

    def __init__(
        self,
        message: str | BaseException | None = None,
        *,
        detail: str | None = None,
        **context: object,
    ) -> None:
        # Kept cheap on purpose: an open circuit builds one of these per rejected
        # call, so the error id is only generated when someone asks for it.
        if message is not None and not isinstance(message, str):
            # `raise InternalError(exc) from exc`: the wrapped object's text is
            # internal, so it goes to `detail` and the client sees the default.
            detail = detail if detail is not None else repr(message)
            message = None
        if message is None:
            message = self.default_message
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.context = context

    @property
    def error_id(self) -> str:
        """Unique id of this occurrence (32 hex digits), made on first access."""
        state = self.__dict__
        try:
            error_id: str = state["_error_id"]
        except KeyError:
            # setdefault is atomic, so two threads racing here agree on one id.
            error_id = state.setdefault("_error_id", uuid.uuid4().hex)
        return error_id

    def problem_extensions(self) -> dict[str, object]:
        """Extra members this error adds to its problem body.

        Subclasses override this to whitelist user-safe data; the default adds none.
        """
        return {}

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, dict(self.__dict__)))


# --- client errors (4xx) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field: its name and what is wrong with it.

    It deliberately has no place for the offending value, which may be a secret.
    """

    field: str
    message: str


class BadRequestError(ButtressError):
    """The request is malformed: unparsable body, missing header, bad syntax."""

    code = "bad_request"
    status = 400
    category = Category.VALIDATION
    severity = Severity.PERMANENT
    title = "Bad Request"
    default_message = "the request is malformed"


class ValidationError(ButtressError):
    """The request is well-formed but some fields are invalid.

    >>> err = ValidationError(errors=[FieldError("email", "must contain '@'")])
    >>> str(err)
    "invalid field: 'email'"
    """

    code = "validation_failed"
    status = 400
    category = Category.VALIDATION
    severity = Severity.PERMANENT
    title = "Validation Failed"
    default_message = "the request is invalid"

    errors: list[FieldError]

    def __init__(
        self,
        message: str | None = None,
        *,
        errors: Iterable[FieldError] | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.errors = list(errors) if errors is not None else []
        if message is None and self.errors:
            names = ", ".join(f"{e.field!r}" for e in self.errors)
            message = f"invalid field{'s' if len(self.errors) > 1 else ''}: {names}"
        super().__init__(message, detail=detail, **context)

    def problem_extensions(self) -> dict[str, object]:
        return {"errors": [{"field": e.field, "message": e.message} for e in self.errors]}


class UnauthenticatedError(ButtressError):
    """No credentials, or credentials that are not valid."""

    code = "unauthenticated"
    status = 401
    category = Category.AUTHENTICATION
    severity = Severity.PERMANENT
    title = "Unauthorized"
    default_message = "authentication is required"


class ForbiddenError(ButtressError):
    """The caller is known but not allowed to do this."""

    code = "forbidden"
    status = 403
    category = Category.AUTHORIZATION
    severity = Severity.PERMANENT
    title = "Forbidden"
    default_message = "you are not allowed to perform this action"


class NotFoundError(ButtressError):
    """The resource does not exist (or the caller may not know it does).

    `resource_id` is kept for logs only: ids can be emails or tokens, so it is not
    put into the default message.
    """

    code = "not_found"
    status = 404
    category = Category.NOT_FOUND
    severity = Severity.PERMANENT
    title = "Not Found"
    default_message = "the resource was not found"

    def __init__(
        self,
        message: str | None = None,
        *,
        resource: str | None = None,
        resource_id: object = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.resource = resource
        self.resource_id = resource_id
        if message is None and resource is not None:
            message = f"{resource} not found"
        super().__init__(message, detail=detail, **context)


class MethodNotAllowedError(ButtressError):
    """The resource exists but does not support this HTTP method."""

    code = "method_not_allowed"
    status = 405
    category = Category.VALIDATION
    severity = Severity.PERMANENT
    title = "Method Not Allowed"
    default_message = "this method is not allowed on this resource"


class ConflictError(ButtressError):
    """The request conflicts with the resource's current state."""

    code = "conflict"
    status = 409
    category = Category.CONFLICT
    # A blind retry sends the same conflicting request; the caller must re-read first.
    severity = Severity.PERMANENT
    title = "Conflict"
    default_message = "the request conflicts with the current state of the resource"


class AlreadyExistsError(ConflictError):
    """Creating something that already exists."""

    code = "already_exists"
    title = "Already Exists"
    default_message = "the resource already exists"


class GoneError(ButtressError):
    """The resource existed and was removed for good."""

    code = "gone"
    status = 410
    category = Category.NOT_FOUND
    severity = Severity.PERMANENT
    title = "Gone"
    default_message = "the resource is no longer available"


class PreconditionFailedError(ButtressError):
    """A conditional request (If-Match, If-Unmodified-Since) did not hold."""

    code = "precondition_failed"
    status = 412
    category = Category.CONFLICT
    severity = Severity.PERMANENT
    title = "Precondition Failed"
    default_message = "a precondition of the request did not hold"


class PayloadTooLargeError(ButtressError):
    """The request body is larger than the server accepts."""

    code = "payload_too_large"
    status = 413
    category = Category.VALIDATION
    severity = Severity.PERMANENT
    title = "Payload Too Large"
    default_message = "the request body is too large"

    def __init__(
        self,
        message: str | None = None,
        *,
        max_bytes: int | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.max_bytes = max_bytes
        if message is None and max_bytes is not None:
            message = f"the request body is larger than the limit of {max_bytes} bytes"
        super().__init__(message, detail=detail, **context)


class UnsupportedMediaTypeError(ButtressError):
    """The request body's content type is not one the server reads."""

    code = "unsupported_media_type"
    status = 415
    category = Category.VALIDATION
    severity = Severity.PERMANENT
    title = "Unsupported Media Type"
    default_message = "the request's content type is not supported"


class RateLimitedError(ButtressError):
    """Too many requests; wait `retry_after` seconds (when known) and try again."""

    code = "rate_limited"
    status = 429
    category = Category.RATE_LIMIT
    severity = Severity.RECOVERABLE
    title = "Too Many Requests"
    default_message = "too many requests"

    retry_after: float | None

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.retry_after = retry_after
        if message is None and retry_after is not None:
            message = f"too many requests; retry in {_seconds(retry_after)}s"
        super().__init__(message, detail=detail, **context)


class RateLimitExceeded(RateLimitedError):
    """A buttress `RateLimiter` refused a call.

    The limited `key` is kept on the error for logs but left out of the message:
    keys are often API keys, user ids or client addresses.
    """

    code = "rate_limit_exceeded"
    title = "Rate Limit Exceeded"

    retry_after: float

    def __init__(self, key: str, *, retry_after: float, limiter: str | None = None) -> None:
        self.key = key
        self.limiter = limiter
        scope = f"rate limit {limiter!r}" if limiter is not None else "rate limit"
        super().__init__(
            f"{scope} exceeded; retry in {_seconds(retry_after)}s", retry_after=retry_after
        )


class QuotaExceededError(ButtressError):
    """A usage quota is spent; calls fail until it resets in `retry_after` seconds."""

    code = "quota_exceeded"
    status = 429
    category = Category.RATE_LIMIT
    # Unlike a rate limit, retrying within the backoff of a retry loop cannot
    # help: the quota only comes back at its reset, often hours away.
    severity = Severity.PERMANENT
    title = "Quota Exceeded"
    default_message = "the usage quota is exhausted"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.retry_after = retry_after
        if message is None and retry_after is not None:
            message = f"the usage quota is exhausted; it resets in {_seconds(retry_after)}s"
        super().__init__(message, detail=detail, **context)


class OperationCancelledError(ButtressError):
    """The operation was cancelled (by the client going away, or by a shutdown)."""

    code = "cancelled"
    # 499 is nginx's "client closed request": nobody is left to read this body,
    # but logs and metrics still count it apart from real failures.
    status = 499
    category = Category.CANCELLED
    severity = Severity.PERMANENT
    title = "Request Cancelled"
    default_message = "the operation was cancelled"


# --- server errors (5xx) ---------------------------------------------------------


class InternalError(ButtressError):
    """Something unexpected went wrong on the server (a bug)."""

    code = "internal_error"
    status = 500
    category = Category.INTERNAL
    severity = Severity.RECOVERABLE
    title = "Internal Server Error"
    default_message = "an internal error occurred"


class ConfigurationError(ButtressError):
    """The service is misconfigured; an operator has to fix it."""

    code = "configuration_error"
    status = 500
    category = Category.CONFIGURATION
    severity = Severity.CRITICAL
    title = "Configuration Error"
    default_message = "the service is not configured correctly"


class DataIntegrityError(ButtressError):
    """Stored data is corrupt or breaks an invariant; an operator has to look."""

    code = "data_integrity_error"
    status = 500
    category = Category.DATA
    severity = Severity.CRITICAL
    title = "Data Integrity Error"
    default_message = "stored data failed an integrity check"


class SerializationError(ButtressError):
    """A value buttress stores (cache entry, task payload) cannot be encoded or decoded.

    This is a 500, not a 400: the value comes from the application or the store,
    not from the client. A client's unreadable body is a `BadRequestError`.
    """

    code = "serialization_error"
    status = 500
    category = Category.DATA
    severity = Severity.PERMANENT
    title = "Serialization Error"
    default_message = "a value could not be serialized"


class NotImplementedFeatureError(ButtressError):
    """The feature exists in the API but this server does not implement it."""

    code = "not_implemented"
    status = 501
    category = Category.INTERNAL
    severity = Severity.PERMANENT
    title = "Not Implemented"
    default_message = "this feature is not implemented"


class ExternalServiceError(ButtressError):
    """A third-party service (an API the backend calls) failed or answered badly.

    `service` names it and is shown to clients; `upstream_status` is for logs.
    """

    code = "external_service_error"
    status = 502
    category = Category.EXTERNAL
    severity = Severity.RECOVERABLE
    title = "Bad Gateway"
    default_message = "an external service failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        service: str,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.service = service
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        if message is None:
            message = f"external service {service!r} failed"
        super().__init__(message, detail=detail, **context)

    def problem_extensions(self) -> dict[str, object]:
        return {"service": self.service}


class UnavailableError(ButtressError):
    """The service cannot take this request now; try again after `retry_after`."""

    code = "unavailable"
    status = 503
    category = Category.AVAILABILITY
    severity = Severity.RECOVERABLE
    title = "Service Unavailable"
    default_message = "the service is temporarily unavailable"

    retry_after: float | None

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, detail=detail, **context)


class CircuitOpenError(UnavailableError):
    """A circuit breaker is open and rejected the call without making it.

    >>> str(CircuitOpenError("payments", retry_after=12.5))
    "circuit 'payments' is open; retry in 12.5s"
    """

    code = "circuit_open"
    title = "Circuit Open"

    retry_after: float

    def __init__(self, name: str, *, retry_after: float) -> None:
        self.name = name
        when = (
            f"retry in {_seconds(retry_after)}s"
            if math.isfinite(retry_after)
            else "it was forced open and stays open until reset"
        )
        super().__init__(f"circuit {name!r} is open; {when}", retry_after=retry_after)


class ResourceExhaustedError(UnavailableError):
    """A bounded resource (pool, slots, memory budget) has nothing left to give."""

    code = "resource_exhausted"
    title = "Resource Exhausted"
    default_message = "a server resource is exhausted"


class BulkheadFullError(ResourceExhaustedError):
    """A bulkhead has every slot busy and its queue full, or a wait for a slot timed out."""

    code = "bulkhead_full"
    title = "Bulkhead Full"

    def __init__(
        self, name: str, *, max_concurrent: int, max_queue: int, timed_out: bool = False
    ) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.timed_out = timed_out
        if timed_out:
            message = (
                f"bulkhead {name!r} is full: timed out waiting for one of {max_concurrent} slots"
            )
        else:
            message = (
                f"bulkhead {name!r} is full: {max_concurrent} calls running and {max_queue} waiting"
            )
        super().__init__(message)


class DependencyFailureError(ButtressError):
    """Infrastructure the service depends on (database, cache, queue) is failing.

    It answers 503 rather than WebDAV's 424: to a client, the service is
    unavailable and may recover, which is what 503 tells it. Third-party APIs
    use `ExternalServiceError` (502) instead.
    """

    code = "dependency_failure"
    status = 503
    category = Category.DEPENDENCY
    severity = Severity.RECOVERABLE
    title = "Dependency Failure"
    default_message = "a service dependency is failing"

    def __init__(
        self,
        message: str | None = None,
        *,
        dependency: str,
        retry_after: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.dependency = dependency
        self.retry_after = retry_after
        if message is None:
            message = f"dependency {dependency!r} is failing"
        super().__init__(message, detail=detail, **context)


class OperationTimeoutError(ButtressError, TimeoutError):
    """An operation ran past its deadline; `except TimeoutError` catches it too.

    >>> str(OperationTimeoutError(seconds=2.5))
    'operation timed out after 2.5s'
    """

    code = "timeout"
    status = 504
    category = Category.TIMEOUT
    severity = Severity.TRANSIENT
    title = "Operation Timed Out"
    default_message = "the operation timed out"

    def __init__(
        self,
        message: str | None = None,
        *,
        seconds: float | None = None,
        detail: str | None = None,
        **context: object,
    ) -> None:
        self.seconds = seconds
        if message is None and seconds is not None:
            message = f"operation timed out after {_seconds(seconds)}s"
        super().__init__(message, detail=detail, **context)


# --- classification --------------------------------------------------------------


def classify_status(status: int) -> Severity:
    """The severity of an HTTP response status.

    429, 502 and 503 are recoverable (the server asks to come back later), as
    are other 5xx but 500 and 504, which are transient; 501, 505 and every other
    4xx are permanent: the same request would fail the same way. A status below
    400 is not an error: asking again gives the same answer, so it is permanent
    too.

    >>> classify_status(503), classify_status(404)
    (<Severity.RECOVERABLE: 'recoverable'>, <Severity.PERMANENT: 'permanent'>)
    """
    if status in (429, 502, 503):
        return Severity.RECOVERABLE
    if status in (500, 504):
        return Severity.TRANSIENT
    if status in (501, 505):
        return Severity.PERMANENT
    if 500 <= status <= 599:
        return Severity.RECOVERABLE
    if 100 <= status <= 499:
        return Severity.PERMANENT
    msg = f"status must be an HTTP status code between 100 and 599, got {status!r}"
    raise ValueError(msg)


def _as_status(value: object) -> int | None:
    # bool is an int but never a status; HTTPStatus (an IntEnum) is welcome.
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return int(value)
    return None


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (httpx, requests, aiohttp, urllib)."""
    try:
        response = getattr(exc, "response", None)
        if response is not None:
            status = _as_status(getattr(response, "status_code", None))
            if status is None:
                status = _as_status(getattr(response, "status", None))
            if status is not None:
                return status
        status = _as_status(getattr(exc, "status_code", None))
        if status is None:
            status = _as_status(getattr(exc, "status", None))
    except Exception:
        # A foreign property may raise anything, and classify() must not.
        return None
    return status


_Table = list[tuple[tuple[type[BaseException], ...], Severity]]


def _types(module: object, *names: str) -> tuple[type[BaseException], ...]:
    # getattr with a default: a module still importing, or another version of
    # it, may lack some names; those rows are skipped rather than crashing.
    found = (getattr(module, name, None) for name in names)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _redis_table() -> _Table:
    exceptions = sys.modules.get("redis.exceptions")
    if exceptions is None:
        return []
    # Order matters: AuthenticationError subclasses redis's ConnectionError and
    # ReadOnlyError subclasses ResponseError, so specific rows come first.
    return [
        (
            _types(
                exceptions,
                "AuthenticationError",
                "AuthorizationError",
                "NoPermissionError",
                "AuthenticationWrongNumberOfArgsError",
            ),
            Severity.CRITICAL,
        ),
        # A replica during failover, an OOM server that may evict, an outage
        # of an external credential provider: give them a backoff.
        (
            _types(exceptions, "ReadOnlyError", "OutOfMemoryError", "ExternalAuthProviderError"),
            Severity.RECOVERABLE,
        ),
        (
            _types(
                exceptions,
                "ConnectionError",
                "TimeoutError",
                "BusyLoadingError",
                "TryAgainError",
                "ClusterDownError",
                "AskError",  # MovedError too: a slot migrating during resharding
                "SlotNotCoveredError",
                "WatchError",  # an optimistic transaction lost a race: run it again
            ),
            Severity.TRANSIENT,
        ),
        (_types(exceptions, "RedisError", "RedisClusterException"), Severity.PERMANENT),
    ]


def _httpx_table() -> _Table:
    httpx = sys.modules.get("httpx")
    if httpx is None:
        return []
    return [
        (
            _types(httpx, "TimeoutException", "NetworkError", "RemoteProtocolError"),
            Severity.TRANSIENT,
        ),
        (_types(httpx, "ProxyError"), Severity.RECOVERABLE),
        (
            _types(
                httpx,
                "InvalidURL",
                "UnsupportedProtocol",
                "DecodingError",
                "TooManyRedirects",
                "LocalProtocolError",
                "StreamError",
                "CookieConflict",
            ),
            Severity.PERMANENT,
        ),
        # Any other transport failure (a custom transport's) is the network's.
        (_types(httpx, "TransportError"), Severity.TRANSIENT),
    ]


def _stdlib_table() -> _Table:
    table: _Table = [
        # Never retry a cancellation or an exit: that would fight the caller.
        (
            (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit),
            Severity.PERMANENT,
        ),
        ((MemoryError, SystemError, RecursionError), Severity.CRITICAL),
        # EOFError covers asyncio.IncompleteReadError: the peer closed mid-read.
        (
            (ConnectionError, TimeoutError, BlockingIOError, InterruptedError, EOFError),
            Severity.TRANSIENT,
        ),
        (
            (
                FileNotFoundError,
                PermissionError,
                IsADirectoryError,
                NotADirectoryError,
                FileExistsError,
            ),
            Severity.PERMANENT,
        ),
        # Before OSError: ssl.SSLCertVerificationError and io.UnsupportedOperation
        # are both OSError and ValueError, and retrying them cannot help.
        (
            (
                ValueError,
                TypeError,
                LookupError,
                AttributeError,
                NotImplementedError,
                ArithmeticError,
                AssertionError,
                ImportError,
                SyntaxError,
                NameError,
                StopIteration,
                StopAsyncIteration,
            ),
            Severity.PERMANENT,
        ),
    ]
    futures = sys.modules.get("concurrent.futures")
    if futures is not None:
        # Unlike asyncio's, this CancelledError is an Exception; still never retried.
        table.append((_types(futures, "CancelledError"), Severity.PERMANENT))
    table += [
        ((OSError,), Severity.RECOVERABLE),
        # An unknown library's error still counts as a failure and is retried.
        ((Exception,), Severity.RECOVERABLE),
        ((BaseException,), Severity.PERMANENT),
    ]
    return table


def _classify_type(cls: type[BaseException]) -> Severity:
    # Libraries first: their errors sometimes also subclass a builtin (redis's
    # LockError is a ValueError) and the library's meaning is the precise one.
    for table in (_redis_table(), _httpx_table(), _stdlib_table()):
        for types, severity in table:
            if types and issubclass(cls, types):
                return severity
    return Severity.PERMANENT  # unreachable: BaseException matches everything


_SEVERITY_RANK = {
    Severity.TRANSIENT: 0,
    Severity.RECOVERABLE: 1,
    Severity.PERMANENT: 2,
    Severity.CRITICAL: 3,
}
_TYPE_CACHE: dict[type[BaseException], Severity] = {}
_TYPE_CACHE_MAX = 1024  # bounded, in case some code makes exception types on the fly


def classify(exc: BaseException) -> Severity:
    """How to treat an exception: retry it soon, retry later, give up, or alert.

    Knows buttress errors, the standard library, HTTP statuses carried by any
    exception (`.response.status_code`, `.status_code`, `.status`), and httpx and
    redis-py errors when those are imported. An unknown `Exception` is
    recoverable; an exception group is as severe as its worst member.

    >>> classify(ConnectionResetError())
    <Severity.TRANSIENT: 'transient'>
    >>> classify(ValueError("bad input"))
    <Severity.PERMANENT: 'permanent'>
    >>> classify(CircuitOpenError("payments", retry_after=5))
    <Severity.RECOVERABLE: 'recoverable'>
    """
    if isinstance(exc, ButtressError):
        return exc.severity
    status = _status_of(exc)
    if status is not None:
        return classify_status(status)
    cls = type(exc)
    severity = _TYPE_CACHE.get(cls)
    if severity is not None:
        return severity
    # Answers that depend on the instance, not only the type, are never cached.
    if isinstance(exc, BaseExceptionGroup):
        # Walked with a stack, not recursion: groups may nest arbitrarily deep.
        leaves: list[BaseException] = []
        pending = list(exc.exceptions)
        while pending:
            inner = pending.pop()
            if isinstance(inner, BaseExceptionGroup):
                pending.extend(inner.exceptions)
            else:
                leaves.append(inner)
        return max(
            (classify(leaf) for leaf in leaves),
            key=_SEVERITY_RANK.__getitem__,
            default=Severity.PERMANENT,
        )
    if isinstance(exc, socket.gaierror):
        # EAI_AGAIN is "temporary failure in name resolution"; other lookup
        # failures (an unknown name) may be a DNS change still propagating.
        return Severity.TRANSIENT if exc.errno == socket.EAI_AGAIN else Severity.RECOVERABLE
    severity = _classify_type(cls)
    if len(_TYPE_CACHE) >= _TYPE_CACHE_MAX:
        _TYPE_CACHE.clear()
    _TYPE_CACHE[cls] = severity
    return severity


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the exception asks the caller to wait before trying again, if it says.

    Reads a ``retry_after`` attribute (every buttress error that has one), else
    an HTTP ``Retry-After`` header on ``exc.response`` (httpx, requests), in
    seconds or as an HTTP date. Returns None when there is no usable hint.

    >>> retry_after_of(RateLimitedError(retry_after=2.5))
    2.5
    """
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool):
        return None if math.isnan(hint) else max(0.0, float(hint))
    try:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        value = headers.get("retry-after") if headers is not None else None
    except Exception:
        return None
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


# --- redaction -------------------------------------------------------------------

_MASK = "***"

# scheme://user:password@host -> keep the user, mask the password. The password
# may itself contain "@", so it runs to the last "@" before the path.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]{0,30}://[^\s:/?#@]*:)[^\s/?#]*(?=@)", re.IGNORECASE
)
# Only "Bearer" on its own: "basic" and "token" are ordinary words in prose,
# and "Authorization: Basic ..." is caught by the key-value rule below.
_BEARER = re.compile(r"\b(?P<scheme>bearer)\s+[\w\-.~+/]+=*", re.IGNORECASE)
# JSON Web Tokens: three base64url segments, the first of which encodes '{"'.
# The lookbehind (not \b) keeps a match from starting inside a run of [\w-]:
# with \b, "eyJ-eyJ-..." would restart at every "-" and take quadratic time.
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]*\.[\w-]+\.[\w-]*")
# Well-known token formats that are secrets wherever they stand.
_KNOWN_TOKENS = re.compile(
    r"(?<![\w-])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk_(?:live|test)_[A-Za-z0-9]{10,}|rk_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|whsec_[A-Za-z0-9+/=_-]{8,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})"
)
_SECRET_WORDS = (
    r"passw(?:or)?d|passphrase|pass|pwd|secret|token|api[_\-]?key|key|sig|signature"
    r"|authori[sz]ation|auth|credentials?|private[_\-]?key|access[_\-]?key"
    r"|session(?:[_\-]?id)?|sid|cookie"
)
# key=value, key: value, "key": "value", ('key', 'value'), where the key ends in a
# secret word (so "password_min_length" or "max_tokens" are left alone). Every
# repetition around the key is bounded and a key must start a word, so a long
# hostile message costs linear time rather than backtracking for seconds.
_SECRET_PAIR = re.compile(
    r"(?<![\w.\-])"
    r"(?P<key>\\?[\"']?[\w.\-]{0,100}?"
    rf"(?:{_SECRET_WORDS})(?![\w])"
    r"\\?[\"']?\s{0,4}(?:[:=]|(?<=[\"']),)\s{0,4})"
    r"(?P<value>b?\"(?:[^\"\\\n]|\\.)*\"|b?'(?:[^'\\\n]|\\.)*'"
    r"|\\\"(?:[^\"\\\n])*\\\""
    r"|(?:(?:bearer|basic|token|digest|negotiate)\s+)?[^\s,;&\"'()\[\]{}<>]+)",
    re.IGNORECASE,
)
# A cookie header holds many name=value pairs; all of them are secrets.
_COOKIE = re.compile(r"(?P<key>\b(?:set-)?cookie\s{0,4}[:=]\s{0,4})[^\r\n]+", re.IGNORECASE)
# Command-line flags: --password hunter2
_FLAG = re.compile(
    rf"(?P<key>--[\w-]{{0,60}}?(?:{_SECRET_WORDS})(?![\w])(?:\s+|=))(?P<value>[^\s\"']+)",
    re.IGNORECASE,
)


def _mask_pair(match: re.Match[str]) -> str:
    value = match["value"]
    prefix = "b" if value[:1] in "bB" and value[1:2] in "\"'" else ""
    quoted = value[len(prefix) :]
    if quoted.startswith('\\"'):
        quote = '\\"'
    elif quoted[:1] in "\"'":
        quote = quoted[0]
    else:
        quote = ""
    return f"{match['key']}{prefix}{quote}{_MASK}{quote}"


# Every pattern above needs one of these (a pair or a URL ":", "=" or ",", a flag
# "--", a token its prefix), so ASCII text with none of them is returned at once:
# most text logged is short words and ids, and the full pass costs ~15 us.
# ASCII only, as IGNORECASE also folds some other letters ("\u212a" is "k").
_MAYBE_SECRET = re.compile(
    r"[:=,]|--|bearer|cookie|eyj|xox|akia|(?:gh[pousr]|github_pat|sk|rk|whsec)_", re.IGNORECASE
)
# Timestamps and numbers have ":" but no letters to spell a secret with.
_INERT = re.compile(r"[\d\s\-:.+TZ]*")


def redact(text: str) -> str:
    """Mask secrets a developer may have pasted into a message.

    Masks URL passwords, `Bearer` tokens, JSON Web Tokens, well-known token
    formats (GitHub, Stripe, Slack, AWS access key ids, webhook signing secrets),
    cookies, `--password x`
    flags and the values of `key=value`, `key: value` or `('key', 'value')` pairs
    whose key ends in a secret word (password, token, api_key, secret, auth,
    session, ...), ignoring case. It is a safety net: a secret with no telling
    key or format around it cannot be recognised, so user-facing messages should
    not hold secrets to begin with.

    >>> redact("redis://app:hunter2@cache:6379/0 refused password=hunter2")
    'redis://app:***@cache:6379/0 refused password=***'
    """
    if text.isascii() and (_INERT.fullmatch(text) or not _MAYBE_SECRET.search(text)):
        return text
    return _redact_all(text)


def _redact_all(text: str) -> str:
    text = _URL_CREDENTIALS.sub(rf"\g<head>{_MASK}", text)
    text = _BEARER.sub(rf"\g<scheme> {_MASK}", text)
    text = _JWT.sub(_MASK, text)
    text = _KNOWN_TOKENS.sub(_MASK, text)
    text = _COOKIE.sub(rf"\g<key>{_MASK}", text)
    text = _FLAG.sub(rf"\g<key>{_MASK}", text)
    return _SECRET_PAIR.sub(_mask_pair, text)


def _redact_json(value: object, depth: int = 0) -> object:
    """Redact every string in an extension value; anything else becomes text or a
    plain JSON value, so no object's own ``str`` can smuggle a secret out."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if depth > 20:
        return _MASK
    if isinstance(value, dict):
        return {redact(str(key)): _redact_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_json(item, depth + 1) for item in value]
    return redact(str(value))


# --- problem details -------------------------------------------------------------


def to_problem(exc: BaseException, *, request_id: str | None = None) -> dict[str, object]:
    """An RFC 9457 problem details body for an exception, safe to send to a client.

    A buttress error contributes its code, status, title, redacted message and
    whitelisted extras (`errors`, `service`, `retry_after`). Any other exception
    becomes a generic 500 `internal_error` (a builtin `TimeoutError` becomes a
    504 `timeout`); its text, `detail` and context never appear. Log the body's
    `error_id` alongside the exception to connect the two.

    >>> problem = to_problem(NotFoundError(resource="user"), request_id="req-1")
    >>> problem["type"], problem["status"], problem["detail"], problem["request_id"]
    ('urn:buttress:error:not_found', 404, 'user not found', 'req-1')
    >>> to_problem(KeyError("secret-key"))["detail"]
    'an internal error occurred'
    """
    if isinstance(exc, ButtressError):
        error, retryable = exc, exc.retryable
    else:
        error = OperationTimeoutError() if isinstance(exc, TimeoutError) else InternalError()
        retryable = classify(exc) in _RETRYABLE
    error_id = error.error_id
    problem: dict[str, object] = {
        "type": f"urn:buttress:error:{error.code}",
        "title": error.title,
        "status": error.status,
        "detail": redact(error.message),
        "instance": f"urn:uuid:{uuid.UUID(hex=error_id)}",
        "code": error.code,
        "error_id": error_id,
    }
    if request_id is not None:
        problem["request_id"] = request_id
    problem["retryable"] = retryable
    retry_after = getattr(error, "retry_after", None)
    if (
        isinstance(retry_after, int | float)
        and not isinstance(retry_after, bool)
        and math.isfinite(retry_after)
    ):
        # Like the Retry-After header: whole seconds, rounded up so a client
        # that obeys it never comes back too early.
        problem["retry_after"] = max(0, math.ceil(retry_after))
    for key, value in error.problem_extensions().items():
        # Extensions may add members but never replace the standard ones.
        problem.setdefault(key, _redact_json(value))
    return problem

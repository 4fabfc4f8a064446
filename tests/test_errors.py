"""Tests for buttress.errors: the hierarchy, classify(), redact() and to_problem()."""

from __future__ import annotations

import asyncio
import errno
import http
import inspect
import json
import pickle
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable

import httpx
import hypothesis
import pytest
import redis.exceptions

from buttress import errors
from buttress.errors import (
    AlreadyExistsError,
    BadRequestError,
    BulkheadFullError,
    ButtressError,
    Category,
    CircuitOpenError,
    ConfigurationError,
    ConflictError,
    DataIntegrityError,
    DependencyFailureError,
    ExternalServiceError,
    FieldError,
    ForbiddenError,
    GoneError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    NotImplementedFeatureError,
    OperationCancelledError,
    OperationTimeoutError,
    PayloadTooLargeError,
    PreconditionFailedError,
    QuotaExceededError,
    RateLimitedError,
    RateLimitExceeded,
    ResourceExhaustedError,
    SerializationError,
    Severity,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
    classify,
    classify_status,
    redact,
    retry_after_of,
    to_problem,
)

T, R, P, C = Severity.TRANSIENT, Severity.RECOVERABLE, Severity.PERMANENT, Severity.CRITICAL

# One instance of every error class; test_samples_cover_every_class keeps it complete.
SAMPLES: list[ButtressError] = [
    ButtressError(),
    BadRequestError(),
    ValidationError(errors=[FieldError("email", "must contain '@'")]),
    UnauthenticatedError(),
    ForbiddenError(),
    NotFoundError(resource="user", resource_id=42),
    MethodNotAllowedError(),
    ConflictError(),
    AlreadyExistsError(),
    GoneError(),
    PreconditionFailedError(),
    PayloadTooLargeError(max_bytes=1024),
    UnsupportedMediaTypeError(),
    RateLimitedError(retry_after=2.0),
    RateLimitExceeded("user:1", retry_after=0.5, limiter="api"),
    QuotaExceededError(retry_after=3600.0),
    OperationCancelledError(),
    InternalError(),
    ConfigurationError(),
    DataIntegrityError(),
    SerializationError(),
    NotImplementedFeatureError(),
    ExternalServiceError(service="stripe", upstream_status=502),
    UnavailableError(retry_after=5.0),
    CircuitOpenError("payments", retry_after=12.5),
    ResourceExhaustedError(),
    BulkheadFullError("db", max_concurrent=10, max_queue=5),
    DependencyFailureError(dependency="database"),
    OperationTimeoutError(seconds=2.5),
]
ERROR_CLASSES = sorted(
    (
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, ButtressError)
    ),
    key=lambda cls: cls.__name__,
)
LEAF_CLASSES = [cls for cls in ERROR_CLASSES if not cls.__subclasses__()]


def _sample(cls: type[ButtressError]) -> ButtressError:
    return next(err for err in SAMPLES if type(err) is cls)


# --- module surface --------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and lists every public name the module defines."""
    defined = sorted(
        name
        for name, value in vars(errors).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == errors.__name__
    )
    assert sorted(errors.__all__) == errors.__all__
    assert defined == errors.__all__


def test_samples_cover_every_class() -> None:
    """SAMPLES holds exactly one instance of every error class, so the checks below see all."""
    assert [cls.__name__ for cls in ERROR_CLASSES] == sorted(type(err).__name__ for err in SAMPLES)


def test_at_least_twenty_leaf_classes() -> None:
    """The hierarchy offers at least twenty leaf error types."""
    assert len(LEAF_CLASSES) >= 20


def test_codes_are_unique() -> None:
    """Every error class below the base has its own machine code."""
    codes = [cls.code for cls in ERROR_CLASSES if cls is not ButtressError]
    assert sorted(set(codes)) == sorted(codes)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_class_metadata_is_consistent(cls: type[ButtressError]) -> None:
    """Each class has a snake_case code, an error status, a category, a severity and titles."""
    err = _sample(cls)
    assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", cls.code) is not None
    assert 400 <= cls.status <= 599
    assert isinstance(cls.category, Category)
    assert isinstance(cls.severity, Severity)
    assert cls.title.strip() != ""
    assert cls.default_message.strip() != ""
    assert (cls.severity in (T, R)) == err.retryable
    assert cls.severity == classify(err)


@pytest.mark.parametrize(
    ("cls", "code", "status", "severity"),
    [
        (ValidationError, "validation_failed", 400, P),
        (NotFoundError, "not_found", 404, P),
        (AlreadyExistsError, "already_exists", 409, P),
        (RateLimitedError, "rate_limited", 429, R),
        (RateLimitExceeded, "rate_limit_exceeded", 429, R),
        (QuotaExceededError, "quota_exceeded", 429, P),
        (OperationCancelledError, "cancelled", 499, P),
        (ConfigurationError, "configuration_error", 500, C),
        (DataIntegrityError, "data_integrity_error", 500, C),
        (NotImplementedFeatureError, "not_implemented", 501, P),
        (ExternalServiceError, "external_service_error", 502, R),
        (CircuitOpenError, "circuit_open", 503, R),
        (BulkheadFullError, "bulkhead_full", 503, R),
        (OperationTimeoutError, "timeout", 504, T),
    ],
)
def test_contract_codes_statuses_and_severities(
    cls: type[ButtressError], code: str, status: int, severity: Severity
) -> None:
    """The codes, statuses and severities other modules and clients rely on hold."""
    assert (code, status, severity) == (cls.code, cls.status, cls.severity)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (AlreadyExistsError, ConflictError),
        (RateLimitExceeded, RateLimitedError),
        (CircuitOpenError, UnavailableError),
        (BulkheadFullError, UnavailableError),
        (BulkheadFullError, ResourceExhaustedError),
        (OperationTimeoutError, TimeoutError),
    ],
)
def test_hierarchy(child: type[BaseException], parent: type[BaseException]) -> None:
    """Specific errors can be caught by their more general parent."""
    assert issubclass(child, parent)


def test_subclass_with_invalid_code_is_rejected() -> None:
    """Declaring a code that is not snake_case fails when the class is defined."""
    with pytest.raises(TypeError, match="'Not-Snake'"):

        class _Bad(ButtressError):
            code = "Not-Snake"


def test_subclass_with_invalid_status_is_rejected() -> None:
    """Declaring a status outside 100-599 fails when the class is defined."""
    with pytest.raises(TypeError, match="700"):

        class _Bad(ButtressError):
            status = 700


# --- instances -------------------------------------------------------------------


def test_message_detail_and_context() -> None:
    """The message is the text; detail and context are kept aside for logs."""
    err = NotFoundError("user not found", detail="0 rows from users", user_id=42)
    expected: tuple[object, ...] = (
        "user not found",
        "user not found",
        ("user not found",),
        "0 rows from users",
        {"user_id": 42},
    )
    assert expected == (str(err), err.message, err.args, err.detail, err.context)


def test_default_message() -> None:
    """Without a message an error uses its class's default message."""
    assert ForbiddenError.default_message == str(ForbiddenError())


def test_repr_shows_class_message_and_code() -> None:
    """repr names the class, the message and the code."""
    expected = "GoneError('it is gone', code='gone')"
    assert expected == repr(GoneError("it is gone"))


def test_error_id_is_unique_and_stable() -> None:
    """Each occurrence gets its own id: a random uuid's 32 hex digits, the same on every read."""
    first, second = InternalError(), InternalError()
    assert first.error_id == first.error_id
    assert first.error_id != second.error_id
    assert first.error_id == uuid.UUID(hex=first.error_id, version=4).hex


def test_error_id_is_generated_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating errors makes no uuid; the first read of error_id makes exactly one."""
    calls: list[uuid.UUID] = []
    real_uuid4 = uuid.uuid4

    def counting_uuid4() -> uuid.UUID:
        calls.append(real_uuid4())
        return calls[-1]

    monkeypatch.setattr(uuid, "uuid4", counting_uuid4)
    err = CircuitOpenError("payments", retry_after=1.0)
    made_before_read = len(calls)
    first, second = err.error_id, err.error_id
    expected = (0, first, [uuid.UUID(hex=first)])
    assert expected == (made_before_read, second, calls)


def test_pickle_round_trip() -> None:
    """Errors survive pickling (process pools), keyword attributes and error id included."""
    for err in SAMPLES:
        error_id = err.error_id
        copy = pickle.loads(pickle.dumps(err))
        assert type(err) is type(copy)
        assert (err.message, error_id, vars(err)) == (copy.message, copy.error_id, vars(copy))


def test_operation_timeout_is_a_builtin_timeout() -> None:
    """`except TimeoutError` catches an OperationTimeoutError, and the message has the limit."""
    caught: TimeoutError | None = None
    try:
        raise OperationTimeoutError(seconds=2.5)
    except TimeoutError as exc:
        caught = exc
    assert isinstance(caught, OperationTimeoutError)
    expected = ("operation timed out after 2.5s", 2.5)
    assert expected == (str(caught), caught.seconds)


def test_circuit_open_message_names_breaker_and_wait() -> None:
    """CircuitOpenError says which circuit is open and when to retry."""
    err = CircuitOpenError("payments", retry_after=12.5)
    expected = ("circuit 'payments' is open; retry in 12.5s", "payments", 12.5)
    assert expected == (str(err), err.name, err.retry_after)


def test_bulkhead_full_messages() -> None:
    """BulkheadFullError names the bulkhead and its limits, and says when it timed out."""
    full = BulkheadFullError("db", max_concurrent=10, max_queue=5)
    waited = BulkheadFullError("db", max_concurrent=10, max_queue=5, timed_out=True)
    expected = [
        ("bulkhead 'db' is full: 10 calls running and 5 waiting", 10, 5, False, None),
        ("bulkhead 'db' is full: timed out waiting for one of 10 slots", 10, 5, True, None),
    ]
    assert expected == [
        (str(err), err.max_concurrent, err.max_queue, err.timed_out, err.retry_after)
        for err in (full, waited)
    ]


def test_rate_limit_exceeded_keeps_key_out_of_message() -> None:
    """RateLimitExceeded names the limiter and the wait, but not the (possibly secret) key."""
    named = RateLimitExceeded("apikey-abc123", retry_after=1.25, limiter="api")
    anonymous = RateLimitExceeded("apikey-abc123", retry_after=30.0)
    expected = [
        ("rate limit 'api' exceeded; retry in 1.25s", "apikey-abc123", "api", 1.25),
        ("rate limit exceeded; retry in 30s", "apikey-abc123", None, 30.0),
    ]
    assert expected == [
        (str(err), err.key, err.limiter, err.retry_after) for err in (named, anonymous)
    ]


@pytest.mark.parametrize(
    "err",
    [e for e in SAMPLES if hasattr(e, "retry_after")],
    ids=lambda e: type(e).__name__,
)
def test_retry_after_is_a_public_attribute(err: ButtressError) -> None:
    """Errors that carry a wait expose it as `retry_after`, a float or None."""
    retry_after = vars(err)["retry_after"]
    assert retry_after is None or isinstance(retry_after, float)


def test_validation_error_default_message_names_fields() -> None:
    """A ValidationError built from field errors names the fields, not their values."""
    field_errors = [FieldError("email", "bad"), FieldError("age", "negative")]
    err = ValidationError(errors=field_errors)
    expected = ("invalid fields: 'email', 'age'", field_errors, "the request is invalid")
    assert expected == (str(err), err.errors, str(ValidationError()))


def test_field_error_is_frozen() -> None:
    """FieldError is an immutable value."""
    field_error = FieldError("email", "bad")
    with pytest.raises(AttributeError):
        field_error.field = "other"  # type: ignore[misc]


def test_not_found_message_names_resource_not_id() -> None:
    """NotFoundError's default message names the resource type but keeps the id for logs."""
    err = NotFoundError(resource="user", resource_id="alice@example.com")
    expected = ("user not found", "user", "alice@example.com")
    assert expected == (str(err), err.resource, err.resource_id)


# --- classify --------------------------------------------------------------------


class _LibraryError(Exception):
    """Stands for an unknown client library's error."""


class _StatusCodeError(Exception):
    def __init__(self, status_code: object) -> None:
        super().__init__("upstream said no")
        self.status_code = status_code


class _StatusError(Exception):
    def __init__(self, status: object) -> None:
        super().__init__("upstream said no")
        self.status = status


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _ResponseError(Exception):
    def __init__(self, response: object) -> None:
        super().__init__("upstream said no")
        self.response = response


class _ExplodingError(ValueError):
    @property
    def response(self) -> object:
        raise RuntimeError("not bound to a response")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionResetError(), T),
        (ConnectionRefusedError(), T),
        (BrokenPipeError(), T),
        (TimeoutError(), T),
        (BlockingIOError(), T),
        (InterruptedError(), T),
        (asyncio.IncompleteReadError(b"", 10), T),
        (FileNotFoundError(), P),
        (PermissionError(), P),
        (IsADirectoryError(), P),
        (NotADirectoryError(), P),
        (FileExistsError(), P),
        (OSError(errno.EIO, "i/o error"), R),
        (ssl.SSLCertVerificationError("certificate verify failed"), P),
        (ValueError(), P),
        (TypeError(), P),
        (KeyError("k"), P),
        (IndexError(), P),
        (AttributeError(), P),
        (NotImplementedError(), P),
        (ZeroDivisionError(), P),
        (AssertionError(), P),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), P),
        (ModuleNotFoundError(), P),
        (SyntaxError(), P),
        (NameError(), P),
        (MemoryError(), C),
        (SystemError(), C),
        (RecursionError(), C),
        (asyncio.CancelledError(), P),
        (KeyboardInterrupt(), P),
        (SystemExit(), P),
        (GeneratorExit(), P),
        (_LibraryError("boom"), R),
        (RuntimeError("boom"), R),
        (BaseException(), P),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classify_stdlib(exc: BaseException, expected: Severity) -> None:
    """The standard library's exceptions get the severity of the table in the spec."""
    assert expected == classify(exc)
    assert expected == classify(exc)  # a second call answers from the type cache


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, P),
        (304, P),
        (400, P),
        (401, P),
        (403, P),
        (404, P),
        (408, P),
        (409, P),
        (422, P),
        (429, R),
        (499, P),
        (500, T),
        (501, P),
        (502, R),
        (503, R),
        (504, T),
        (505, P),
        (507, R),
        (520, R),
    ],
)
def test_classify_status(status: int, expected: Severity) -> None:
    """Each HTTP status maps to its severity."""
    assert expected == classify_status(status)


@pytest.mark.parametrize("status", [99, 600, -1])
def test_classify_status_rejects_non_statuses(status: int) -> None:
    """A number that is not an HTTP status is an error that names it."""
    with pytest.raises(ValueError, match=str(status)):
        classify_status(status)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_StatusCodeError(503), R),
        (_StatusCodeError(404), P),
        (_StatusCodeError(http.HTTPStatus.GATEWAY_TIMEOUT), T),
        (_StatusError(429), R),
        (_StatusError(500), T),
        (_ResponseError(_Response(502)), R),
        (_ResponseError(_Response(400)), P),
        (_StatusCodeError(True), R),  # a bool is not a status: unknown error
        (_StatusCodeError("503"), R),  # nor is a string
        (_StatusError(9000), R),  # nor a number out of range
        (_ResponseError(None), R),
        (_ExplodingError(), P),  # a raising property falls back to the type
    ],
    ids=repr,
)
def test_classify_duck_typed_status(exc: BaseException, expected: Severity) -> None:
    """An exception carrying an HTTP status is classified by that status."""
    assert expected == classify(exc)


def test_status_is_read_per_instance_not_cached_per_type() -> None:
    """Two exceptions of one type with different statuses get different severities."""
    expected = [R, P, R]
    assert expected == [classify(_StatusCodeError(s)) for s in (503, 404, 503)]


def test_classify_exception_group_takes_the_worst_member() -> None:
    """An exception group is as severe as its most severe member."""
    retryable = ExceptionGroup("g", [ConnectionResetError(), _LibraryError()])
    with_bug = ExceptionGroup("g", [ConnectionResetError(), ValueError()])
    nested = ExceptionGroup("g", [TimeoutError(), ExceptionGroup("h", [MemoryError()])])
    expected = [R, P, C]
    assert expected == [classify(retryable), classify(with_bug), classify(nested)]


def test_classify_dns_failures() -> None:
    """A temporary DNS failure is transient; another resolution failure is recoverable."""
    temporary = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    # In both orders: the type's answer must not be cached for the other errno.
    expected = (R, T, R)
    assert expected == (classify(unknown), classify(temporary), classify(unknown))


def _httpx_request() -> httpx.Request:
    return httpx.Request("GET", "https://api.example.com/v1/things")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, P), (408, P), (429, R), (500, T), (501, P), (502, R), (503, R), (504, T)],
)
def test_classify_httpx_status_error(status: int, expected: Severity) -> None:
    """httpx's HTTPStatusError is classified by its response's status."""
    request = _httpx_request()
    response = httpx.Response(status, request=request)
    exc = httpx.HTTPStatusError("failed", request=request, response=response)
    assert expected == classify(exc)


def test_classify_httpx_raise_for_status() -> None:
    """The error raise_for_status() raises for a 503 is recoverable."""
    response = httpx.Response(503, request=_httpx_request())
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    expected = R
    assert expected == classify(caught.value)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (httpx.ConnectTimeout, T),
        (httpx.ReadTimeout, T),
        (httpx.WriteTimeout, T),
        (httpx.PoolTimeout, T),
        (httpx.ConnectError, T),
        (httpx.ReadError, T),
        (httpx.WriteError, T),
        (httpx.CloseError, T),
        (httpx.RemoteProtocolError, T),
        (httpx.ProxyError, R),
        (httpx.UnsupportedProtocol, P),
        (httpx.DecodingError, P),
        (httpx.TooManyRedirects, P),
        (httpx.LocalProtocolError, P),
        (httpx.InvalidURL, P),
        (httpx.StreamConsumed, P),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_classify_httpx(factory: Callable[..., BaseException], expected: Severity) -> None:
    """httpx's transport and request errors get their severities."""
    exc = factory() if factory is httpx.StreamConsumed else factory("boom")
    assert expected == classify(exc)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (redis.exceptions.ConnectionError("reset"), T),
        (redis.exceptions.TimeoutError("timed out"), T),
        (redis.exceptions.BusyLoadingError("loading"), T),
        (redis.exceptions.TryAgainError("TRYAGAIN"), T),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), T),
        (redis.exceptions.MasterDownError("MASTERDOWN"), T),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), T),
        (redis.exceptions.WatchError("watched key changed"), T),
        (redis.exceptions.MaxConnectionsError("too many"), T),
        (redis.exceptions.ReadOnlyError("READONLY"), R),
        (redis.exceptions.OutOfMemoryError("OOM"), R),
        (redis.exceptions.AuthenticationError("invalid password"), C),
        (redis.exceptions.AuthorizationError("no"), C),
        (redis.exceptions.NoPermissionError("NOPERM"), C),
        (redis.exceptions.ResponseError("WRONGTYPE"), P),
        (redis.exceptions.DataError("bad value"), P),
        (redis.exceptions.NoScriptError("NOSCRIPT"), P),
        (redis.exceptions.LockNotOwnedError("not owned"), P),
        (redis.exceptions.RedisError("other"), P),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classify_redis(exc: BaseException, expected: Severity) -> None:
    """redis-py's errors, which do not subclass the builtins, get their severities."""
    assert expected == classify(exc)


def test_redis_connection_error_is_not_a_builtin() -> None:
    """redis's ConnectionError is its own class, which is why classify needs a redis table."""
    assert not issubclass(redis.exceptions.ConnectionError, ConnectionError)
    assert issubclass(redis.exceptions.AuthenticationError, redis.exceptions.ConnectionError)


def test_optional_libraries_are_not_imported() -> None:
    """Importing the errors module pulls in neither httpx nor redis."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('errors_alone', {errors.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['errors_alone'] = module\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(name for name in ('httpx', 'redis') if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    expected = "[]"
    assert expected == result.stdout.strip()


# --- redact ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://u:hunter2@h:6379/0", "redis://u:***@h:6379/0"),
        ("postgresql://:p@ss@db/app", "postgresql://:***@db/app"),
        ("see https://example.com/docs?page=2", "see https://example.com/docs?page=2"),
        ("Bearer abc.def", "Bearer ***"),
        ("sent bearer abc.def-ghi_==", "sent bearer ***"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: ***"),
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("PassWord: hunter2", "PassWord: ***"),
        ("db_passwd = hunter2;", "db_passwd = ***;"),
        ('{"api_key": "k-123", "name": "x"}', '{"api_key": "***", "name": "x"}'),
        ("X-Api-Key: k-123", "X-Api-Key: ***"),
        ("cb?access_token=abc&state=1", "cb?access_token=***&state=1"),
        ("client_secret='s e c'", "client_secret='***'"),
        ("a=password=hunter2", "a=password=***"),
        ("session: 9f8e", "session: ***"),
        ("jwt eyJhbGciOiJI.eyJzdWIiOiIx.c2ln here", "jwt *** here"),
        ("error: connection refused", "error: connection refused"),
        ("invalid token format", "invalid token format"),
        ("basic validation failed", "basic validation failed"),
        ("{'password': b'hunter2'}", "{'password': b'***'}"),
        ("[(b'x-api-key', b'abc123')]", "[(b'x-api-key', b'***')]"),
        ("('authorization', 'Basic dXNlcjpwYXNz')", "('authorization', '***')"),
        ('{\\"password\\": \\"hunter2\\"}', '{\\"password\\": \\"***\\"}'),
        (
            "EU_WEST_1_PRIMARY_PRODUCTION_DATABASE_PASSWORD=hunter2",
            "EU_WEST_1_PRIMARY_PRODUCTION_DATABASE_PASSWORD=***",
        ),
        ("Cookie: theme=dark; sid=SECRET", "Cookie: ***"),
        ('password: "hunt\\"er2"', 'password: "***"'),
        ("?key=AIzaSy123&sig=abcd", "?key=***&sig=***"),
        ("--password hunter2 --user bob", "--password *** --user bob"),
        ("uses ghp_abcdefghijklmnopqrstuvwxyz12", "uses ***"),
        ("signing with whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "signing with ***"),
        ("restricted rk_live_51H8abcdefghijklmno", "restricted ***"),
        ("max_tokens: must be at most 4096", "max_tokens: must be at most 4096"),
        ("author: Jane Doe", "author: Jane Doe"),
        ("password_min_length=8", "password_min_length=8"),
        ("signature_algorithm: must be RS256", "signature_algorithm: must be RS256"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    """Secrets in URLs, authorization values and secret-looking pairs are masked."""
    assert expected == redact(text)


_PIECES = [
    *"abceijkoprstwxyzABEIJKPSTZ_-:=,.@/ 019\u212a",
    *("bearer ", "password", "cookie", "eyJ", "ghp_", "sk_live_", "whsec_", "AKIA"),
]


@hypothesis.given(
    hypothesis.strategies.lists(hypothesis.strategies.sampled_from(_PIECES), max_size=40).map(
        "".join
    )
)
def test_the_shortcut_past_secret_free_text_never_skips_a_secret(text: str) -> None:
    """`redact` returns most text untouched without running its patterns: that
    shortcut must answer exactly as the full pass would, on any text."""
    assert errors._redact_all(text) == redact(text)


def test_redact_is_fast_on_hostile_input() -> None:
    """Long, repetitive input is handled without catastrophic backtracking."""
    hostile = "passwordtoken" * 20_000 + " " + "a:" * 20_000
    assert hostile == redact(hostile)
    jwt_lookalike = "eyJ-" * 25_000  # restarting at every "-" made this quadratic
    assert jwt_lookalike == redact(jwt_lookalike)


# --- to_problem ------------------------------------------------------------------


def test_a_wrapped_exception_is_detail_not_message() -> None:
    """`InternalError(exc)` keeps the wrapped text for logs and shows the default."""
    err = InternalError(ValueError("db password=hunter2"))
    assert "an internal error occurred" == str(err)
    assert "ValueError('db password=hunter2')" == err.detail
    assert "hunter2" not in json.dumps(to_problem(err))


def test_extension_values_of_any_type_are_redacted() -> None:
    """Tuples, sets, bytes, dict keys and arbitrary objects in extensions are redacted."""

    class Leaky(BadRequestError):
        def problem_extensions(self) -> dict[str, object]:
            return {
                "hints": ("token=abc123",),
                "tags": {"api_key=zzz"},
                "raw": b"secret=1",
                "by_key": {"password=k": 1},
                "url": httpx.URL("https://u:hunter2@api.example.com"),
            }

    body = json.dumps(to_problem(Leaky("bad")))
    for secret in ("abc123", "zzz", "secret=1", "password=k", "hunter2"):
        assert secret not in body


def test_problem_shape() -> None:
    """A buttress error becomes an RFC 9457 body with its code, status and message."""
    err = NotFoundError(resource="user", resource_id=7)
    problem = to_problem(err)
    assert {
        "type": "urn:buttress:error:not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "user not found",
        "instance": f"urn:uuid:{uuid.UUID(hex=err.error_id)}",
        "code": "not_found",
        "error_id": err.error_id,
        "retryable": False,
    } == problem


def test_problem_request_id_only_when_given() -> None:
    """request_id appears in the body only when the caller passes one."""
    err = InternalError()
    expected = "req-7"
    assert expected == to_problem(err, request_id="req-7")["request_id"]
    assert "request_id" not in to_problem(err)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (CircuitOpenError("payments", retry_after=12.5), 13),
        (CircuitOpenError("payments", retry_after=0.2), 1),
        (RateLimitedError(retry_after=3.0), 3),
        (UnavailableError(retry_after=0.0), 0),
        (UnavailableError(retry_after=-1.0), 0),
        (QuotaExceededError(retry_after=59.01), 60),
    ],
    ids=repr,
)
def test_problem_retry_after_rounds_up(err: ButtressError, expected: int) -> None:
    """retry_after is given in whole seconds, rounded up like the Retry-After header."""
    assert expected == to_problem(err)["retry_after"]


@pytest.mark.parametrize(
    "err",
    [UnavailableError(), RateLimitedError(), UnavailableError(retry_after=float("inf"))],
    ids=repr,
)
def test_problem_without_retry_after(err: ButtressError) -> None:
    """No retry_after member appears when the error has no finite wait."""
    assert "retry_after" not in to_problem(err)


def test_problem_uses_class_status_and_retryable() -> None:
    """The body carries each error's own HTTP status and whether retrying may help."""
    bodies = [
        to_problem(CircuitOpenError("p", retry_after=1.0)),
        to_problem(BulkheadFullError("b", max_concurrent=1, max_queue=0)),
        to_problem(ConfigurationError()),
    ]
    expected = [(503, True), (503, True), (500, False)]
    assert expected == [(body["status"], body["retryable"]) for body in bodies]


def test_problem_validation_errors() -> None:
    """A ValidationError lists its field errors, names and messages only."""
    err = ValidationError(
        errors=[FieldError("email", "must contain '@'"), FieldError("age", "must be >= 0")]
    )
    expected = [
        {"field": "email", "message": "must contain '@'"},
        {"field": "age", "message": "must be >= 0"},
    ]
    assert expected == to_problem(err)["errors"]


def test_problem_external_service() -> None:
    """An ExternalServiceError names the service, but not its upstream status."""
    problem = to_problem(ExternalServiceError(service="stripe", upstream_status=418))
    expected = ("stripe", 502, "external service 'stripe' failed")
    assert expected == (
        problem["service"],
        problem["status"],
        problem["detail"],
    )
    assert 418 not in problem.values()
    assert "upstream_status" not in problem


def test_problem_never_leaks_secrets() -> None:
    """Secrets in the message are masked, and detail and context never appear at all."""
    err = ExternalServiceError(
        "login failed with password=hunter2 via redis://u:hunter2@h and Bearer abc.def",
        service="auth",
        detail="server said: Bearer zzz-detail-token, pw hunter2",
        api_key="ctx-secret",
    )
    body = json.dumps(to_problem(err, request_id="r1"))
    for secret in ("hunter2", "abc.def", "zzz-detail-token", "ctx-secret"):
        assert secret not in body
    expected = "login failed with password=*** via redis://u:***@h and Bearer ***"
    assert expected == json.loads(body)["detail"]


def test_problem_redacts_field_error_messages() -> None:
    """Field error messages are redacted too, in case one quotes a secret."""
    err = ValidationError(errors=[FieldError("dsn", "bad dsn redis://u:hunter2@h")])
    assert "hunter2" not in json.dumps(to_problem(err))


def test_problem_for_unknown_exception_is_generic() -> None:
    """A foreign exception becomes a generic 500 that reveals nothing of it."""
    exc = RuntimeError("SELECT * FROM users WHERE password='hunter2' at /srv/app/db.py:12")
    problem = to_problem(exc, request_id="r2")
    body = json.dumps(problem)
    expected = (
        "urn:buttress:error:internal_error",
        500,
        "internal_error",
        "an internal error occurred",
        "r2",
    )
    assert expected == (
        problem["type"],
        problem["status"],
        problem["code"],
        problem["detail"],
        problem["request_id"],
    )
    for leak in ("SELECT", "hunter2", "db.py", "RuntimeError"):
        assert leak not in body


def test_problem_retryable_for_unknown_exceptions_follows_classify() -> None:
    """A foreign exception's body says retryable exactly when classify() says so."""
    expected = [True, False]
    assert expected == [
        to_problem(ConnectionResetError("x"))["retryable"],
        to_problem(ValueError("x"))["retryable"],
    ]


def test_problem_for_builtin_timeout_is_504() -> None:
    """A builtin TimeoutError becomes a 504 timeout problem without its text."""
    problem = to_problem(TimeoutError("pool host=10.0.0.3 exhausted"))
    expected = (504, "timeout", "the operation timed out")
    assert expected == (
        problem["status"],
        problem["code"],
        problem["detail"],
    )
    assert "10.0.0.3" not in json.dumps(problem)


def test_problem_ids_differ_per_call_for_foreign_exceptions() -> None:
    """Each problem for a foreign exception gets its own id and matching instance URN."""
    first, second = to_problem(ValueError()), to_problem(ValueError())
    assert first["error_id"] != second["error_id"]
    assert f"urn:uuid:{uuid.UUID(hex=str(first['error_id']))}" == first["instance"]


@pytest.mark.parametrize("err", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_problem_is_json_and_matches_its_error(err: ButtressError) -> None:
    """Every error's body serialises to JSON and carries that error's code and status."""
    problem = json.loads(json.dumps(to_problem(err)))
    assert (f"urn:buttress:error:{err.code}", err.code, err.status, err.error_id) == (
        problem["type"],
        problem["code"],
        problem["status"],
        problem["error_id"],
    )


def test_retry_after_of_reads_attributes_and_headers() -> None:
    """The hint comes from a retry_after attribute, or a Retry-After header in seconds
    or as an HTTP date; anything else is no hint."""
    request = httpx.Request("GET", "https://example.com/")

    def with_header(value: str) -> httpx.HTTPStatusError:
        response = httpx.Response(503, headers={"Retry-After": value}, request=request)
        return httpx.HTTPStatusError("busy", request=request, response=response)

    assert 2.5 == retry_after_of(RateLimitedError(retry_after=2.5))
    assert 120.0 == retry_after_of(with_header("120"))
    assert 0.0 == retry_after_of(with_header("Wed, 21 Oct 2015 07:28:00 GMT"))  # in the past
    assert retry_after_of(with_header("soon")) is None
    assert retry_after_of(ValueError("no hint")) is None


def test_retryable_reads_right_on_the_class_and_the_instance() -> None:
    """retryable follows the severity, on the class as on an instance."""
    assert NotFoundError.retryable is False
    assert NotFoundError().retryable is False
    assert UnavailableError.retryable is True


def test_deeply_nested_exception_groups_classify_without_recursion() -> None:
    """A group nested thousands deep is classified by its worst leaf, without RecursionError."""
    group: BaseException = ConnectionError("leaf")
    for _ in range(5000):
        group = ExceptionGroup("wrap", [group])  # type: ignore[type-var]
    assert Severity.TRANSIENT == classify(group)

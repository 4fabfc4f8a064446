"""Settings for the ops service, from ``BUTTRESS_*`` environment variables or ``.env``.

Every setting has a safe default, so ``buttress serve`` runs with none: a SQLite
queue in ``./buttress.db``, a memory cache, loopback only. Nested settings use
``__`` between levels::

    BUTTRESS_QUEUE_URL=sqlite:///var/lib/app/tasks.db
    BUTTRESS_CACHE_URL=redis://127.0.0.1:6379/0
    BUTTRESS_API_KEYS='{"k3y": {"owner": "alice", "role": "user"}}'
    BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD=3
    BUTTRESS_RATE_LIMITS__OPENAI__RATE=50

>>> settings = load_settings()            # environment + .env; ConfigurationError if invalid
>>> settings.breakers["openai"].failure_threshold
3

An invalid value fails at start-up with a :class:`~buttress.errors.ConfigurationError`
naming the variable to fix (``BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD: Input
should be a valid integer``), never later at the first call that needs it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from buttress.cache._cache import check_cache_url
from buttress.errors import ConfigurationError
from buttress.resilience import (
    CircuitBreaker,
    RateLimiter,
    Registry,
    Retry,
    default_registry,
)
from buttress.tasks._queue import check_queue_url

if TYPE_CHECKING:
    from buttress.clock import Clock

__all__ = [
    "ApiKey",
    "BreakerSettings",
    "RateLimitSettings",
    "RetrySettings",
    "Settings",
    "hash_api_key",
    "is_loopback",
    "load_settings",
]

ENV_PREFIX = "BUTTRESS_"
NESTED = "__"
PREHASHED = "sha256:"
DEFAULT_MAX_BODY_BYTES = 1_048_576


def hash_api_key(key: str) -> str:
    """The stored form of an API key: keys are long random strings, so one round of
    SHA-256 is enough (a slow password hash protects guessable secrets)."""
    return hashlib.sha256(key.encode()).hexdigest()


class _Strict(BaseModel):
    # No inf/nan: "inf" parses as a float, and no setting here means forever.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Buildable(Protocol):
    def build(self, name: str, *, registry: Registry | None = ...) -> object: ...


_B = TypeVar("_B", bound=_Buildable)


def _checked(settings: _B) -> _B:
    """Settings the primitive itself accepts: its own checks (a rule to open on,
    a slow-call rate with a duration, ...) run once, here, so a bad combination
    fails at start-up naming its variable, not later in the service."""
    try:
        settings.build(_CHECK, registry=None)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(re.sub(rf"^\w+\('{_CHECK}'\): ", "", str(exc))) from None
    return settings


_CHECK = "settings-check"


class ApiKey(_Strict):
    """Who a key stands for: requests with it act as ``owner`` with ``role``."""

    owner: str = Field(min_length=1, max_length=200)
    role: Literal["admin", "user"] = "user"


class BreakerSettings(_Strict):
    """A :class:`~buttress.CircuitBreaker` for one dependency (see its docstring)."""

    failure_threshold: int | None = Field(default=5, ge=1)
    recovery_timeout: float = Field(default=30.0, gt=0)
    success_threshold: int = Field(default=1, ge=1)
    failure_rate_threshold: float | None = Field(default=None, gt=0, le=1)
    minimum_calls: int = Field(default=10, ge=1)
    window_type: Literal["count", "time"] = "count"
    window: int | float = Field(default=100, gt=0)
    """Calls (``window_type="count"``, a whole number) or seconds (``"time"``)."""
    slow_call_duration: float | None = Field(default=None, gt=0)
    slow_call_rate_threshold: float | None = Field(default=None, gt=0, le=1)

    @field_validator("window")
    @classmethod
    def _whole_count_window(cls, window: float, info: ValidationInfo) -> float:
        if info.data.get("window_type", "count") == "count" and window != int(window):
            raise ValueError(f"window counts calls: a whole number, got {window}")
        return window

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        return _checked(self)

    def build(
        self, name: str, *, registry: Registry | None = default_registry, clock: Clock | None = None
    ) -> CircuitBreaker:
        options = self.model_dump(include=set(BreakerSettings.model_fields))
        if self.window_type == "count":
            options["window"] = int(self.window)
        return CircuitBreaker(name, **options, clock=clock, registry=registry)


class RetrySettings(_Strict):
    """A :class:`~buttress.Retry` for one dependency."""

    attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "linear", "constant"] = "exponential"
    wait_initial: float = Field(default=0.1, ge=0)
    wait_max: float = Field(default=10.0, ge=0)
    wait_jitter: Literal["full", "equal", "decorrelated", "none"] = "full"
    deadline: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        return _checked(self)

    def build(
        self, name: str, *, registry: Registry | None = default_registry, clock: Clock | None = None
    ) -> Retry:
        return Retry(**self.model_dump(), name=name, clock=clock, registry=registry)


class RateLimitSettings(_Strict):
    """A :class:`~buttress.RateLimiter`: ``rate`` per ``per`` seconds, bursts of ``burst``."""

    rate: float = Field(gt=0)
    per: float = Field(default=1.0, gt=0)
    burst: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _buildable(self) -> Self:
        return _checked(self)

    def build(
        self, name: str, *, registry: Registry | None = default_registry, clock: Clock | None = None
    ) -> RateLimiter:
        return RateLimiter(
            self.rate, per=self.per, burst=self.burst, name=name, clock=clock, registry=registry
        )


class Settings(BaseSettings):
    """The service's settings (see the module docstring for the variables)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # other BUTTRESS_* variables (a CLI's URL, say) are not ours
        validate_default=True,
        env_parse_none_str="null",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    queue_url: str = "sqlite:///buttress.db"
    cache_url: str = "memory://"
    """One URL per tier after the memory L1, comma-separated: ``redis://…,memcached://…``."""
    api_keys: dict[str, ApiKey] = Field(default_factory=dict, repr=False)
    """Keys as given in ``BUTTRESS_API_KEYS``; held only as SHA-256 digests (see validator)."""
    breakers: dict[str, BreakerSettings] = Field(default_factory=dict)
    retries: dict[str, RetrySettings] = Field(default_factory=dict)
    rate_limits: dict[str, RateLimitSettings] = Field(default_factory=dict)
    api_rate_limit: RateLimitSettings | None = RateLimitSettings(rate=50, per=1.0, burst=100)
    """Requests each principal may make to the API; ``null`` turns the limit off."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    worker: bool = True
    """Run an in-process worker for the queue."""
    worker_concurrency: int = Field(default=10, ge=1, le=10_000)
    health_timeout: float = Field(default=2.0, gt=0, le=60)
    app: str | None = None
    """``module:attribute`` of an application's Queue whose tasks the service runs."""

    @field_validator("api_keys", mode="after")
    @classmethod
    def _hash_keys(cls, keys: dict[str, ApiKey]) -> dict[str, ApiKey]:
        # Held hashed from here on: a dump, repr or traceback of the settings
        # cannot show a usable key. "sha256:<hex digest>" gives one already hashed,
        # so the key itself need not be in the environment at all.
        hashed: dict[str, ApiKey] = {}
        for key, principal in keys.items():
            digest = key.removeprefix(PREHASHED)
            if key.startswith(PREHASHED):
                if not re.fullmatch(r"[0-9a-f]{64}", digest):
                    raise ValueError("a 'sha256:' key must be followed by 64 lowercase hex digits")
            elif len(key) < 16:
                raise ValueError("API keys must be at least 16 characters (use a random token)")
            else:
                digest = hash_api_key(key)
            hashed[digest] = principal
        return hashed

    @field_validator("cache_url")
    @classmethod
    def _check_cache_urls(cls, value: str) -> str:
        for url in cache_urls(value):
            check_cache_url(url)
        return value

    @field_validator("queue_url")
    @classmethod
    def _check_queue_url(cls, value: str) -> str:
        check_queue_url(value)
        return value

    @property
    def cache_urls(self) -> list[str]:
        return cache_urls(self.cache_url)


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: 127.0.0.0/8, ::1, localhost."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cache_urls(value: str) -> list[str]:
    """The URLs of a ``cache_url`` setting, in tier order."""
    return [part.strip() for part in value.split(",") if part.strip()]


def variable_name(location: tuple[int | str, ...]) -> str:
    """The variable behind a setting's location: ``("breakers", "openai", "failure_threshold")``
    is ``BUTTRESS_BREAKERS__OPENAI__FAILURE_THRESHOLD``.

    The location is walked along the models' fields, so what pydantic adds to it
    (a union member such as ``int``, a validator's name) is left out, and an API
    key, which names its entry, is never spelled out.
    """
    parts: list[str] = []
    model: type[BaseModel] | None = Settings
    keyed: type[BaseModel] | None = None  # the model of a dict's values, next part its key
    for part in location:
        if keyed is not None:
            parts.append("<KEY>" if parts == ["api_keys"] else str(part))
            model, keyed = keyed, None
        elif model is not None and isinstance(part, str) and part in model.model_fields:
            parts.append(part)
            model, keyed = _nested(model.model_fields[part].annotation)
        # else: a union member or validator tag, not part of any variable's name
    return ENV_PREFIX + NESTED.join(part.upper() for part in parts)


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, type[BaseModel] | None]:
    """(the model a field holds, the model a dict field's values are) for ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        value = typing.get_args(annotation)[1]
        return None, value if isinstance(value, type) and issubclass(value, BaseModel) else None
    if origin in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member, None
        return None, None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, None
    return None, None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise :class:`ConfigurationError` naming each bad variable."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a complex value (JSON) that doesn't parse
        found = re.search(r'field "(\w+)"', str(exc))
        variable = variable_name((found.group(1),)) if found else ENV_PREFIX + "*"
        raise ConfigurationError(
            f"invalid settings: {variable}: not valid JSON", variables=[variable]
        ) from None
    except PydanticValidationError as exc:
        problems: dict[str, str] = {}  # one line per variable: a union fails once per member
        for error in exc.errors():
            problems.setdefault(variable_name(error["loc"]), error["msg"])
        raise ConfigurationError(
            "invalid settings: " + "; ".join(f"{name}: {msg}" for name, msg in problems.items()),
            variables=list(problems),
        ) from None

"""Structured JSON logs for the ops service, with secrets removed from every line.

`configure_logging` routes structlog loggers *and* the stdlib `logging` records the
library already writes (with their `extra` fields) through one processor chain, so
every line has the same shape and passes the same redaction:

>>> configure_logging(level="INFO", format="json")
>>> token = set_request_id("req-1")
>>> get_logger("buttress.web").info("login", user="ada", password="hunter2")
>>> reset_request_id(token)

writes (to stderr) a line such as:

    {"user": "ada", "password": "[REDACTED]", "event": "login", "level": "info",
     "logger": "buttress.web", "timestamp": "2025-01-01T12:00:00.000000Z",
     "request_id": "req-1"}
"""

from __future__ import annotations

import contextvars
import datetime
import decimal
import logging
import sys
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from buttress.errors import redact

__all__ = [
    "REDACTED",
    "RedactSecrets",
    "configure_logging",
    "current_request_id",
    "get_logger",
    "reset_request_id",
    "set_request_id",
]

REDACTED = "[REDACTED]"
"""What replaces the value of a field whose key names a secret."""

# --- redaction -------------------------------------------------------------------

# Key words are compared with case, "-" and "_" removed, and match the end of a
# key: "db_password" and "X-Api-Key" are secrets, "password_min_length" and
# "max_tokens" are not. A bare "key" is deliberately absent: caches log "key".
_SECRET_KEY_WORDS = (
    "authorization",
    "auth",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "secrets",
    "passwords",
    "token",
    "apikey",
    "apikeys",
    "cookie",
    "cookies",
    "privatekey",
    "privatekeys",
    "accesskey",
    "credential",
    "credentials",
    "session",
    "sessionid",
    "signature",
)
_TOO_DEEP = "[TOO DEEP]"
_CYCLE = "[CYCLE]"
# Values whose text cannot hold a secret keep their type (JSONRenderer and
# ConsoleRenderer know how to show them); any other object becomes its redacted
# repr, so no object's own repr can smuggle a secret out.
_PLAIN = (
    bool,
    int,
    float,
    decimal.Decimal,
    uuid.UUID,
    datetime.date,
    datetime.time,
    datetime.timedelta,
)
# ProcessorFormatter's bookkeeping, if the processor runs before it is removed.
_PASS_THROUGH = frozenset({"_record", "_from_structlog"})


def _normalise(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


class RedactSecrets:
    """A structlog processor that removes secrets from an event dict, at any depth.

    A value is replaced with `REDACTED` when its key (ignoring case, `-` and `_`)
    ends in a secret word (password, token, secret, api_key, authorization,
    cookie, session, credentials, ...). Every string, including the event
    message and a rendered traceback, is masked with `buttress.errors.redact`
    (URL passwords, bearer tokens, JWTs, `key=value` pairs, ...) plus webhook
    secrets (`whsec_...`). Bytes are decoded and masked; other objects become
    their masked `repr`. Nested containers are copied, never changed in place;
    cycles and nesting deeper than `max_depth` are cut off.

    An `exc_info` still in the event dict is rendered to an `exception` string
    first, so the traceback is masked too. Put this processor last, right
    before the renderer; `configure_logging` does.

    >>> redact_secrets = RedactSecrets(keys=("ssn",))
    >>> redact_secrets(None, "info", {"event": "hi", "ssn": "078-05-1120",
    ...                               "db": {"dsn": "redis://app:pw@cache/0"}})
    {'event': 'hi', 'ssn': '[REDACTED]', 'db': {'dsn': 'redis://app:***@cache/0'}}
    """

    def __init__(self, *, keys: Iterable[str] = (), max_depth: int = 10) -> None:
        if isinstance(keys, str):
            # A lone string would otherwise be read as one key per character.
            raise TypeError(f"keys must be an iterable of key names, not the string {keys!r}")
        self._words = (*_SECRET_KEY_WORDS, *(_normalise(key) for key in keys))
        self._max_depth = max_depth
        # Most keys repeat from line to line (event, level, task_id, ...).
        self._key_verdicts: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"RedactSecrets(max_depth={self._max_depth})"

    def is_secret_key(self, key: str) -> bool:
        """Whether a value stored under *key* is always replaced.

        >>> RedactSecrets().is_secret_key("X-Api-Key"), RedactSecrets().is_secret_key("key")
        (True, False)
        """
        verdict = self._key_verdicts.get(key)
        if verdict is None:
            verdict = _normalise(key).endswith(self._words)
            if len(self._key_verdicts) < 4096:  # bounded: keys may be data
                self._key_verdicts[key] = verdict
        return verdict

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        seen: set[int] = {id(event_dict)}
        result: EventDict = {}
        for key, value in event_dict.items():
            if key in _PASS_THROUGH:
                result[key] = value
            elif isinstance(key, str) and self.is_secret_key(key):
                result[key] = REDACTED
            else:
                result[key] = self._scrub(value, 1, seen)
        return result

    def _scrub(self, value: object, depth: int, seen: set[int]) -> object:
        # The common case first: a short string or a number at the top level.
        if type(value) is str:
            return redact(value)
        if value is None or isinstance(value, _PLAIN):
            return value
        if isinstance(value, str):  # a str subclass, such as a StrEnum
            return redact(str(value))
        if isinstance(value, bytes | bytearray | memoryview):
            return redact(bytes(value).decode("utf-8", "replace"))
        if not isinstance(value, Mapping | list | tuple | set | frozenset):
            return redact(repr(value))
        if depth >= self._max_depth:
            return _TOO_DEEP
        if id(value) in seen:
            return _CYCLE
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {
                    self._scrub_key(key, depth, seen): (
                        REDACTED
                        if isinstance(key, str) and self.is_secret_key(key)
                        else self._scrub(item, depth + 1, seen)
                    )
                    for key, item in value.items()
                }
            items = [self._scrub(item, depth + 1, seen) for item in value]
            if (
                len(items) == 2
                and isinstance(value, tuple | list)
                and self._is_secret_name(value[0])
            ):
                # A (name, value) pair, as headers travel in ASGI scopes and httpx.
                items[1] = REDACTED
            if isinstance(value, list):
                return items
            if isinstance(value, tuple):
                return tuple(items)
            return set(items)  # a set or frozenset: every scrubbed item is hashable
        finally:
            seen.discard(id(value))

    def _is_secret_name(self, name: object) -> bool:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        return isinstance(name, str) and len(name) <= 100 and self.is_secret_key(name)

    def _scrub_key(self, key: object, depth: int, seen: set[int]) -> object:
        # Keys can be data too, such as a mapping of URL -> status. The result
        # must stay hashable, so anything unusual becomes its masked repr.
        if key is None or isinstance(key, _PLAIN):
            return key
        if isinstance(key, str | bytes):
            return self._scrub(key, depth, seen)
        return redact(repr(key))


# --- request id --------------------------------------------------------------------

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "buttress_request_id", default=None
)


def set_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Tag every log line in the current context with *request_id*.

    Pass the returned token to `reset_request_id` when the request ends. Each
    asyncio task runs in its own copy of the context, so concurrent requests
    keep their own ids.

    >>> token = set_request_id("req-1")
    >>> current_request_id()
    'req-1'
    >>> reset_request_id(token)
    """
    return _REQUEST_ID.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    """Restore the request id that was current before `set_request_id`."""
    _REQUEST_ID.reset(token)


def current_request_id() -> str | None:
    """The request id set in the current context, or `None`."""
    return _REQUEST_ID.get()


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


# --- stdlib records ------------------------------------------------------------------

_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}  # set on the record by any Formatter that ran before


def _add_extra(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Copy a stdlib record's `extra` fields to the event dict.

    Unlike structlog's `ExtraAdder`, a field that would overwrite one of the
    line's own keys is kept as `extra_<name>`: the worker logs `extra={"event":
    "reaped"}`, which must not replace the message.
    """
    record = event_dict.get("_record")
    if not isinstance(record, logging.LogRecord):
        return event_dict
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRIBUTES or key in _NOISE or key.startswith("_"):
            continue
        event_dict[f"extra_{key}" if key in event_dict else key] = value
    return event_dict


# uvicorn adds the message again with terminal colour codes; the line has it once.
_NOISE = frozenset({"color_message"})


# --- configuration -------------------------------------------------------------------

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORMATS = ("auto", "json", "console")


class _Handler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs on the root logger (found again by type)."""


def _resolve_level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    if isinstance(level, str) and level.strip().upper() in _LEVELS:
        return logging.getLevelNamesMapping()[level.strip().upper()]
    raise ValueError(
        f"invalid log level {level!r}: expected one of {', '.join(_LEVELS)} "
        "(any case) or a non-negative integer"
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(
    *,
    level: str | int = "INFO",
    format: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
    redact_keys: Iterable[str] = (),
) -> None:
    """Send structlog and stdlib logging to *stream* as JSON lines (or console text).

    Every line carries `timestamp` (ISO 8601, UTC), `level`, `logger`, `event`,
    the request id while one is set (`set_request_id`), bound fields, and a
    stdlib record's `extra` fields as top-level keys. Exceptions are rendered as
    text. `RedactSecrets` always runs last before rendering; *redact_keys* adds
    key names to the words it treats as secret.

    Installs one handler on the root logger and sets the root level. Calling it
    again replaces that handler instead of adding a second one.

    Args:
        level: A level name (`"DEBUG"` ... `"CRITICAL"`, any case) or number.
        format: `"json"`, `"console"` (human-readable), or `"auto"`: console when
            *stream* is a terminal, JSON otherwise.
        stream: Where lines go; `sys.stderr` (looked up now) by default, which
            keeps stdout free for a command's own output.
        redact_keys: Extra secret key names, as for `RedactSecrets(keys=...)`.

    >>> configure_logging(level="DEBUG", format="console")
    """
    resolved_level = _resolve_level(level)
    if format not in _FORMATS:
        raise ValueError(
            f"invalid log format {format!r}: expected one of {', '.join(map(repr, _FORMATS))}"
        )
    if stream is None:
        stream = sys.stderr
    console = format == "console" or (format == "auto" and _isatty(stream))
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=_isatty(stream))
        if console
        else structlog.processors.JSONRenderer()
    )

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _add_extra],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # Last before the renderer, and not configurable: nothing added to
            # the line after this point could be masked.
            RedactSecrets(keys=redact_keys),
            renderer,
        ],
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(resolved_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Loggers made before a reconfiguration must pick up the new chain.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger that writes through the stdlib logger *name*.

    Without a name, the caller's module name is used. Logging works before
    `configure_logging` too (with structlog's defaults); loggers made earlier
    pick up the configuration when it happens.

    >>> log = get_logger("buttress.web")
    >>> log.info("started", port=8000)
    """
    if name is None:
        return structlog.stdlib.get_logger(**initial_values)
    return structlog.stdlib.get_logger(name, **initial_values)

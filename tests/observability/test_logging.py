"""Tests for buttress.observability._logging: JSON lines, secret redaction, request ids."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from buttress.observability._logging import (
    REDACTED,
    RedactSecrets,
    configure_logging,
    current_request_id,
    get_logger,
    reset_request_id,
    set_request_id,
)

# Secrets no log line may ever contain, each in a form a developer might log.
BEARER = "Bearer eyZmFrZS10b2tlbi0xMjM0NTY"
WEBHOOK = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLc5Z"
DSN = "postgresql://app:s3cr3t-pw@db:5432/orders"
SECRETS = ("eyZmFrZS10b2tlbi0xMjM0NTY", "whsec_MfKQ9r8G", "s3cr3t-pw")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo configure_logging, so other test files see stdlib logging as they left it."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()


def configure(**options: Any) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(stream=stream, **options)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def assert_no_secrets(stream: io.StringIO) -> None:
    output = stream.getvalue()
    for secret in SECRETS:
        assert secret not in output


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- line shape ----------------------------------------------------------------------


def test_structlog_line_has_timestamp_level_logger_event_and_fields() -> None:
    """A structlog call becomes one JSON line with the standard keys and its fields."""
    stream = configure()
    get_logger("buttress.web").info("started", port=8000, tags=["a", "b"])

    [line] = lines(stream)
    assert "started" == line["event"]
    assert "info" == line["level"]
    assert "buttress.web" == line["logger"]
    assert 8000 == line["port"]
    assert ["a", "b"] == line["tags"]
    stamp = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert datetime.timedelta(0) == stamp.utcoffset()
    assert abs(datetime.datetime.now(datetime.UTC) - stamp) < datetime.timedelta(minutes=1)


def test_stdlib_record_extra_fields_become_top_level_keys() -> None:
    """A stdlib record's message, level, name and `extra` fields share the line shape."""
    stream = configure()
    logging.getLogger("buttress.tasks").warning(
        "task %s retried", "send", extra={"task_id": "t-1", "attempt": 2}
    )

    [line] = lines(stream)
    assert "task send retried" == line["event"]
    assert "warning" == line["level"]
    assert "buttress.tasks" == line["logger"]
    assert "t-1" == line["task_id"]
    assert 2 == line["attempt"]
    assert "timestamp" in line


def test_stdlib_extra_that_collides_with_a_line_key_is_kept_apart() -> None:
    """The worker's `extra={"event": ...}` does not replace the message."""
    stream = configure()
    logging.getLogger("buttress.tasks").info("workers reaped", extra={"event": "reaped"})

    [line] = lines(stream)
    assert "workers reaped" == line["event"]
    assert "reaped" == line["extra_event"]


def test_uvicorns_coloured_copy_of_the_message_is_dropped() -> None:
    """uvicorn logs its message twice, once with terminal colour codes: the line has it once."""
    stream = configure()
    logging.getLogger("uvicorn.error").info(
        "Started server process", extra={"color_message": "\x1b[36mStarted\x1b[0m"}
    )

    [line] = lines(stream)
    assert "Started server process" == line["event"]
    assert "color_message" not in line


def test_positional_arguments_are_formatted_for_structlog_loggers() -> None:
    """`log.info("a %s", x)` is formatted as stdlib logging would."""
    stream = configure()
    get_logger("buttress.test").info("hello %s", "world")

    assert "hello world" == lines(stream)[0]["event"]


def test_get_logger_without_a_name_uses_the_callers_module() -> None:
    """`get_logger()` names the logger after the module that logs."""
    stream = configure()
    get_logger().info("hi")

    assert __name__ == lines(stream)[0]["logger"]


def test_level_filters_structlog_and_stdlib_alike() -> None:
    """Records below the configured level are dropped from both kinds of logger."""
    stream = configure(level="warning")
    get_logger("buttress.test").info("quiet")
    logging.getLogger("buttress.test").info("quiet")
    get_logger("buttress.test").warning("loud")
    logging.getLogger("buttress.test").error("louder")

    assert ["loud", "louder"] == [line["event"] for line in lines(stream)]
    assert logging.WARNING == logging.getLogger().level


def test_numeric_level_is_accepted() -> None:
    """A level may be a number, as in the stdlib."""
    stream = configure(level=logging.DEBUG)
    logging.getLogger("buttress.test").debug("detail")

    assert ["detail"] == [line["event"] for line in lines(stream)]


@pytest.mark.parametrize("level", ["LOUD", "", True, -1, 1.5])
def test_invalid_level_names_the_value_and_the_choices(level: Any) -> None:
    """A bad level raises ValueError quoting it and listing the valid names."""
    with pytest.raises(ValueError, match=re.escape(repr(level))) as info:
        configure_logging(level=level, stream=io.StringIO())

    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in str(info.value)
    assert [] == [
        h
        for h in logging.getLogger().handlers
        if h.formatter is not None and isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]


def test_invalid_format_names_the_value_and_the_choices() -> None:
    """A bad format raises ValueError quoting it and listing the valid formats."""
    with pytest.raises(ValueError, match="'yaml'") as info:
        configure_logging(format="yaml", stream=io.StringIO())  # type: ignore[arg-type]

    assert "'auto', 'json', 'console'" in str(info.value)


def test_reconfiguring_replaces_the_handler_instead_of_adding_one() -> None:
    """Calling configure_logging twice writes each record once, to the newest stream."""
    first = configure()
    second = configure()
    get_logger("buttress.test").info("once")
    logging.getLogger("buttress.test").info("twice")

    assert "" == first.getvalue()
    assert ["once", "twice"] == [line["event"] for line in lines(second)]


# --- formats -------------------------------------------------------------------------


def test_console_format_renders_text_and_still_redacts() -> None:
    """The console format is human text, not JSON, and still has no secrets."""
    stream = configure(format="console")
    get_logger("buttress.test").info("connected", password="hunter2", url=DSN)
    try:
        raise ConnectionError(f"refused: {BEARER}")
    except ConnectionError:
        logging.getLogger("buttress.test").exception("failed")

    output = stream.getvalue()
    assert "connected" in output
    assert "ConnectionError" in output
    assert "hunter2" not in output
    assert_no_secrets(stream)
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_auto_format_is_console_on_a_terminal_and_json_otherwise() -> None:
    """`format="auto"` picks console text for a tty and JSON for anything else."""
    tty = TtyStream()
    configure_logging(stream=tty)
    get_logger("buttress.test").info("on a terminal")
    pipe = configure()
    get_logger("buttress.test").info("in a pipe")

    assert "on a terminal" in tty.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(tty.getvalue())
    assert "in a pipe" == lines(pipe)[0]["event"]


# --- redaction through the whole chain -----------------------------------------------


def test_secret_keys_at_top_level_are_replaced_whatever_the_value() -> None:
    """Fields named like secrets become REDACTED; look-alike names are left alone."""
    stream = configure()
    get_logger("buttress.test").info(
        "login",
        password="hunter2",
        Authorization="Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        **{"X-Api-Key": "k-123", "set-cookie": "sid=abc"},
        client_secret=1234,
        session_id=["a", "b"],
        private_key=b"-----BEGIN KEY-----",
        db_credentials={"user": "app"},
        password_min_length=12,
        max_tokens=50,
        user="ada",
    )

    [line] = lines(stream)
    for key in (
        "password",
        "Authorization",
        "X-Api-Key",
        "set-cookie",
        "client_secret",
        "session_id",
        "private_key",
        "db_credentials",
    ):
        assert REDACTED == line[key], key
    assert 12 == line["password_min_length"]
    assert 50 == line["max_tokens"]
    assert "ada" == line["user"]
    for leaked in ("hunter2", "YWxhZGRp", "k-123", "1234", "BEGIN KEY"):
        assert leaked not in stream.getvalue()


def test_secrets_nested_deep_in_dicts_lists_tuples_and_sets_are_removed() -> None:
    """Secret keys and secret-looking strings are found at any depth."""
    stream = configure()
    payload = {
        "request": {
            "headers": [("accept", "json"), {"Authorization": "Token abc987"}],
            "body": {"items": [{"deep": {"deeper": [{"api_key": "k-555"}, DSN]}}]},
        },
        "hooks": (WEBHOOK, "plain"),
        "urls": {BEARER},
    }
    get_logger("buttress.test").info("call", payload=payload, count=3)

    [line] = lines(stream)
    assert_no_secrets(stream)
    assert "abc987" not in stream.getvalue()
    assert "k-555" not in stream.getvalue()
    request = line["payload"]["request"]
    assert ["accept", "json"] == request["headers"][0]
    assert REDACTED == request["headers"][1]["Authorization"]
    deeper = request["body"]["items"][0]["deep"]["deeper"]
    assert REDACTED == deeper[0]["api_key"]
    assert "postgresql://app:***@db:5432/orders" == deeper[1]
    assert "plain" == line["payload"]["hooks"][1]
    assert 3 == line["count"]


def test_secrets_in_the_message_text_are_masked() -> None:
    """The event message itself goes through value redaction."""
    stream = configure()
    get_logger("buttress.test").info(f"connecting to {DSN} with {BEARER}")
    logging.getLogger("buttress.test").info("hook secret %s", WEBHOOK)

    first, second = lines(stream)
    assert_no_secrets(stream)
    assert first["event"].startswith("connecting to postgresql://app:***@db:5432/orders")
    assert second["event"].startswith("hook secret ")


def test_secrets_in_stdlib_extra_are_removed() -> None:
    """`extra` fields are redacted by key and by value, nested ones included."""
    stream = configure()
    logging.getLogger("buttress.cache").info(
        "remote tier down",
        extra={"token": "t-42", "backend": DSN, "retry": {"headers": {"cookie": "a=b"}}},
    )

    [line] = lines(stream)
    assert REDACTED == line["token"]
    assert "postgresql://app:***@db:5432/orders" == line["backend"]
    assert REDACTED == line["retry"]["headers"]["cookie"]
    assert "t-42" not in stream.getvalue()


@pytest.mark.parametrize("secret", [BEARER, WEBHOOK, DSN])
@pytest.mark.parametrize("origin", ["structlog", "stdlib"])
def test_exception_text_is_rendered_and_redacted(secret: str, origin: str) -> None:
    """`log.exception` renders the traceback as text, with the secret masked."""
    stream = configure()
    try:
        raise RuntimeError(f"upstream said: {secret}")
    except RuntimeError:
        if origin == "structlog":
            get_logger("buttress.test").exception("call failed", attempt=1)
        else:
            logging.getLogger("buttress.test").exception("call failed")

    [line] = lines(stream)
    assert "call failed" == line["event"]
    assert "error" == line["level"]
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: upstream said: " in line["exception"]
    assert_no_secrets(stream)


def test_bytes_values_are_decoded_and_redacted() -> None:
    """Bytes become text, with secret patterns masked, including undecodable bytes."""
    stream = configure()
    get_logger("buttress.test").info(
        "raw",
        body=b"Authorization: " + BEARER.encode(),
        blob=b"\xff\xfeok",
        hook=bytearray(WEBHOOK.encode()),
    )

    [line] = lines(stream)
    assert_no_secrets(stream)
    assert line["body"].startswith("Authorization: ")
    assert line["blob"].endswith("ok")
    assert "***" == line["hook"]


def test_objects_are_logged_as_their_redacted_repr() -> None:
    """An object's own repr cannot smuggle a secret into the line."""

    class Settings:
        def __repr__(self) -> str:
            return f"Settings(dsn={DSN!r}, password='hunter2')"

    stream = configure()
    get_logger("buttress.test").info("settings", settings=Settings())

    [line] = lines(stream)
    assert line["settings"].startswith("Settings(dsn=")
    assert "hunter2" not in stream.getvalue()
    assert_no_secrets(stream)


def test_request_id_and_bound_fields_are_redacted_too() -> None:
    """Bound context and contextvars go through the same redaction."""
    stream = configure()
    structlog.contextvars.bind_contextvars(upstream=DSN)
    try:
        get_logger("buttress.test").bind(auth_token="t-1").info("bound")
    finally:
        structlog.contextvars.clear_contextvars()

    [line] = lines(stream)
    assert REDACTED == line["auth_token"]
    assert_no_secrets(stream)


def test_extra_redact_keys_are_added_to_the_secret_words() -> None:
    """`redact_keys` makes more field names secret."""
    stream = configure(redact_keys=("ssn",))
    get_logger("buttress.test").info("patient", ssn="078-05-1120", user_ssn="078-05-1121")

    [line] = lines(stream)
    assert REDACTED == line["ssn"]
    assert REDACTED == line["user_ssn"]


# --- the processor on its own --------------------------------------------------------


def test_processor_does_not_change_the_callers_objects() -> None:
    """Nested containers are copied: the caller's data keeps its secrets."""
    headers = {"Authorization": BEARER, "accept": "json"}
    items = [headers, DSN]
    event: dict[str, Any] = {"event": "call", "items": items, "password": "hunter2"}

    result = RedactSecrets()(None, "info", event)

    assert {"Authorization": BEARER, "accept": "json"} == headers
    assert [headers, DSN] == items
    assert "hunter2" == event["password"]
    assert REDACTED == result["items"][0]["Authorization"]
    assert REDACTED == result["password"]


def test_processor_cuts_cycles_and_deep_nesting() -> None:
    """Self-references and very deep nesting end in a marker, not a RecursionError."""
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    looped_list: list[Any] = ["x"]
    looped_list.append(looped_list)
    deep: list[Any] = [DSN]
    for _ in range(5000):
        deep = [deep]
    shared = {"token": "t"}

    result = RedactSecrets(max_depth=5)(
        None, "info", {"loop": loop, "list": looped_list, "deep": deep, "twice": [shared, shared]}
    )

    assert {"name": "loop", "self": "[CYCLE]"} == result["loop"]
    assert ["x", "[CYCLE]"] == result["list"]
    assert "[[[['[TOO DEEP]']]]]" == str(result["deep"])
    assert [{"token": REDACTED}, {"token": REDACTED}] == result["twice"]


def test_processor_keeps_container_types_and_plain_values() -> None:
    """Tuples stay tuples, sets stay sets, numbers and None are untouched."""
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)

    result = RedactSecrets()(
        None,
        "info",
        {"pair": ("a", 1), "tags": {"x", WEBHOOK}, "n": 1.5, "none": None, "when": when},
    )

    assert ("a", 1) == result["pair"]
    assert {"x", "***"} == result["tags"]
    assert 1.5 == result["n"]
    assert result["none"] is None
    assert when == result["when"]


def test_processor_redacts_dictionary_keys_that_hold_secrets() -> None:
    """A mapping keyed by URL is masked in its keys as well."""
    result = RedactSecrets()(None, "info", {"status": {DSN: "down", b"k": 1, ("t",): 2}})

    assert {"postgresql://app:***@db:5432/orders": "down", "k": 1, "('t',)": 2} == result["status"]


def test_processor_renders_exc_info_before_redacting() -> None:
    """Placed anywhere in a chain, an exc_info is turned into masked text."""
    try:
        raise ValueError(DSN)
    except ValueError as exc:
        result = RedactSecrets()(None, "error", {"event": "x", "exc_info": exc})

    assert "exc_info" not in result
    assert "ValueError: postgresql://app:***@db:5432/orders" in result["exception"]


def test_processor_rejects_a_lone_string_for_keys() -> None:
    """`keys="ssn"` would mean s, s and n, so it is refused."""
    with pytest.raises(TypeError, match="'ssn'"):
        RedactSecrets(keys="ssn")


@pytest.mark.parametrize(
    "text",
    [
        "redis://app:hunter2@cache:6379/0",
        "password=hunter2",
        "Authorization: Basic hunter2",
        "bearer hunter2",
        "cookie: a=hunter2",
        "--password hunter2",
        "whsec_hunter2hunter2",
        "ghp_hunter2hunter2hunter2hunter2",
        "sk_live_hunter2hunter2",
        "xoxb-hunter2hunter2",
        "AKIAHUNTER2HUNTER2XX",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.hunter2",
        "\u212aey: hunter2",  # KELVIN SIGN: re.IGNORECASE reads it as "k"
    ],
)
def test_every_secret_format_is_masked_in_a_plain_field(text: str) -> None:
    """The fast path that skips ordinary strings never skips a secret format."""
    result = RedactSecrets()(None, "info", {"note": text})

    assert "hunter2" not in str(result["note"]).lower()


# --- request id ----------------------------------------------------------------------


def test_request_id_is_on_every_line_while_set_and_gone_after_reset() -> None:
    """structlog and stdlib lines carry the request id between set and reset."""
    stream = configure()
    token = set_request_id("req-7")
    try:
        assert "req-7" == current_request_id()
        get_logger("buttress.test").info("inside")
        logging.getLogger("buttress.test").info("inside too")
    finally:
        reset_request_id(token)
    get_logger("buttress.test").info("outside")
    logging.getLogger("buttress.test").info("outside too")

    inside, inside_too, outside, outside_too = lines(stream)
    assert "req-7" == inside["request_id"]
    assert "req-7" == inside_too["request_id"]
    assert "request_id" not in outside
    assert "request_id" not in outside_too
    assert current_request_id() is None


async def test_request_ids_do_not_leak_between_concurrent_tasks() -> None:
    """Two asyncio tasks that interleave keep their own request ids."""
    stream = configure()
    both_started = asyncio.Event()
    started: list[str] = []

    async def handle(request_id: str) -> None:
        token = set_request_id(request_id)
        try:
            get_logger("buttress.test").info("start", who=request_id)
            started.append(request_id)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()
            logging.getLogger("buttress.test").info("end", extra={"who": request_id})
        finally:
            reset_request_id(token)

    await asyncio.gather(handle("req-a"), handle("req-b"))

    records = lines(stream)
    assert 4 == len(records)
    assert ["start", "start", "end", "end"] == [line["event"] for line in records]
    for line in records:
        assert line["who"] == line["request_id"]
    assert current_request_id() is None

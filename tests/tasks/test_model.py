"""The task model: priorities, statuses, ids, progress and the argument payload."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

from buttress.errors import SerializationError
from buttress.tasks import Priority, Progress, Task, TaskStatus, new_task_id
from buttress.tasks._model import _IdSource
from buttress.tasks._payload import decode_payload, encode_payload, payload_serializer


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("high", Priority.HIGH),
        ("CRITICAL", Priority.CRITICAL),
        (" bulk ", Priority.BULK),
        (2, Priority.NORMAL),
        (Priority.LOW, Priority.LOW),
    ],
)
def test_priority_parses_names_numbers_and_itself(given: object, expected: Priority) -> None:
    assert expected is Priority.parse(given)


@pytest.mark.parametrize("bad", ["urgent", 7, -1, True, None, 1.0])
def test_an_unknown_priority_is_a_value_error_listing_the_known_ones(bad: object) -> None:
    with pytest.raises(ValueError, match=r"unknown priority .*critical, high, normal, low, bulk"):
        Priority.parse(bad)


def test_priorities_order_most_urgent_first() -> None:
    assert sorted(Priority, reverse=True)[-1] is Priority.CRITICAL
    assert Priority.CRITICAL < Priority.HIGH < Priority.NORMAL < Priority.LOW < Priority.BULK
    assert "high" == Priority.HIGH.label


def test_statuses_have_their_api_names_and_say_whether_they_are_final() -> None:
    assert ["queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled"] == [
        status.value for status in TaskStatus
    ]
    assert TaskStatus("dead") is TaskStatus.DEAD
    assert {TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.CANCELLED} == {
        status for status in TaskStatus if status.is_final
    }
    assert TaskStatus.FAILED.is_waiting  # a failed task waits for its retry
    assert not TaskStatus.RUNNING.is_waiting


def test_ids_are_26_characters_unique_and_sort_in_creation_order() -> None:
    ids = [new_task_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    assert all(len(task_id) == 26 for task_id in ids)


def test_ids_keep_their_order_within_a_millisecond_and_when_the_clock_steps_back() -> None:
    source = _IdSource()
    first = source.next(now_ms=1_000)
    second = source.next(now_ms=1_000)
    after_step_back = source.next(now_ms=900)
    later = source.next(now_ms=1_001)
    assert first < second < after_step_back < later


def test_ids_made_by_many_threads_are_unique() -> None:
    made: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        ids = [new_task_id() for _ in range(2_000)]
        with lock:
            made.extend(ids)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 8_000 == len(set(made))


def test_progress_is_a_fraction_with_a_message() -> None:
    assert 0.5 == Progress(0.5, "half way").fraction
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="fraction between 0 and 1"):
            Progress(bad)


def test_retries_left_counts_the_first_attempt() -> None:
    task = Task(id=new_task_id(), name="send", max_retries=2, attempts=1)
    assert 2 == task.retries_left
    assert 0 == Task(id="x", name="send", max_retries=2, attempts=3).retries_left


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_payloads_round_trip(fmt: str) -> None:
    serializer = payload_serializer(fmt)
    data = encode_payload(serializer, ("a@example.com", 3), {"subject": "hi", "cc": ["b"]})
    assert (("a@example.com", 3), {"subject": "hi", "cc": ["b"]}) == decode_payload(
        serializer, data
    )


def test_msgpack_payloads_keep_datetimes() -> None:
    serializer = payload_serializer("msgpack")
    when = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    assert ((when,), {}) == decode_payload(serializer, encode_payload(serializer, (when,), {}))


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((object(),), {}, "positional argument 0 of type 'object'"),
        ((1, 2), {"callback": print}, "argument 'callback' of type"),
        ((), {"when": dt.datetime(2026, 1, 1)}, "argument 'when' of type 'datetime'"),
    ],
)
def test_an_argument_that_cannot_be_encoded_is_named(
    args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    fmt = "json" if "when" in kwargs else "msgpack"
    with pytest.raises(TypeError, match=named):
        encode_payload(payload_serializer(fmt), args, kwargs)


def test_pickle_is_never_a_payload_format() -> None:
    with pytest.raises(ValueError, match="pickle is never used"):
        payload_serializer("pickle")


@pytest.mark.parametrize("data", [b"\xc1garbage", b"\x93\x01\x02\x03", b"\x92\x90\x91\x01"])
def test_a_corrupt_payload_is_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError):
        decode_payload(payload_serializer("msgpack"), data)

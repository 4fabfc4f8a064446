"""Stored values as JSON: whatever an application stored, an operator can be shown it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from pathlib import Path

from buttress._client import LocalTasks
from buttress._jsonable import MAX_DEPTH, TOO_DEEP, jsonable
from buttress.tasks import Queue


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_values_json_cannot_carry_get_a_faithful_json_form() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    shown = jsonable(
        {
            "blob": b"\xff\x00",
            "when": when,
            "day": datetime.date(2026, 1, 2),
            "wait": datetime.timedelta(seconds=1.5),
            "price": decimal.Decimal("9.99"),
            "id": uuid.UUID(int=1),
            "colour": Colour.RED,
            "point": Point(1, 2),
            "pair": (1, "a"),
            "tags": frozenset({"x"}),
            "bad": [float("inf"), float("nan")],
            7: "int keys become strings",
        }
    )
    assert shown == {
        "blob": "_wA=",
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "wait": 1.5,
        "price": "9.99",
        "id": "00000000-0000-0000-0000-000000000001",
        "colour": "red",
        "point": {"x": 1, "y": 2},
        "pair": [1, "a"],
        "tags": ["x"],
        "bad": [None, None],
        "7": "int keys become strings",
    }
    json.dumps(shown, allow_nan=False)  # really JSON
    assert jsonable(object()).startswith("<object object at")


def test_nesting_past_the_limit_is_cut_not_an_error() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(MAX_DEPTH + 10):
        child: list[object] = []
        node.append(child)
        node = child
    shown = jsonable(deep)
    text = json.dumps(shown)
    assert TOO_DEEP in text
    assert text.count("[") == MAX_DEPTH


def test_the_command_lines_local_view_of_a_task_is_json(tmp_path: Path) -> None:
    """`buttress tasks show --queue … --json` prints tasks whose args hold bytes."""
    queue = Queue.from_url(f"sqlite:///{tmp_path}/q.db")
    task = asyncio.run(queue.enqueue("archive", b"\xff", datetime.date(2026, 1, 2)))
    queue.close()
    ops = LocalTasks(Queue.from_url(f"sqlite:///{tmp_path}/q.db"), "here")
    try:
        shown = ops.get(task.id)
    finally:
        ops.close()
    assert shown["args"] == ["_w==", "2026-01-02"]
    json.dumps(shown)

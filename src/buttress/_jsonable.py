"""Any stored value as plain JSON, for the API and the command line.

Task arguments and cache values are whatever the application stored (msgpack
carries bytes, datetimes, decimals ...). Shown to an operator they must never
fail to render: one odd value would otherwise turn a whole listing into an error.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import math
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_DEPTH", "TOO_DEEP", "jsonable"]

MAX_DEPTH = 32
TOO_DEEP = "<nested too deep to show>"


def jsonable(value: Any, _depth: int = 0) -> Any:
    """``value`` as JSON values: bytes as URL-safe base64, dates and times in ISO 8601,
    durations in seconds, non-finite floats as null, other objects as their repr.

    >>> jsonable({"blob": b"\\xff", "at": datetime.date(2026, 1, 2), "n": float("inf")})
    {'blob': '_w==', 'at': '2026-01-02', 'n': None}
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if _depth >= MAX_DEPTH:
        return TOO_DEEP
    if isinstance(value, Mapping):
        return {str(key): jsonable(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, _depth + 1) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.urlsafe_b64encode(bytes(value)).decode()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value), _depth + 1)
    dump = getattr(value, "model_dump", None)  # a pydantic model
    if callable(dump):
        return jsonable(dump(mode="json"), _depth + 1)
    return repr(value)

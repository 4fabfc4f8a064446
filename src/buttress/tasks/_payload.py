"""A task's arguments on the wire: msgpack (the default) or JSON, never pickle.

A worker may be another process, another machine, or a later release: the
arguments must be data, not code. An argument that can't be encoded is
refused at enqueue, with its name, before anything is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from buttress.cache._serializers import JsonSerializer, MsgpackSerializer, Serializer
from buttress.errors import SerializationError

__all__ = ["PAYLOAD_FORMATS", "decode_payload", "encode_payload", "payload_serializer"]

PAYLOAD_FORMATS = ("msgpack", "json")


def payload_serializer(fmt: str) -> Serializer:
    """The serializer of a payload format; ValueError for anything else (pickle included)."""
    if fmt == "msgpack":
        return MsgpackSerializer()
    if fmt == "json":
        return JsonSerializer()
    raise ValueError(
        f"unknown task payload format {fmt!r}: use 'msgpack' or 'json' (pickle is never used "
        "for tasks: a payload must be data, not code)"
    )


def encode_payload(serializer: Serializer, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """``[args, kwargs]`` encoded; a TypeError names the first argument that can't be."""
    try:
        return serializer.dumps([list(args), dict(kwargs)])
    except (TypeError, ValueError, OverflowError):
        pass
    # Find the culprit, so the message says which argument to fix.
    for index, value in enumerate(args):
        _check(serializer, value, f"positional argument {index}")
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise TypeError(f"keyword argument names must be str, got {name!r}")
        _check(serializer, value, f"argument {name!r}")
    raise TypeError(f"the task's arguments cannot be encoded with {serializer.name}")


def _check(serializer: Serializer, value: Any, what: str) -> None:
    try:
        serializer.dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"{what} of type {type(value).__qualname__!r} cannot be encoded with "
            f"{serializer.name}: {exc}"
        ) from None


def decode_payload(serializer: Serializer, data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``(args, kwargs)`` of a stored payload; SerializationError if it is corrupt."""
    value = serializer.loads(data)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not isinstance(value[0], list | tuple)
        or not isinstance(value[1], dict)
        or not all(isinstance(key, str) for key in value[1])
    ):
        raise SerializationError(
            "a task payload could not be read", detail=f"not [args, kwargs]: {value!r:.200}"
        )
    return tuple(value[0]), dict(value[1])

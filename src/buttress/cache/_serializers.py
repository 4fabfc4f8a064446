"""Serializers: how a cached value becomes bytes and comes back.

A serializer has a stable ``name`` and two methods::

    serializer = MsgpackSerializer(types=[User])   # the default; User is a dataclass
    data = serializer.dumps({"user": User(1, "ada"), "seen": datetime.now(UTC)})
    serializer.loads(data)                          # the same types and values

Three come with buttress:

``MsgpackSerializer`` (``"msgpack"``, the default)
    Compact and fast, and values come back as the types they went in as: tuples
    stay tuples and lists stay lists, ``datetime`` keeps its time zone, ``Decimal``
    keeps its exponent, ints of any size. Dataclasses, pydantic models, enums and
    named tuples are stored once registered; any other class can be registered
    with an ``encode``/``decode`` pair.
``JsonSerializer`` (``"json"``)
    Plain JSON, for values other programs read too. Only JSON's types go in.
``PickleSerializer`` (``"pickle"``)
    Any picklable value, strictly opt-in: every payload is signed with
    HMAC-SHA256 and the signature is checked before anything is unpickled, so
    whoever can write to Redis cannot run code in your process.

All three raise the same errors: ``TypeError`` naming the type of a value they
cannot store, ``buttress.errors.SerializationError`` for bytes they cannot read,
and (pickle) ``buttress.errors.DataIntegrityError`` for a payload whose
signature does not match.

msgpack wire format
-------------------
msgpack's own types carry ``None``, ``bool``, ``int`` (64 bits), ``float``,
``str``, ``bytes``, ``list`` and ``dict`` (msgpack also writes ``bytearray`` and
``memoryview`` as binary, so they come back as ``bytes``); everything else is an
extension type whose code is fixed forever (stored data outlives deploys):

====  =============  ===============================================================
code  type           payload
====  =============  ===============================================================
1     tuple          msgpack array of the items
2     set            msgpack array of the items
3     frozenset      msgpack array of the items
4     int            signed big-endian two's complement (only beyond 64 bits)
5     Decimal        ``str(value)`` in ASCII (NaN, sNaN, infinities, -0 included)
6     UUID           the 16 bytes
7     datetime       ``<HBBBBBIB`` year … microsecond, fold; then the time zone
8     date           ``<HBB`` year, month, day
9     time           ``<BBBIB`` hour, minute, second, microsecond, fold; then the zone
10    timedelta      ``<iii`` days, seconds, microseconds
16    registered     msgpack array ``[name, state]``
====  =============  ===============================================================

A time zone is absent for a naive value; otherwise it is the UTC offset at
that instant in microseconds (``<q``) followed by the zone's IANA key when the
tzinfo is a ``zoneinfo.ZoneInfo``. On load the ``ZoneInfo`` comes back when
this machine knows the key and agrees on the offset; otherwise the value gets
a fixed ``datetime.timezone`` of the stored offset, so the instant is never
wrong. Other tzinfo classes (pytz, dateutil) come back as that fixed offset,
and a fixed offset's custom name (``timezone(td, "CET")``) is not kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import hmac
import json
import pickle
import struct
import sys
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from buttress.errors import DataIntegrityError, SerializationError

__all__ = [
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "serializer_from_name",
]

T = TypeVar("T")


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back.

    ``dumps`` raises ``TypeError`` naming the type of a value it cannot store;
    ``loads`` raises :class:`~buttress.errors.SerializationError` for bytes it
    cannot read.
    """

    name: str
    """Stable id written into configuration: ``"msgpack"``, ``"json"``, ``"pickle"``."""

    def dumps(self, value: object) -> bytes: ...

    def loads(self, data: bytes) -> object: ...


def _type_name(tp: type) -> str:
    """``'int'`` for builtins, ``'package.module.Class'`` for the rest."""
    if tp.__module__ == "builtins":
        return tp.__qualname__
    return f"{tp.__module__}.{tp.__qualname__}"


def _decode_failed(fmt: str, exc: BaseException) -> SerializationError:
    return SerializationError(
        "a stored value could not be decoded",
        detail=f"{fmt}: {type(exc).__name__}: {exc}",
        format=fmt,
    )


# --- msgpack: the extension types -----------------------------------------------

_EXT_TUPLE = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_EXT_BIGINT = 4
_EXT_DECIMAL = 5
_EXT_UUID = 6
_EXT_DATETIME = 7
_EXT_DATE = 8
_EXT_TIME = 9
_EXT_TIMEDELTA = 10
_EXT_OBJECT = 16

_DATETIME = struct.Struct("<HBBBBBIB")
_DATE = struct.Struct("<HBB")
_TIME = struct.Struct("<BBBIB")
_TIMEDELTA = struct.Struct("<iii")
_OFFSET = struct.Struct("<q")
_NO_OFFSET = -(2**63)
"""Stored instead of an offset when the value has none (a ``time`` in a ZoneInfo zone)."""
_MICROSECOND = dt.timedelta(microseconds=1)

_POOL_LIMIT = 64
"""Idle msgpack Packers a serializer keeps for reuse."""
_RECYCLE_LIMIT = 1 << 20
"""A Packer whose output was larger than this many bytes is not reused."""

_NATIVE: frozenset[type] = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict}
)
"""Types msgpack carries itself, with no Python hook."""


def _tz_suffix(tz: dt.tzinfo | None, offset: dt.timedelta | None) -> bytes:
    """The time zone part of a datetime or time payload; empty for a naive value."""
    key = tz.key if isinstance(tz, zoneinfo.ZoneInfo) else None
    if key is None and offset is None:
        # Python itself treats a value whose utcoffset() is None as naive.
        return b""
    micros = _NO_OFFSET if offset is None else offset // _MICROSECOND
    return _OFFSET.pack(micros) + (key.encode() if key else b"")


@functools.lru_cache(maxsize=256)
def _zone(key: str) -> zoneinfo.ZoneInfo | None:
    """The zone named ``key``, or None where this machine does not have it."""
    try:
        return zoneinfo.ZoneInfo(key)
    except (KeyError, ValueError, OSError):  # not found, a malformed key, a directory
        return None


@functools.lru_cache(maxsize=256)
def _fixed(micros: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(microseconds=micros))  # timedelta(0) gives timezone.utc


def _read_tz(data: bytes, start: int) -> tuple[dt.tzinfo | None, int]:
    """The zone a payload names (None if unknown here) and the stored offset."""
    (micros,) = _OFFSET.unpack_from(data, start)
    key = data[start + _OFFSET.size :]
    zone = _zone(key.decode()) if key else None
    if zone is None and micros == _NO_OFFSET:
        raise SerializationError(
            "a stored time names a time zone this machine does not have",
            detail=f"time zone {key.decode()!r} is not available (install tzdata?)",
        )
    return zone, micros


def _encode_datetime(value: dt.datetime) -> bytes:
    head = _DATETIME.pack(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        value.fold,
    )
    if value.tzinfo is None:
        return head
    return head + _tz_suffix(value.tzinfo, value.utcoffset())


def _decode_datetime(data: bytes) -> dt.datetime:
    year, month, day, hour, minute, second, micro, fold = _DATETIME.unpack_from(data)
    if len(data) == _DATETIME.size:
        return dt.datetime(year, month, day, hour, minute, second, micro, fold=fold)
    zone, micros = _read_tz(data, _DATETIME.size)
    if zone is not None:
        value = dt.datetime(year, month, day, hour, minute, second, micro, zone, fold=fold)
        # A different tz database here could put the same wall time at another
        # instant; the stored offset wins, so the instant is never wrong.
        if micros == _NO_OFFSET or value.utcoffset() == dt.timedelta(microseconds=micros):
            return value
    return dt.datetime(year, month, day, hour, minute, second, micro, _fixed(micros), fold=fold)


def _encode_time(value: dt.time) -> bytes:
    head = _TIME.pack(value.hour, value.minute, value.second, value.microsecond, value.fold)
    if value.tzinfo is None:
        return head
    return head + _tz_suffix(value.tzinfo, value.utcoffset())


def _decode_time(data: bytes) -> dt.time:
    hour, minute, second, micro, fold = _TIME.unpack_from(data)
    if len(data) == _TIME.size:
        return dt.time(hour, minute, second, micro, fold=fold)
    zone, micros = _read_tz(data, _TIME.size)
    # A ZoneInfo has no offset without a date, so there is nothing to check here.
    tz = zone if zone is not None else _fixed(micros)
    return dt.time(hour, minute, second, micro, tz, fold=fold)


def _encode_date(value: dt.date) -> bytes:
    return _DATE.pack(value.year, value.month, value.day)


def _decode_date(data: bytes) -> dt.date:
    return dt.date(*_DATE.unpack(data))


def _encode_timedelta(value: dt.timedelta) -> bytes:
    return _TIMEDELTA.pack(value.days, value.seconds, value.microseconds)


def _decode_timedelta(data: bytes) -> dt.timedelta:
    days, seconds, micros = _TIMEDELTA.unpack(data)
    return dt.timedelta(days, seconds, micros)


def _encode_bigint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _decode_bigint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _encode_decimal(value: decimal.Decimal) -> bytes:
    return str(value).encode("ascii")


def _decode_decimal(data: bytes) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii"))


def _decode_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)


_LEAF_CODECS: dict[type, tuple[int, Callable[[Any], bytes], Callable[[bytes], object]]] = {
    int: (_EXT_BIGINT, _encode_bigint, _decode_bigint),
    decimal.Decimal: (_EXT_DECIMAL, _encode_decimal, _decode_decimal),
    uuid.UUID: (_EXT_UUID, lambda value: value.bytes, _decode_uuid),
    dt.datetime: (_EXT_DATETIME, _encode_datetime, _decode_datetime),
    dt.date: (_EXT_DATE, _encode_date, _decode_date),
    dt.time: (_EXT_TIME, _encode_time, _decode_time),
    dt.timedelta: (_EXT_TIMEDELTA, _encode_timedelta, _decode_timedelta),
}
"""Extension types whose payload needs no msgpack inside: ``(code, encode, decode)``."""

_CONTAINERS: dict[type, int] = {tuple: _EXT_TUPLE, set: _EXT_SET, frozenset: _EXT_FROZENSET}

_SUPPORTED: frozenset[type] = _NATIVE | _LEAF_CODECS.keys() | _CONTAINERS.keys()


# --- msgpack: registered classes -------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Registration:
    cls: type
    name: str
    encode: Callable[[Any], object]
    decode: Callable[[Any], object]


def _is_pydantic_model(cls: type) -> bool:
    # pydantic is never imported here: a class cannot be a model unless it is loaded.
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and issubclass(cls, pydantic.BaseModel)


def _is_named_tuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields") and hasattr(cls, "_asdict")


def _registrable(cls: type) -> bool:
    return (
        dataclasses.is_dataclass(cls)
        or _is_pydantic_model(cls)
        or issubclass(cls, enum.Enum)
        or _is_named_tuple(cls)
    )


def _dataclass_codec(cls: type) -> tuple[Callable[[Any], object], Callable[[Any], object]]:
    """Fields by name, so adding a field with a default keeps old entries readable.

    Loading calls the constructor (``__post_init__`` runs); fields with
    ``init=False`` are set afterwards to their stored values.
    """
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    later = tuple(f.name for f in fields if not f.init)

    def encode(value: Any) -> object:
        return {name: getattr(value, name) for name in names}

    def decode(state: Any) -> object:
        if not later:
            return cls(**state)
        after = {name: state.pop(name) for name in later if name in state}
        value = cls(**state)
        for name, item in after.items():
            object.__setattr__(value, name, item)  # works on frozen dataclasses too
        return value

    return encode, decode


def _pydantic_codec(cls: Any) -> tuple[Callable[[Any], object], Callable[[Any], object]]:
    """Field values (not a dump), so each keeps its exact type; loading validates.

    Validation on load turns an entry written by an older, incompatible version
    of the model into a SerializationError (a cache miss) instead of a broken
    object. Nested models must be registered too; private attributes are not
    stored.
    """
    if getattr(cls, "__pydantic_root_model__", False):
        return (lambda value: value.root), cls.model_validate

    config = cls.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    keys: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if by_name or alias is None:
            keys[name] = name
        elif isinstance(alias, str):
            keys[name] = alias
        else:  # AliasChoices or AliasPath: the first plain choice, if there is one
            first = next(iter(getattr(alias, "choices", ())), None)
            if not isinstance(first, str):
                raise TypeError(
                    f"cannot register {_type_name(cls)}: field {name!r} has the validation "
                    f"alias {alias!r}; give it a plain string alias or set "
                    f"model_config['populate_by_name'] = True"
                )
            keys[name] = first
    same = all(name == key for name, key in keys.items())

    def encode(value: Any) -> object:
        fields: dict[str, object] = value.__dict__  # a model's __dict__ holds just its fields
        state = fields if same else {keys[name]: item for name, item in fields.items()}
        extra = value.__pydantic_extra__
        return {**state, **extra} if extra else state

    return encode, cls.model_validate


def _named_tuple_codec(cls: Any) -> tuple[Callable[[Any], object], Callable[[Any], object]]:
    return (lambda value: value._asdict()), (lambda state: cls(**state))


def _enum_codec(cls: Any) -> tuple[Callable[[Any], object], Callable[[Any], object]]:
    return (lambda value: value.value), cls


class MsgpackSerializer:
    """The default serializer: msgpack, with exact round trips of Python's common types.

    ``None``, ``bool``, ``int`` (any size), ``float``, ``str``, ``bytes``,
    ``list``, ``tuple``, ``dict`` (any hashable keys), ``set``, ``frozenset``,
    ``datetime``, ``date``, ``time``, ``timedelta``, ``Decimal`` and ``UUID``
    come back as the same type and value, nested as deep as you like (the
    module docstring says how time zones travel). ``bytearray`` and
    ``memoryview`` come back as ``bytes``. Types are matched exactly: a
    subclass (``OrderedDict``, ``IntEnum``, a ``str`` subclass) is refused with
    a ``TypeError`` unless it is registered.

    Register dataclasses, pydantic v2 models, enums and named tuples to store
    them too, under a stable name (``module.QualifiedName`` unless given)::

        serializer = MsgpackSerializer(types=[User, Order])
        serializer.register(Invoice, name="billing.Invoice")   # survives a move
        serializer.register(Money, encode=lambda m: [m.cents, m.currency],
                            decode=lambda s: Money(*s))         # any other class

    Every process that reads the data must register the same names. Reading a
    name this serializer does not know raises ``SerializationError``.

    Instances are thread-safe; ``register`` before sharing is the usual pattern.
    """

    name: str = "msgpack"

    def __init__(self, types: Iterable[type] = ()) -> None:
        import msgpack  # noqa: PLC0415 - `import buttress.cache` must work without msgpack

        self._ext = msgpack.ExtType
        self._new_packer = functools.partial(
            msgpack.Packer,
            default=self._default,
            use_bin_type=True,
            # Exact types only: a tuple must reach `_default` (msgpack would
            # write it as a list), and so must any subclass we cannot restore.
            strict_types=True,
            datetime=False,
        )
        self._unpackb = functools.partial(
            msgpack.unpackb, ext_hook=self._ext_hook, raw=False, strict_map_key=False
        )
        # Idle Packers. A Packer is neither thread-safe nor re-entrant (a tuple's
        # payload is packed while the value around it is still being packed), so
        # each pack takes one of its own; building one per call would cost more
        # than packing a small value. list.pop and list.append are atomic.
        self._packers: list[Any] = []
        self._lock = threading.Lock()
        self._encoders: dict[type, tuple[int, Callable[[Any], bytes]]] = {
            tp: (code, encode) for tp, (code, encode, _) in _LEAF_CODECS.items()
        }
        self._decoders: dict[int, Callable[[bytes], object]] = {
            code: decode for code, _, decode in _LEAF_CODECS.values()
        }
        for tp, code in _CONTAINERS.items():
            self._encoders[tp] = (code, self._pack_items)
        self._decoders[_EXT_TUPLE] = lambda data: tuple(self._unpackb(data))
        self._decoders[_EXT_SET] = lambda data: set(self._unpackb(data))
        self._decoders[_EXT_FROZENSET] = lambda data: frozenset(self._unpackb(data))
        self._decoders[_EXT_OBJECT] = self._decode_object
        self._by_type: dict[type, _Registration] = {}
        self._by_name: dict[str, _Registration] = {}
        for cls in types:
            self.register(cls)

    def __repr__(self) -> str:
        return f"MsgpackSerializer(types=[{', '.join(sorted(self._by_name))}])"

    @property
    def registered(self) -> dict[str, type]:
        """The registered classes by their stored name."""
        return {name: reg.cls for name, reg in self._by_name.items()}

    def register(
        self,
        cls: type[T],
        *,
        name: str | None = None,
        encode: Callable[[T], object] | None = None,
        decode: Callable[[Any], T] | None = None,
    ) -> type[T]:
        """Store instances of ``cls`` under ``name`` (``module.QualifiedName`` by default).

        Dataclasses, pydantic v2 models, enums and named tuples need nothing
        more. Any other class needs ``encode`` (instance to a storable value)
        and ``decode`` (that value back to an instance). Returns ``cls``, so it
        also works as a class decorator. Registering a class again under the
        same name replaces its codec; a second name for it, or a name another
        class holds, is a ``ValueError``.
        """
        if not isinstance(cls, type):
            raise TypeError(f"register() takes a class, got {cls!r}")
        if name is None:
            name = _type_name(cls)
        elif not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if cls in _SUPPORTED:
            raise ValueError(f"{_type_name(cls)} is supported as it is; it needs no registration")
        if (encode is None) != (decode is None):
            raise ValueError("give both encode and decode, or neither")

        if encode is not None and decode is not None:
            codec: tuple[Callable[[Any], object], Callable[[Any], object]] = (encode, decode)
        elif dataclasses.is_dataclass(cls):
            codec = _dataclass_codec(cls)
        elif _is_pydantic_model(cls):
            codec = _pydantic_codec(cls)
        elif issubclass(cls, enum.Enum):
            codec = _enum_codec(cls)
        elif _is_named_tuple(cls):
            codec = _named_tuple_codec(cls)
        else:
            raise TypeError(
                f"cannot register {_type_name(cls)} without encode= and decode=: only "
                f"dataclasses, pydantic models, enums and named tuples are stored as they are"
            )
        registration = _Registration(cls, name, *codec)

        with self._lock:
            known = self._by_type.get(cls)
            if known is not None and known.name != name:
                raise ValueError(
                    f"{_type_name(cls)} is already registered under the name {known.name!r}"
                )
            holder = self._by_name.get(name)
            if holder is not None and holder.cls is not cls:
                raise ValueError(
                    f"the name {name!r} is already registered for {_type_name(holder.cls)}"
                )
            self._by_type[cls] = registration
            self._by_name[name] = registration
            self._encoders[cls] = (
                _EXT_OBJECT,
                functools.partial(self._encode_object, registration),
            )
        return cls

    def dumps(self, value: object) -> bytes:
        """``value`` as msgpack bytes; ``TypeError`` naming the type of anything unsupported."""
        try:
            return self._pack(value)
        except (ValueError, OverflowError, RecursionError) as exc:
            # Nested too deep, a str with lone surrogates, a value over 4 GiB.
            raise SerializationError(
                "a value could not be serialized",
                detail=f"msgpack: {type(exc).__name__}: {exc}",
                format=self.name,
            ) from exc

    def loads(self, data: bytes) -> object:
        """The value ``dumps`` wrote; ``SerializationError`` if ``data`` is not such a value."""
        try:
            return self._unpackb(data)
        except SerializationError:
            raise
        except Exception as exc:  # msgpack raises a zoo of types on bad input
            raise _decode_failed(self.name, exc) from exc

    # -- internals ---------------------------------------------------------------

    def _pack(self, value: object) -> bytes:
        packers = self._packers
        try:
            packer = packers.pop()
        except IndexError:
            packer = self._new_packer()
        data: bytes = packer.pack(value)  # a Packer that fails is dropped, not reused
        # A Packer keeps the largest buffer it ever filled: one that packed a big
        # value is dropped rather than pinning that memory; so are extras past
        # the pool's limit (reached only by deep nesting across many threads).
        if len(data) <= _RECYCLE_LIMIT and len(packers) < _POOL_LIMIT:
            packers.append(packer)
        return data

    def _pack_items(self, value: Iterable[object]) -> bytes:
        return self._pack(list(value))

    def _default(self, value: object) -> object:
        """msgpack's hook, called only for what msgpack does not carry itself."""
        try:
            code, encode = self._encoders[type(value)]
        except KeyError:
            raise TypeError(self._refusal(value)) from None
        return self._ext(code, encode(value))

    def _ext_hook(self, code: int, data: bytes) -> object:
        decode = self._decoders.get(code)
        if decode is None:
            raise SerializationError(
                "a stored value could not be decoded",
                detail=f"msgpack: unknown extension type {code}",
                format=self.name,
            )
        return decode(data)

    def _encode_object(self, registration: _Registration, value: object) -> bytes:
        return self._pack([registration.name, registration.encode(value)])

    def _decode_object(self, data: bytes) -> object:
        name, state = self._unpackb(data)
        registration = self._by_name.get(name)
        if registration is None:
            raise SerializationError(
                "a stored value has a type that is not registered with the serializer",
                detail=f"no class is registered under the name {name!r}; register it with "
                f"MsgpackSerializer.register(cls, name={name!r})",
                format=self.name,
                type_name=name,
            )
        return registration.decode(state)

    def _refusal(self, value: object) -> str:
        tp = type(value)
        short = tp.__qualname__
        if _registrable(tp):
            hint = (
                f"register it with serializer.register({short}) "
                f"or MsgpackSerializer(types=[{short}])"
            )
        else:
            base = next((b for b in tp.__mro__[1:] if b in _SUPPORTED or b in self._by_type), None)
            if base is not None:
                hint = (
                    f"it is a subclass of {_type_name(base)} and only exact types round-trip; "
                    f"convert it or register it with serializer.register({short}, "
                    f"encode=..., decode=...)"
                )
            else:
                hint = (
                    f"register it with serializer.register({short}, encode=..., decode=...) "
                    f"or use a signed PickleSerializer"
                )
        return f"cannot serialize value of type {_type_name(tp)!r} with msgpack: {hint}"


# --- JSON ------------------------------------------------------------------------


def _json_refusal(value: object) -> object:
    raise TypeError(
        f"cannot serialize value of type {_type_name(type(value))!r} as JSON: only dict, "
        f"list, tuple, str, int, float, bool and None are JSON types "
        f"(MsgpackSerializer stores many more)"
    )


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


class JsonSerializer:
    """Standard JSON as compact UTF-8, for values that other programs read too.

    Only JSON's types go in; anything else is a ``TypeError`` naming its type.
    What JSON cannot tell apart does not come back apart, as with ``json``:

    - tuples come back as lists;
    - ``int``, ``float``, ``bool`` and ``None`` dict keys come back as strings;
    - subclasses of str, int, float, list and dict (``IntEnum``, ``OrderedDict``)
      come back as the base type.

    NaN and the infinities are refused with ``ValueError`` (they are not JSON,
    and other readers reject them), and ``loads`` rejects them too.
    """

    name: str = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_refusal
        )
        self._decoder = json.JSONDecoder(parse_constant=_no_constants)

    def __repr__(self) -> str:
        return "JsonSerializer()"

    def dumps(self, value: object) -> bytes:
        """``value`` as UTF-8 JSON; ``TypeError`` for non-JSON types, ``ValueError`` for NaN."""
        return self._encoder.encode(value).encode()

    def loads(self, data: bytes) -> object:
        """The value in ``data``; ``SerializationError`` if it is not UTF-8 JSON."""
        try:
            return self._decoder.decode(str(data, "utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise _decode_failed(self.name, exc) from exc


# --- pickle ------------------------------------------------------------------------

_MAC_SIZE = 32
_MIN_KEY_SIZE = 32


def _signing_key(option: str, key: object) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        raise TypeError(
            f"PickleSerializer: {option} must be bytes or str, got {type(key).__name__}"
        )
    if len(key) < _MIN_KEY_SIZE:
        # Never echo the key: it is a secret even when it is a bad one.
        raise ValueError(
            f"PickleSerializer: {option} must be at least {_MIN_KEY_SIZE} bytes, got "
            f"{len(key)}; a short key can be guessed, and a guessed key lets whoever "
            f"writes to the cache run code in your process. Generate one with "
            f"secrets.token_hex(32) and keep it in configuration"
        )
    return key


class PickleSerializer:
    """Pickle, signed: for values nothing else can store, and only with a secret key.

    Unpickling runs code named by the data, so data from a shared cache must
    never be unpickled unless this application wrote it. Each payload is
    ``HMAC-SHA256(key, pickle) + pickle``; ``loads`` checks the signature in
    constant time before it unpickles, and rejects an unsigned, truncated or
    altered payload with :class:`~buttress.errors.DataIntegrityError`::

        serializer = PickleSerializer(settings.cache_signing_key)      # >= 32 bytes
        serializer = PickleSerializer(new_key, old_keys=[old_key])      # rotation

    ``dumps`` signs with ``key``; ``loads`` accepts ``key`` or any of
    ``old_keys``. The key comes from configuration only, never from a payload.
    Use a key of its own (not one that signs anything else). A signature proves
    this application wrote the payload, not under which cache key: whoever can
    write to the store can still copy one signed value over another.
    ``protocol`` is 5 so that every supported Python reads what any writes.
    """

    name: str = "pickle"

    def __init__(
        self,
        key: bytes | str,
        *,
        old_keys: Iterable[bytes | str] = (),
        protocol: int = 5,
    ) -> None:
        signing = _signing_key("key", key)
        if isinstance(old_keys, bytes | str):
            raise TypeError("PickleSerializer: old_keys must be a list of keys, not one key")
        self._key = signing
        self._keys = (signing, *(_signing_key("old_keys", old) for old in old_keys))
        if (
            isinstance(protocol, bool)
            or not isinstance(protocol, int)
            or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL
        ):
            raise ValueError(
                f"PickleSerializer: protocol must be an integer from 2 to "
                f"{pickle.HIGHEST_PROTOCOL}, got {protocol!r}"
            )
        self._protocol = protocol

    def __repr__(self) -> str:
        return f"PickleSerializer(keys={len(self._keys)}, protocol={self._protocol})"

    def dumps(self, value: object) -> bytes:
        """The signed pickle of ``value``; ``TypeError`` naming the type if it cannot be pickled."""
        try:
            body = pickle.dumps(value, protocol=self._protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(
                f"cannot serialize value of type {_type_name(type(value))!r} with pickle: {exc}"
            ) from exc
        return hmac.digest(self._key, body, "sha256") + body

    def loads(self, data: bytes) -> object:
        """Check the signature, then unpickle; nothing unsigned is ever unpickled."""
        if len(data) < _MAC_SIZE:
            raise DataIntegrityError(
                "a pickled value is unsigned or truncated and was not unpickled",
                detail=f"{len(data)} bytes, shorter than the {_MAC_SIZE}-byte HMAC-SHA256",
                format=self.name,
            )
        view = memoryview(data)
        mac, body = view[:_MAC_SIZE], view[_MAC_SIZE:]
        if not any(
            hmac.compare_digest(hmac.digest(key, body, "sha256"), mac) for key in self._keys
        ):
            raise DataIntegrityError(
                "a pickled value failed its signature check and was not unpickled",
                detail="HMAC-SHA256 mismatch: the payload was altered or truncated, is "
                "unsigned, or was signed with a key this serializer does not hold",
                format=self.name,
            )
        try:
            return pickle.loads(body)
        except Exception as exc:  # a class gone from this deploy, say
            raise _decode_failed(self.name, exc) from exc


_FACTORIES: dict[str, Callable[..., Serializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JsonSerializer,
    "pickle": PickleSerializer,
}


def serializer_from_name(name: str, **options: Any) -> Serializer:
    """Build a serializer from its configuration name and options.

    >>> serializer_from_name("json").name
    'json'
    >>> serializer_from_name("msgpack", types=[]).name
    'msgpack'
    """
    try:
        factory = _FACTORIES[name]
    except (KeyError, TypeError):
        choices = ", ".join(repr(n) for n in _FACTORIES)
        raise ValueError(f"unknown serializer {name!r}; choose one of {choices}") from None
    return factory(**options)

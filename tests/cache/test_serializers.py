"""Serializers: exact msgpack round trips, plain JSON, and signed pickle."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import hmac
import math
import pickle
import subprocess
import sys
import threading
import uuid
import zoneinfo
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AliasPath, BaseModel, ConfigDict, Field, RootModel

from buttress.cache import _serializers
from buttress.cache._serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
    serializer_from_name,
)
from buttress.errors import DataIntegrityError, SerializationError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
PARIS = zoneinfo.ZoneInfo("Europe/Paris")

# --- exact comparison -------------------------------------------------------------


def _tz_identity(tz: dt.tzinfo | None) -> object:
    if tz is None:
        return None
    if isinstance(tz, zoneinfo.ZoneInfo):
        return ("zone", tz.key)
    return ("fixed", tz.utcoffset(None))


def assert_same(expected: object, actual: object, path: str = "value") -> None:
    """``actual`` has the type and value of ``expected``, all the way down.

    ``==`` is not enough: ``(1,) == [1]`` is false but ``1 == 1.0 == True`` is
    true, equal datetimes may sit in different zones, and NaN equals nothing.
    """
    assert type(expected) is type(actual), f"{path}: {type(actual)} is not {type(expected)}"
    if isinstance(expected, float):
        assert isinstance(actual, float)
        if math.isnan(expected):
            assert math.isnan(actual), path
        else:
            assert expected == actual, path
            assert math.copysign(1, expected) == math.copysign(1, actual), path
    elif isinstance(expected, Decimal):
        assert str(expected) == str(actual), path  # NaN, sNaN, -0 and the exponent
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple)
        assert len(expected) == len(actual), path
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{path}[{i}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert len(expected) == len(actual), path
        pairs = zip(expected.items(), actual.items(), strict=True)  # msgpack keeps order
        for (ek, ev), (ak, av) in pairs:
            assert_same(ek, ak, f"{path} key {ek!r}")
            assert_same(ev, av, f"{path}[{ek!r}]")
    elif isinstance(expected, set | frozenset):
        assert isinstance(actual, set | frozenset)
        assert expected == actual, path
        for e in expected:
            match = next(a for a in actual if a == e)
            assert_same(e, match, f"{path} item {e!r}")
    elif dataclasses.is_dataclass(expected):
        for f in dataclasses.fields(expected):
            assert_same(getattr(expected, f.name), getattr(actual, f.name), f"{path}.{f.name}")
    elif isinstance(expected, dt.datetime | dt.time):
        assert isinstance(actual, dt.datetime | dt.time)
        assert expected.replace(tzinfo=None) == actual.replace(tzinfo=None), path
        assert expected.fold == actual.fold, path
        assert expected.utcoffset() == actual.utcoffset(), path
        assert _tz_identity(expected.tzinfo) == _tz_identity(actual.tzinfo), path
    else:
        assert expected == actual, path


def test_assert_same_tells_apart_what_equality_does_not() -> None:
    """The comparison the round-trip tests rely on catches what ``==`` misses."""
    misses: list[tuple[object, object]] = [
        ((1, 2), [1, 2]),
        ({"a": (1,)}, {"a": [1]}),
        (1, True),
        (1, 1.0),
        (0.0, -0.0),
        (Decimal("1.0"), Decimal("1.00")),
        (frozenset({1}), {1}),
        ({1}, {1.0}),
        (dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 13, tzinfo=PARIS)),
        (dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 12, fold=1)),
        (OrderedDict(a=1), {"a": 1}),
    ]
    for expected, actual in misses:
        with pytest.raises(AssertionError):
            assert_same(expected, actual)
    assert_same({"a": (1, [Decimal("NaN")], {2})}, {"a": (1, [Decimal("NaN")], {2})})


# --- registered types used below ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int


@dataclass
class Event:
    name: str
    when: dict[str, tuple[dt.datetime, Decimal]]
    tags: frozenset[str] = frozenset()


@dataclass
class Counter:
    start: int
    total: int = field(init=False, default=0)
    derived: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.derived = self.start * 2


@dataclass
class Unregistered:
    value: int


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Pair(NamedTuple):
    left: int
    right: tuple[int, ...]


class Money:
    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (
            other.cents,
            other.currency,
        )

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))


class Address(BaseModel):
    city: str
    zip_code: str = Field(alias="zip")


class Customer(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: uuid.UUID
    joined: dt.datetime
    address: Address
    scores: tuple[int, ...] = ()
    payload: Any = None


class Tags(RootModel[list[str]]):
    pass


class Pathy(BaseModel):
    city: str = Field(validation_alias=AliasPath("address", "city"))


class PathyByName(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    city: str = Field(validation_alias=AliasPath("address", "city"))


def registered() -> MsgpackSerializer:
    return MsgpackSerializer(types=[Point, Event, Counter, Color, Level, Pair, Address, Customer])


# --- hypothesis strategies ---------------------------------------------------------

fixed_zones = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
    max_value=dt.timedelta(hours=23, minutes=59, seconds=59),
).map(dt.timezone)
zones = st.one_of(st.none(), st.just(dt.UTC), fixed_zones, st.timezones())
datetimes = st.datetimes(timezones=zones)
times = st.times(timezones=zones)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: beyond 64 bits too
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    datetimes,
    st.dates(),
    times,
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
    st.builds(Point, st.integers(), st.integers()),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)
    ),
    max_leaves=6,
)
leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # NaN and the infinities
    st.decimals(),  # NaN, sNaN and the infinities
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.builds(
            Event,
            st.text(max_size=4),
            st.dictionaries(st.text(max_size=4), st.tuples(datetimes, st.decimals()), max_size=2),
            st.frozensets(st.text(max_size=4), max_size=2),
        ),
    ),
    max_leaves=24,
)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)

# --- msgpack ------------------------------------------------------------------------

SHARED = registered()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_msgpack_round_trips_nested_values_exactly(value: object) -> None:
    assert_same(value, SHARED.loads(SHARED.dumps(value)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_msgpack_loads_of_any_bytes_returns_or_raises_serialization_error(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        SHARED.loads(data)


def test_tuples_stay_tuples_and_lists_stay_lists_at_every_depth() -> None:
    value = {"t": (1, [2, (3, [4])]), "l": [(5,), []], (6, (7,)): ((),)}
    out = MsgpackSerializer().loads(MsgpackSerializer().dumps(value))
    assert_same(value, out)
    assert isinstance(out, dict)
    assert isinstance(out["t"], tuple)
    assert isinstance(out["t"][1], list)
    assert isinstance(out["t"][1][1], tuple)


def test_dict_keys_may_be_tuples_ints_and_frozensets() -> None:
    value = {(1, "a"): 1, 2: "two", frozenset({3}): [3], None: 0, 2**70: "big"}
    assert_same(value, MsgpackSerializer().loads(MsgpackSerializer().dumps(value)))


@pytest.mark.parametrize(
    "value",
    [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 2**1000, -(2**1000), -1],
)
def test_ints_of_any_size_round_trip(value: int) -> None:
    serializer = MsgpackSerializer()
    assert_same(value, serializer.loads(serializer.dumps(value)))


@pytest.mark.parametrize(
    "text",
    ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity", "-0", "0E-30", "1E+3", "3." + "14" * 30],
)
def test_decimals_keep_specials_sign_and_exponent(text: str) -> None:
    serializer = MsgpackSerializer()
    value = Decimal(text)
    assert_same(value, serializer.loads(serializer.dumps(value)))


def test_datetimes_keep_offset_microseconds_and_zone() -> None:
    serializer = MsgpackSerializer()
    values = [
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        dt.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(-dt.timedelta(hours=23, microseconds=7))),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=PARIS),
        # The same wall time twice on the night clocks go back: fold tells them apart.
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.time(1, 2, tzinfo=PARIS),
        dt.time(1, 2, fold=1),
    ]
    for value in values:
        out = serializer.loads(serializer.dumps(value))
        assert_same(value, out)
    summer, winter = (serializer.loads(serializer.dumps(v)) for v in values[5:7])
    assert isinstance(summer, dt.datetime)
    assert isinstance(winter, dt.datetime)
    assert dt.timedelta(hours=1) == winter - summer.astimezone(dt.UTC)
    utc = serializer.loads(serializer.dumps(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)))
    assert isinstance(utc, dt.datetime)
    assert utc.tzinfo is dt.UTC


def test_a_zone_unknown_to_the_reader_becomes_its_fixed_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serializer = MsgpackSerializer()
    value = dt.datetime(2024, 7, 1, 12, tzinfo=PARIS)
    data = serializer.dumps(value)
    monkeypatch.setattr(_serializers, "_zone", lambda key: None)
    out = serializer.loads(data)
    assert isinstance(out, dt.datetime)
    assert dt.timezone(dt.timedelta(hours=2)) == out.tzinfo
    assert value == out  # the same instant


def test_a_zone_the_reader_places_elsewhere_keeps_the_stored_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another tz database here: the stored offset wins over the zone's rules."""
    serializer = MsgpackSerializer()
    value = dt.datetime(2024, 7, 1, 12, tzinfo=PARIS)
    data = serializer.dumps(value)
    monkeypatch.setattr(_serializers, "_zone", lambda key: zoneinfo.ZoneInfo("Asia/Tokyo"))
    out = serializer.loads(data)
    assert isinstance(out, dt.datetime)
    assert value == out
    assert dt.timedelta(hours=2) == out.utcoffset()


def test_a_time_in_a_zone_unknown_to_the_reader_is_a_serialization_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serializer = MsgpackSerializer()
    data = serializer.dumps(dt.time(1, 2, tzinfo=PARIS))
    monkeypatch.setattr(_serializers, "_zone", lambda key: None)
    with pytest.raises(SerializationError, match="time zone") as caught:
        serializer.loads(data)
    assert caught.value.detail is not None
    assert "Europe/Paris" in caught.value.detail


def test_registered_dataclass_holding_a_datetime_in_a_tuple_in_a_dict() -> None:
    serializer = MsgpackSerializer(types=[Event])
    when = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=PARIS)
    value = Event("launch", {"at": (when, Decimal("1.50"))}, frozenset({"a"}))
    out = serializer.loads(serializer.dumps({"events": [value], "key": (value.name,)}))
    assert_same({"events": [value], "key": ("launch",)}, out)
    assert isinstance(out, dict)
    assert_same(value.when, out["events"][0].when)


def test_dataclass_fields_without_init_keep_their_stored_values() -> None:
    serializer = MsgpackSerializer(types=[Counter, Point])
    counter = Counter(5)
    counter.total = 42
    out = serializer.loads(serializer.dumps(counter))
    assert isinstance(out, Counter)
    assert (5, 42, 10) == (out.start, out.total, out.derived)
    point = serializer.loads(serializer.dumps({Point(1, 2): Point(3, 4)}))
    assert {Point(1, 2): Point(3, 4)} == point


def test_enums_named_tuples_and_custom_codecs_round_trip() -> None:
    serializer = MsgpackSerializer(types=[Color, Level, Pair])
    serializer.register(
        Money,
        name="billing.Money",
        encode=lambda money: [money.cents, money.currency],
        decode=lambda state: Money(*state),
    )
    value = [Color.RED, Level.HIGH, Pair(1, (2, 3)), Money(150, "EUR"), {Color.GREEN: Level.LOW}]
    out = serializer.loads(serializer.dumps(value))
    assert_same(value, out)
    assert isinstance(out, list)
    assert out[1] is Level.HIGH
    assert "billing.Money" in serializer.registered


def test_registered_pydantic_models_round_trip_with_aliases_extras_and_any_fields() -> None:
    serializer = MsgpackSerializer(types=[Address, Customer, Tags])
    customer = Customer(
        id=uuid.uuid4(),
        joined=dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=PARIS),
        address=Address(city="Lyon", zip="69001"),
        scores=(1, 2),
        payload=(1, [2, (3,)]),
        nickname="ada",  # type: ignore[call-arg]  # an extra, kept by extra="allow"
    )
    out = serializer.loads(serializer.dumps(customer))
    assert isinstance(out, Customer)
    assert customer == out
    assert_same(customer.payload, out.payload)  # a tuple under Any stays a tuple
    assert {"nickname": "ada"} == out.model_extra
    assert_same(customer.joined, out.joined)
    tags = Tags(["a", "b"])
    assert tags == serializer.loads(serializer.dumps(tags))


def test_a_nested_model_must_be_registered_too() -> None:
    serializer = MsgpackSerializer(types=[Customer])
    customer = Customer(
        id=uuid.uuid4(), joined=dt.datetime(2024, 1, 1), address=Address(city="x", zip="1")
    )
    with pytest.raises(TypeError, match=r"test_serializers\.Address"):
        serializer.dumps(customer)


def test_a_model_whose_alias_is_a_path_needs_populate_by_name() -> None:
    with pytest.raises(TypeError, match="populate_by_name"):
        MsgpackSerializer(types=[Pathy])
    serializer = MsgpackSerializer(types=[PathyByName])
    value = PathyByName(city="Oslo")
    assert value == serializer.loads(serializer.dumps(value))


def test_an_entry_from_an_incompatible_model_version_is_a_serialization_error() -> None:
    class V1(BaseModel):
        name: str

    class V2(BaseModel):
        name: str
        required_now: int

    writer = MsgpackSerializer()
    writer.register(V1, name="app.Thing")
    reader = MsgpackSerializer()
    reader.register(V2, name="app.Thing")
    with pytest.raises(SerializationError):
        reader.loads(writer.dumps(V1(name="x")))


def test_a_stable_name_decouples_stored_data_from_the_class_location() -> None:
    @dataclass
    class Old:
        value: int

    @dataclass
    class Moved:
        value: int

    writer = MsgpackSerializer()
    writer.register(Old, name="app.Thing")
    reader = MsgpackSerializer()
    reader.register(Moved, name="app.Thing")
    out = reader.loads(writer.dumps([Old(7)]))
    assert [Moved(7)] == out


def test_an_unknown_registered_name_is_a_serialization_error() -> None:
    data = MsgpackSerializer(types=[Point]).dumps({"p": Point(1, 2)})
    with pytest.raises(SerializationError) as caught:
        MsgpackSerializer().loads(data)
    assert f"{__name__}.Point" == caught.value.context["type_name"]
    assert caught.value.detail is not None
    assert "register" in caught.value.detail


@pytest.mark.parametrize(
    ("value", "names"),
    [
        (Unregistered(1), [f"'{__name__}.Unregistered'", "register(Unregistered)"]),
        ([{"deep": (Unregistered(1),)}], ["Unregistered", "register"]),
        (object(), ["'object'", "encode=..., decode=..."]),
        (OrderedDict(a=1), ["'collections.OrderedDict'", "subclass of dict"]),
        (Level.LOW, ["Level", "register(Level)"]),
        (Address(city="x", zip="1"), ["Address", "register(Address)"]),
        (threading.Lock(), ["lock"]),
    ],
)
def test_msgpack_refuses_unsupported_types_naming_them(value: object, names: list[str]) -> None:
    with pytest.raises(TypeError, match="cannot serialize value of type") as caught:
        MsgpackSerializer().dumps(value)
    for name in names:
        assert name in str(caught.value)


def test_a_subclass_of_a_registered_class_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Point3(Point):
        z: int = 0

    with pytest.raises(TypeError, match="Point3"):
        MsgpackSerializer(types=[Point]).dumps(Point3(1, 2, 3))


def test_register_rejects_conflicts_and_what_it_cannot_store() -> None:
    serializer = MsgpackSerializer(types=[Point])
    serializer.register(Point)  # again, same name: fine
    with pytest.raises(ValueError, match="already registered under the name"):
        serializer.register(Point, name="other")
    with pytest.raises(ValueError, match="already registered for"):
        serializer.register(Counter, name=f"{__name__}.Point")
    with pytest.raises(ValueError, match="needs no registration"):
        serializer.register(tuple)
    with pytest.raises(TypeError, match="without encode= and decode="):
        serializer.register(Money)
    with pytest.raises(ValueError, match="both encode and decode"):
        serializer.register(Money, encode=lambda m: m.cents)
    with pytest.raises(TypeError, match="takes a class"):
        serializer.register(Point(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        serializer.register(Color, name="")
    assert {f"{__name__}.Point": Point} == serializer.registered


def test_register_works_as_a_class_decorator() -> None:
    serializer = MsgpackSerializer()

    @serializer.register
    @dataclass
    class Decorated:
        value: tuple[int, ...]

    assert Decorated((1,)) == serializer.loads(serializer.dumps(Decorated((1,))))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of two with one item
        b"\x01\x02",  # extra data after the value
        b"\xd4\x63\x00",  # extension type 99, unknown
        b"\xd4\x07\x00",  # a datetime of one byte
        b"\xc7\x04\x08\xe8\x07\x0d\x01",  # a date of month 13
        b"\xc7\x03\x10\x92\xc0\xc0",  # a registered object named None
        b"\x81\x90\x01",  # a list as a dict key
    ],
)
def test_msgpack_garbage_is_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError) as caught:
        MsgpackSerializer().loads(data)
    assert "serialization_error" == caught.value.code
    assert caught.value.detail is not None


def test_too_deep_a_value_is_a_serialization_error() -> None:
    serializer = MsgpackSerializer()
    deep_list: list[object] = []
    deep_tuple: tuple[object, ...] = ()
    for _ in range(5000):
        deep_list = [deep_list]
        deep_tuple = (deep_tuple,)
    for value in (deep_list, deep_tuple):
        with pytest.raises(SerializationError):
            serializer.dumps(value)
    assert_same((1, [2]), serializer.loads(serializer.dumps((1, [2]))))


def test_a_failed_dumps_leaves_the_serializer_usable() -> None:
    serializer = MsgpackSerializer()
    for _ in range(3):
        with pytest.raises(TypeError):
            serializer.dumps({"a": (1, 2, [3, (object(),)])})
        value = {"b": (4, [5, (6,)])}
        assert_same(value, serializer.loads(serializer.dumps(value)))


class CountingSerializer(MsgpackSerializer):
    def __init__(self) -> None:
        self.hook_calls = 0
        super().__init__()

    def _default(self, value: object) -> object:
        self.hook_calls += 1
        return super()._default(value)


def test_primitives_never_reach_the_python_hook() -> None:
    serializer = CountingSerializer()
    serializer.dumps({"a": [1, 2.5, "x", b"y", None, True, {"n": -(2**63)}], "b": 2**64 - 1})
    assert 0 == serializer.hook_calls
    serializer.dumps([(1,), dt.date(2024, 1, 1)])
    assert 2 == serializer.hook_calls


def test_msgpack_is_safe_to_share_between_threads() -> None:
    serializer = registered()
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(300):
                value = {"n": (n, [i, (Point(n, i), frozenset({i}))]), "t": dt.time(n, i % 60)}
                assert_same(value, serializer.loads(serializer.dumps(value)))
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [] == failures


def test_importing_the_cache_loads_neither_msgpack_nor_zstandard() -> None:
    code = (
        "import sys, buttress.cache, buttress.cache._serializers, buttress.cache._compression\n"
        "print(sorted(m for m in ('msgpack', 'zstandard', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "[]" == out.stdout.strip()


# --- JSON ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_round_trips_json_values(value: object) -> None:
    serializer = JsonSerializer()
    assert_same(value, serializer.loads(serializer.dumps(value)))


def test_json_is_compact_utf8() -> None:
    assert '{"a":[1,"é",null,true]}'.encode() == JsonSerializer().dumps({"a": [1, "é", None, True]})


def test_json_turns_tuples_into_lists_as_documented() -> None:
    serializer = JsonSerializer()
    assert [[1, 2], {"a": [3]}] == serializer.loads(serializer.dumps(((1, 2), {"a": (3,)})))


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ({1, 2}, "'set'"),
        ({"when": dt.datetime(2024, 1, 1)}, "'datetime.datetime'"),
        ([Unregistered(1)], f"'{__name__}.Unregistered'"),
        (Decimal("1"), "'decimal.Decimal'"),
        (b"x", "'bytes'"),
    ],
)
def test_json_refuses_other_types_naming_them(value: object, name: str) -> None:
    with pytest.raises(TypeError, match="cannot serialize value of type") as caught:
        JsonSerializer().dumps(value)
    assert name in str(caught.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, [-math.inf]])
def test_json_refuses_nan_and_infinity(value: object) -> None:
    with pytest.raises(ValueError, match="JSON"):
        JsonSerializer().dumps(value)


@pytest.mark.parametrize("data", [b"", b"{", b"[1] 2", b"\xff", b"NaN", b"[Infinity]", b"{'a': 1}"])
def test_json_garbage_is_a_serialization_error(data: bytes) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().loads(data)


# --- pickle -------------------------------------------------------------------------

UNPICKLED: list[str] = []


def _mark(label: str) -> None:
    UNPICKLED.append(label)


class Exploit:
    """Unpickling this calls ``_mark``: a stand-in for ``os.system``."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark, (self.label,))


@pytest.fixture(autouse=True)
def _no_unpickling_yet() -> None:
    UNPICKLED.clear()


def test_pickle_round_trips_anything_picklable() -> None:
    serializer = PickleSerializer(KEY)
    value = {"set": {1, 2}, "money": Money(1, "EUR"), "deque": OrderedDict(a=(1,))}
    assert value == serializer.loads(serializer.dumps(value))


def test_pickle_payload_is_the_hmac_then_the_pickle() -> None:
    data = PickleSerializer(KEY).dumps([1, 2])
    mac, body = data[:32], data[32:]
    assert hmac.digest(KEY, body, "sha256") == mac
    assert [1, 2] == pickle.loads(body)


def test_the_exploit_payload_does_run_when_properly_signed() -> None:
    """Proof the payload below is live, so the rejections that follow mean something."""
    serializer = PickleSerializer(KEY)
    serializer.loads(serializer.dumps(Exploit("signed")))
    assert ["signed"] == UNPICKLED


def test_a_payload_swapped_under_a_valid_signature_is_never_unpickled() -> None:
    serializer = PickleSerializer(KEY)
    good = serializer.dumps("harmless")
    forged = good[:32] + pickle.dumps(Exploit("forged"))
    with pytest.raises(DataIntegrityError, match="not unpickled"):
        serializer.loads(forged)
    assert [] == UNPICKLED


def test_a_flipped_byte_anywhere_is_rejected_and_never_unpickled() -> None:
    serializer = PickleSerializer(KEY)
    good = serializer.dumps(Exploit("flipped"))
    for i in range(len(good)):
        tampered = bytearray(good)
        tampered[i] ^= 0x01
        with pytest.raises(DataIntegrityError):
            serializer.loads(bytes(tampered))
    assert [] == UNPICKLED


@pytest.mark.parametrize(
    "make",
    [
        lambda good: pickle.dumps(Exploit("unsigned")),  # a bare pickle
        lambda good: good[:-1],  # truncated
        lambda good: good[:31],  # shorter than a signature
        lambda good: b"",
        lambda good: good + b".",  # extended
        lambda good: PickleSerializer(OTHER_KEY).dumps(Exploit("other key")),
    ],
)
def test_unsigned_truncated_or_foreign_payloads_are_rejected(make: Any) -> None:
    serializer = PickleSerializer(KEY)
    with pytest.raises(DataIntegrityError) as caught:
        serializer.loads(make(serializer.dumps(Exploit("good"))))
    assert "data_integrity_error" == caught.value.code
    assert [] == UNPICKLED


def test_wrong_key_is_a_data_integrity_error() -> None:
    data = PickleSerializer(KEY).dumps({"a": 1})
    with pytest.raises(DataIntegrityError, match="signature"):
        PickleSerializer(OTHER_KEY).loads(data)


def test_key_rotation_reads_old_keys_and_signs_with_the_new_one() -> None:
    old, new = PickleSerializer(OTHER_KEY), PickleSerializer(KEY)
    rotated = PickleSerializer(KEY, old_keys=[OTHER_KEY])
    assert "old" == rotated.loads(old.dumps("old"))
    written = rotated.dumps("new")
    assert "new" == new.loads(written)
    with pytest.raises(DataIntegrityError):
        old.loads(written)


def test_a_signed_payload_that_is_not_a_pickle_is_a_serialization_error() -> None:
    body = b"not a pickle"
    with pytest.raises(SerializationError):
        PickleSerializer(KEY).loads(hmac.digest(KEY, body, "sha256") + body)


@pytest.mark.parametrize("key", [b"", b"k" * 31, "k" * 31, "é" * 15])
def test_short_keys_are_refused_without_echoing_them(key: bytes | str) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as caught:
        PickleSerializer(key)
    if key:
        assert str(key[:8]) not in str(caught.value)
    with pytest.raises(ValueError, match="old_keys"):
        PickleSerializer(KEY, old_keys=[key])


def test_pickle_key_types_and_options_are_checked() -> None:
    assert "x" == PickleSerializer("s" * 32).loads(PickleSerializer(b"s" * 32).dumps("x"))
    with pytest.raises(TypeError, match="bytes or str"):
        PickleSerializer(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of keys"):
        PickleSerializer(KEY, old_keys=OTHER_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protocol"):
        PickleSerializer(KEY, protocol=99)
    assert "kkkk" not in repr(PickleSerializer(KEY))


@pytest.mark.parametrize(
    ("value", "name"),
    [(lambda: 1, "'function'"), (threading.Lock(), "lock"), ((c for c in "ab"), "generator")],
)
def test_pickle_refuses_unpicklable_values_naming_the_type(value: object, name: str) -> None:
    with pytest.raises(TypeError, match="cannot serialize value of type") as caught:
        PickleSerializer(KEY).dumps(value)
    assert name in str(caught.value)


# --- the protocol and lookup by name -------------------------------------------------


def test_every_serializer_fits_the_protocol_and_has_a_stable_name() -> None:
    serializers: list[object] = [MsgpackSerializer(), JsonSerializer(), PickleSerializer(KEY)]
    assert all(isinstance(s, Serializer) for s in serializers)
    assert ["msgpack", "json", "pickle"] == [
        s.name for s in serializers if isinstance(s, Serializer)
    ]
    assert not isinstance(object(), Serializer)


def test_serializer_from_name_builds_each_with_its_options() -> None:
    msgpack = serializer_from_name("msgpack", types=[Point])
    assert isinstance(msgpack, MsgpackSerializer)
    assert Point(1, 2) == msgpack.loads(msgpack.dumps(Point(1, 2)))
    assert isinstance(serializer_from_name("json"), JsonSerializer)
    signed = serializer_from_name("pickle", key=KEY)
    assert isinstance(signed, PickleSerializer)
    with pytest.raises(ValueError, match="'msgpack', 'json', 'pickle'"):
        serializer_from_name("yaml")
    with pytest.raises(TypeError):
        serializer_from_name("pickle")  # no key: pickle is never unsigned

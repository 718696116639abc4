"""A value comes back as the type it was stored as, whichever level answers.

L1 hands back the stored object; the shared levels (SQLite here, Redis and memcached in
``tests/integration/test_value_fidelity_levels.py``) decode an envelope. Before format 3
msgpack returned tuples and sets as lists, Decimal, date and UUID as str, a dataclass as a
dict, and JSON turned int keys into str and bytes into base64 text.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import re
import uuid
import zoneinfo
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratacache import Cache
from stratacache.entry import Entry
from stratacache.errors import ConfigurationError, SerializationError
from stratacache.serde import Codec, PayloadError, register_type, type_ref
from stratacache.tiers.memory import MemoryTier
from stratacache.tiers.sqlite import SQLiteTier

SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
SERIALIZERS = ["msgpack", "json", "pickle"]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: Any = None
    label: str = dataclasses.field(default="", init=False)


class Item(msgspec.Struct):
    name: str
    extra: Any = None


@dataclasses.dataclass
class NotRegistered:
    a: int


register_type(Color, Level, Point, Item)


def codec_for(serializer: str, **options: Any) -> Codec:
    if serializer == "pickle":
        options["signer"] = SIGNING_KEY
    return Codec(serializer, **options)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type, recursively (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        keys_b = {(type(k), k): k for k in b}
        for key, item in a.items():
            match = keys_b.get((type(key), key))
            if match is None and key not in b:
                return False
            if not same(key, key if match is None else match) or not same(item, b[key]):
                return False
        return True
    if isinstance(a, (set, frozenset)):
        return a == b and all(type(x) in {type(y) for y in b} for x in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold and repr(a) == repr(b)
    if isinstance(a, Point):
        return same(a.x, b.x) and same(a.y, b.y) and a.label == b.label
    if isinstance(a, Item):
        return same(a.name, b.name) and same(a.extra, b.extra)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


# ---------------------------------------------------------------------------- strategies

TIMEZONES = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.builds(
        dt.timezone,
        st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)),
    ),
    st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata"]).map(zoneinfo.ZoneInfo),
)
hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.decimals(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=TIMEZONES),
    st.times(timezones=TIMEZONES),
    st.uuids(),
    st.sampled_from(list(Color) + list(Level)),
)
scalars = st.one_of(hashable_scalars, st.floats())  # NaN and the infinities too
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple), st.frozensets(inner, max_size=3)
    ),
    max_leaves=6,
)


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.builds(Point, hashables, inner),
        st.builds(Item, st.text(max_size=5), inner),
        # a user dict that looks like a JSON tag
        st.dictionaries(st.sampled_from(["$sc.tuple", "$sc.dict", "$sc."]), inner, max_size=1),
    )


values = st.recursive(scalars, containers, max_leaves=20)


# ---------------------------------------------------------------------------- codec


@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_codec_round_trip_keeps_types(serializer: str, value: Any) -> None:
    codec = codec_for(serializer)
    back = codec.decode("k", codec.encode("k", Entry(value, 1e9))).value
    assert same(value, back), (value, back)


@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=values)
def test_l1_l2_and_l3_answers_agree(serializer: str, value: Any, tmp_path_factory: Any) -> None:
    """L1 (memory), L2 (SQLite) and L3 (another SQLite file) answer the same value, of
    the same types all the way down."""
    root = tmp_path_factory.getbasetemp() / f"levels-{serializer}"
    root.mkdir(exist_ok=True)
    signing: dict[str, Any] = {"signing_key": SIGNING_KEY} if serializer == "pickle" else {}

    def levels() -> list[Any]:
        return [
            MemoryTier(10),
            SQLiteTier(root / "l2.db", serializer=serializer, **signing),
            SQLiteTier(root / "l3.db", serializer=serializer, **signing),
        ]

    with Cache(levels()) as cache:
        cache.set("k", value)
        answers = {"L1": cache.get("k")}
    with Cache(levels()) as fresh:  # empty L1: L2 answers
        answers["L2"] = fresh.get("k")
    with Cache(levels()[::2]) as skip:  # memory over L3 only: L3 answers
        answers["L3"] = skip.get("k")
    for level, answer in answers.items():
        assert same(value, answer), (level, value, answer)


@pytest.mark.parametrize(
    ("value", "serializer"),
    [
        ((1, 2), "msgpack"),
        ({1, 2}, "msgpack"),
        (frozenset({"a"}), "msgpack"),
        (decimal.Decimal("1.50"), "msgpack"),
        (dt.date(2024, 2, 29), "msgpack"),
        (uuid.UUID(int=7), "msgpack"),
        (Point(1, 2), "msgpack"),
        ({1: "one"}, "json"),
        (b"\x00bytes", "json"),
        ({"x": float("nan")}, "json"),
        ({(1, 2): "pair"}, "msgpack"),
        (dt.datetime(2024, 1, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")), "msgpack"),
        (Level.HIGH, "msgpack"),
        (Item("i", (1,)), "json"),
        (2**80, "msgpack"),
    ],
)
def test_findings_on_main(value: Any, serializer: str, tmp_path: Path) -> None:
    """Each reported finding: the SQLite level answered with another type than L1."""
    path = tmp_path / "l2.db"
    with Cache([MemoryTier(10), SQLiteTier(path, serializer=serializer)]) as cache:
        cache.set("k", value)
        l1_answer = cache.get("k")
    # another process's cache: its L1 is empty, the SQLite level answers
    with Cache([MemoryTier(10), SQLiteTier(path, serializer=serializer)]) as other:
        l2_answer = other.get("k")
    assert same(value, l1_answer)
    assert same(value, l2_answer), (value, l2_answer)


def test_json_user_dicts_never_read_as_tags() -> None:
    codec = Codec("json")
    for value in [
        {"$sc.tuple": [1, 2]},
        {"$sc.dict": []},
        {"$sc.nope": 1},
        [{"$sc.x": {"$sc.y": 1}}],
    ]:
        assert same(codec.decode("k", codec.encode("k", Entry(value))).value, value)


def test_plain_data_is_written_untouched() -> None:
    """Plain data stays what format 2 wrote: other readers see ordinary msgpack / JSON."""
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": -(2**63)}}
    payload = Codec().payload(Entry(value))
    assert payload == msgspec.msgpack.encode(value)
    assert Codec("json").payload(Entry(value)) == msgspec.json.encode(value)


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize(
    "value",
    [
        object(),
        NotRegistered(1),
        {"nested": [NotRegistered(2)]},
        bytearray(b"x"),
        type("MyStr", (str,), {})("s"),
        dt.timedelta(seconds=3),
        dt.datetime(
            2024, 1, 1, tzinfo=type("Tz", (dt.tzinfo,), {"utcoffset": lambda s, d: None})()
        ),
    ],
)
def test_values_the_shared_levels_cannot_bring_back_are_refused(
    serializer: str, value: Any
) -> None:
    with pytest.raises(SerializationError) as info:
        Codec(serializer).encode("k", Entry(value))
    message = str(info.value)
    assert "value_type=" in message and "pickle" in message


def test_refusal_names_the_class_and_registration(tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=r"NotRegistered.*register_type\(NotRegistered\)"):
        Codec().encode("k", Entry([NotRegistered(1)]))
    # refused in prepare, before any I/O: set raises, nothing stored
    l2 = SQLiteTier(tmp_path / "l2.db")
    with Cache([MemoryTier(10), l2]) as cache:
        with pytest.raises(SerializationError):
            cache.set("k", NotRegistered(1))
        assert l2.get_many(["k"]) == {} and cache.get("k", None) is None


def test_a_codec_may_allow_classes_of_its_own() -> None:
    codec = Codec(types=[NotRegistered])
    assert codec.decode("k", codec.encode("k", Entry(NotRegistered(3)))).value == NotRegistered(3)
    with pytest.raises(PayloadError, match="allow-list"):
        Codec().decode("k", codec.encode("k", Entry(NotRegistered(3))))


def test_only_enums_dataclasses_and_structs_can_be_registered() -> None:
    with pytest.raises(ConfigurationError, match="cannot be registered"):
        register_type(int)


def forged(serializer: str, tag: str, content: Any) -> bytes:
    """An envelope whose payload is one tag, as anyone with write access could store."""
    if serializer == "json":
        payload = msgspec.json.encode({"$sc." + tag: content})
    else:
        code = {"enum": 13, "dataclass": 14, "struct": 15}[tag]
        payload = msgspec.msgpack.encode(msgspec.msgpack.Ext(code, msgspec.msgpack.encode(content)))
    return Codec(serializer).encode("k", Entry(None), payload)


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_a_payload_naming_an_unknown_class_never_imports_it(serializer: str) -> None:
    """The class named in a payload is looked up on the allow-list, never imported."""
    import sys

    sys.modules.pop("xml.dom.minidom", None)
    for tag in ("dataclass", "struct", "enum"):
        blob = forged(serializer, tag, ["xml.dom.minidom:Document", {}])
        with pytest.raises(PayloadError, match="allow-list"):
            Codec(serializer).decode("k", blob)
    assert "xml.dom.minidom" not in sys.modules


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_registered_kind_must_match_the_tag(serializer: str) -> None:
    """A payload cannot call an allowed Enum as if it were a dataclass."""
    blob = forged(serializer, "dataclass", [type_ref(Color), {"value": "red"}])
    with pytest.raises(PayloadError, match="which it is not"):
        Codec(serializer).decode("k", blob)


# ---------------------------------------------------------------------------- typed decoding


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_value_type_still_decodes_typed(serializer: str) -> None:
    codec = Codec(serializer, value_type=list[Item])
    value = [Item("a", 1), Item("b", [1, 2])]
    assert codec.decode("k", codec.encode("k", Entry(value))).value == value
    dated = Codec(serializer, value_type=dict[str, dt.date])
    assert dated.decode("k", dated.encode("k", Entry({"d": dt.date(2020, 1, 2)}))).value == {
        "d": dt.date(2020, 1, 2)
    }


# ------------------------------------------------ classes whose __init__ is not a rebuild


@dataclasses.dataclass
class Doubled:
    """__post_init__ normalises its input: called again on decode, it would double twice."""

    x: int

    def __post_init__(self) -> None:
        self.x *= 2


@dataclasses.dataclass(frozen=True)
class Scaled:
    """Built from an InitVar that is not state: calling it back needs an argument that no
    payload holds."""

    a: int
    scale: dataclasses.InitVar[int]
    b: int = dataclasses.field(init=False)

    def __post_init__(self, scale: int) -> None:
        object.__setattr__(self, "b", self.a * scale)


@dataclasses.dataclass
class Indexed:
    """Keeps state outside its fields, which a payload of fields cannot carry."""

    a: int

    def __post_init__(self) -> None:
        self.index = {self.a: True}


class DoubledStruct(msgspec.Struct):
    x: int

    def __post_init__(self) -> None:
        self.x *= 2


class CheckedStruct(msgspec.Struct):
    """An idempotent __post_init__ (validation): rebuilding by calling it is fine."""

    x: float

    def __post_init__(self) -> None:
        if self.x < 0:
            raise ValueError("x must not be negative")


register_type(Doubled, Scaled, Indexed, DoubledStruct, CheckedStruct)


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize("value", [Doubled(1), Scaled(2, 5), CheckedStruct(float("nan"))])
def test_post_init_runs_once_and_init_vars_are_not_needed(
    serializer: str, value: Any, tmp_path: Path
) -> None:
    """The findings: Doubled(1) (x == 2) came back with x == 4, and Scaled was accepted at
    set and then unreadable (its InitVar was missing), a miss counted as corrupt."""
    with Cache([MemoryTier(10), SQLiteTier(tmp_path / "l2.db", serializer=serializer)]) as cache:
        cache.set("k", value)
        cache.levels[0].clear()
        got = cache.get("k")
    assert type(got) is type(value)
    assert repr(got) == repr(value)  # repr: NaN != NaN, but the fields must read the same


@pytest.mark.parametrize(
    ("value", "says"),
    [(Indexed(1), "not dataclass fields (index)"), (DoubledStruct(1), "__post_init__ changes")],
)
def test_values_whose_class_would_not_rebuild_them_are_refused(value: Any, says: str) -> None:
    with pytest.raises(SerializationError, match=re.escape(says)):
        Codec().encode("k", Entry(value))


def test_a_dataclass_payload_from_another_version_of_the_class() -> None:
    """A field added since the payload was written takes its default; a missing field
    without one, or a field the class no longer has, makes the payload unusable."""
    codec = Codec()
    ref = type_ref(Point)
    cases = [
        ({"x": 1}, None),  # y and label were added since: defaults
        ({"y": 1}, "lacks its field 'x'"),
        ({"x": 1, "z": 2}, "'z'"),
    ]
    for fields, problem in cases:
        raw = msgspec.msgpack.encode(msgspec.msgpack.Ext(14, msgspec.msgpack.encode([ref, fields])))
        stored = codec.encode("k", Entry(None), payload=raw)
        if problem is None:
            assert codec.decode("k", stored).value == Point(1)
            continue
        with pytest.raises(PayloadError, match=re.escape(problem)):
            codec.decode("k", stored)

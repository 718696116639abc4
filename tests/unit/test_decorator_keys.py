"""The keys ``cached`` builds: typed, one per call whatever its spelling, the same text in
every process, for every argument type the encoder supports (see hierarchy/calls.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import inspect
import math
import os
import subprocess
import sys
import types
import uuid
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache import AsyncCache, Cache, ConfigurationError, InvalidKeyError, MemoryTier
from stratacache.keys import KeyRules, storage_key

try:
    from zoneinfo import ZoneInfo

    PARIS: dt.tzinfo | None = ZoneInfo("Europe/Paris")
except Exception:  # no time zone database on this machine
    PARIS = None

needs_zones = pytest.mark.skipif(PARIS is None, reason="no IANA time zone database")


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


class Perm(enum.Flag):
    R = 1
    W = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: Any = None


class Pair(NamedTuple):
    left: Any
    right: Any


class WithKey:
    def __init__(self, ident: Any) -> None:
        self.ident = ident

    def __cache_key__(self) -> Any:
        return self.ident


_cache = Cache([MemoryTier(1000)])


@_cache.cached(prefix="k")
def keyed(*args: Any) -> int:
    return 0


def key_of(*args: Any) -> str:
    return keyed.cache_key(*args)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- typed keys


def test_one_one_point_zero_and_true_are_three_entries() -> None:
    cache = Cache([MemoryTier(100)])
    calls: list[Any] = []

    @cache.cached(prefix="t")
    def ident(x: Any) -> str:
        calls.append(x)
        return type(x).__name__

    assert [ident(1), ident(1.0), ident(True)] == ["int", "float", "bool"]
    assert [ident(1), ident(1.0), ident(True)] == ["int", "float", "bool"]
    assert [ident(0), ident(0.0), ident(False)] == ["int", "float", "bool"]
    assert len(calls) == 6
    assert len({ident.cache_key(v) for v in (1, 1.0, True, Decimal(1), 1 + 0j, Level.LOW)}) == 6


def test_a_set_and_a_frozenset_or_a_tuple_and_a_list_are_different_keys() -> None:
    cache = Cache([MemoryTier(100)])

    @cache.cached(prefix="c")
    def kind(x: Any) -> str:
        return type(x).__name__

    assert kind({1, 2}) == "set"
    assert kind(frozenset({1, 2})) == "frozenset"
    assert kind((1, 2)) == "tuple"
    assert kind([1, 2]) == "list"
    assert kind.cache_key(set()) != kind.cache_key(frozenset()) != kind.cache_key({})
    assert kind.cache_key(set()) != kind.cache_key({})
    assert kind.cache_key([1]) != kind.cache_key([1.0]) != kind.cache_key([True])
    assert kind.cache_key({1: "a"}) != kind.cache_key({1.0: "a"})
    assert kind.cache_key((1, 2)) != kind.cache_key(((1, 2),))


def test_floats_zero_signs_and_nan_are_deterministic() -> None:
    assert key_of(0.0) != key_of(-0.0)  # some functions tell them apart (copysign, atan2)
    assert key_of(float("nan")) == key_of(-float("nan")) == key_of(math.nan) == "k:args=(nan)"
    assert key_of(float("inf")) == "k:args=(inf)" and key_of(-math.inf) == "k:args=(-inf)"
    assert key_of(0.1 + 0.2) == "k:args=(0.30000000000000004)"


# ---------------------------------------------------------------- every supported type


def zoned() -> list[Any]:
    if PARIS is None:
        return []
    paris = dt.datetime(2024, 7, 1, 12, 0, tzinfo=PARIS)
    return [
        (paris, "datetime(2024-07-01T12:00:00+02:00,'Europe/Paris')"),
        (dt.time(8, 0, tzinfo=PARIS), "time(08:00:00,'Europe/Paris')"),
    ]


SUPPORTED: list[tuple[Any, str]] = [
    (None, "None"),
    (True, "True"),
    (False, "False"),
    (42, "42"),
    (-7, "-7"),
    (1.5, "1.5"),
    (-0.0, "-0.0"),
    (1e100, "1e+100"),
    (2 + 0.5j, "complex(2.0,0.5)"),
    ("plain", "'plain'"),
    ("it's a \\ test\n", "'it\\'s a \\\\ test\\x0a'"),
    ("ü→😀", "'ü→😀'"),
    ("", "''"),
    (b"ab\x00'", "b'ab\\x00\\''"),
    (b"", "b''"),
    ((), "()"),
    ((1,), "(1)"),
    ([1, "a"], "[1,'a']"),
    ({"b": 1, "a": [2]}, "{'a':[2],'b':1}"),
    ({}, "{}"),
    ({3, 1, 2}, "{1,2,3}"),
    (set(), "set()"),
    (frozenset({"b", "a"}), "frozenset({'a','b'})"),
    (frozenset(), "frozenset()"),
    ({(1, 2): frozenset({None})}, "{(1,2):frozenset({None})}"),
    (dt.date(2024, 1, 31), "date(2024-01-31)"),
    (dt.datetime(2024, 1, 31, 12, 30), "datetime(2024-01-31T12:30:00)"),
    (dt.datetime(2024, 1, 31, 12, 30, 0, 5), "datetime(2024-01-31T12:30:00.000005)"),
    (
        dt.datetime(2024, 1, 31, 12, 30, tzinfo=dt.UTC),
        "datetime(2024-01-31T12:30:00+00:00)",
    ),
    (
        dt.datetime(2024, 1, 31, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        "datetime(2024-01-31T12:30:00-05:00)",
    ),
    (dt.time(23, 59, 1), "time(23:59:01)"),
    (dt.time(23, 59, 1, tzinfo=dt.UTC), "time(23:59:01+00:00)"),
    (dt.timedelta(days=-1, seconds=5), "timedelta(-1,5,0)"),
    (Decimal("1.10"), "Decimal(1.10)"),
    (Decimal("-0"), "Decimal(-0)"),
    (Decimal("NaN"), "Decimal(NaN)"),
    (
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "UUID(12345678-1234-5678-1234-567812345678)",
    ),
    (Color.RED, f"{__name__}:Color.RED"),
    (Level.LOW, f"{__name__}:Level.LOW"),
    (Perm.R | Perm.W, f"{__name__}:Perm.'R|W'"),
    (Point(1, "a"), f"{__name__}:Point(x=1,y='a')"),
    (Point(1, Point(2)), f"{__name__}:Point(x=1,y={__name__}:Point(x=2,y=None))"),
    (Pair(1, [2]), f"{__name__}:Pair(left=1,right=[2])"),
    (WithKey(("users", 7)), f"{__name__}:WithKey[('users',7)]"),
    (Point, f"class({__name__}:Point)"),
    (int, "class(builtins:int)"),
    *zoned(),
]


@pytest.mark.parametrize(
    ("value", "text"),
    [pytest.param(v, t, id=f"{i}-{type(v).__name__}") for i, (v, t) in enumerate(SUPPORTED)],
)
def test_each_supported_type_has_a_stable_readable_text(value: Any, text: str) -> None:
    assert key_of(value) == f"k:args=({text})"
    cache = Cache([MemoryTier(100)])
    calls = 0

    @cache.cached(prefix="s")
    def echo(x: Any, *, tag: str = "t") -> Any:
        nonlocal calls
        calls += 1
        return x

    assert echo(value) is value
    assert echo(value, tag="t") is value  # a hit: the same object, L1 hands back
    assert calls == 1
    assert echo.cache_key(x=value) == f"s:x={text},tag='t'"


def test_supported_values_all_have_different_keys() -> None:
    texts = [key_of(value) for value, _ in SUPPORTED]
    assert len(set(texts)) == len(texts)


def test_aware_and_naive_datetimes_and_times_are_different_keys() -> None:
    naive = dt.datetime(2024, 1, 31, 12, 30)
    assert key_of(naive) != key_of(naive.replace(tzinfo=dt.UTC))
    assert key_of(dt.time(1)) != key_of(dt.time(1, tzinfo=dt.UTC))
    # The same instant seen from two offsets: equal datetimes, different local times.
    utc = dt.datetime(2024, 1, 31, 12, tzinfo=dt.UTC)
    plus_one = utc.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert utc == plus_one and key_of(utc) != key_of(plus_one)
    assert key_of(dt.date(2024, 1, 31)) != key_of(dt.datetime(2024, 1, 31))


@needs_zones
def test_a_zone_is_part_of_the_key_beyond_its_offset() -> None:
    assert PARIS is not None
    fixed = dt.timezone(dt.timedelta(hours=2))
    summer = dt.datetime(2024, 7, 1, 12, tzinfo=PARIS)
    assert key_of(summer) != key_of(summer.replace(tzinfo=fixed))


class Opaque:
    pass


class MyStr(str):
    pass


class OddZone(dt.tzinfo):
    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Opaque(), "Opaque"),
        (bytearray(b"x"), "bytearray"),
        (MyStr("x"), "MyStr"),
        ([1, {"a": Opaque()}], "Opaque"),
        (dt.datetime(2024, 1, 1, tzinfo=OddZone()), "datetime"),
        (lambda: 1, "function"),
    ],
    ids=["object", "bytearray", "str-subclass", "nested", "odd-tzinfo", "function"],
)
def test_values_without_a_stable_text_are_refused_naming_parameter_and_type(
    value: Any, type_name: str
) -> None:
    cache = Cache([MemoryTier(100)])
    calls = 0

    @cache.cached(prefix="r")
    def use(count: int, payload: Any = None) -> int:
        nonlocal calls
        calls += 1
        return count

    with pytest.raises(InvalidKeyError) as info:
        use(1, payload=value)
    message = str(info.value)
    assert "'payload'" in message and f"type {type_name}" in message
    assert "key=" in message
    with pytest.raises(InvalidKeyError):
        use.cache_key(1, value)
    assert calls == 0


def test_classes_and_enums_defined_inside_a_function_are_refused() -> None:
    class Local(enum.Enum):
        A = 1

    with pytest.raises(InvalidKeyError, match="inside a function"):
        key_of(Local.A)
    with pytest.raises(InvalidKeyError, match="inside a function"):
        key_of(Local)


def test_a_value_containing_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidKeyError, match="key="):
        key_of(loop)


def test_errors_are_the_package_errors() -> None:
    assert issubclass(InvalidKeyError, TypeError)  # what callers of a bad key may catch
    assert issubclass(ConfigurationError, ValueError)


# ---------------------------------------------------------------- long keys


def test_long_keys_are_kept_whole_and_hashed_only_by_stores_that_need_it() -> None:
    cache = Cache([MemoryTier(100)])
    calls = 0

    @cache.cached(prefix="long")
    def size(text: str) -> int:
        nonlocal calls
        calls += 1
        return len(text)

    big = "x" * 5000
    assert size(big) == size(text=big) == 5000
    assert calls == 1
    key = size.cache_key(big)
    assert key == f"long:text='{big}'"
    memcached_rules = KeyRules(250, allow_whitespace=False)
    assert storage_key("ns:", key, memcached_rules).startswith("ns:#")  # prefix, marker, sha256
    short = size.cache_key("abc")
    assert storage_key("ns:", short, memcached_rules) == f"ns:{short}"  # readable as is


def test_huge_ints_are_encoded_without_the_digit_limit() -> None:
    huge = 7**10000  # more digits than str(int) allows by default
    assert key_of(huge) == f"k:args=({hex(huge)})"
    assert key_of(-huge) == f"k:args=({hex(-huge)})"
    assert key_of(huge) != key_of(huge + 1)


# ---------------------------------------------------------------- keys equal iff values are


def typed_equal(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down: what one cache entry means. Floats
    compare by value with the sign of zero (NaNs are all alike), Decimals by their text
    (1.1 and 1.10 print differently), datetimes by local time and offset."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, complex):
        return typed_equal(a.real, b.real) and typed_equal(a.imag, b.imag)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        return (a.replace(tzinfo=None, fold=0), a.utcoffset()) == (
            b.replace(tzinfo=None, fold=0),
            b.utcoffset(),
        )
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Point):
        return typed_equal(a.x, b.x) and typed_equal(a.y, b.y)
    if isinstance(a, set | frozenset):
        return len(a) == len(b) and all(any(typed_equal(x, y) for y in b) for x in a)
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(typed_equal(k, k2) and typed_equal(v, b[k2]) for k2 in b) for k, v in a.items()
        )
    return bool(a == b)


def rebuilt(value: Any) -> Any:
    """An equal, same-typed copy built another way: sets and dicts filled in reverse."""
    if type(value) is list:
        return [rebuilt(v) for v in value]
    if type(value) is tuple:
        return tuple(rebuilt(v) for v in value)
    if type(value) is Pair:
        return Pair(rebuilt(value.left), rebuilt(value.right))
    if type(value) is dict:
        return {rebuilt(k): rebuilt(v) for k, v in reversed(list(value.items()))}
    if type(value) in (set, frozenset):
        return type(value)(rebuilt(v) for v in reversed(list(value)))
    if type(value) is Point:
        return Point(rebuilt(value.x), rebuilt(value.y))
    if type(value) is Decimal:
        return Decimal(str(value))
    return value


tricky_text = st.text(alphabet=st.sampled_from("'\\\",()[]{}:=ab \x00\n\x7fü\ud800"), max_size=6)
zones = st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))])


def leaves(allow_nan: bool) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, -1.0, True, False, "1", b"1"]),
        st.floats(allow_nan=allow_nan),
        st.complex_numbers(allow_nan=allow_nan),
        tricky_text,
        st.text(max_size=5),
        st.binary(max_size=5),
        st.dates(),
        st.datetimes(timezones=zones),
        st.times(timezones=zones),
        st.timedeltas(),
        st.decimals(allow_nan=False, places=None),
        st.uuids(),
        st.sampled_from([*Color, Level.LOW, Perm.R, Perm.R | Perm.W, Point, int]),
    )


hashable = st.recursive(
    leaves(allow_nan=False),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
        st.builds(Point, inner, inner),
        st.builds(Pair, inner, inner),
    ),
    max_leaves=8,
)
values = st.recursive(
    leaves(allow_nan=True) | hashable,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(hashable, inner, max_size=3),
        st.sets(hashable, max_size=3),
        st.frozensets(hashable, max_size=3),
        st.builds(Point, inner, inner),
    ),
    max_leaves=10,
)
argument_tuples = st.lists(values, max_size=3).map(tuple)


@settings(max_examples=400, deadline=None)
@given(a=argument_tuples, data=st.data())
def test_two_argument_tuples_share_a_key_iff_equal_and_same_typed(a: Any, data: Any) -> None:
    b = rebuilt(a) if data.draw(st.booleans(), label="rebuilt") else data.draw(argument_tuples)
    assert (key_of(*a) == key_of(*b)) == typed_equal(a, b)


@settings(max_examples=300, deadline=None)
@given(a=values, b=values)
def test_single_values_share_a_key_iff_equal_and_same_typed(a: Any, b: Any) -> None:
    assert (key_of(a) == key_of(b)) == typed_equal(a, b)
    assert key_of(a) == key_of(rebuilt(a))


# ---------------------------------------------------------------- across processes

_PROCESS_CODE = """
import dataclasses, datetime as dt, enum, uuid
from decimal import Decimal
from stratacache import Cache, MemoryTier

class Color(enum.Enum):
    RED = 1

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: object = None

class Repo:
    def __init__(self, ident):
        self.ident = ident
    def __cache_key__(self):
        return self.ident

cache = Cache([MemoryTier(10)])

@cache.cached(prefix="users.get")
def get(user_id, *tags, scope=None, **options):
    return 0

@cache.cached(prefix="repo.load")
def load(self, name, version=1):
    return 0

calls = [
    get.cache_key(42),
    get.cache_key(user_id=42, scope=None),
    get.cache_key(42, "b", "a", scope={"x", "y", "z", "w"}, zeta=1.5, alpha=b"\\x00"),
    get.cache_key(frozenset({"pear", "apple", "fig", 3, 2.5, None, (1, "x")}), scope=True),
    get.cache_key({"k2": {"n", "m"}, "k1": [1, 1.0, True]}),
    get.cache_key(dt.datetime(2024, 2, 29, 23, 59, tzinfo=dt.timezone.utc), dt.date(2024, 1, 1)),
    get.cache_key(Decimal("3.140"), uuid.UUID(int=1), Color.RED, Point(1, {"q", "r"})),
    get.cache_key(-0.0, float("nan"), 10**30, "ü'\\n"),
    load.cache_key(Repo("main"), "readme"),
    load.cache_key(Repo("main"), name="readme", version=1),
]
print("\\n".join(calls))
"""

_EXPECTED = [
    "users.get:user_id=42,scope=None",
    "users.get:user_id=42,scope=None",
    "users.get:user_id=42,tags=('b','a'),scope={'w','x','y','z'},options={'alpha':b'\\x00',"
    "'zeta':1.5}",
    "users.get:user_id=frozenset({'apple','fig','pear',(1,'x'),2.5,3,None}),scope=True",
    "users.get:user_id={'k1':[1,1.0,True],'k2':{'m','n'}},scope=None",
    "users.get:user_id=datetime(2024-02-29T23:59:00+00:00),tags=(date(2024-01-01)),scope=None",
    "users.get:user_id=Decimal(3.140),tags=(UUID(00000000-0000-0000-0000-000000000001),"
    "__main__:Color.RED,__main__:Point(x=1,y={'q','r'})),scope=None",
    "users.get:user_id=-0.0,tags=(nan,1000000000000000000000000000000,'ü\\'\\x0a'),scope=None",
    "repo.load:self=__main__:Repo['main'],name='readme',version=1",
    "repo.load:self=__main__:Repo['main'],name='readme',version=1",
]


def test_keys_are_identical_in_fresh_processes_with_different_hash_seeds() -> None:
    outputs = [
        subprocess.run(
            [sys.executable, "-c", _PROCESS_CODE],
            capture_output=True,
            text=True,
            encoding="utf-8",
            check=True,
            env={
                "PYTHONHASHSEED": seed,
                "PATH": "",
                "PYTHONIOENCODING": "utf-8",
                **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
            },
        ).stdout.splitlines()
        for seed in ("0", "1", "12345")
    ]
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0] == _EXPECTED


# ---------------------------------------------------------------- helpers bound to an instance

# Every way to spell the call get(7) of ``def get(self, a, b=3)`` once self is bound. The
# positional (7, 3) is the dangerous one: left unbound, 7 becomes self and the helper
# silently names get(3) instead.
SPELLINGS_OF_GET_7: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((7,), {}),
    ((7, 3), {}),
    ((7,), {"b": 3}),
    ((), {"a": 7}),
    ((), {"b": 3, "a": 7}),
]
# get(3) is there to be the entry an unbound invalidate(7, 3) would wrongly drop.
OTHER_GET_CALLS: list[tuple[int, ...]] = [(7, 4), (3,), (8,)]


@pytest.mark.parametrize(("args", "kwargs"), SPELLINGS_OF_GET_7)
def test_instance_helpers_bind_self_with_skip_self(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    cache = Cache([MemoryTier(100)])
    ran: list[tuple[int, int]] = []

    class Prices:
        @cache.cached(prefix="prices", skip_self=True)
        def get(self, a: int, b: int = 3) -> tuple[int, int]:
            ran.append((a, b))
            return (a, b)

    one, other = Prices(), Prices()
    for call in [(7,), *OTHER_GET_CALLS]:
        one.get(*call)
    ran.clear()
    one.get.invalidate(*args, **kwargs)
    for call in [(7,), *OTHER_GET_CALLS]:
        one.get(*call)
        other.get(*call)  # skip_self: the instances share every entry
    assert ran == [(7, 3)]
    assert one.get.cache_key(*args, **kwargs) == "prices:a=7,b=3"
    assert other.get.cache_key(*args, **kwargs) == Prices.get.cache_key(one, 7)


@pytest.mark.parametrize(("args", "kwargs"), SPELLINGS_OF_GET_7)
def test_async_instance_helpers_bind_self_with_skip_self(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    cache = AsyncCache([MemoryTier(100)])
    ran: list[tuple[int, int]] = []

    class Prices:
        @cache.cached(prefix="aprices", skip_self=True)
        async def get(self, a: int, b: int = 3) -> tuple[int, int]:
            ran.append((a, b))
            await asyncio.sleep(0)
            return (a, b)

    async def scenario() -> None:
        one, other = Prices(), Prices()
        for call in [(7,), *OTHER_GET_CALLS]:
            await one.get(*call)
        ran.clear()
        # Still what the function's own helper returns: a coroutine to await.
        pending = one.get.invalidate(*args, **kwargs)
        assert inspect.iscoroutine(pending)
        await pending
        for call in [(7,), *OTHER_GET_CALLS]:
            await one.get(*call)
            await other.get(*call)
        assert ran == [(7, 3)]
        assert one.get.cache_key(*args, **kwargs) == "aprices:a=7,b=3"
        assert other.get.cache_key(*args, **kwargs) == Prices.get.cache_key(one, 7)

    asyncio.run(scenario())


class Repository:
    def __init__(self, name: str) -> None:
        self.name = name


def _file_calls(main: Repository, dev: Repository) -> list[tuple[Repository, tuple[Any, ...]]]:
    # What each test fills before invalidating main's file("a"): the same call on another
    # instance, and other arguments on the same one.
    return [(main, ("a",)), (main, ("a", 2)), (main, ("b",)), (dev, ("a",))]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a",), {}), (("a", 1), {}), ((), {"path": "a"}), (("a",), {"rev": 1})],
)
def test_instance_helpers_bind_self_with_key_self(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    cache = Cache([MemoryTier(100)])
    ran: list[tuple[str, str, int]] = []

    class Repo(Repository):
        @cache.cached(prefix="repo", key_self=lambda self: self.name)
        def file(self, path: str, rev: int = 1) -> str:
            ran.append((self.name, path, rev))
            return f"{self.name}/{path}@{rev}"

    main, dev = Repo("main"), Repo("dev")
    for obj, call in _file_calls(main, dev):
        obj.file(*call)
    ran.clear()
    main.file.invalidate(*args, **kwargs)
    for obj, call in _file_calls(main, dev):
        obj.file(*call)
    assert ran == [("main", "a", 1)]
    assert main.file.cache_key(*args, **kwargs) == "repo:self='main',path='a',rev=1"
    assert dev.file.cache_key(*args, **kwargs) == "repo:self='dev',path='a',rev=1"
    Repo.file.invalidate(dev, "a")  # through the class the instance still comes first
    assert dev.file("a") == "dev/a@1" and ran[-1] == ("dev", "a", 1)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a",), {}), (("a", 1), {}), ((), {"path": "a"}), (("a",), {"rev": 1})],
)
def test_async_instance_helpers_bind_self_with_key_self(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    cache = AsyncCache([MemoryTier(100)])
    ran: list[tuple[str, str, int]] = []

    class Repo(Repository):
        @cache.cached(prefix="arepo", key_self=lambda self: self.name)
        async def file(self, path: str, rev: int = 1) -> str:
            ran.append((self.name, path, rev))
            await asyncio.sleep(0)
            return f"{self.name}/{path}@{rev}"

    async def scenario() -> None:
        main, dev = Repo("main"), Repo("dev")
        for obj, call in _file_calls(main, dev):
            await obj.file(*call)
        ran.clear()
        await main.file.invalidate(*args, **kwargs)
        for obj, call in _file_calls(main, dev):
            await obj.file(*call)
        assert ran == [("main", "a", 1)]
        assert main.file.cache_key(*args, **kwargs) == "arepo:self='main',path='a',rev=1"
        await Repo.file.invalidate(dev, path="a")
        assert await dev.file("a") == "dev/a@1" and ran[-1] == ("dev", "a", 1)

    asyncio.run(scenario())


def test_a_function_declared_a_method_binds_when_put_on_a_class_later() -> None:
    cache = Cache([MemoryTier(100)])
    ran: list[tuple[int, int]] = []

    def lookup(self: Any, a: int, b: int = 3) -> int:
        ran.append((a, b))
        return a + b

    # Not written in the class body: skip_self= is what says it will be a method.
    class Table:
        get = cache.cached(prefix="table", skip_self=True)(lookup)

    table = Table()
    table.get(7)
    table.get(3)
    table.get.invalidate(7, 3)
    table.get(7)
    table.get(3)
    assert ran == [(7, 3), (3, 3), (7, 3)]


def test_a_cached_method_keeps_its_metadata_through_the_class_and_an_instance() -> None:
    cache = Cache([MemoryTier(100)])

    class Prices:
        @cache.cached(prefix="meta", skip_self=True)
        def get(self, a: int, b: int = 3) -> int:
            """The price of a, in b."""
            return a * b

    prices = Prices()
    bound = prices.get
    assert isinstance(Prices.get, types.FunctionType)  # through the class: the function
    assert bound(2) == 6 and bound.__self__ is prices and bound == prices.get
    assert Prices.get.__wrapped__ is bound.__wrapped__ is Prices.__dict__["get"].__wrapped__
    for face in (Prices.get, bound, Prices.__dict__["get"]):
        assert face.__name__ == "get"
        assert face.__qualname__.endswith("<locals>.Prices.get")
        assert face.__doc__ == "The price of a, in b."
        assert face.__module__ == __name__
    assert list(inspect.signature(Prices.get).parameters) == ["self", "a", "b"]
    assert list(inspect.signature(bound).parameters) == ["a", "b"]


_combo_cache = Cache([MemoryTier(100)])
_combo_ran: list[tuple[str, Any]] = []


class Units:
    # A class at module level: a classmethod's cls is keyed by its qualified name, which
    # a class defined inside a test function does not have uniquely.
    @staticmethod
    @_combo_cache.cached(prefix="units.scale")
    def scale(x: int) -> int:
        _combo_ran.append(("scale", x))
        return x * 10

    @classmethod
    @_combo_cache.cached(prefix="units.make")
    def make(cls, x: int) -> tuple[str, int]:
        _combo_ran.append(("make", x))
        return (cls.__name__, x)

    @_combo_cache.cached(prefix="units.under")
    @staticmethod
    def under(x: int) -> int:
        _combo_ran.append(("under", x))
        return -x


def test_staticmethod_and_classmethod_combinations_keep_their_helpers() -> None:
    units = Units()
    _combo_ran.clear()
    assert Units.scale(1) == units.scale(1) == 10
    units.scale.invalidate(1)  # a staticmethod has no instance to bind
    assert units.scale(1) == 10 and units.scale.cache_key(x=1) == "units.scale:x=1"

    assert Units.make(2) == units.make(2) == ("Units", 2)
    # Under a classmethod the helpers take the class first, as they always have.
    assert Units.make.cache_key(Units, 2) == f"units.make:cls=class({__name__}:Units),x=2"
    Units.make.invalidate(Units, 2)
    assert units.make(2) == ("Units", 2)

    assert Units.under(3) == -3
    Units.under.invalidate(3)
    units.under.invalidate(3)  # cached over a staticmethod: never bound, as before
    assert Units.under(3) == -3
    assert _combo_ran == [("scale", 1)] * 2 + [("make", 2)] * 2 + [("under", 3)] * 2


def test_plain_functions_stay_plain_functions() -> None:
    # No descriptor in the way: calling a decorated function costs what it always did.
    cache = Cache([MemoryTier(10)])

    def inner(a: int) -> int:
        return a

    assert type(keyed) is types.FunctionType
    assert type(cache.cached(prefix="inner")(inner)) is types.FunctionType

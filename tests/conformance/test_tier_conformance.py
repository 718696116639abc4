"""One suite every tier passes: memory, SQLite, Redis, Redis Cluster, memcached (the
networked ones on real servers the test suite starts). A new tier joins by adding a
factory to ``TIER_FACTORIES``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stratacache.entry import NEVER, Entry
from stratacache.tiers.base import Tier
from stratacache.tiers.memory import MemoryTier
from stratacache.tiers.sqlite import SQLiteTier

from ..conftest import FakeClock
from .remote_kit import REMOTE_SERVERS, remote_factory

pytestmark = pytest.mark.usefixtures("both_implementations")


@dataclasses.dataclass
class Profile:
    id: int
    name: str
    tags: list[str]
    score: float | None = None


class Point(msgspec.Struct):
    x: int
    y: int


TierFactory = Callable[..., Tier]


def memory_factory(tmp_path: Path, clock: FakeClock, request: Any) -> TierFactory:
    def make(
        *, namespace: str = "t", value_type: Any = Any, max_value_size: int | None = None, **_: Any
    ) -> Tier:
        return MemoryTier(
            10_000,
            clock=clock.monotonic,
            wall_clock=clock.time,
            max_value_bytes=max_value_size,
        )

    return make


def sqlite_factory(tmp_path: Path, clock: FakeClock, request: Any) -> TierFactory:
    def make(
        *, namespace: str = "t", value_type: Any = Any, max_value_size: int | None = None, **_: Any
    ) -> Tier:
        options: dict[str, Any] = {}
        if max_value_size is not None:
            options["max_value_size"] = max_value_size
        return SQLiteTier(
            tmp_path / "tier.db",
            namespace=namespace,
            value_type=value_type,
            wall_clock=clock.time,
            **options,
        )

    return make


def remote(kind: str) -> Callable[[Path, FakeClock, Any], TierFactory]:
    """A networked tier on its real server, started by the session fixture for its kind."""

    def factory(tmp_path: Path, clock: FakeClock, request: Any) -> TierFactory:
        server = request.getfixturevalue(REMOTE_SERVERS[kind])
        return remote_factory(kind, server, clock)

    return factory


TIER_FACTORIES: dict[str, Callable[[Path, FakeClock, Any], TierFactory]] = {
    "memory": memory_factory,
    "sqlite": sqlite_factory,
    **{kind: remote(kind) for kind in REMOTE_SERVERS},
}


@pytest.fixture(params=sorted(TIER_FACTORIES))
def make_tier(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[TierFactory]:
    created: list[Tier] = []
    factory = TIER_FACTORIES[request.param](tmp_path, clock, request)

    def make(**options: Any) -> Tier:
        tier = factory(**options)
        created.append(tier)
        return tier

    yield make
    for tier in created:
        tier.close()


@pytest.fixture
def tier(make_tier: TierFactory) -> Tier:
    t = make_tier()
    t.clear()
    return t


def entry(value: Any, clock: FakeClock, ttl: float | None = 60.0, **kw: Any) -> Entry:
    return Entry(value, NEVER if ttl is None else clock.time() + ttl, **kw)


VALUES: list[Any] = [
    "text",
    "ünïcödé ✓",
    0,
    -(2**40),
    3.25,
    True,
    None,
    [1, "two", None],
    {"a": {"b": [1, 2, 3]}, "c": None},
    b"\x00\x01binary",
    "",
    [],
    {},
]


def test_round_trip_of_plain_values(tier: Tier, clock: FakeClock) -> None:
    items = {f"k{i}": entry(v, clock) for i, v in enumerate(VALUES)}
    assert tier.set_many(items) == {}
    got = tier.get_many(list(items))
    assert {k: e.value for k, e in got.items()} == {k: e.value for k, e in items.items()}


def test_missing_keys_are_left_out(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({"present": entry(1, clock)})
    assert set(tier.get_many(["present", "absent"])) == {"present"}
    assert tier.get_many([]) == {}


def test_typed_values_survive_the_round_trip(make_tier: TierFactory, clock: FakeClock) -> None:
    profiles = make_tier(namespace="typed", value_type=Profile)
    profiles.clear()
    value = Profile(7, "ada", ["x", "y"], 1.5)
    profiles.set_many({"p": entry(value, clock)})
    got = profiles.get_many(["p"])["p"].value
    assert isinstance(got, Profile)
    assert got == value

    points = make_tier(namespace="points", value_type=Point)
    points.clear()
    points.set_many({"q": entry(Point(1, 2), clock)})
    got_point = points.get_many(["q"])["q"].value
    assert isinstance(got_point, Point) and got_point == Point(1, 2)


def test_expiry_is_checked_against_the_clock(tier: Tier, clock: FakeClock) -> None:
    tier.set_many(
        {
            "short": entry("s", clock, ttl=10),
            "long": entry("l", clock, ttl=100),
            "forever": entry("f", clock, ttl=None),
        }
    )
    clock.advance(9.5)
    assert set(tier.get_many(["short", "long", "forever"])) == {"short", "long", "forever"}
    clock.advance(1)
    assert set(tier.get_many(["short", "long", "forever"])) == {"long", "forever"}
    clock.advance(1000)
    got = tier.get_many(["short", "long", "forever"])
    assert set(got) == {"forever"}
    assert got["forever"].expires_at == NEVER


def test_remaining_lifetime_is_reported(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({"k": entry("v", clock, ttl=30)})
    clock.advance(10)
    remaining = tier.get_many(["k"])["k"].remaining(clock.time())
    assert remaining == pytest.approx(20, abs=0.01)


def test_entry_already_expired_is_not_stored(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({"old": Entry("v", clock.time() - 1)})
    assert tier.get_many(["old"]) == {}


def test_negative_flag_round_trips(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({"v": entry("x", clock), "n": Entry(None, clock.time() + 5, negative=True)})
    got = tier.get_many(["v", "n"])
    assert got["v"].value == "x" and not got["v"].negative
    assert got["n"].negative and got["n"].value is None


def test_overwrite_replaces_value_and_expiry(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({"k": entry("one", clock, ttl=5)})
    tier.set_many({"k": entry("two", clock, ttl=50)})
    clock.advance(10)
    assert tier.get_many(["k"])["k"].value == "two"
    tier.set_many({"k": Entry(None, clock.time() + 5, negative=True)})
    assert tier.get_many(["k"])["k"].negative


def test_delete_many(tier: Tier, clock: FakeClock) -> None:
    tier.set_many({k: entry(k, clock) for k in "abc"})
    tier.delete_many(["a", "c", "not-there"])
    assert set(tier.get_many(list("abc"))) == {"b"}
    tier.delete_many([])


def test_clear_only_touches_its_namespace(make_tier: TierFactory, clock: FakeClock) -> None:
    mine, theirs = make_tier(namespace="mine"), make_tier(namespace="theirs")
    mine.set_many({"k": entry(1, clock)})
    theirs.set_many({"k": entry(2, clock)})
    mine.clear()
    assert mine.get_many(["k"]) == {}
    assert theirs.get_many(["k"])["k"].value == 2


def test_large_batches(tier: Tier, clock: FakeClock) -> None:
    items = {f"key:{i}": entry(i, clock) for i in range(1500)}
    tier.set_many(items)
    got = tier.get_many([*items, "nope"])
    assert len(got) == 1500 and got["key:1499"].value == 1499


@pytest.mark.parametrize(
    "key",
    [
        "with space",
        "tab\there",
        "ключ",
        "x" * 400,
        "new\nline",
        "emoji 🎉",
        "semi;colon*?",
        "\ud800",  # a lone surrogate: a str, but not valid UTF-8
        "lone \udcff in text",
        "\xed\xa0\x80",  # what "\ud800" encodes to (surrogatepass), read as Latin-1
    ],
)
def test_awkward_keys(tier: Tier, clock: FakeClock, key: str) -> None:
    # The value is the key's repr: a lone surrogate is a valid key, but no serializer can
    # encode it as a value.
    tier.set_many({key: entry(repr(key), clock), key + "2": entry("other", clock)})
    got = tier.get_many([key])
    assert got[key].value == repr(key)
    tier.delete_many([key])
    assert tier.get_many([key, key + "2"]).keys() == {key + "2"}


def test_value_over_the_maximum_is_rejected_and_old_value_dropped(
    make_tier: TierFactory, clock: FakeClock
) -> None:
    t = make_tier(namespace="small", max_value_size=200)
    t.clear()
    t.set_many({"k": entry("small", clock)})
    rejected = t.set_many({"k": entry("x" * 1000, clock), "ok": entry("y", clock)})
    assert set(rejected) == {"k"} and rejected["k"] > 200
    got = t.get_many(["k", "ok"])
    assert set(got) == {"ok"}  # the stale smaller value must not survive the refused write


def test_async_faces(tier: Tier, clock: FakeClock) -> None:
    async def scenario() -> None:
        prepared = tier.prepare({"a": entry(1, clock), "b": entry(2, clock)})
        await tier.awrite(prepared)
        got = await tier.aget_many(["a", "b", "c"])
        assert {k: e.value for k, e in got.items()} == {"a": 1, "b": 2}
        await tier.adelete_many(["a"])
        assert set(await tier.aget_many(["a", "b"])) == {"b"}
        await tier.aclear()
        assert await tier.aget_many(["b"]) == {}

    asyncio.run(scenario())

"""L1 snapshots (stratacache.tiers.snapshot): MemoryTier(snapshot=PATH) saves on close and
loads when built, keeping types, remaining lifetimes and the hottest entries."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stratacache import Cache, MemoryTier, register_type
from stratacache.config import tier_from_url
from stratacache.entry import NEVER, Entry
from stratacache.errors import ConfigurationError
from stratacache.tiers import snapshot

from ..conftest import FakeClock


@register_type
@dataclass
class Profile:
    name: str
    tags: tuple[str, ...]


class Rates:
    """A stand-in for the cache's hot-key tracker: what a snapshot asks of it."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates = rates

    def rate(self, key: str) -> float:
        return self.rates.get(key, 0.0)


def tier(clock: FakeClock, path: Path, size: int = 100, **options: Any) -> MemoryTier:
    return MemoryTier(size, clock=clock.monotonic, wall_clock=clock.time, snapshot=path, **options)


def put(
    store: MemoryTier, clock: FakeClock, entries: dict[str, Any], ttl: float | None = None
) -> None:
    expires = NEVER if ttl is None else clock.time() + ttl
    store.set_many({key: Entry(value, expires) for key, value in entries.items()})


VALUES: dict[str, Any] = {
    "tuple": (1, "two", (3.0,)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a"}),
    "datetime": dt.datetime(2024, 5, 17, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "date": dt.date(2020, 2, 29),
    "decimal": decimal.Decimal("1.10"),
    "uuid": uuid.UUID(int=7),
    "bytes": b"\x00\xff",
    "int-keys": {1: "one", (2, 3): "pair"},
    "big": 2**80,
    "none": None,
    "dataclass": Profile("ada", ("admin",)),
    "nested": {"when": [dt.date(2021, 1, 1)], "ok": True},
}


def test_round_trip_keeps_values_and_their_types(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, VALUES)
    first.close()
    assert path.exists()

    second = tier(clock, path)
    got = {key: entry.value for key, entry in second.get_many(list(VALUES)).items()}
    assert got == VALUES
    for key, value in VALUES.items():
        assert type(got[key]) is type(value), key
    assert got["datetime"].utcoffset() == dt.timedelta(hours=2)
    assert type(got["int-keys"][(2, 3)]) is str and (2, 3) in got["int-keys"]


def test_remaining_lifetime_is_kept_and_expired_entries_dropped(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "l1.snap"
    start = clock.time()
    first = tier(clock, path)
    put(first, clock, {"long": 1}, ttl=100)
    put(first, clock, {"short": 2}, ttl=10)
    put(first, clock, {"forever": 3})
    first.close()

    clock.advance(30)  # the process was down for 30 s
    result = snapshot.load(tier(clock, tmp_path / "unused.snap"), path)
    assert result == snapshot.SnapshotResult(entries=2, skipped=0, expired=1)

    second = tier(clock, path)
    held = second.get_many(["long", "short", "forever"])
    assert set(held) == {"long", "forever"}
    assert held["long"].expires_at == pytest.approx(start + 100)
    assert held["long"].expires_at - clock.time() == pytest.approx(70)
    assert held["forever"].expires_at == NEVER
    clock.advance(71)
    assert "long" not in second.get_many(["long"])
    assert "forever" in second.get_many(["forever"])


def test_the_tiers_own_ttl_bounds_what_it_loads(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"a": 1}, ttl=1000)
    put(first, clock, {"b": 2})
    first.close()
    second = tier(clock, path, ttl=5)
    held = second.get_many(["a", "b"])
    assert held["a"].expires_at == pytest.approx(clock.time() + 5)
    assert held["b"].expires_at == pytest.approx(clock.time() + 5)


def test_the_limit_keeps_the_hottest_then_store_order(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path, snapshot_entries=3)
    put(first, clock, {key: key.upper() for key in ("a", "b", "c", "d", "e")})
    first.hot = Rates({"d": 9.0, "b": 4.0})  # type: ignore[assignment]
    first.close()

    second = tier(clock, path)
    assert second.keys() == ["d", "b", "a"]  # hottest first, then the untracked in order
    assert second.get_many(["d"])["d"].value == "D"


def test_without_a_tracker_the_store_order_is_kept(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path, snapshot_entries=2)
    put(first, clock, {"x": 1, "y": 2, "z": 3})
    first.close()
    assert tier(clock, path).keys() == ["x", "y"]


def test_loading_fills_no_more_than_the_bound(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {f"k{i}": i for i in range(10)})
    first.close()
    small = tier(clock, path, size=3)
    assert small.keys() == ["k0", "k1", "k2"]
    assert small.stats.evictions == 0


def test_values_msgpack_cannot_keep_are_left_out(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"ok": 1, "object": object(), "also-ok": [2]})
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        result = snapshot.save(first, path)
    assert result == snapshot.SnapshotResult(entries=2, skipped=1)
    assert "left out of the snapshot" in caplog.text and "object" in caplog.text
    assert tier(clock, path).keys() == ["ok", "also-ok"]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda blob: b"this is not a snapshot at all", id="foreign"),
        pytest.param(lambda blob: blob[: len(blob) // 2], id="truncated"),
        pytest.param(lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]), id="bit-flip"),
        pytest.param(lambda blob: b"", id="empty"),
    ],
)
def test_a_corrupt_snapshot_is_set_aside_and_the_tier_starts_empty(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"a": 1, "b": 2})
    first.close()
    path.write_bytes(damage(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="stratacache"):
        second = tier(clock, path)
    assert len(second) == 0
    assert "corrupt" in caplog.text
    assert not path.exists()
    assert (tmp_path / "l1.snap.corrupt").exists()
    put(second, clock, {"c": 3})
    second.close()
    assert tier(clock, path).keys() == ["c"]  # the next save is a good snapshot again


def test_a_snapshot_of_another_format_version_is_ignored(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"a": 1})
    first.close()
    blob = bytearray(path.read_bytes())
    blob[len(snapshot.MAGIC)] = snapshot.FORMAT_VERSION + 1
    path.write_bytes(bytes(blob))

    with caplog.at_level(logging.WARNING, logger="stratacache"):
        second = tier(clock, path)
    assert len(second) == 0
    assert "format version" in caplog.text
    assert path.exists() and not (tmp_path / "l1.snap.corrupt").exists()


def test_a_second_close_keeps_the_snapshot(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"a": 1})
    first.close()
    first.close()
    assert tier(clock, path).keys() == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l1.snap"]  # no temporary left


def test_an_unwritable_place_is_logged_not_raised(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tier(clock, tmp_path / "missing-dir" / "l1.snap")
    put(store, clock, {"a": 1})
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        store.close()
    assert "could not save the snapshot" in caplog.text


def test_options_from_a_url_and_checked(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    first = tier(clock, path)
    put(first, clock, {"a": 1, "b": 2, "c": 3})
    first.close()
    from_url = tier_from_url(f"memory://?snapshot={path}&snapshot_entries=2")
    assert from_url.options.snapshot == str(path)
    from_url.close()
    assert tier(clock, path).keys() == ["a", "b"]
    with pytest.raises(ConfigurationError, match="snapshot_entries"):
        tier(clock, path, snapshot_entries=0)


def test_a_cache_restarts_warm(tmp_path: Path) -> None:
    path = tmp_path / "l1.snap"
    loads: list[str] = []

    def origin(keys: list[str]) -> dict[str, Any]:
        loads.extend(keys)
        return {key: (key, len(key)) for key in keys}

    with Cache([MemoryTier(100, ttl=60, snapshot=path)], origin) as cache:
        cache.get_many(["user:1", "user:2"])
    assert loads == ["user:1", "user:2"]

    with Cache([MemoryTier(100, ttl=60, snapshot=path)], origin) as cache:
        assert cache.get("user:1") == ("user:1", 6)
        assert cache.get_many(["user:2"]) == {"user:2": ("user:2", 6)}
    assert loads == ["user:1", "user:2"]

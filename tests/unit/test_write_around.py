"""Write-around (issue 11, point 5): ``set`` writes the origin only, then invalidates
every level, so the next read loads what the origin stored."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from stratacache import (
    AsyncCache,
    Cache,
    CallableOrigin,
    ConfigurationError,
    InvalidKeyError,
    MemoryTier,
    OriginError,
    SQLiteTier,
)
from stratacache.hierarchy.write import WRITE_AROUND, WritePolicy

from ..conftest import Driver, FakeClock
from .test_recovery import FlakySQLiteTier


class Table:
    """The origin's rows, counting loads and stores."""

    def __init__(self, **rows: Any) -> None:
        self.rows: dict[str, Any] = dict(rows)
        self.loads: list[list[str]] = []
        self.stores = 0
        self.refuse = False

    def load(self, keys: list[str]) -> dict[str, Any]:
        self.loads.append(list(keys))
        return {key: self.rows[key] for key in keys if key in self.rows}

    def store(self, items: dict[str, Any]) -> None:
        if self.refuse:
            raise RuntimeError("the database said no")
        self.stores += 1
        self.rows.update(items)


def build(driver: Driver, clock: FakeClock, tmp_path: Path, origin: Any, **kw: Any) -> Any:
    cls = AsyncCache if driver.mode == "async" else Cache
    l2 = FlakySQLiteTier(tmp_path / "l2.db", ttl=None, wall_clock=clock.time)
    return cls(
        [MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time), l2],
        origin,
        write="around",
        clock=clock.monotonic,
        wall_clock=clock.time,
        **kw,
    )


def held(cache: Any, key: str) -> list[bool]:
    """Per level, whether it holds the key."""
    return [key in level.get_many([key]) for level in cache.levels]


def test_set_writes_the_origin_only_and_invalidates_every_level(
    driver: Driver, clock: FakeClock, tmp_path: Path
) -> None:
    table = Table(k="v1")
    cache = build(driver, clock, tmp_path, CallableOrigin(table.load, table.store))
    assert driver(cache.get("k")) == "v1"
    assert held(cache, "k") == [True, True]
    driver(cache.set("k", "v2"))
    assert table.rows["k"] == "v2"
    assert held(cache, "k") == [False, False]
    driver(cache.set_many({"k": "v3", "new": "n1"}))
    assert table.rows == {"k": "v3", "new": "n1"}
    assert held(cache, "k") == [False, False]
    assert held(cache, "new") == [False, False]
    assert table.stores == 2
    assert cache.stats().levels[0].writes == cache.stats().levels[1].writes == 1  # the fill
    driver(cache.close())


def test_the_next_get_loads_once_from_the_origin_and_fills(
    driver: Driver, clock: FakeClock, tmp_path: Path
) -> None:
    table = Table()
    cache = build(driver, clock, tmp_path, CallableOrigin(table.load, table.store))
    driver(cache.set("k", "v1"))
    assert table.loads == []
    assert driver(cache.get("k")) == "v1"
    assert table.loads == [["k"]]
    assert held(cache, "k") == [True, True]
    assert driver(cache.get("k")) == "v1"
    assert table.loads == [["k"]]  # served by L1 now
    driver(cache.close())


def test_a_value_no_level_can_hold_is_fine_but_keys_are_checked(
    driver: Driver, clock: FakeClock, tmp_path: Path
) -> None:
    table = Table()
    cls = AsyncCache if driver.mode == "async" else Cache
    cache = cls(
        [MemoryTier(100, max_value_bytes=64), SQLiteTier(tmp_path / "l2.db", max_value_size=64)],
        CallableOrigin(table.load, table.store),
        write="around",
    )
    big = "x" * 1000
    driver(cache.set("big", big))  # write-through would raise ValueTooLargeError
    assert table.rows["big"] == big
    assert driver(cache.get("big")) == big  # loaded; too large to be cached anywhere
    assert held(cache, "big") == [False, False]
    with pytest.raises(InvalidKeyError):
        driver(cache.set("", "v"))
    with pytest.raises(InvalidKeyError):
        driver(cache.set_many({"ok": 1, 3: 2}))  # type: ignore[dict-item]
    assert "ok" not in table.rows  # refused before the origin was touched
    driver(cache.close())


def test_an_origin_that_refuses_changes_no_level(
    driver: Driver, clock: FakeClock, tmp_path: Path
) -> None:
    table = Table(k="v1")
    cache = build(driver, clock, tmp_path, CallableOrigin(table.load, table.store))
    assert driver(cache.get("k")) == "v1"
    table.refuse = True
    with pytest.raises(OriginError, match="no level was changed"):
        driver(cache.set("k", "v2"))
    assert held(cache, "k") == [True, True]
    assert cache.stats().origin_errors == 1
    driver(cache.close())


def test_a_level_down_during_the_set_does_not_serve_the_old_value(
    driver: Driver, clock: FakeClock, tmp_path: Path
) -> None:
    table = Table(k="v1")
    cache = build(driver, clock, tmp_path, CallableOrigin(table.load, table.store))
    l2 = cache.levels[1]
    assert driver(cache.get("k")) == "v1"  # in L1 and L2
    l2.down = True
    driver(cache.set("k", "v2"))  # the origin takes it, L1 drops it, L2 cannot hear
    assert table.rows["k"] == "v2"
    assert "k" not in cache.levels[0].get_many(["k"])
    assert len(cache._hierarchy.repairs[1]) == 1  # L2 owes the delete
    assert driver(cache.get("k")) == "v2"  # from the origin; L2 skipped
    clock.advance(11)  # L1 expires; L2 is back, still holding v1 until it is repaired
    l2.down = False
    assert driver(cache.get("k")) == "v2"
    assert not cache._hierarchy.repairs[1]  # the delete was paid before L2 was read
    found = l2.get_many(["k"])
    assert "k" not in found or found["k"].value == "v2"
    driver(cache.close())


def test_a_load_in_flight_during_the_set_does_not_fill_the_old_value_sync(
    clock: FakeClock, tmp_path: Path
) -> None:
    rows = {"k": "v1"}
    started = threading.Event()
    release = threading.Event()
    blocking = [True]

    def load(keys: list[str]) -> dict[str, Any]:
        answer = {key: rows[key] for key in keys if key in rows}  # read before the set
        if blocking[0]:
            started.set()
            assert release.wait(5)
        return answer

    cache = Cache(
        [
            MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time),
            SQLiteTier(tmp_path / "l2.db", ttl=None, wall_clock=clock.time),
        ],
        CallableOrigin(load, rows.update),
        write="around",
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(cache.get("k")))
    reader.start()
    assert started.wait(5)
    cache.set("k", "v2")
    release.set()
    reader.join(5)
    assert not reader.is_alive()
    assert got == ["v1"]  # the read began before the set: it may answer the old value
    assert held(cache, "k") == [False, False]  # but it did not cache it
    blocking[0] = False
    assert cache.get("k") == "v2"
    cache.close()


def test_a_load_in_flight_during_the_set_does_not_fill_the_old_value_async(
    clock: FakeClock, tmp_path: Path
) -> None:
    rows = {"k": "v1"}

    async def scenario() -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        blocking = [True]

        async def load(keys: list[str]) -> dict[str, Any]:
            answer = {key: rows[key] for key in keys if key in rows}
            if blocking[0]:
                started.set()
                await release.wait()
            return answer

        async def store(items: dict[str, Any]) -> None:
            rows.update(items)

        cache = AsyncCache(
            [
                MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time),
                SQLiteTier(tmp_path / "l2.db", ttl=None, wall_clock=clock.time),
            ],
            CallableOrigin(load, store),
            write="around",
            clock=clock.monotonic,
            wall_clock=clock.time,
        )
        reading = asyncio.create_task(cache.get("k"))
        await asyncio.wait_for(started.wait(), 5)
        await cache.set("k", "v2")
        release.set()
        assert await asyncio.wait_for(reading, 5) == "v1"
        assert held(cache, "k") == [False, False]
        blocking[0] = False
        assert await cache.get("k") == "v2"
        await cache.close()

    asyncio.run(scenario())


def test_write_around_never_takes_the_l1_only_writer(driver: Driver) -> None:
    table = Table()
    rows = table.rows
    cls = AsyncCache if driver.mode == "async" else Cache
    cache = cls([MemoryTier(100)], CallableOrigin(table.load, table.store), write="around")
    assert cache._local_writer is None
    assert not cache._hierarchy.sets_stay_local()
    driver(cache.set("k", "v"))
    assert rows == {"k": "v"}
    assert "k" not in cache.levels[0].get_many(["k"])
    assert driver(cache.get("k")) == "v"  # loaded from the origin
    assert table.loads == [["k"]]
    driver(cache.close())


@pytest.mark.parametrize("cls", [Cache, AsyncCache])
def test_write_around_needs_an_origin_that_stores(cls: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"no origin.*write='through'"):
        cls([MemoryTier(10)], write="around")
    with pytest.raises(ConfigurationError, match=r"cannot store.*store function"):
        cls([MemoryTier(10)], lambda keys: {}, write="around")
    with pytest.raises(ConfigurationError, match="write='cache'"):
        cls([MemoryTier(10)], CallableOrigin(lambda keys: {}), write=WRITE_AROUND)
    with pytest.raises(ConfigurationError, match="neither"):
        cls(
            [MemoryTier(10)],
            CallableOrigin(lambda keys: {}, lambda items: None),
            write=WritePolicy("nothing", writes_origin=False, writes_levels=False),
        )
    with pytest.raises(ConfigurationError, match="accepted: through, cache, around"):
        cls([MemoryTier(10)], write="sideways")

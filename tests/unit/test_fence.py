"""A read that loads or promotes must not fill over a write that happened meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, CallableOrigin, MemoryTier, SQLiteTier
from stratacache.entry import Entry
from stratacache.hierarchy.fence import WriteFence
from stratacache.hierarchy.ops import perform
from stratacache.steps import drive

from ..conftest import Driver, FakeClock


def make(driver: Driver, clock: FakeClock, tmp_path: Path, origin: Any, l2: Any = None) -> Any:
    cls = AsyncCache if driver.mode == "async" else Cache
    l2 = l2 or SQLiteTier(tmp_path / "l2.db", ttl=100, wall_clock=clock.time)
    return cls(
        [MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time), l2],
        origin,
        clock=clock.monotonic,
        wall_clock=clock.time,
    )


@pytest.mark.parametrize("racing_write", ["set", "invalidate", "delete"])
def test_a_write_during_a_load_is_not_overwritten_by_the_fill(
    driver: Driver, clock: FakeClock, tmp_path: Path, racing_write: str
) -> None:
    db = {"k": "old"}
    cache: Any = None

    def write_meanwhile() -> Any:  # returns a coroutine for AsyncCache
        if racing_write == "set":
            return cache.set("k", "new")
        if racing_write == "invalidate":
            db["k"] = "new"
            return cache.invalidate("k")
        return cache.delete("k")

    def load(keys: list[str]) -> Any:
        value = {k: db[k] for k in keys if k in db}  # the row is read ...
        pending = write_meanwhile()  # ... and a write lands before the fill
        if driver.mode == "sync":
            return value

        async def after_the_write() -> dict[str, Any]:
            await pending
            return value

        return after_the_write()

    def store(items: dict[str, Any]) -> None:
        db.update(items)

    def delete(keys: list[str]) -> None:
        for k in keys:
            db.pop(k, None)

    cache = make(driver, clock, tmp_path, CallableOrigin(load, store, delete))
    assert driver(cache.get("k")) == "old"  # the read itself saw the old row
    for level in cache.levels:  # ... but did not put it back over the write
        cached = level.get_many(["k"]).get("k")
        assert cached is None or cached.value != "old", level.name
    got = driver(cache.get("k"))
    assert (got or None) == (None if racing_write == "delete" else "new")


class SlowReadTier(SQLiteTier):
    """Runs a callback between reading a row and returning it (a write racing the read)."""

    during_read: Any = None

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found = super().get_many(keys)
        if self.during_read is not None:
            callback, self.during_read = self.during_read, None
            callback()
        return found


def test_a_write_during_a_promotion_is_not_overwritten(clock: FakeClock, tmp_path: Path) -> None:
    db = {"k": "new"}
    l2 = SlowReadTier(tmp_path / "l2.db", ttl=100, wall_clock=clock.time)
    l2.set_many({"k": Entry("old", clock.time() + 50)})
    cache = Cache(
        [MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time), l2],
        CallableOrigin(lambda keys: {k: db[k] for k in keys if k in db}),
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    l2.during_read = lambda: cache.invalidate("k")
    assert cache.get("k") == "old"  # what L2 had when it was read
    assert "k" not in cache.levels[0]  # not promoted over the invalidate
    assert cache.get("k") == "new"


def test_fence_bookkeeping_is_bounded_and_errs_on_the_safe_side() -> None:
    fence = WriteFence(limit=3)
    start = fence.now()
    fence.mark(["a"])
    assert fence.changed_since(["a", "b"], start) == {"a"}
    later = fence.now()
    fence.mark(["b", "c", "d", "e"])  # pushes "a" and "b" out of the record
    assert fence.changed_since(["a"], later) == {"a"}  # cannot tell any more: "changed"
    recent = fence.now()
    assert fence.changed_since(["x"], recent) == set()
    fence.mark_all()
    assert fence.changed_since(["x"], recent) == {"x"}


def test_an_in_process_copy_older_than_a_write_seen_meanwhile_is_dropped(
    tmp_path: Path,
) -> None:
    """Two threads of one process write a key without a write lock (write-behind): the
    first to mark the fence may take the newer version, and the other's value may reach
    L1 last. The write that settles after seeing a newer version must not leave its
    value in L1 (the shared level keeps the newer one)."""
    cache = Cache([MemoryTier(100), SQLiteTier(tmp_path / "l2.db")])
    hierarchy = cache._hierarchy
    hierarchy.fence.mark(["k"])  # the other thread started first...
    hierarchy.seen.saw(["k"], [2**62])  # ...took a newer version, and settled
    cache.set("k", "older")
    assert cache.levels[0].get_many(["k"]) == {}
    cache.set("j", "alone")  # nothing newer seen: kept
    assert set(cache.levels[0].get_many(["j"])) == {"j"}
    cache.close()


def test_a_raced_fill_is_dropped_from_every_write_it_made_to_a_level(tmp_path: Path) -> None:
    """A fill writes a level twice when some keys were leased and others not; a key
    written meanwhile goes from the level whichever of the two writes put it there."""
    cache = Cache([MemoryTier(100), SQLiteTier(tmp_path / "l2.db")], lambda keys: {})
    hierarchy, l1 = cache._hierarchy, cache.levels[0]
    cache.set_many({"leased": 1, "unleased": 2, "calm": 3})
    epoch = hierarchy.fence.now()
    first = l1.prepare({"leased": Entry(1, float("inf")), "calm": Entry(3, float("inf"))})
    second = l1.prepare({"unleased": Entry(2, float("inf"))})
    hierarchy.fence.mark(["leased", "unleased"])  # written while the fill was written
    drive(hierarchy._unfill_raced([(0, first, None), (0, second, None)], epoch), perform)
    assert l1.get_many(["leased", "unleased", "calm"]).keys() == {"calm"}
    assert cache.levels[1].get_many(["leased", "unleased"]).keys() == {"leased", "unleased"}
    cache.close()

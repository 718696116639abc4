"""A level that misses a write or a delete while down must not serve the old value when it
comes back (auto-recovery), sync and async."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from stratacache import (
    AsyncCache,
    Cache,
    CallableOrigin,
    MemoryTier,
    SQLiteTier,
    TierUnavailableError,
)
from stratacache.entry import Entry
from stratacache.hierarchy.recovery import PendingRepairs

from ..conftest import Driver, FakeClock


class FlakySQLiteTier(SQLiteTier):
    """A real SQLite level that can be switched off, as a network level goes down."""

    down = False

    def perform(self, command: Any) -> Any:
        # Both faces go through here: the async one runs it in a worker thread.
        if self.down:
            raise TierUnavailableError(self.name, "switched off by the test")
        return super().perform(command)


@pytest.fixture
def setup(driver: Driver, clock: FakeClock, tmp_path: Path) -> Any:
    db: dict[str, Any] = {"k": "v1", "other": "o1"}
    l2 = FlakySQLiteTier(tmp_path / "l2.db", ttl=None, wall_clock=clock.time)
    cls = AsyncCache if driver.mode == "async" else Cache
    cache = cls(
        [MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time), l2],
        CallableOrigin(lambda keys: {k: db[k] for k in keys if k in db}, db.update),
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    return cache, l2, db


def test_invalidate_missed_by_a_down_level_is_replayed_when_it_returns(driver, clock, setup):
    cache, l2, db = setup
    assert driver(cache.get("k")) == "v1"  # now in L1 and L2
    l2.down = True
    db["k"] = "v2"
    driver(cache.invalidate("k"))  # L2 cannot hear it
    assert driver(cache.get("k")) == "v2"  # from the origin; L2 skipped
    clock.advance(11)  # L1 expires; L2 is back, still holding v1
    l2.down = False
    assert driver(cache.get("k")) == "v2"
    assert l2.get_many(["k"]).get("k", Entry("gone")).value != "v1"


def test_write_missed_by_a_down_level_is_not_served_stale(driver, clock, setup):
    cache, l2, db = setup
    driver(cache.get("k"))
    l2.down = True
    driver(cache.set("k", "v3"))  # the origin and L1 take it; L2 cannot
    assert db["k"] == "v3"
    l2.down = False
    clock.advance(11)
    assert driver(cache.get("k")) == "v3"


def test_delete_missed_by_a_down_level_does_not_bring_the_row_back(driver, clock, setup):
    cache, l2, db = setup
    driver(cache.get("other"))
    l2.down = True
    del db["other"]
    driver(cache.invalidate("other"))
    l2.down = False
    clock.advance(11)
    assert not driver(cache.get("other"))  # MISSING: the row is gone everywhere


def test_level_still_down_is_not_read_until_repaired(driver, clock, setup):
    cache, l2, _db = setup
    driver(cache.get("k"))
    l2.down = True
    driver(cache.invalidate("k"))
    assert cache._hierarchy.repairs[1]
    clock.advance(11)
    assert driver(cache.get("k")) == "v1"  # origin still says v1; L2 not used
    l2.down = False
    driver(cache.get("other"))  # any use of L2 pays the repair first
    assert not cache._hierarchy.repairs[1]


def test_failed_clear_clears_the_level_when_it_returns(driver, clock, setup):
    cache, l2, db = setup
    driver(cache.get("k"))
    l2.down = True
    driver(cache.clear())
    l2.down = False
    assert len(l2) == 1  # not yet: the repair happens on next use
    db["k"] = "v9"
    clock.advance(11)
    assert driver(cache.get("k")) == "v9"


def test_pending_repairs_are_bounded() -> None:
    pending = PendingRepairs(limit=3)
    pending.add(["a", "b"])
    assert len(pending) == 2 and not pending.clear_all
    pending.add(["c", "d"])
    assert pending.clear_all and len(pending) == 0
    pending.add(["e"])
    assert len(pending) == 0  # a clear is owed: single keys no longer matter
    pending.done([], cleared=pending.clears)
    assert not pending


def test_a_clear_pays_only_the_overflows_before_it_began() -> None:
    pending = PendingRepairs(limit=10)
    pending.overflow()
    began = pending.clears  # a clear starts...
    pending.overflow()  # ...and another write misses the level meanwhile
    pending.done([], cleared=began)
    assert pending.owed and pending.clear_all  # the later miss is still owed
    pending.done([], cleared=pending.clears)
    assert not pending


def test_keys_added_while_a_repair_settles_stay_owed() -> None:
    pending = PendingRepairs()
    pending.add(["a"])
    paid = list(pending.keys)
    pending.add(["b"])  # another thread, while the delete of "a" was in flight
    pending.done(paid)
    assert pending.owed and list(pending.keys) == ["b"]


def test_a_down_level_logs_one_line_per_interval_with_a_count(
    driver: Driver, clock: FakeClock, setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache, l2, db = setup
    l2.warnings.clock = clock.monotonic
    db.update({f"k{i}": i for i in range(100)})
    l2.down = True
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        for i in range(100):  # each miss fails the read and then the fill
            assert driver(cache.get(f"k{i}")) == i
        failures = l2.stats.errors
        clock.advance(l2.warnings.interval + 1)
        assert driver(cache.get("other")) == "o1"
    lines = [r.getMessage() for r in caplog.records if "L2" in r.getMessage()]
    assert failures >= 200
    assert len(lines) == 2, lines
    assert "more like it" in lines[1]
    held = int(lines[1].split("(")[-1].split()[0])
    assert held == failures - 1  # every failure is in a line or in its count

"""The L1 front door as a cache uses it: one L1 lookup per miss, no readers left behind
by loaders, and the slow path taken only for what the reader cannot answer."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import pytest

from stratacache import MISSING, Cache, MemoryTier, SQLiteTier, _accel
from stratacache.entry import Entry

from ..conftest import FakeClock


class CountingMemoryTier(MemoryTier):
    """Counts the flow's lookups (the fast paths read the dicts directly)."""

    lookups = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        self.lookups += 1
        return super().get_many(keys)


def two_levels(clock: FakeClock, tmp_path: Path) -> tuple[Cache, CountingMemoryTier]:
    l1 = CountingMemoryTier(100, ttl=5, clock=clock.monotonic, wall_clock=clock.time)
    l2 = SQLiteTier(tmp_path / "l2.db", wall_clock=clock.time)
    return Cache([l1, l2], clock=clock.monotonic, wall_clock=clock.time), l1


def test_a_miss_asks_l1_once(clock: FakeClock, tmp_path: Path) -> None:
    cache, l1 = two_levels(clock, tmp_path)
    assert cache.get("absent") is MISSING
    assert l1.lookups == 0  # the reader looked; the flow started at L2
    assert cache.get_or_load("loaded", lambda keys: {"loaded": 1}) == 1
    assert l1.lookups == 0
    snapshot = cache.stats().levels[0]
    assert (snapshot.hits, snapshot.misses) == (0, 2)
    assert cache.get("loaded") == 1  # filled into L1 on the way back
    assert cache.stats().levels[0].hits == 1


def test_an_expired_or_remembered_entry_goes_through_l1s_full_lookup(
    clock: FakeClock, tmp_path: Path
) -> None:
    cache, l1 = two_levels(clock, tmp_path)
    cache.set("k", "v")
    clock.advance(6)  # past L1's ttl: the reader misses, but L1 still holds the entry
    assert cache.get("k") == "v"  # from L2, which has no ttl of its own
    assert l1.lookups == 1  # the flow asked L1 (and dropped the expired entry)
    assert cache.stats().levels[0].misses == 1


def c_readers() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "Reader")


@pytest.mark.skipif(_accel.speedups is None, reason="the C speedups are not built here")
def test_registering_loaders_leaves_no_readers_behind(clock: FakeClock) -> None:
    cache = Cache([MemoryTier(10, clock=clock.monotonic, wall_clock=clock.time)])
    gc.collect()
    before = c_readers()
    for index in range(5):
        cache.register_loader(f"p{index}:", lambda keys: {k: k for k in keys})
    gc.collect()
    assert c_readers() == before
    assert cache.get("p3:x") == "p3:x"
    assert cache.get("p3:x") == "p3:x"
    snapshot = cache.stats().levels[0]
    assert (snapshot.hits, snapshot.misses) == (1, 1)

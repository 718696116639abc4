"""Event listeners: each kind fires for what happened, with its fields; a listener that
raises does not break the cache; with no listener the L1 paths stay the compiled ones."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier, SQLiteTier, _accel
from stratacache.events import CacheEvent
from tests.conftest import FakeClock


def recorder(cache: Cache | AsyncCache, *kinds: str) -> list[CacheEvent]:
    seen: list[CacheEvent] = []
    for kind in kinds:
        cache.on(kind, seen.append)
    return seen


def brief(events: list[CacheEvent]) -> list[tuple[Any, ...]]:
    return [(e.kind, e.key or e.keys, e.level) for e in events]


def test_hits_misses_and_loads_per_level(tmp_path: Path) -> None:
    l2 = SQLiteTier(str(tmp_path / "l2.db"))
    cache = Cache([MemoryTier(100), l2], origin=lambda keys: {k: k.upper() for k in keys}, bus=None)
    seen = recorder(cache, "hit", "miss", "load")
    assert cache.get("a") == "A"
    assert brief(seen) == [("miss", "a", "L1"), ("miss", "a", "L2"), ("load", ("a",), None)]
    assert seen[-1].duration is not None and seen[-1].duration >= 0 and seen[-1].error is None
    seen.clear()
    assert cache.get("a") == "A"
    assert brief(seen) == [("hit", "a", "L1")]
    seen.clear()
    cache.levels[0].clear()
    assert cache.get_many(["a"]) == {"a": "A"}
    assert brief(seen) == [("miss", "a", "L1"), ("hit", "a", "L2")]
    cache.close()


def test_the_counts_match_the_stats(tmp_path: Path) -> None:
    cache = Cache([MemoryTier(10)], origin=lambda keys: {k: k for k in keys})
    seen = recorder(cache, "hit", "miss", "load", "eviction")
    for i in range(200):
        cache.get(f"k{i % 30}")
    level = cache.stats().levels[0]
    kinds = [e.kind for e in seen]
    assert kinds.count("hit") == level.hits
    assert kinds.count("miss") == level.misses
    assert kinds.count("eviction") == level.evictions
    assert sum(len(e.keys) for e in seen if e.kind == "load") == cache.stats().origin_loads


def test_an_l1_only_cache_reports_hits_misses_and_evictions() -> None:
    cache = Cache([MemoryTier(2)])
    seen = recorder(cache, "hit", "miss", "eviction")
    for key in "abc":
        cache.set(key, key)
    assert cache.get("zz", None) is None  # a miss answered by the local path
    evicted = [e.key for e in seen if e.kind == "eviction"]
    assert len(evicted) == 1 and evicted[0] in "abc"
    assert ("miss", "zz", "L1") in brief(seen)
    kept = next(k for k in "abc" if k in cache.levels[0])
    cache.get(kept)
    assert brief(seen)[-1] == ("hit", kept, "L1")


def test_expiry_is_reported_when_an_expired_entry_is_dropped(clock: FakeClock) -> None:
    cache = Cache(
        [MemoryTier(10, clock=clock.monotonic, wall_clock=clock.time)],
        origin=lambda keys: {k: 1 for k in keys},
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    seen = recorder(cache, "expiry")
    cache.set("a", 1, ttl=5)
    clock.advance(6)
    assert cache.get("a") == 1  # expired: dropped, then loaded again
    assert brief(seen) == [("expiry", "a", "L1")]


def test_a_failed_load_and_the_stale_value_served_instead(clock: FakeClock) -> None:
    calls = [0]

    def origin(keys: list[str]) -> dict[str, int]:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("the database is down")
        return {k: 1 for k in keys}

    cache = Cache(
        [MemoryTier(10, ttl=5, clock=clock.monotonic, wall_clock=clock.time)],
        origin=origin,
        clock=clock.monotonic,
        wall_clock=clock.time,
        fail_safe_max_age=60,
    )
    assert cache.get("a") == 1
    seen = recorder(cache, "load", "stale")
    clock.advance(6)
    assert cache.get("a") == 1
    kinds = [e.kind for e in seen]
    assert kinds == ["load", "stale"]
    assert isinstance(seen[0].error, RuntimeError) and seen[0].keys == ("a",)
    assert seen[1].key == "a"
    assert cache.stats().stale_served == 1


def test_a_listener_that_raises_is_logged_and_the_cache_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = Cache([MemoryTier(10)], origin=lambda keys: {k: k for k in keys})

    def broken(event: CacheEvent) -> None:
        raise ValueError("listener bug")

    cache.on("miss", broken)
    cache.on("hit", broken)
    assert cache.get("a") == "a"
    assert cache.get("a") == "a"
    assert "listener bug" in caplog.text


def test_removing_listeners_and_bad_kinds() -> None:
    cache = Cache([MemoryTier(10)], origin=lambda keys: {k: k for k in keys})
    seen: list[CacheEvent] = []
    remove = cache.on("miss", seen.append)
    cache.get("a")
    remove()
    cache.get("b")
    assert [e.key for e in seen] == ["a"]
    cache.on("miss", seen.append)
    cache.off("miss", seen.append)
    cache.get("c")
    assert [e.key for e in seen] == ["a"]
    with pytest.raises(ValueError, match="unknown event kind 'hits'"):
        cache.on("hits", seen.append)
    with pytest.raises(TypeError, match="callable"):
        cache.on("hit", "print")  # type: ignore[arg-type]


@pytest.mark.skipif(_accel.speedups is None, reason="the compiled reader is not built")
def test_with_no_listener_the_l1_paths_are_the_compiled_ones() -> None:
    speedups = _accel.speedups
    assert speedups is not None
    cache = Cache([MemoryTier(10)])
    assert isinstance(cache.get, speedups.Reader)
    assert isinstance(cache.set, speedups.Writer)
    remove_hit = cache.on("hit", lambda e: None)
    remove_evict = cache.on("eviction", lambda e: None)
    assert not isinstance(cache.get, speedups.Reader)
    assert not isinstance(cache.set, speedups.Writer)
    remove_hit()
    remove_evict()
    assert isinstance(cache.get, speedups.Reader)
    assert isinstance(cache.set, speedups.Writer)
    cache.on("load", lambda e: None)  # not on the L1 paths: they stay compiled
    assert isinstance(cache.get, speedups.Reader)


def test_async_cache_reports_the_same(tmp_path: Path) -> None:
    async def main() -> list[CacheEvent]:
        cache = AsyncCache(
            [MemoryTier(10), SQLiteTier(str(tmp_path / "l2.db"))],
            origin=lambda keys: {k: k for k in keys},
            bus=None,
        )
        seen = recorder(cache, "hit", "miss", "load")
        await cache.get("a")
        await cache.get("a")
        await cache.close()
        return seen

    seen = asyncio.run(main())
    assert brief(seen) == [
        ("miss", "a", "L1"),
        ("miss", "a", "L2"),
        ("load", ("a",), None),
        ("hit", "a", "L1"),
    ]

"""Cache warming (stratacache.warming): strategies, limits, failures, and the sources."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stratacache import MISSING, AsyncCache, Cache, MemoryTier, SQLiteTier, SQLOrigin
from stratacache.entry import Entry
from stratacache.errors import ConfigurationError
from stratacache.hotkeys import HotKey
from stratacache.warming import (
    Warmer,
    WarmResult,
    from_cache,
    from_level,
    from_sql,
    keys_from_file,
    origin_query,
)

from ..conftest import FakeClock


class CountingOrigin:
    """A load function that answers ``value:<key>`` for keys not in ``absent`` and records
    every batch it is asked for; writes are recorded too (warming must make none)."""

    def __init__(self, absent: frozenset[str] = frozenset()) -> None:
        self.absent = absent
        self.batches: list[list[str]] = []
        self.stored: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def load(self, keys: list[str]) -> dict[str, Any]:
        with self.lock:
            self.batches.append(list(keys))
        return {key: f"value:{key}" for key in keys if key not in self.absent}

    def store(self, items: dict[str, Any]) -> None:
        self.stored.append(dict(items))

    @property
    def loaded(self) -> int:
        return sum(map(len, self.batches))


def by_name(results: list[WarmResult]) -> dict[str, WarmResult]:
    return {result.name: result for result in results}


@pytest.fixture
def origin() -> CountingOrigin:
    return CountingOrigin(absent=frozenset({"ghost"}))


@pytest.fixture
def cache(tmp_path: Path, origin: CountingOrigin) -> Iterator[Cache]:
    from stratacache import CallableOrigin

    levels = [MemoryTier(1000), SQLiteTier(tmp_path / "l2.db")]
    with Cache(levels, CallableOrigin(origin.load, origin.store), bus=None) as made:
        yield made


# ----------------------------------------------------------------------------- reading


def test_keys_are_read_through_into_every_level_then_served_without_the_origin(
    cache: Cache, origin: CountingOrigin
) -> None:
    warmer = Warmer(cache)
    warmer.add("keys", lambda: ["a", "b", "c", "ghost"])
    (result,) = warmer.run()
    assert result.name == "keys" and result.success and result.error is None
    assert result.items == 3  # "ghost" is in no level and not in the origin
    assert result.duration >= 0
    l1, l2 = cache.levels
    assert set(l1.get_many(["a", "b", "c"])) == {"a", "b", "c"}
    assert set(l2.get_many(["a", "b", "c"])) == {"a", "b", "c"}

    loads_before = cache.stats().origin_loads
    batches_before = len(origin.batches)
    assert cache.get_many(["a", "b", "c"]) == {k: f"value:{k}" for k in "abc"}
    assert cache.stats().origin_loads == loads_before
    assert len(origin.batches) == batches_before
    assert origin.stored == []


def test_keys_are_sent_in_batches_with_progress(cache: Cache, origin: CountingOrigin) -> None:
    seen: list[tuple[str, int, int | None]] = []
    warmer = Warmer(cache, batch_size=500, progress=lambda *args: seen.append(args))
    warmer.add("many", lambda: [f"k{i}" for i in range(1200)])
    (result,) = warmer.run()
    assert result.items == 1200
    assert [len(batch) for batch in origin.batches] == [500, 500, 200]
    assert seen == [
        ("many", 0, 1200),
        ("many", 500, 1200),
        ("many", 1000, 1200),
        ("many", 1200, 1200),
    ]


def test_a_lazy_iterator_has_no_total(cache: Cache) -> None:
    seen: list[tuple[str, int, int | None]] = []
    warmer = Warmer(cache, batch_size=2, progress=lambda *args: seen.append(args))
    warmer.add("gen", lambda: (f"k{i}" for i in range(5)))
    (result,) = warmer.run()
    assert result.items == 5
    assert seen == [("gen", 0, None), ("gen", 2, None), ("gen", 4, None), ("gen", 5, None)]


# ----------------------------------------------------------------------------- filling


def test_values_are_filled_never_written_to_the_origin(
    cache: Cache, origin: CountingOrigin
) -> None:
    warmer = Warmer(cache)
    warmer.add("mapping", lambda: {"m1": 1, "m2": (2, "two")})
    warmer.add("pairs", lambda: [("p1", [1]), ("p2", None)])
    results = by_name(warmer.run())
    assert results["mapping"].items == 2 and results["pairs"].items == 2
    assert origin.stored == [] and origin.batches == []
    assert cache.get_many(["m1", "m2", "p1", "p2"]) == {
        "m1": 1,
        "m2": (2, "two"),
        "p1": [1],
        "p2": None,
    }
    assert set(cache.levels[1].get_many(["m1", "m2", "p1", "p2"])) == {"m1", "m2", "p1", "p2"}
    assert origin.batches == []


def test_a_fill_keeps_what_the_cache_already_holds(cache: Cache) -> None:
    cache.set("a", "written")
    warmer = Warmer(cache)
    warmer.add("stale", lambda: {"a": "from a source"})
    (result,) = warmer.run()
    assert result.items == 1
    assert cache.get("a") == "written"


def test_a_triple_bounds_the_lifetime(clock: FakeClock) -> None:
    l1 = MemoryTier(100, clock=clock.monotonic, wall_clock=clock.time)
    with Cache([l1], clock=clock.monotonic, wall_clock=clock.time) as cache:
        warmer = Warmer(cache, batch_size=10)
        warmer.add("ttl", lambda: [("short", 1, 5.0), ("long", 2, None), ("gone", 3, -1.0)])
        (result,) = warmer.run()
        assert result.items == 2  # an already-expired triple is not warmed
        clock.advance(6)
        assert cache.get("short") is MISSING
        assert cache.get("long") == 2
        assert cache.get("gone") is MISSING


# ----------------------------------------------------------------------------- failures


def test_a_failing_strategy_does_not_stop_the_others(cache: Cache) -> None:
    def broken() -> list[str]:
        raise RuntimeError("database is down")

    warmer = Warmer(cache)
    warmer.add("broken", broken)
    warmer.add("fine", lambda: ["a", "b"])
    warmer.add("missing-file", keys_from_file("/no/such/keys.txt"))
    warmer.add("not-keys", lambda: [42])
    results = warmer.run()
    assert [r.name for r in results] == ["broken", "fine", "missing-file", "not-keys"]
    got = by_name(results)
    assert got["fine"].success and got["fine"].items == 2
    assert not got["broken"].success
    assert got["broken"].error == "RuntimeError: database is down"
    assert not got["missing-file"].success
    assert "/no/such/keys.txt" in (got["missing-file"].error or "")
    assert "does not exist" in (got["missing-file"].error or "")
    assert not got["not-keys"].success and "expected a key" in (got["not-keys"].error or "")


def test_a_strategy_that_returns_a_single_string_fails(cache: Cache) -> None:
    warmer = Warmer(cache)
    warmer.add("oops", lambda: "user:1")
    (result,) = warmer.run()
    assert not result.success and "iterable of keys" in (result.error or "")
    assert cache.levels[0].get_many(["u"]) == {}


def test_a_strategy_past_its_timeout_fails_and_keeps_its_count(cache: Cache) -> None:
    async def slow() -> Any:
        async def keys() -> Any:
            yield "a"
            yield "b"
            await asyncio.sleep(5)
            yield "c"

        return keys()

    warmer = Warmer(cache, batch_size=1, timeout=0.2)
    warmer.add("slow", slow)
    warmer.add("quick", lambda: ["q"], timeout=5)
    started = time.monotonic()
    results = by_name(warmer.run())
    assert time.monotonic() - started < 3
    assert not results["slow"].success
    assert results["slow"].error == "timed out after 0.2 s"
    assert results["slow"].items == 2
    assert results["quick"].success


# ----------------------------------------------------------------------------- concurrency


def test_concurrency_is_limited_for_async_strategies(cache: Cache) -> None:
    active = peak = 0

    def make() -> Any:
        async def strategy() -> list[str]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            return []

        return strategy

    warmer = Warmer(cache, max_concurrency=2)
    for i in range(6):
        warmer.add(f"s{i}", make())
    results = warmer.run()
    assert all(r.success for r in results)
    assert peak == 2


def test_concurrency_is_limited_for_sync_strategies(cache: Cache) -> None:
    lock = threading.Lock()
    active = peak = 0

    def strategy() -> list[str]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return ["a"]

    warmer = Warmer(cache, max_concurrency=3)
    for i in range(7):
        warmer.add(f"s{i}", strategy)
    assert all(r.success for r in warmer.run())
    assert peak == 3


def test_run_from_inside_an_event_loop(cache: Cache) -> None:
    warmer = Warmer(cache)
    warmer.add("keys", lambda: ["a"])

    async def main() -> list[WarmResult]:
        return warmer.run()

    (result,) = asyncio.run(main())
    assert result.success and result.items == 1


# ----------------------------------------------------------------------------- async cache


def test_async_strategies_warm_an_async_cache() -> None:
    loaded: list[list[str]] = []

    async def load(keys: list[str]) -> dict[str, Any]:
        loaded.append(list(keys))
        await asyncio.sleep(0)
        return {key: key.upper() for key in keys}

    async def main() -> None:
        cache = AsyncCache([MemoryTier(100)], load)
        warmer = Warmer(cache, batch_size=2)

        @warmer.strategy("async-keys")
        async def keys() -> list[str]:
            await asyncio.sleep(0)
            return ["a", "b", "c"]

        @warmer.strategy("async-values")
        async def values() -> dict[str, int]:
            return {"v": 1}

        warmer.add("sync-keys", lambda: ["d"])
        results = by_name(await warmer.arun())
        assert results["async-keys"].items == 3
        assert results["async-values"].items == 1
        assert results["sync-keys"].items == 1
        loads = cache.stats().origin_loads
        calls = len(loaded)
        assert await cache.get_many(["a", "b", "c", "d", "v"]) == {
            "a": "A",
            "b": "B",
            "c": "C",
            "d": "D",
            "v": 1,
        }
        assert cache.stats().origin_loads == loads and len(loaded) == calls
        await cache.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- registering


def test_registration_is_checked(cache: Cache) -> None:
    warmer = Warmer(cache)
    warmer.add("a", lambda: [])
    with pytest.raises(ConfigurationError, match="already registered"):
        warmer.add("a", lambda: [])
    with pytest.raises(ConfigurationError, match="callable"):
        warmer.add("b", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        Warmer(cache, max_concurrency=0)
    with pytest.raises(ConfigurationError, match="Cache or an AsyncCache"):
        Warmer(object())  # type: ignore[arg-type]
    assert warmer.names == ["a"]


# ----------------------------------------------------------------------------- sources


def test_keys_from_file_skips_blanks_and_comments(tmp_path: Path, cache: Cache) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# the hottest\nuser:1\n\n   user:2  \n#user:3\nuser:4\n", encoding="utf-8")
    assert keys_from_file(path)() == ["user:1", "user:2", "user:4"]


def test_origin_query_formats_ids_into_keys(cache: Cache, origin: CountingOrigin) -> None:
    warmer = Warmer(cache)
    warmer.add("ids", origin_query(lambda: [1, 2, 3], key_format="user:{}"))

    async def pairs() -> list[tuple[int, str]]:
        return [(7, "seven")]

    warmer.add("pairs", origin_query(pairs, key_format="n:{}", with_values=True))
    results = by_name(warmer.run())
    assert results["ids"].items == 3 and results["pairs"].items == 1
    assert sorted(key for batch in origin.batches for key in batch) == [
        "user:1",
        "user:2",
        "user:3",
    ]
    assert cache.get("n:7") == "seven"
    with pytest.raises(ConfigurationError, match="key_format"):
        origin_query(lambda: [], key_format="user:{id}")


@pytest.fixture
def users_db(tmp_path: Path) -> Path:
    path = tmp_path / "users.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, hits INTEGER)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"u{i}", i) for i in range(20)])
    conn.commit()
    conn.close()
    return path


def test_from_sql_reads_the_hottest_ids_through_the_origin(users_db: Path) -> None:
    url = f"sqlite:///{users_db}"
    users = SQLOrigin(url, "users", key_column="id", key_prefix="user:")
    l1 = MemoryTier(100)
    with Cache([l1], users) as cache:
        warmer = Warmer(cache)
        query = "SELECT id FROM users ORDER BY hits DESC LIMIT :n"
        warmer.add("url", from_sql(url, query, key_format="user:{}", params={"n": 3}))
        warmer.add("origin", from_sql(users, "SELECT id FROM users WHERE id < 2"))
        results = by_name(warmer.run())
        assert results["url"].items == 3 and results["origin"].items == 2
        assert sorted(l1.keys()) == [
            "user:0",
            "user:1",
            "user:17",
            "user:18",
            "user:19",
        ]
        loads = cache.stats().origin_loads
        assert cache.get("user:19") == {"id": 19, "name": "u19", "hits": 19}
        assert cache.stats().origin_loads == loads


def test_from_sql_with_values_needs_no_origin(users_db: Path) -> None:
    url = f"sqlite:///{users_db}"
    with Cache([MemoryTier(100)]) as cache:
        warmer = Warmer(cache)
        warmer.add(
            "names",
            from_sql(
                url,
                "SELECT id, name FROM users WHERE id < 2",
                key_format="name:{}",
                value_column="name",
            ),
        )
        warmer.add(
            "rows",
            from_sql(url, "SELECT * FROM users WHERE id = 5", key_format="user:{}", rows=True),
        )
        warmer.add("bad", from_sql(url, "SELECT id FROM users", value_column="nope"))
        results = by_name(warmer.run())
        assert results["names"].items == 2 and results["rows"].items == 1
        assert not results["bad"].success and "no column 'nope'" in (results["bad"].error or "")
        assert cache.get("name:1") == "u1"
        row = cache.get("user:5")
        assert row == {"id": 5, "name": "u5", "hits": 5}
        assert all(type(name) is str for name in row)


# ----------------------------------------------------------------------------- another cache


def test_from_cache_copies_the_hottest_keys_with_their_remaining_lifetime(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_loads: list[str] = []
    cold_loads: list[str] = []

    def warm_origin(keys: list[str]) -> dict[str, Any]:
        warm_loads.extend(keys)
        return {key: (key, len(key)) for key in keys}

    def cold_origin(keys: list[str]) -> dict[str, Any]:
        cold_loads.extend(keys)
        return {key: "from the cold origin" for key in keys}

    clocks: dict[str, Any] = {"clock": clock.monotonic, "wall_clock": clock.time}
    warm_l1 = MemoryTier(100, ttl=100, **clocks)
    cold_l1 = MemoryTier(100, **clocks)
    with (
        Cache([warm_l1], warm_origin, **clocks) as warm,
        Cache([cold_l1], cold_origin, **clocks) as cold,
    ):
        warm.get_many(["a", "b", "c"])
        clock.advance(30)
        ranked = [HotKey("b", 9.0), HotKey("a", 4.0), HotKey("c", 1.0)]
        monkeypatch.setattr(warm, "hot_keys", lambda n: ranked[:n])
        warm_loads.clear()

        warmer = Warmer(cold)
        warmer.add("copy", from_cache(warm, n=2))
        (result,) = warmer.run()
        assert result.success and result.items == 2
        assert warm_loads == [] and cold_loads == []
        copied = cold_l1.get_many(["a", "b", "c"])
        assert set(copied) == {"a", "b"}
        assert copied["b"].value == ("b", 1)
        assert copied["b"].expires_at - clock.time() == pytest.approx(70)

        clock.advance(69)
        assert cold.get("b") == ("b", 1)
        clock.advance(2)
        assert cold.get("b") == "from the cold origin"


def test_from_cache_follows_the_warm_caches_own_hot_keys() -> None:
    cold_l1 = MemoryTier(100)
    with (
        Cache([MemoryTier(100)], lambda keys: {k: k * 2 for k in keys}) as warm,
        Cache([cold_l1]) as cold,
    ):
        for _ in range(5):
            warm.get("hot")
            warm.invalidate("hot")  # each read a miss: counted one at a time
        warm.get("hot")
        warm.get_many(["cool", "cold"])
        reported = [hot.key for hot in warm.hot_keys(1)]
        assert reported == ["hot"]
        warmer = Warmer(cold)
        warmer.add("copy", from_cache(warm, n=1))
        (result,) = warmer.run()
        assert result.items == 1
        assert cold_l1.keys() == ["hot"]


def test_from_cache_does_not_copy_tagged_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    levels = [MemoryTier(100), SQLiteTier(tmp_path / "warm.db")]
    cold_l1 = MemoryTier(100)
    with Cache(levels, bus=None) as warm, Cache([cold_l1]) as cold:
        warm.set("plain", 1)
        warm.set("tagged", 2, tags=["team:7"])
        ranked = [HotKey("tagged", 2.0), HotKey("plain", 1.0)]
        monkeypatch.setattr(warm, "hot_keys", lambda n: ranked[:n])
        warmer = Warmer(cold)
        warmer.add("copy", from_cache(warm))
        (result,) = warmer.run()
        assert result.items == 1
        assert cold_l1.keys() == ["plain"]


def test_from_level_copies_given_keys_only_live_untagged_values(
    clock: FakeClock, tmp_path: Path
) -> None:
    level = SQLiteTier(tmp_path / "warm.db", clock=clock.monotonic, wall_clock=clock.time)
    now = clock.time()
    level.set_many(
        {
            "never": Entry({"x": 1}),
            "soon": Entry(2, now + 10),
            "absent-value": Entry(None, now + 10, negative=True),
            "tagged": Entry(3, now + 10, tags=("team:7",), written_at=now),
        }
    )
    clocks: dict[str, Any] = {"clock": clock.monotonic, "wall_clock": clock.time}
    with Cache([MemoryTier(100, **clocks)], **clocks) as cold:
        warmer = Warmer(cold)
        keys = ["never", "soon", "absent-value", "tagged", "nowhere"]
        warmer.add("copy", from_level(level, keys))
        clock.advance(4)
        (result,) = warmer.run()
        assert result.items == 2
        held = cold.levels[0].get_many(keys)
        assert set(held) == {"never", "soon"}
        assert held["never"].expires_at == float("inf")
        assert held["soon"].expires_at == pytest.approx(now + 10)
    level.close()

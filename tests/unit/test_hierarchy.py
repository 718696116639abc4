"""The hierarchy's behaviour, run against both Cache and AsyncCache (the ``driver``
fixture): promotion, fill, TTL rules, writes, invalidation, batch reads, None values,
negative caching, loaders, size limits, close."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from stratacache import (
    MISSING,
    AsyncCache,
    Cache,
    CacheClosedError,
    CallableOrigin,
    ConfigurationError,
    InvalidKeyError,
    MemoryTier,
    OriginError,
    SerializationError,
    SQLiteTier,
    ValueTooLargeError,
)
from stratacache.entry import Entry

from ..conftest import Driver, FakeClock

pytestmark = pytest.mark.usefixtures("both_implementations")


class RecordingOrigin:
    """A dict standing in for a database, recording every call."""

    def __init__(self, data: dict[str, Any] | None = None, *, fail: bool = False) -> None:
        self.data = dict(data or {})
        self.loads: list[list[str]] = []
        self.stores: list[dict[str, Any]] = []
        self.deletes: list[list[str]] = []
        self.fail = fail

    def load(self, keys: list[str]) -> dict[str, Any]:
        self.loads.append(list(keys))
        if self.fail:
            raise RuntimeError("database down")
        return {k: self.data[k] for k in keys if k in self.data}

    def store(self, items: dict[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("database down")
        self.stores.append(dict(items))
        self.data.update(items)

    def delete(self, keys: list[str]) -> None:
        self.deletes.append(list(keys))
        for k in keys:
            self.data.pop(k, None)

    def origin(self) -> CallableOrigin:
        return CallableOrigin(self.load, self.store, self.delete)


def make_cache(
    driver: Driver,
    clock: FakeClock,
    tmp_path: Path,
    origin: Any = None,
    *,
    l1_ttl: float | None = 10.0,
    l2_ttl: float | None = 100.0,
    **options: Any,
) -> Any:
    cls = AsyncCache if driver.mode == "async" else Cache
    levels = [
        MemoryTier(100, ttl=l1_ttl, clock=clock.monotonic, wall_clock=clock.time),
        SQLiteTier(tmp_path / "l2.db", ttl=l2_ttl, wall_clock=clock.time),
    ]
    return cls(levels, origin, clock=clock.monotonic, wall_clock=clock.time, **options)


@pytest.fixture
def db() -> RecordingOrigin:
    return RecordingOrigin({f"user:{i}": {"id": i} for i in range(10)})


@pytest.fixture
def cache(driver: Driver, clock: FakeClock, tmp_path: Path, db: RecordingOrigin) -> Any:
    c = make_cache(driver, clock, tmp_path, db.origin())
    yield c
    if not c.closed:
        driver(c.close())


def l1(cache: Any) -> MemoryTier:
    return cache.levels[0]  # type: ignore[no-any-return]


def l2(cache: Any) -> SQLiteTier:
    return cache.levels[1]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ read path


def test_miss_everywhere_loads_once_and_fills_every_level(driver, cache, db) -> None:
    assert driver(cache.get("user:1")) == {"id": 1}
    assert db.loads == [["user:1"]]
    assert "user:1" in l1(cache)
    assert l2(cache).get_many(["user:1"])["user:1"].value == {"id": 1}
    assert driver(cache.get("user:1")) == {"id": 1}
    assert db.loads == [["user:1"]]  # the second read was an L1 hit
    stats = cache.stats()
    assert [s.hits for s in stats.levels] == [1, 0]
    assert stats.origin_loads == 1


def test_hit_at_a_lower_level_is_copied_up_with_its_remaining_lifetime(
    driver, cache, clock, db
) -> None:
    l2(cache).set_many({"k": Entry("from-l2", clock.time() + 4.0)})
    assert driver(cache.get("k")) == "from-l2"
    assert db.loads == []
    assert "k" in l1(cache)
    # L1's own ttl is 10 s but the L2 copy had only 4 s left: L1 must not outlive it.
    clock.advance(4.5)
    assert "k" not in l1(cache)
    assert driver(cache.get("k")) is MISSING


def test_expired_upper_level_falls_through_to_the_level_below(driver, cache, clock, db) -> None:
    driver(cache.get("user:2"))
    clock.advance(11)  # past L1's 10 s, within L2's 100 s
    assert "user:2" not in l1(cache)
    assert driver(cache.get("user:2")) == {"id": 2}
    assert db.loads == [["user:2"]]
    assert cache.stats().levels[1].hits == 1


def test_batch_read_asks_each_level_once_for_the_missing_keys(driver, cache, clock, db) -> None:
    driver(cache.get("user:1"))  # now in L1 and L2
    l2(cache).set_many({"user:2": Entry({"id": 2}, clock.time() + 50)})
    cache.reset_stats()
    db.loads.clear()
    got = driver(cache.get_many(["user:1", "user:2", "user:3", "nobody", "user:1"]))
    assert got == {"user:1": {"id": 1}, "user:2": {"id": 2}, "user:3": {"id": 3}}
    stats = cache.stats()
    assert stats.levels[0].lookups == 4  # duplicates are asked once
    assert stats.levels[1].lookups == 3  # only what L1 lacked
    assert stats.levels[1].hits == 1
    assert db.loads == [["user:3", "nobody"]]  # one origin call for what every level lacked


def test_none_is_a_value_and_a_miss_is_the_sentinel(driver, tmp_path, clock) -> None:
    db = RecordingOrigin({"none": None})
    cache = make_cache(driver, clock, tmp_path, db.origin())
    assert driver(cache.get("none")) is None
    assert driver(cache.get("none")) is None
    assert db.loads == [["none"]]
    assert driver(cache.get("absent")) is MISSING
    assert driver(cache.get("absent", "fallback")) == "fallback"
    clock.advance(11)  # L1 expired: None must survive the shared tier too
    assert driver(cache.get("none")) is None
    assert db.loads == [["none"], ["absent"], ["absent"]]
    driver(cache.close())


def test_negative_caching_remembers_not_found_for_a_while(driver, tmp_path, clock) -> None:
    db = RecordingOrigin()
    cache = make_cache(driver, clock, tmp_path, db.origin(), negative_ttl=5)
    assert driver(cache.get("ghost")) is MISSING
    assert driver(cache.get("ghost")) is MISSING
    assert driver(cache.get_many(["ghost"])) == {}
    assert db.loads == [["ghost"]]
    clock.advance(6)
    assert driver(cache.get("ghost")) is MISSING
    assert db.loads == [["ghost"], ["ghost"]]
    # once the row exists and the remembered miss is invalidated, it is found
    db.data["ghost"] = "boo"
    driver(cache.invalidate("ghost"))
    assert driver(cache.get("ghost")) == "boo"
    driver(cache.close())


def test_without_negative_caching_every_miss_asks_the_origin(driver, cache, db) -> None:
    for _ in range(3):
        assert driver(cache.get("ghost")) is MISSING
    assert db.loads == [["ghost"]] * 3


def test_no_origin_means_plain_cache(driver, tmp_path, clock) -> None:
    cache = make_cache(driver, clock, tmp_path)
    assert driver(cache.get("k")) is MISSING
    driver(cache.set("k", [1, 2]))
    assert driver(cache.get("k")) == [1, 2]
    driver(cache.close())


# ------------------------------------------------------------------------ loaders


def test_source_order_call_loader_then_registered_then_origin(driver, cache, db) -> None:
    calls: list[str] = []

    def registered(keys: list[str]) -> dict[str, Any]:
        calls.append("registered")
        return {k: "registered" for k in keys}

    def call_loader(keys: list[str]) -> dict[str, Any]:
        calls.append("call")
        return {k: "call" for k in keys}

    cache.register_loader("user:", registered)
    assert driver(cache.get_or_load("user:5", call_loader)) == "call"
    assert driver(cache.get("user:6")) == "registered"
    assert driver(cache.get("other")) is MISSING  # falls to the origin, which lacks it
    assert calls == ["call", "registered"]
    assert db.loads == [["other"]]


def test_longest_registered_prefix_wins(driver, cache) -> None:
    cache.register_loader("a:", lambda keys: {k: "short" for k in keys})

    @cache.loader("a:b:")
    def longer(keys: list[str]) -> dict[str, str]:
        return {k: "long" for k in keys}

    got = driver(cache.get_many(["a:x", "a:b:y"]))
    assert got == {"a:x": "short", "a:b:y": "long"}


def test_async_loader_is_awaited_by_async_cache_and_refused_by_sync(driver, cache) -> None:
    async def loader(keys: list[str]) -> dict[str, Any]:
        return {k: "async" for k in keys}

    if driver.mode == "async":
        assert driver(cache.get_or_load("k", loader)) == "async"
    else:
        with pytest.raises(ConfigurationError, match="AsyncCache"):
            cache.get_or_load("k", loader)


def test_loader_returning_a_non_mapping_is_an_origin_error(driver, cache) -> None:
    with pytest.raises(OriginError, match="mapping"):
        driver(cache.get_or_load("k", lambda keys: ["not", "a", "mapping"]))


def test_origin_failure_is_an_origin_error_with_the_cause(driver, tmp_path, clock) -> None:
    db = RecordingOrigin({"k": 1}, fail=True)
    cache = make_cache(driver, clock, tmp_path, db.origin())
    with pytest.raises(OriginError) as info:
        driver(cache.get("k"))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert cache.stats().origin_errors == 1
    driver(cache.close())


def test_get_or_load_returns_missing_when_the_loader_lacks_the_key(driver, cache) -> None:
    assert driver(cache.get_or_load("k", lambda keys: {})) is MISSING


# ------------------------------------------------------------------------ TTL rules


def test_upper_level_longer_ttl_than_lower_is_rejected(driver, tmp_path, clock) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_cache(driver, clock, tmp_path, l1_ttl=600, l2_ttl=60)
    message = str(info.value)
    assert "L1" in message and "L2" in message and "600s" in message and "60s" in message


def test_level_without_ttl_follows_the_level_below(driver, tmp_path, clock) -> None:
    cache = make_cache(driver, clock, tmp_path, l1_ttl=None, l2_ttl=30)
    driver(cache.set("k", "v"))
    clock.advance(31)
    assert driver(cache.get("k")) is MISSING
    driver(cache.close())


def test_per_call_ttl_bounds_every_level(driver, cache, clock) -> None:
    driver(cache.set("k", "v", ttl=3))
    clock.advance(3.5)
    assert "k" not in l1(cache)
    assert l2(cache).get_many(["k"]) == {}


def test_jitter_only_shortens_and_keeps_levels_ordered(driver, tmp_path, clock) -> None:
    cache = make_cache(
        driver, clock, tmp_path, ttl_jitter=0.5, rng=random.Random(7), l1_ttl=10, l2_ttl=12
    )
    driver(cache.set_many({f"k{i}": i for i in range(50)}))
    upper = l1(cache).get_many([f"k{i}" for i in range(50)])
    lower = l2(cache).get_many([f"k{i}" for i in range(50)])
    now = clock.time()
    spread = {round(e.expires_at - now, 3) for e in upper.values()}
    assert len(spread) > 10  # expiries really are spread
    for key, entry in upper.items():
        assert entry.expires_at <= lower[key].expires_at + 1e-6
        assert now + 5 - 1e-6 <= entry.expires_at <= now + 10 + 1e-6
    driver(cache.close())


# ------------------------------------------------------------------------ writes


def test_write_through_writes_origin_then_every_level(driver, cache, db) -> None:
    driver(cache.set("user:1", {"id": 1, "name": "new"}))
    assert db.stores == [{"user:1": {"id": 1, "name": "new"}}]
    assert l1(cache).get_many(["user:1"])["user:1"].value == {"id": 1, "name": "new"}
    assert l2(cache).get_many(["user:1"])["user:1"].value == {"id": 1, "name": "new"}
    assert driver(cache.get("user:1")) == {"id": 1, "name": "new"}
    assert db.loads == []


def test_origin_refusing_a_write_leaves_every_level_untouched(driver, tmp_path, clock) -> None:
    db = RecordingOrigin()
    cache = make_cache(driver, clock, tmp_path, db.origin())
    driver(cache.set("k", "old"))
    db.fail = True
    with pytest.raises(OriginError):
        driver(cache.set("k", "new"))
    assert l1(cache).get_many(["k"])["k"].value == "old"
    assert l2(cache).get_many(["k"])["k"].value == "old"
    driver(cache.close())


def test_cache_aside_write_mode_never_touches_the_origin(driver, tmp_path, clock) -> None:
    db = RecordingOrigin()
    cache = make_cache(driver, clock, tmp_path, db.origin(), write="cache")
    driver(cache.set("k", "v"))
    assert db.stores == []
    assert driver(cache.get("k")) == "v"
    # the seed's pattern: the application writes its database, then invalidates
    db.data["k"] = "from-db"
    driver(cache.invalidate("k"))
    assert driver(cache.get("k")) == "from-db"
    driver(cache.close())


def test_invalidate_drops_every_level_but_not_the_origin(driver, cache, db) -> None:
    driver(cache.get("user:3"))
    driver(cache.invalidate("user:3"))
    assert "user:3" not in l1(cache)
    assert l2(cache).get_many(["user:3"]) == {}
    assert "user:3" in db.data
    assert driver(cache.get("user:3")) == {"id": 3}
    assert len(db.loads) == 2


def test_delete_removes_from_origin_and_every_level(driver, cache, db) -> None:
    driver(cache.get("user:4"))
    driver(cache.delete("user:4"))
    assert db.deletes == [["user:4"]]
    assert "user:4" not in db.data
    assert "user:4" not in l1(cache)
    assert driver(cache.get("user:4")) is MISSING


def test_clear_empties_every_level(driver, cache) -> None:
    driver(cache.set_many({"a": 1, "b": 2}))
    driver(cache.clear())
    assert len(l1(cache)) == 0
    assert len(l2(cache)) == 0


def test_value_too_large_for_one_level_goes_to_the_others(driver, tmp_path, clock) -> None:
    cls = AsyncCache if driver.mode == "async" else Cache
    levels = [
        MemoryTier(100, max_value_bytes=200, clock=clock.monotonic, wall_clock=clock.time),
        SQLiteTier(tmp_path / "l2.db", max_value_size=10_000, wall_clock=clock.time),
    ]
    cache = cls(levels, clock=clock.monotonic, wall_clock=clock.time)
    driver(cache.set("big", "x" * 1000))
    assert "big" not in levels[0]
    assert levels[1].get_many(["big"])["big"].value == "x" * 1000
    assert cache.stats().levels[0].too_large == 1
    assert driver(cache.get("big")) == "x" * 1000  # served by L2, not copied up
    with pytest.raises(ValueTooLargeError, match="every level"):
        driver(cache.set("huge", "x" * 20_000))
    assert driver(cache.get("huge")) is MISSING
    driver(cache.close())


def test_value_too_large_everywhere_is_refused_before_the_origin_is_written(
    driver, tmp_path, clock
) -> None:
    db = RecordingOrigin()
    cls = AsyncCache if driver.mode == "async" else Cache
    levels = [MemoryTier(10, max_value_bytes=100, clock=clock.monotonic, wall_clock=clock.time)]
    cache = cls(levels, db.origin(), clock=clock.monotonic, wall_clock=clock.time)
    with pytest.raises(ValueTooLargeError):
        driver(cache.set("k", "y" * 500))
    assert db.stores == []
    driver(cache.close())


# ------------------------------------------------------------------------ keys, close


@pytest.mark.parametrize("bad", [1, b"bytes", None, "", ("t",)])
def test_keys_must_be_non_empty_str(driver, cache, bad) -> None:
    with pytest.raises(InvalidKeyError):
        driver(cache.get(bad))
    with pytest.raises(InvalidKeyError):
        driver(cache.set(bad, 1))


def test_unhashable_key_gives_a_clear_error(driver, cache) -> None:
    with pytest.raises(InvalidKeyError, match="list"):
        driver(cache.get(["a"]))


def test_close_is_idempotent_and_later_calls_raise(driver, cache) -> None:
    driver(cache.set("k", 1))
    driver(cache.close())
    driver(cache.close())
    assert cache.closed
    for call in (
        lambda: cache.get("k"),
        lambda: cache.set("k", 2),
        lambda: cache.get_many(["k"]),
        lambda: cache.invalidate("k"),
        lambda: cache.delete("k"),
        lambda: cache.clear(),
    ):
        with pytest.raises(CacheClosedError, match="closed"):
            driver(call())


def test_context_managers(tmp_path, clock) -> None:
    import asyncio

    with Cache([MemoryTier(10)]) as cache:
        cache.set("k", 1)
    assert cache.closed

    async def scenario() -> AsyncCache:
        async with AsyncCache([MemoryTier(10)]) as acache:
            await acache.set("k", 1)
            assert await acache.get("k") == 1
        return acache

    assert asyncio.run(scenario()).closed


# ------------------------------------------------------------------------ stats


def test_stats_and_average_response_time(driver, cache, clock) -> None:
    for _ in range(3):
        driver(cache.get("user:1"))
    clock.advance(11)
    driver(cache.get("user:1"))  # L2 hit
    driver(cache.get("nobody"))
    stats = cache.stats()
    top, second = stats.levels
    assert (top.lookups, top.hits, top.misses) == (5, 2, 3)
    assert (second.lookups, second.hits, second.misses) == (3, 1, 2)
    assert top.hit_rate == pytest.approx(2 / 5)
    assert second.mean_us is not None and second.p99_us is not None
    expected = (top.mean_us or 0.0) + top.miss_rate * (
        (second.mean_us or 0.0) + second.miss_rate * (stats.origin_mean_us or 0.0)
    )
    assert stats.amat_us == pytest.approx(expected)
    assert stats.no_cache_us == stats.origin_mean_us


def test_l1_latency_is_measured_when_asked(tmp_path) -> None:
    cache = Cache([MemoryTier(10)], measure_l1_latency=True)
    cache.set("k", 1)
    for _ in range(10):
        cache.get("k")
    level = cache.stats().levels[0]
    assert level.hits == 10 and level.mean_us is not None and level.mean_us > 0


def test_corrupt_shared_payload_is_a_counted_logged_miss(driver, cache, clock, db, caplog) -> None:
    import sqlite3

    driver(cache.get("user:1"))
    conn = sqlite3.connect(l2(cache).path)
    conn.execute("UPDATE stratacache_entries SET value = ? WHERE key = ?", (b"garbage", "user:1"))
    conn.commit()
    conn.close()
    clock.advance(11)  # L1 expired: the read goes to L2
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        assert driver(cache.get("user:1")) == {"id": 1}  # reloaded from the origin
    # read twice: by the read, and by its lease, which looks at a stored value before
    # loading over it (another process may have just filled it)
    assert cache.stats().levels[1].corrupt == 2
    assert any("header" in r.getMessage() for r in caplog.records)
    assert len(db.loads) == 2


def test_payload_copied_under_another_key_is_a_miss(driver, cache, clock, db) -> None:
    import sqlite3

    driver(cache.set("a", "secret-of-a"))
    conn = sqlite3.connect(l2(cache).path)
    (blob,) = conn.execute("SELECT value FROM stratacache_entries WHERE key='a'").fetchone()
    conn.execute(
        "INSERT INTO stratacache_entries (namespace, key, value, expires_at, written_at) "
        "VALUES ('default', 'b', ?, NULL, 0)",
        (blob,),
    )
    conn.commit()
    conn.close()
    assert driver(cache.get("b")) is MISSING
    assert cache.stats().levels[1].corrupt == 2  # the read, and its lease's look


def test_get_or_load_default_and_a_helpful_error_for_per_key_loaders(driver, cache) -> None:
    assert driver(cache.get_or_load("nobody", lambda keys: {}, default="dflt")) == "dflt"
    with pytest.raises(OriginError, match="list of keys and returns a mapping"):
        driver(cache.get_or_load("x", lambda key: {"a": 1}[key]))


class Opaque:
    """A value msgpack cannot encode."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)

    __hash__ = object.__hash__


def test_loaded_value_a_level_cannot_encode_is_still_returned_and_cached_above(
    driver, tmp_path, clock
) -> None:
    db = RecordingOrigin({"odd": Opaque(), "plain": 1})
    cache = make_cache(driver, clock, tmp_path, db.origin())
    got = driver(cache.get_many(["odd", "plain"]))
    assert got == {"odd": Opaque(), "plain": 1}
    assert driver(cache.get("odd")) == Opaque()  # L1 keeps objects as they are
    assert db.loads == [["odd", "plain"]]
    assert l2(cache).get_many(["plain"])["plain"].value == 1  # the batch's other key
    assert cache.stats().levels[1].unencodable == 1
    with pytest.raises(SerializationError):  # an explicit set still says so
        driver(cache.set("odd2", Opaque()))
    driver(cache.close())

"""write="behind" through the public Cache: nothing lost after kill -9, a bounded queue
while the origin is down, reads that see queued writes, and order with deletes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from stratacache import MISSING, Cache, CallableOrigin, MemoryTier, WriteBehindFullError
from stratacache.origin import SQLOrigin

from .origin_table import make_origin_db, origin_rows

SPAWN = mp.get_context("spawn")


class DownOrigin(CallableOrigin):
    """An origin whose writes fail while ``down`` is set (its reads work)."""

    def __init__(self, origin: SQLOrigin) -> None:
        super().__init__(origin.load_many, self._store, origin.delete_many)
        self.origin = origin
        self.down = threading.Event()
        self.down.set()

    def _store(self, items: Any) -> Any:
        if self.down.is_set():
            raise ConnectionError("the origin is down")
        return self.origin.store_many(items)


def _queue_then_wait(origin_url: str, level2: str, journal: str, count: int, q: Any) -> None:
    origin = DownOrigin(SQLOrigin(origin_url, "items", value_column="value"))
    cache = Cache(
        [MemoryTier(1000), level2],
        origin,
        write="behind",
        journal=journal,
        max_pending_writes=count,
    )
    for i in range(count):
        cache.set(f"k{i}", f"v{i}")
    q.put(cache.stats().write_behind["depth"])
    time.sleep(60)  # killed here, with everything queued


def test_kill_9_with_10000_queued_writes_loses_nothing(tmp_path: Path) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path)
    level2 = f"sqlite:///{tmp_path}/l2.db"
    journal = str(tmp_path / "journal")
    q = SPAWN.Queue()
    child = SPAWN.Process(target=_queue_then_wait, args=(origin_url, level2, journal, 10_000, q))
    child.start()
    depth = q.get(timeout=120)
    assert depth == 10_000  # every write is queued, none reached the origin
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert origin_rows(origin_path) == {}
    # a new process starts on the same journal with the origin back: it replays
    origin = SQLOrigin(origin_url, "items", value_column="value")
    cache = Cache([MemoryTier(1000), level2], origin, write="behind", journal=journal)
    cache.close()  # flushes
    rows = origin_rows(origin_path)
    assert len(rows) == 10_000
    assert all(rows[f"k{i}"] == f"v{i}" for i in range(10_000))


def test_origin_down_keeps_the_queue_bounded_and_drains_after(tmp_path: Path) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path)
    origin = DownOrigin(SQLOrigin(origin_url, "items", value_column="value"))
    cache = Cache(
        [MemoryTier(1000), f"sqlite:///{tmp_path}/l2.db"],
        origin,
        write="behind",
        journal=tmp_path / "journal",
        max_pending_writes=300,
    )
    accepted: dict[str, str] = {}
    refused = 0
    deadline = time.monotonic() + 2.0  # the origin stays down this long
    i = 0
    while time.monotonic() < deadline:
        key, value = f"k{i % 1000}", f"v{i}"
        try:
            cache.set(key, value)
            accepted[key] = value
        except WriteBehindFullError as exc:
            refused += 1
            assert "max_pending=300" in str(exc)
        assert cache.stats().write_behind["depth"] <= 300
        i += 1
    assert refused > 0
    assert origin_rows(origin_path) == {}
    # the cache answers with the queued values meanwhile, even after L1 lets them go
    cache.levels[0].clear()
    sample = next(iter(accepted))
    assert cache.get(sample) == accepted[sample]
    origin.down.clear()  # back
    cache.close()
    assert origin_rows(origin_path) == accepted


def test_a_delete_is_queued_behind_the_writes_of_its_key(tmp_path: Path) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path)
    origin = DownOrigin(SQLOrigin(origin_url, "items", value_column="value"))
    cache = Cache([MemoryTier(100)], origin, write="behind", journal=tmp_path / "j")
    cache.set("a", "1")
    cache.set("b", "2")
    cache.delete("a")
    cache.levels[0].clear()
    assert cache.get("a") is MISSING  # the queued delete wins over the origin's answer
    assert cache.get("b") == "2"
    origin.down.clear()
    cache.close()
    assert origin_rows(origin_path) == {"b": "2"}


def test_write_behind_needs_a_writable_origin(tmp_path: Path) -> None:
    from stratacache import ConfigurationError

    with pytest.raises(ConfigurationError, match="write='behind'"):
        Cache([MemoryTier(10)], lambda keys: {}, write="behind", journal=tmp_path / "j")
    with pytest.raises(ConfigurationError, match="journal="):
        Cache([MemoryTier(10)], journal=tmp_path / "j")


def _drained(cache: Cache, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while cache.stats().write_behind["depth"]:
        assert time.monotonic() < deadline, cache.stats().write_behind
        time.sleep(0.01)


def _agreed(caches: list[Cache], key: str, expected: str, seconds: float = 2.0) -> list[Any]:
    """What each cache reads for ``key`` once they all read ``expected`` (the bus has a
    moment to deliver), or what they read when ``seconds`` ran out."""
    deadline = time.monotonic() + seconds
    while True:
        seen = [cache.get(key) for cache in caches]
        if all(value == expected for value in seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.01)


@contextmanager
def two_writers(tmp_path: Path) -> Iterator[tuple[Path, DownOrigin, Cache, Cache]]:
    """Two write-behind caches over one SQLite level and origin, as two processes would
    be: the first's origin is down until its ``down`` is cleared, the second's works.
    Yields the origin's path, the first's origin, and the two caches."""
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path)
    level2 = f"sqlite:///{tmp_path}/l2.db"
    slow = DownOrigin(SQLOrigin(origin_url, "items", value_column="value"))
    first = Cache([MemoryTier(100), level2], slow, write="behind", journal=tmp_path / "j1")
    second = Cache(
        [MemoryTier(100), level2],
        SQLOrigin(origin_url, "items", value_column="value"),
        write="behind",
        journal=tmp_path / "j2",
    )
    try:
        yield origin_path, slow, first, second
    finally:
        first.close()
        second.close()


def test_an_older_write_reaching_the_flusher_last_is_not_stored(tmp_path: Path) -> None:
    """Two caches (as two processes would) write one key under write-behind; the older
    write's flusher gets to the origin last. The origin keeps the newer write, and every
    level agrees with it."""
    with two_writers(tmp_path) as (origin_path, slow, first, second):
        first.set("acct", "older")  # queued: its origin is down
        first.set("other", "only-first")
        second.set("acct", "newer")  # a later version, stored at once
        _drained(second)
        assert origin_rows(origin_path) == {"acct": "newer"}
        slow.down.clear()
        _drained(first)
        assert origin_rows(origin_path) == {"acct": "newer", "other": "only-first"}
        assert first.stats().write_behind["superseded"] == 1
        fresh = Cache([MemoryTier(100), f"sqlite:///{tmp_path}/l2.db"], slow.origin)
        try:
            assert _agreed([first, second, fresh], "acct", "newer") == ["newer"] * 3
        finally:
            fresh.close()


def test_a_delete_and_a_write_in_two_caches_reach_the_origin_in_order(tmp_path: Path) -> None:
    """A write queued first, a delete of the key made later in another cache and stored
    at once: the write, reaching its flusher last, is left out."""
    with two_writers(tmp_path) as (origin_path, slow, first, second):
        first.set("acct", "written")
        second.delete("acct")
        _drained(second)
        slow.down.clear()
        _drained(first)
        assert origin_rows(origin_path) == {}
        assert _agreed([first, second], "acct", MISSING) == [MISSING, MISSING]


def test_a_replayed_write_older_than_a_later_one_is_not_stored(tmp_path: Path) -> None:
    """A write left in a journal by a killed process is replayed by the next cache on the
    journal after another process wrote the key: the journal kept the write's version,
    so the replay is left out and the origin and every level keep the later write."""
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path)
    level2 = f"sqlite:///{tmp_path}/l2.db"
    journal = str(tmp_path / "journal")
    q = SPAWN.Queue()
    child = SPAWN.Process(target=_queue_then_wait, args=(origin_url, level2, journal, 2, q))
    child.start()
    assert q.get(timeout=120) == 2  # k0 = "v0", k1 = "v1" queued, the origin down
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    other = Cache(
        [MemoryTier(100), level2],
        SQLOrigin(origin_url, "items", value_column="value"),
        write="behind",
        journal=tmp_path / "other",
    )
    try:
        other.set("k0", "later")
        _drained(other)
        replaying = Cache(
            [MemoryTier(100), level2],
            SQLOrigin(origin_url, "items", value_column="value"),
            write="behind",
            journal=journal,
        )
        try:
            _drained(replaying)
            stats = replaying.stats().write_behind
            assert stats["replayed"] == 2 and stats["superseded"] == 1
            assert origin_rows(origin_path) == {"k0": "later", "k1": "v1"}
            assert _agreed([other, replaying], "k0", "later") == ["later"] * 2
            assert replaying.get("k1") == "v1"
        finally:
            replaying.close()
    finally:
        other.close()


def test_a_store_that_outlives_its_lock_leaves_the_levels_to_reload(tmp_path: Path) -> None:
    """A flusher whose origin call took longer than lock_ttl cannot know whether another
    flusher stored the same keys meanwhile: it drops them from every level, and the next
    read loads what the origin holds."""
    origin_path = tmp_path / "origin.db"
    origin = SQLOrigin(make_origin_db(origin_path), "items", value_column="value")

    def slow_store(items: Any) -> Any:
        time.sleep(0.4)
        return origin.store_many(items)

    slow = CallableOrigin(origin.load_many, slow_store, origin.delete_many)
    level2 = f"sqlite:///{tmp_path}/l2.db"
    cache = Cache(
        [MemoryTier(100), level2], slow, write="behind", journal=tmp_path / "j", lock_ttl=0.2
    )
    quick = Cache(
        [MemoryTier(100), level2], origin, write="behind", journal=tmp_path / "q", lock_ttl=0.2
    )
    try:
        cache.set("acct", "stored slowly")
        quick.set("calm", "stored at once")
        _drained(cache)
        _drained(quick)
        assert cache.levels[1].get_many(["acct"]) == {}  # dropped after the late store
        assert set(quick.levels[1].get_many(["calm"])) == {"calm"}  # kept: it was on time
        assert cache.get("acct") == "stored slowly" == origin_rows(origin_path)["acct"]
    finally:
        cache.close()
        quick.close()

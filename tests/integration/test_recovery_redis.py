"""Auto-recovery on a real Redis: an invalidate or a write that a paused (unreachable)
server missed is replayed when it answers again, so the old value never comes back, not
even in another process while the one that owes the repair sits idle."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from stratacache import Cache, CallableOrigin, MemoryTier
from stratacache.config import tier_from_url
from stratacache.origin import SQLOrigin

from ..conftest import FakeClock, wait_rejoined
from .origin_table import make_origin_db, origin_rows

SPAWN = mp.get_context("spawn")


def _build(level2: str, origin_url: str) -> Cache:
    return Cache([MemoryTier(1000), level2], SQLOrigin(origin_url, "items", value_column="value"))


def test_invalidate_missed_while_redis_was_paused(
    fresh_redis_server: Any, clock: FakeClock
) -> None:
    db = {"k": "v1"}
    redis_level = tier_from_url(
        fresh_redis_server.url + "?socket_timeout=0.2&connect_timeout=0.2",
        clock=clock.monotonic,  # its circuit breaker's: open while paused, probed after
        wall_clock=clock.time,
        namespace="recovery",
    )
    cache = Cache(
        [MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time), redis_level],
        CallableOrigin(lambda keys: {k: db[k] for k in keys if k in db}),
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    assert cache.get("k") == "v1"  # in L1 and Redis
    fresh_redis_server.pause()
    try:
        db["k"] = "v2"
        cache.invalidate("k")  # Redis does not answer: skipped, a delete is owed
        assert cache.stats().levels[1].errors >= 1
    finally:
        fresh_redis_server.resume()
    clock.advance(11)  # L1's copy expires; Redis answers again and still holds v1
    assert cache.get("k") == "v2"  # Redis is still skipped: its probe runs meanwhile
    wait_rejoined(redis_level)
    clock.advance(11)
    assert cache.get("k") == "v2"  # Redis read again: the owed delete went first
    assert (
        redis_level.get_many(["k"]).get("k") is None
        or redis_level.get_many(["k"])["k"].value == "v2"
    )
    cache.close()


def _read_until(level2: str, origin_url: str, key: str, want: str, within: float, q: Any) -> None:
    """In another process: read ``key`` until it is ``want``; report the last value read
    and how long it took (None: it never was)."""
    cache = _build(level2, origin_url)
    started = time.monotonic()
    got = cache.get(key)
    while got != want and time.monotonic() - started < within:
        time.sleep(0.05)
        got = cache.get(key)
    q.put((got, time.monotonic() - started if got == want else None))
    cache.close()


def test_a_write_that_missed_a_paused_redis_is_repaired_without_the_writer_using_it_again(
    fresh_redis_server: Any, tmp_path: Path
) -> None:
    """The writer's breaker to Redis opened during the pause and its write went around
    the level, which now owes a delete of the older value it holds. The writer does
    nothing more; a reader in another process must still stop reading the old value."""
    origin_url = make_origin_db(tmp_path / "origin.db")
    level2 = fresh_redis_server.url + "?socket_timeout=0.3&connect_timeout=0.3"
    writer = _build(level2, origin_url)
    writer.set("k", "before")
    fresh_redis_server.pause()
    try:
        writer.set("k", "during")  # origin written; the level times out and is skipped
    finally:
        fresh_redis_server.resume()
    assert writer.stats().levels[1].breaker_opens >= 1
    assert origin_rows(tmp_path / "origin.db")["k"] == "during"
    q = SPAWN.Queue()
    reader = SPAWN.Process(target=_read_until, args=(level2, origin_url, "k", "during", 10.0, q))
    reader.start()
    try:
        got, took = q.get(timeout=60)
    finally:
        reader.join(30)
    assert got == "during", f"the reader still read {got!r} 10 s after Redis came back"
    assert took is not None and took < 10
    assert not writer._hierarchy.repairs[1], "the writer still owes the level its deletes"
    writer.close()


_EXITS = """
import time
from stratacache import Cache, MemoryTier
cache = Cache([MemoryTier(100), "redis://127.0.0.1:{port}/0?socket_timeout=0.2&connect_timeout=0.2"])
cache.set("k", "v")  # Redis is gone: the level owes a delete, and is watched
assert cache._hierarchy.repairs[1].watched
print("leaving", flush=True)
"""


def test_a_process_that_owes_a_level_still_down_exits_without_close(
    fresh_redis_server: Any,
) -> None:
    """The background watcher of a level that owes repairs must not keep a process from
    exiting while the level stays down (a worker shut down during a Redis outage)."""
    import subprocess
    import sys

    port = int(fresh_redis_server.url.rsplit(":", 1)[1].split("/")[0])
    fresh_redis_server.stop()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _EXITS.format(port=port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "leaving" in done.stdout
    assert time.monotonic() - started < 20

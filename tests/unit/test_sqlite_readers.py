"""SQLite L2: readers never wait for a writer (issue 10, point 5). Another process holds
the file's write lock; this process's write waits for it (up to busy_timeout), and its
reads, from other threads and from the event loop, go on at once meanwhile."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from stratacache import AsyncCache, Cache, MemoryTier, SQLiteTier
from stratacache.entry import Entry

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE stratacache_entries SET written_at = written_at")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_reads_do_not_wait_behind_a_write_stuck_on_another_process(tmp_path: Path) -> None:
    path = tmp_path / "l2.db"
    l2 = SQLiteTier(path, busy_timeout=2.0)
    l2.set_many({f"k{i}": Entry(i, time.time() + 600) for i in range(50)})
    cache = Cache([MemoryTier(10), l2])  # L1 holds 10: most reads are L2 hits
    holder = hold_write_lock(path, 3.0)
    try:
        writer = threading.Thread(target=cache.set, args=("new", "v"))
        started = time.monotonic()
        writer.start()
        time.sleep(0.2)  # the write is now waiting for the other process's lock
        assert writer.is_alive()
        slowest = 0.0
        reads = 0

        def read_all() -> None:
            nonlocal slowest, reads
            for i in range(50):
                t0 = time.monotonic()
                assert cache.get(f"k{i}") == i
                slowest = max(slowest, time.monotonic() - t0)
                reads += 1

        readers = [threading.Thread(target=read_all) for _ in range(4)]
        for thread in readers:
            thread.start()
        for thread in readers:
            thread.join()
        reads_done = time.monotonic() - started
        writer.join()
    finally:
        holder.wait(timeout=10)
    assert reads == 200
    assert slowest < 0.5, f"a read waited {slowest:.2f}s"
    assert reads_done < 1.5  # well before the writer's busy_timeout ran out
    # the write's version claim gave up after busy_timeout (opening the write breaker),
    # then the write itself was skipped at once by the open breaker
    level = cache.stats().levels[1]
    assert level.errors == 2 and level.skipped == 1
    cache.close()


def test_async_reads_do_not_wait_behind_a_stuck_write(tmp_path: Path) -> None:
    path = tmp_path / "l2.db"
    l2 = SQLiteTier(path, busy_timeout=2.0)
    l2.set_many({f"k{i}": Entry(i, time.time() + 600) for i in range(20)})
    holder = hold_write_lock(path, 3.0)

    async def scenario() -> float:
        cache = AsyncCache([MemoryTier(5), l2])
        write = asyncio.ensure_future(cache.set("new", "v"))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        got = await asyncio.gather(*(cache.get(f"k{i}") for i in range(20)))
        took = time.monotonic() - t0
        assert got == list(range(20))
        await write
        await cache.close()
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        holder.wait(timeout=10)
    assert took < 0.5, f"reads took {took:.2f}s"


def test_each_thread_reads_on_its_own_connection_and_close_closes_them(
    tmp_path: Path,
) -> None:
    l2 = SQLiteTier(tmp_path / "l2.db")
    l2.set_many({"k": Entry("v", time.time() + 60)})
    threads = [threading.Thread(target=l2.get_many, args=(["k"],)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert l2.get_many(["k"])["k"].value == "v"
    assert len(l2._all_readers) == 4
    l2.close()
    assert l2._all_readers == []

"""SQLite L2: a writer stuck in another process costs a write at most busy_timeout; the
write breaker then skips the level for writes (issue 10, point 5), while reads go on.

Another OS process really holds the file's write lock (BEGIN IMMEDIATE), as in
test_sqlite_readers.py, until the test releases it. The breaker's clock is a FakeClock,
so ``breaker_reset`` passes without sleeping; busy_timeout is a real wait, kept short.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier, SQLiteTier
from stratacache.config import tier_from_url
from stratacache.entry import Entry
from stratacache.errors import ConfigurationError, TierUnavailableError, TransientError

from ..conftest import Driver, FakeClock

BUSY = 0.2  # busy_timeout: what the write that meets the lock waits
FAST = 0.05  # what 100 skipped writes may take, in all

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class Holder:
    """Another process that holds the write lock of a SQLite file until released."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.close()
            assert self.process.wait(timeout=10) == 0


@contextmanager
def write_lock_held(path: Path) -> Iterator[Holder]:
    holder = Holder(path)
    try:
        yield holder
    finally:
        holder.release()


def entries(*keys: str, value: Any = "v") -> dict[str, Entry]:
    return {key: Entry(value, time.time() + 600) for key in keys}


# The tier's sync and async faces, called the same way (the driver runs coroutines).


def write(driver: Driver, tier: SQLiteTier, items: dict[str, Entry]) -> None:
    prepared = tier.prepare(items)
    driver(tier.awrite(prepared) if driver.mode == "async" else tier.write(prepared))


def delete(driver: Driver, tier: SQLiteTier, keys: list[str]) -> None:
    driver(tier.adelete_many(keys) if driver.mode == "async" else tier.delete_many(keys))


def clear(driver: Driver, tier: SQLiteTier) -> None:
    driver(tier.aclear() if driver.mode == "async" else tier.clear())


def read(driver: Driver, tier: SQLiteTier, keys: list[str]) -> dict[str, Entry]:
    got = driver(tier.aget_many(keys) if driver.mode == "async" else tier.get_many(keys))
    return got  # type: ignore[no-any-return]


def timed(fn: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """How long ``fn()`` took, and what it raised."""
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def in_threads(count: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0..count-1)``, each on its own thread, started together; what each returned or
    raised."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.fixture
def make_tier(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., SQLiteTier]]:
    made: list[SQLiteTier] = []

    def make(**options: Any) -> SQLiteTier:
        options.setdefault("busy_timeout", BUSY)
        made.append(SQLiteTier(tmp_path / "l2.db", clock=clock.monotonic, **options))
        return made[-1]

    yield make
    for tier in made:
        tier.close()


def test_a_write_stuck_on_another_process_opens_the_breaker_then_writes_skip_and_reads_go_on(
    make_tier: Callable[..., SQLiteTier],
    tmp_path: Path,
    clock: FakeClock,
    driver: Driver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="stratacache")
    tier = make_tier()
    keys = [f"k{i}" for i in range(20)]
    write(driver, tier, entries(*keys))
    with write_lock_held(tmp_path / "l2.db") as holder:
        took, error = timed(lambda: write(driver, tier, entries("stuck")))
        # The transient error the hierarchy skips a level on, after one busy_timeout.
        assert isinstance(error, TierUnavailableError) and isinstance(error, TransientError)
        assert "locked" in str(error)
        assert BUSY * 0.75 <= took < BUSY + 0.8, took
        assert tier.stats.breaker == "open" and tier.stats.breaker_opens == 1

        # Every mutating call now skips at once, without waiting for the lock.
        start = time.monotonic()
        for i in range(97):
            with pytest.raises(TierUnavailableError, match="circuit breaker open"):
                write(driver, tier, entries(f"new{i}"))
        with pytest.raises(TierUnavailableError, match="circuit breaker open"):
            delete(driver, tier, ["k0"])
        with pytest.raises(TierUnavailableError, match="circuit breaker open"):
            clear(driver, tier)
        with pytest.raises(TierUnavailableError, match="circuit breaker open"):
            tier.trim()
        skipped_in = time.monotonic() - start
        assert skipped_in < FAST, f"100 skipped writes took {skipped_in:.3f}s"
        assert tier.stats.skipped == 100

        # Reads, from several threads, are hits and never wait (nor are they skipped).
        def read_all(_: int) -> float:
            slowest = 0.0
            for _round in range(5):
                t0 = time.monotonic()
                got = read(Driver(driver.mode), tier, keys)
                assert {key: entry.value for key, entry in got.items()} == dict.fromkeys(keys, "v")
                slowest = max(slowest, time.monotonic() - t0)
            return slowest

        slowest = max(in_threads(4, read_all))
        assert slowest < 0.1, f"a read took {slowest:.3f}s"
        assert len(tier) == 20
        assert tier.stats.skipped == 100
        holder.release()

    # The other process let go; after breaker_reset one write probes, and closes it.
    clock.advance(1.0)
    took, error = timed(lambda: write(driver, tier, entries("probe", value="p")))
    assert error is None and took < 0.1
    assert tier.stats.breaker == "closed" and tier.stats.breaker_opens == 1
    write(driver, tier, entries("after", value="a"))
    delete(driver, tier, ["k0"])
    got = read(driver, tier, ["probe", "after", "k0", "stuck", "new0"])
    assert {key: entry.value for key, entry in got.items()} == {"probe": "p", "after": "a"}
    assert tier.stats.skipped == 100

    moves = [(r.levelname, r.getMessage()) for r in caplog.records if "breaker" in r.getMessage()]
    assert [level for level, _ in moves] == ["WARNING", "DEBUG", "WARNING"], moves
    assert "write circuit breaker closed -> open" in moves[0][1]
    assert "reads go on" in moves[0][1] and "busy_timeout" in moves[0][1]
    assert "half-open" in moves[1][1]
    assert "write circuit breaker half-open -> closed" in moves[2][1]


def test_a_probe_that_finds_the_lock_still_taken_opens_it_again(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock, driver: Driver
) -> None:
    tier = make_tier()
    write(driver, tier, entries("k"))
    with write_lock_held(tmp_path / "l2.db"):
        with pytest.raises(TierUnavailableError, match="locked"):
            write(driver, tier, entries("stuck"))
        clock.advance(1.0)
        took, error = timed(lambda: write(driver, tier, entries("probe")))
        assert isinstance(error, TierUnavailableError) and "locked" in str(error)
        assert took >= BUSY * 0.75  # the probe met the lock, for one busy_timeout
        assert tier.stats.breaker == "open" and tier.stats.breaker_opens == 2
        took, error = timed(lambda: write(driver, tier, entries("again")))
        assert isinstance(error, TierUnavailableError) and "circuit breaker open" in str(error)
        assert took < 0.02
    assert read(driver, tier, ["k"])["k"].value == "v"


def test_writes_during_a_probe_skip_at_once(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock, driver: Driver
) -> None:
    tier = make_tier()
    write(driver, tier, entries("k"))
    with write_lock_held(tmp_path / "l2.db"):
        with pytest.raises(TierUnavailableError):
            write(driver, tier, entries("stuck"))
        clock.advance(1.0)

        def probe_or_write(i: int) -> float:
            if i:
                time.sleep(BUSY / 4)  # the probe (thread 0) is waiting for the lock now
            took, error = timed(lambda: write(Driver(driver.mode), tier, entries(f"w{i}")))
            assert isinstance(error, TierUnavailableError)
            return took

        probe, *others = in_threads(4, probe_or_write)
        assert probe >= BUSY * 0.75
        assert max(others) < 0.02, others
    assert tier.stats.breaker_opens == 2 and tier.stats.skipped == 3


def test_writes_queued_behind_the_stuck_one_skip_once_it_opens_the_breaker(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, driver: Driver
) -> None:
    """Writes of several threads that met the lock together: one waits busy_timeout and
    opens the breaker; the others, queued for the tier's lock behind it, do not wait
    another busy_timeout each."""
    tier = make_tier()
    write(driver, tier, entries("k"))
    with write_lock_held(tmp_path / "l2.db"):
        start = time.monotonic()
        results = in_threads(4, lambda i: write(Driver(driver.mode), tier, entries(f"w{i}")))
        took = time.monotonic() - start
    assert all(isinstance(result, TierUnavailableError) for result in results), results
    assert took < BUSY * 1.75, f"4 writes took {took:.2f}s"
    assert tier.stats.breaker_opens == 1 and tier.stats.skipped == 3
    assert sum("locked" in str(result) for result in results) == 1


def test_breaker_failures_0_turns_it_off(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, driver: Driver
) -> None:
    tier = make_tier(breaker_failures=0)
    assert tier.write_breaker is None and tier.breaker is None
    write(driver, tier, entries("k"))
    with write_lock_held(tmp_path / "l2.db"):
        for i in range(2):  # each one waits busy_timeout
            took, error = timed(lambda i=i: write(driver, tier, entries(f"w{i}")))  # type: ignore[misc]
            assert isinstance(error, TierUnavailableError) and "locked" in str(error)
            assert took >= BUSY * 0.75
    assert tier.stats.breaker == "closed"
    assert tier.stats.breaker_opens == 0 and tier.stats.skipped == 0


def test_a_cache_with_an_l1_above_still_sets_and_never_reads_the_older_value(
    tmp_path: Path, clock: FakeClock, driver: Driver
) -> None:
    path = tmp_path / "l2.db"
    l1 = MemoryTier(100)
    l2 = SQLiteTier(path, busy_timeout=BUSY, clock=clock.monotonic)
    cache = (AsyncCache if driver.mode == "async" else Cache)([l1, l2])
    driver(cache.set("k", "old"))
    with write_lock_held(path) as holder:
        took, error = timed(lambda: driver(cache.set("k", "new")))
        assert error is None and took >= BUSY * 0.75
        took, error = timed(lambda: [driver(cache.set(f"o{i}", i)) for i in range(50)])
        assert error is None and took < FAST * 2, f"50 sets took {took:.3f}s"
        assert driver(cache.get("k")) == "new"  # from L1
        level = cache.stats().levels[1]
        assert level.breaker == "open" and level.skipped >= 50
        holder.release()
    clock.advance(1.0)
    l1.delete_many(["k"])  # gone from L1: the next read goes down to L2, which holds "old"
    # L2 is repaired first (the keys it missed deleted, the probe that closes the
    # breaker), and only then read: never the older value.
    assert driver(cache.get("k", None)) is None
    assert l2.stats.breaker == "closed"
    driver(cache.set("k", "newest"))
    other = SQLiteTier(path)  # another process's view of the file
    assert other.get_many(["k"])["k"].value == "newest"
    assert other.get_many(["o1"]) == {}  # a skipped write left nothing behind
    other.close()
    driver(cache.close())


def test_failures_that_come_back_at_once_keep_their_error_and_do_not_open_it(
    tmp_path: Path, driver: Driver
) -> None:
    """Only a wait for the lock feeds the breaker: a broken file fails at once, every
    time with its own reason, so the hierarchy repairs the level as soon as it is fine."""
    path = tmp_path / "not-a.db"
    path.write_bytes(b"this is a text file, not a SQLite database\n" * 100)
    tier = SQLiteTier(path, busy_timeout=BUSY)
    for i in range(5):
        with pytest.raises(TierUnavailableError, match="not a database"):
            write(driver, tier, entries(f"w{i}"))
    with pytest.raises(TierUnavailableError, match="not a database"):
        delete(driver, tier, ["w0"])
    assert tier.write_breaker is not None and tier.write_breaker.state == "closed"
    assert tier.stats.breaker_opens == 0 and tier.stats.skipped == 0
    tier.close()


def test_the_breaker_options_are_validated_and_read_from_urls(tmp_path: Path) -> None:
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ConfigurationError, match="breaker_failures must be an int >= 0"):
            SQLiteTier(tmp_path / "l2.db", breaker_failures=bad)
    for bad_reset in (0, -1.0, float("inf"), True):
        with pytest.raises(ConfigurationError, match="breaker_reset must be"):
            SQLiteTier(tmp_path / "l2.db", breaker_reset=bad_reset)
    tier = tier_from_url(f"sqlite:///{tmp_path}/l2.db?breaker_failures=5&breaker_reset=0.25")
    assert tier.write_breaker.failures == 5 and tier.write_breaker.reset_after == 0.25
    assert tier.breaker is None  # reads pass no breaker
    tier.close()
    off = tier_from_url(f"sqlite:///{tmp_path}/l2.db?breaker_failures=0")
    assert off.write_breaker is None
    off.close()

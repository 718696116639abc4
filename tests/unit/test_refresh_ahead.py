"""Early refresh (issue 10, point 4): refresh_ahead and XFetch, sync and async.

A hit past the refresh point is served the value at hand and starts one background
reload; the key then never misses. Expiry runs on a fake clock; the reload runs on a
real thread or task, so the tests give it a moment to land.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, ConfigurationError, MemoryTier, SQLiteTier

from ..conftest import Driver, FakeClock

TTL = 10.0


class Origin:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, keys: list[str]) -> dict[str, str]:
        with self.lock:
            self.calls += 1
            n = self.calls
        return {key: f"{key}-v{n}" for key in keys}


def make(driver: Driver, clock: FakeClock, origin: Origin, **options: Any) -> Any:
    cls = AsyncCache if driver.mode == "async" else Cache
    l1 = MemoryTier(1000, ttl=TTL, clock=clock.monotonic, wall_clock=clock.time)
    return cls([l1], origin, clock=clock.monotonic, wall_clock=clock.time, **options)


def settle(driver: Driver, done: Any, within: float = 2.0) -> None:
    """Let background work run until ``done()`` holds (a thread, or the loop's tasks)."""
    deadline = time.monotonic() + within
    while not done() and time.monotonic() < deadline:
        if driver.mode == "async":
            driver(asyncio.sleep(0.01))
        else:
            time.sleep(0.01)


def test_a_hit_past_the_refresh_point_reloads_once_in_the_background(
    driver: Driver, clock: FakeClock
) -> None:
    origin = Origin()
    cache = make(driver, clock, origin, refresh_ahead=0.8)
    assert driver(cache.get("k")) == "k-v1"
    clock.advance(7)  # before the point (8 s): a plain hit
    assert driver(cache.get("k")) == "k-v1"
    assert origin.calls == 1
    clock.advance(2)  # 9 s: past it
    served = [driver(cache.get("k")) for _ in range(100)]
    assert served[0] == "k-v1"  # served at once, the current value
    assert set(served) <= {"k-v1", "k-v2"}  # then the reload's, once it landed
    settle(driver, lambda: driver(cache.get("k")) == "k-v2")
    assert driver(cache.get("k")) == "k-v2"
    assert origin.calls == 2  # one reload for a hundred hits past the point
    clock.advance(5)  # 14 s: the first value would have expired; the reload did not
    assert driver(cache.get("k")) == "k-v2"
    stats = cache.stats()
    assert stats.early_refreshes == 1
    assert stats.levels[0].misses == 1  # only the very first read missed
    driver(cache.close())


def test_hits_from_many_threads_past_the_point_start_one_reload(clock: FakeClock) -> None:
    origin = Origin()
    cache = Cache(
        [MemoryTier(1000, ttl=TTL, clock=clock.monotonic, wall_clock=clock.time)],
        origin,
        refresh_ahead=0.5,
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    cache.get("hot")
    clock.advance(6)
    barrier = threading.Barrier(100)

    def reader() -> None:
        barrier.wait()
        for _ in range(50):
            assert cache.get("hot") in ("hot-v1", "hot-v2")

    threads = [threading.Thread(target=reader) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 2
    while cache.get("hot") != "hot-v2" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert origin.calls == 2
    assert cache.stats().early_refreshes == 1
    cache.close()


def test_xfetch_reloads_before_expiry_without_a_miss(driver: Driver, clock: FakeClock) -> None:
    origin = Origin()
    cache = make(driver, clock, origin, xfetch_beta=1.0, rng=random.Random(7))
    driver(cache.get("k"))
    # No load time measured yet beyond the first (fast) load: far from expiry nothing
    # happens; at the very edge (t = expiry - epsilon) a draw of ln(U) only has to
    # cover epsilon, which almost every draw does.
    clock.advance(1)
    for _ in range(100):
        driver(cache.get("k"))
    assert cache.stats().early_refreshes == 0
    clock.advance(TTL - 1 - 1e-7)
    for _ in range(50):
        driver(cache.get("k"))
    settle(driver, lambda: origin.calls >= 2)
    assert origin.calls >= 2
    assert cache.stats().levels[0].misses == 1
    driver(cache.close())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"refresh_ahead": 1.0}, "fraction of the TTL"),
        ({"refresh_ahead": 0}, "fraction of the TTL"),
        ({"xfetch_beta": -1}, "xfetch_beta must be"),
    ],
)
def test_wrong_settings_are_refused(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Cache([MemoryTier(10)], lambda keys: {}, **options)


def test_refresh_needs_an_in_process_first_level(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="MemoryTier first"):
        Cache([SQLiteTier(tmp_path / "l2.db")], lambda keys: {}, refresh_ahead=0.5)

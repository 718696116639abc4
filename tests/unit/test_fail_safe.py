"""Fail-safe, soft and hard timeouts (issue 10, point 3), sync and async.

Expiry runs on a fake clock; the timeouts are real (short) waits, because a load that
overruns them runs on a real thread or task. The origin is a plain function gated by
events, so one origin serves both faces (an AsyncCache runs a plain function on a
worker thread when a timeout applies).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stratacache import (
    AsyncCache,
    Cache,
    ConfigurationError,
    LoadTimeoutError,
    MemoryTier,
    OriginError,
    SQLiteTier,
)

from ..conftest import Driver, FakeClock

TTL = 10.0


class Origin:
    """Answers ``key-vN`` (N counts the calls); can fail, or hang until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, keys: list[str]) -> dict[str, str]:
        with self.lock:
            self.calls += 1
            n = self.calls
        if self.failing:
            raise RuntimeError("the database is down")
        if not self.release.wait(10):
            raise RuntimeError("never released")
        return {key: f"{key}-v{n}" for key in keys}

    def hang(self) -> None:
        self.release.clear()


@pytest.fixture
def origin() -> Iterator[Origin]:
    made = Origin()
    yield made
    made.release.set()


def make(driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path, **options: Any) -> Any:
    levels = [
        MemoryTier(1000, ttl=TTL, clock=clock.monotonic, wall_clock=clock.time),
        SQLiteTier(tmp_path / "l2.db", ttl=TTL, wall_clock=clock.time),
    ]
    cls = AsyncCache if driver.mode == "async" else Cache
    return cls(levels, origin, clock=clock.monotonic, wall_clock=clock.time, **options)


def settle(driver: Driver, seconds: float = 0.3) -> None:
    """Let background work run: a thread needs time, a task needs its loop to run."""
    if driver.mode == "async":
        driver(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def timed(driver: Driver, call: Any) -> tuple[float, Any]:
    """How long ``call()`` took (through the driver), and what it returned or raised."""
    start = time.perf_counter()
    try:
        result = driver(call())
    except Exception as exc:
        result = exc
    return time.perf_counter() - start, result


def test_a_failing_origin_serves_the_last_value_within_the_max_age(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, fail_safe_max_age=60)
    assert driver(cache.get("k")) == "k-v1"
    clock.advance(TTL + 30)  # expired 30 s ago: within the max age
    origin.failing = True
    assert driver(cache.get("k")) == "k-v1"
    assert driver(cache.get_many(["k"])) == {"k": "k-v1"}
    stats = cache.stats()
    assert stats.stale_served == 2 and stats.origin_errors == 2
    clock.advance(31)  # now 61 s past expiry: too old to serve
    with pytest.raises(OriginError, match="database is down"):
        driver(cache.get("k"))
    with pytest.raises(OriginError, match="database is down"):
        driver(cache.get("never-loaded"))  # nothing stale at all: a clear error
    origin.failing = False
    assert driver(cache.get("k")) == "k-v6"  # the origin is back: a fresh value
    driver(cache.close())


def test_without_fail_safe_an_expired_value_is_not_served(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path)
    driver(cache.get("k"))
    clock.advance(TTL + 1)
    origin.failing = True
    with pytest.raises(OriginError):
        driver(cache.get("k"))
    assert cache.stats().stale_served == 0
    driver(cache.close())


def test_a_slow_origin_serves_stale_after_the_soft_timeout_and_lands_later(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, fail_safe_max_age=60, soft_timeout=0.1)
    driver(cache.get("k"))
    clock.advance(TTL + 1)
    origin.hang()
    took, value = timed(driver, lambda: cache.get("k"))
    assert value == "k-v1"
    assert 0.08 <= took < 0.5, took  # one soft timeout, not the load
    # A second read while the load still hangs: the same flight, no second load.
    assert driver(cache.get("k")) == "k-v1"
    assert origin.calls == 2
    origin.release.set()
    settle(driver)
    assert driver(cache.get("k")) == "k-v2"  # the background load filled the cache
    assert cache.stats().stale_served == 2
    driver(cache.close())


def test_the_hard_timeout_bounds_a_wait_with_nothing_stale(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(
        driver, clock, origin, tmp_path, fail_safe_max_age=60, soft_timeout=0.05, hard_timeout=0.2
    )
    origin.hang()
    took, error = timed(driver, lambda: cache.get("new"))
    assert isinstance(error, LoadTimeoutError), error
    assert isinstance(error, OriginError)  # callers catching origin failures see it too
    assert "hard_timeout=0.2" in str(error)
    assert 0.18 <= took < 0.6, took
    assert cache.stats().load_timeouts == 1
    origin.release.set()
    settle(driver)
    calls = origin.calls
    assert driver(cache.get("new")) == "new-v1"  # landed in the background: a hit
    assert origin.calls == calls
    driver(cache.close())


def test_a_hard_timeout_alone_needs_no_fail_safe(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, hard_timeout=0.1)
    origin.hang()
    took, error = timed(driver, lambda: cache.get("k"))
    assert isinstance(error, LoadTimeoutError) and took < 0.5
    origin.release.set()
    driver(cache.close())


def test_per_call_settings_override_the_cache(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, fail_safe_max_age=60)
    driver(cache.get("k"))
    clock.advance(TTL + 30)
    origin.failing = True

    def load(keys: list[str]) -> dict[str, str]:
        return origin(keys)

    # a shorter max age for this call: 30 s past expiry is too old
    with pytest.raises(OriginError):
        driver(cache.get_or_load("k", load, fail_safe_max_age=10))
    assert driver(cache.get_or_load("k", load)) == "k-v1"
    with pytest.raises(OriginError):
        driver(cache.get_many(["k"], fail_safe_max_age=None))  # off for this call
    with pytest.raises(ConfigurationError, match="soft_timeout"):
        driver(cache.get_many(["k"], soft_timeout=-1))
    driver(cache.close())


def test_the_decorator_serves_stale_and_times_out(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, fail_safe_max_age=60)
    failing = {"now": False}
    gate = threading.Event()
    gate.set()

    if driver.mode == "async":

        @cache.cached(prefix="price", hard_timeout=0.1)
        async def price(item: int) -> int:
            if failing["now"]:
                raise LookupError("pricing service down")
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 5)
            return item * 10

    else:

        @cache.cached(prefix="price", hard_timeout=0.1)
        def price(item: int) -> int:
            if failing["now"]:
                raise LookupError("pricing service down")
            gate.wait(5)
            return item * 10

    assert driver(price(1)) == 10
    clock.advance(TTL + 1)
    failing["now"] = True
    assert driver(price(1)) == 10  # stale, served
    with pytest.raises(LookupError):  # nothing stale: the function's own error
        driver(price(2))
    failing["now"] = False
    gate.clear()
    took, error = timed(driver, lambda: price(3))
    assert isinstance(error, LoadTimeoutError) and took < 0.5
    gate.set()
    settle(driver)
    driver(cache.close())


def test_a_burst_on_a_hung_origin_costs_one_load_and_serves_everyone_stale(
    driver: Driver, clock: FakeClock, origin: Origin, tmp_path: Path
) -> None:
    cache = make(driver, clock, origin, tmp_path, fail_safe_max_age=60, soft_timeout=0.1)
    driver(cache.get("hot"))
    clock.advance(TTL + 1)
    origin.hang()
    start = time.perf_counter()
    if driver.mode == "async":

        async def burst() -> list[Any]:
            return await asyncio.gather(*(cache.get("hot") for _ in range(1000)))

        results = driver(burst())
    else:
        results = []
        gate = threading.Barrier(200)

        def reader() -> None:
            gate.wait()
            results.append(cache.get("hot"))

        threads = [threading.Thread(target=reader) for _ in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    took = time.perf_counter() - start
    assert set(results) == {"hot-v1"} and len(results) in (200, 1000)
    assert origin.calls == 2  # the first fill, then one load for the whole burst
    assert took < 2.0, took
    assert cache.stats().stale_served == len(results)
    origin.release.set()
    settle(driver)
    driver(cache.close())


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"soft_timeout": 1}, "needs fail_safe_max_age"),
        ({"fail_safe_max_age": 10, "soft_timeout": 2, "hard_timeout": 1}, "must not be shorter"),
        ({"fail_safe_max_age": 0}, "fail_safe_max_age must be"),
        ({"hard_timeout": float("inf")}, "finite"),
        ({"fail_safe_max_age": True}, "fail_safe_max_age must be"),
    ],
)
def test_wrong_settings_are_refused(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Cache([MemoryTier(10)], lambda keys: {}, **options)


def test_levels_keep_expired_values_for_the_max_age(clock: FakeClock, tmp_path: Path) -> None:
    """What makes it work: each level keeps an expired entry for fail_safe_max_age, and
    only get_stale_many returns it."""
    l1 = MemoryTier(10, ttl=TTL, clock=clock.monotonic, wall_clock=clock.time)
    l2 = SQLiteTier(tmp_path / "l2.db", ttl=TTL, wall_clock=clock.time)
    cache = Cache(
        [l1, l2], lambda keys: {k: 1 for k in keys}, fail_safe_max_age=5, wall_clock=clock.time
    )
    assert l1.stale_for == l2.stale_for == 5
    cache.get("k")
    clock.advance(TTL + 2)
    assert l1.get_many(["k"]) == {} and l2.get_many(["k"]) == {}
    assert set(l1.get_stale_many(["k"])) == set(l2.get_stale_many(["k"])) == {"k"}
    clock.advance(4)  # 6 s past expiry
    assert l1.get_stale_many(["k"]) == {} and l2.get_stale_many(["k"]) == {}
    cache.close()


def test_turning_the_fail_safe_off_for_a_call_takes_the_soft_timeout_with_it() -> None:
    from stratacache.hierarchy.safety import UNSET, Safety

    cache_wide = Safety(fail_safe_max_age=60, soft_timeout=0.1, hard_timeout=2.0)
    call = cache_wide.for_call(fail_safe_max_age=None, soft_timeout=UNSET, hard_timeout=UNSET)
    assert call == Safety(None, None, 2.0)  # was a ConfigurationError (the README says None is off)
    with pytest.raises(ConfigurationError, match="soft_timeout"):
        cache_wide.for_call(fail_safe_max_age=None, soft_timeout=0.2, hard_timeout=UNSET)

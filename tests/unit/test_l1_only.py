"""A cache whose only level is in process runs sets and misses through bound closures
(no flow). These tests hold those paths to the same rules as the generic hierarchy."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from stratacache import (
    MISSING,
    AsyncCache,
    Cache,
    CacheClosedError,
    ConfigurationError,
    InvalidKeyError,
    MemoryTier,
    ValueTooLargeError,
)

from ..conftest import Driver, FakeClock

pytestmark = pytest.mark.usefixtures("both_implementations")


def make(driver: Driver, clock: FakeClock, **tier_options: Any) -> Any:
    cls = AsyncCache if driver.mode == "async" else Cache
    tier_options.setdefault("ttl", 10.0)
    tier = MemoryTier(clock=clock.monotonic, wall_clock=clock.time, **tier_options)
    return cls([tier], clock=clock.monotonic, wall_clock=clock.time)


def test_level_ttl_and_per_call_ttl(driver, clock) -> None:
    cache = make(driver, clock)
    driver(cache.set("level", 1))
    driver(cache.set("short", 2, ttl=3))
    driver(cache.set("long", 3, ttl=60))  # capped by the level's 10 s
    clock.advance(4)
    assert driver(cache.get("short")) is MISSING
    assert driver(cache.get("level")) == 1
    clock.advance(6.5)
    assert driver(cache.get("level")) is MISSING
    assert driver(cache.get("long")) is MISSING
    stats = cache.stats().levels[0]
    assert (stats.hits, stats.misses) == (1, 3)


def test_no_ttl_means_no_expiry(driver, clock) -> None:
    cache = make(driver, clock, ttl=None)
    driver(cache.set("k", "v"))
    clock.advance(10**9)
    assert driver(cache.get("k")) == "v"


def test_bad_keys_and_ttls(driver, clock) -> None:
    cache = make(driver, clock)
    with pytest.raises(InvalidKeyError):
        driver(cache.set(5, "v"))
    with pytest.raises(InvalidKeyError):
        driver(cache.get(""))
    with pytest.raises(ConfigurationError, match="ttl"):
        driver(cache.set("k", 1, ttl=-5))


def test_bound_is_kept_and_evictions_counted(driver, clock) -> None:
    cache = make(driver, clock, max_entries=50)
    for i in range(200):
        driver(cache.set(f"k{i}", i))
    tier = cache.levels[0]
    assert len(tier) <= 50
    assert cache.stats().levels[0].evictions == 200 - len(tier)
    assert cache.stats().levels[0].writes == 200


def test_weighted_bound_and_value_too_large(driver, clock) -> None:
    cache = make(driver, clock, max_bytes=2_000, weigher=lambda k, v: len(v))
    for i in range(10):
        driver(cache.set(f"k{i}", "x" * 300))
    assert cache.levels[0].weight <= 2_000
    driver(cache.set("big", "small"))
    with pytest.raises(ValueTooLargeError, match="big"):
        driver(cache.set("big", "y" * 2_001))
    assert driver(cache.get("big")) == "small"  # refused before writing: the old value stays
    assert cache.stats().levels[0].too_large == 1


def test_overwrite_keeps_one_entry(driver, clock) -> None:
    cache = make(driver, clock, max_entries=3)
    for value in range(10):
        driver(cache.set("same", value))
    assert len(cache.levels[0]) == 1
    assert driver(cache.get("same")) == 9


def test_jitter_only_shortens(clock) -> None:
    tier = MemoryTier(100, ttl=10, clock=clock.monotonic, wall_clock=clock.time)
    cache = Cache(
        [tier], ttl_jitter=0.5, rng=random.Random(1), clock=clock.monotonic, wall_clock=clock.time
    )
    for i in range(50):
        cache.set(f"k{i}", i)
    now = clock.time()
    expiries = [e.expires_at - now for e in tier.get_many([f"k{i}" for i in range(50)]).values()]
    assert all(5 - 1e-9 <= x <= 10 + 1e-9 for x in expiries)
    assert len({round(x, 4) for x in expiries}) > 10


def test_registering_a_loader_later_switches_misses_to_the_loader(driver, clock) -> None:
    cache = make(driver, clock)
    assert driver(cache.get("a:1")) is MISSING
    cache.register_loader("a:", lambda keys: {k: "loaded" for k in keys})
    assert driver(cache.get("a:1")) == "loaded"
    assert driver(cache.get("a:1")) == "loaded"


def test_closed_l1_only_cache_refuses_every_call(driver, clock) -> None:
    cache = make(driver, clock)
    driver(cache.set("k", 1))
    driver(cache.close())
    with pytest.raises(CacheClosedError):
        driver(cache.get("k"))
    with pytest.raises(CacheClosedError):
        driver(cache.set("k", 2))


def test_threads_hammering_one_l1_keep_it_consistent() -> None:
    tier = MemoryTier(500, ttl=60)
    cache = Cache([tier])
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(20_000):
                key = f"k{int(rng.paretovariate(1.2)) % 2000}"
                value = cache.get(key)
                if value is MISSING:
                    cache.set(key, key)
                elif value != key:
                    raise AssertionError(f"{key} returned {value}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(tier) <= 500
    assert tier.weight == len(tier)  # the policy and the store agree on what is resident
    assert set(tier.keys()) <= {f"k{i}" for i in range(2000)}


def test_read_buffer_stays_bounded_on_every_read_path(driver, clock) -> None:
    cache = make(driver, clock)
    tier = cache.levels[0]
    driver(cache.set("k", 1))
    for _ in range(5_000):
        driver(cache.get("k"))
        driver(cache.get_many(["k"]))
        cache._front.local_miss("k", None)
    assert len(tier.buffer) < tier.buffer_limit
    assert cache.stats().levels[0].hits == 15_000


def test_get_accepts_keywords_like_its_signature(clock) -> None:
    cache = Cache([MemoryTier(10, clock=clock.monotonic, wall_clock=clock.time)])
    cache.set("a", 1)
    assert cache.get(key="a") == 1
    assert cache.get("b", default=5) == 5
    assert cache.get(key="b", default=6) == 6
    with pytest.raises(TypeError):
        cache.get("a", nope=1)

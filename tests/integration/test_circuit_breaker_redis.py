"""A sick Redis under steady traffic (issue 10, point 2): paused (SIGSTOP) or killed, it
costs a caller at most one socket timeout, and only until the circuit breaker opens;
calls then skip it at once, and it is used again within about a second of recovering."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.config import tier_from_url

from ..servers import RedisServer

TIMEOUT = 0.3
RESET = 0.5


def make_levels(server: RedisServer, timeout: float = TIMEOUT) -> list[Any]:
    redis_level = tier_from_url(
        f"{server.url}?socket_timeout={timeout}&connect_timeout={timeout}&breaker_reset={RESET}",
        namespace="breaker",
    )
    return [MemoryTier(50), redis_level]


def origin(keys: list[str]) -> dict[str, str]:
    return {key: key.upper() for key in keys}


def test_paused_redis_costs_one_timeout_then_is_skipped_and_rejoins(
    fresh_redis_server: RedisServer,
) -> None:
    cache = Cache(make_levels(fresh_redis_server), origin)
    keys = [f"k{i}" for i in range(500)]  # L1 holds 50: most reads go to Redis
    cache.get_many(keys)
    durations: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def steady(offset: int) -> None:
        i = offset
        while not stop.is_set():
            started = time.monotonic()
            try:
                assert cache.get(keys[i % len(keys)]) == keys[i % len(keys)].upper()
            except BaseException as exc:
                errors.append(exc)
            durations.append(time.monotonic() - started)
            i += 7

    threads = [threading.Thread(target=steady, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    fresh_redis_server.pause()
    paused_at = len(durations)
    time.sleep(2.0)
    during = durations[paused_at:]
    l2 = cache.stats().levels[1]
    assert l2.breaker in ("open", "half-open")
    fresh_redis_server.resume()
    resumed = time.monotonic()
    while cache.stats().levels[1].breaker != "closed" and time.monotonic() - resumed < 3:
        time.sleep(0.02)
    rejoined = time.monotonic() - resumed
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    # No call paid two timeouts (a read and then a fill): one at most, plus slack.
    assert max(during) < 1.7 * TIMEOUT, f"slowest call {max(during):.3f}s"
    assert len(during) > 500, len(during)  # not 2 calls per 2 timeouts: skipped at once
    assert l2.breaker_opens >= 1 and l2.skipped > 100
    assert rejoined < RESET + 1.0, f"rejoined after {rejoined:.2f}s"
    hits_before = cache.stats().levels[1].hits
    cache.get_many(keys)
    assert cache.stats().levels[1].hits > hits_before  # Redis serves again
    cache.close()


def test_killed_redis_is_called_once_per_probe_not_once_per_request(
    fresh_redis_server: RedisServer,
) -> None:
    cache = Cache(make_levels(fresh_redis_server), origin)
    fresh_redis_server.kill()
    started = time.monotonic()
    for i in range(3000):
        assert cache.get(f"x{i}") == f"X{i}"
    elapsed = time.monotonic() - started
    l2 = cache.stats().levels[1]
    tried = l2.errors - l2.skipped  # failures that reached the (dead) server
    probes = elapsed / RESET + 1
    assert tried <= 3 + 2 * probes, (tried, elapsed)
    assert l2.skipped > 2000
    cache.close()


def test_async_burst_on_a_paused_redis_waits_one_timeout_at_most(
    fresh_redis_server: RedisServer,
) -> None:
    # A longer timeout than the other tests: 1,000 tasks on a loaded CI box need
    # scheduling slack (0.510 s and 0.581 s were seen there against a 0.3 s timeout),
    # and the slack must stay well under the second timeout this test rules out.
    timeout = 1.0

    async def scenario() -> tuple[float, int]:
        cache = AsyncCache(make_levels(fresh_redis_server, timeout), origin)
        await cache.get_many([f"k{i}" for i in range(200)])
        fresh_redis_server.pause()
        try:
            slowest = 0.0
            for _ in range(5):  # five waves of 200 tasks, each key a miss in L1

                async def one(key: str) -> float:
                    t0 = time.monotonic()
                    assert await cache.get(key) == key.upper()
                    return time.monotonic() - t0

                waves = await asyncio.gather(*(one(f"k{i}") for i in range(200)))
                slowest = max(slowest, *waves)
            skipped = cache.stats().levels[1].skipped
        finally:
            fresh_redis_server.resume()
        await cache.close()
        return slowest, skipped

    slowest, skipped = asyncio.run(scenario())
    # One timeout plus scheduling slack; a second timeout would take at least 2 * timeout.
    assert slowest < 1.7 * timeout, f"slowest call {slowest:.3f}s"
    assert skipped > 0

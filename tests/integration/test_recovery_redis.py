"""Auto-recovery on a real Redis: an invalidate that a paused (unreachable) server missed is
replayed when it answers again, so the old value never comes back."""

from __future__ import annotations

from typing import Any

from stratacache import Cache, CallableOrigin, MemoryTier
from stratacache.config import tier_from_url

from ..conftest import FakeClock, wait_rejoined


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

"""Fail-safe across processes' shared level (issue 10, point 3): Redis keeps an expired
value for fail_safe_max_age (its server-side TTL is stretched by that much), so a cache
whose own L1 never saw the key still serves it when the origin fails."""

from __future__ import annotations

import time
import uuid
from typing import Any

from stratacache import Cache, MemoryTier
from stratacache.config import tier_from_url


def test_a_value_expired_in_redis_is_served_by_another_cache_when_the_origin_fails(
    fresh_redis_server: Any,
) -> None:
    namespace = f"fs-{uuid.uuid4().hex[:8]}"
    failing = {"now": False}

    def origin(keys: list[str]) -> dict[str, str]:
        if failing["now"]:
            raise ConnectionError("the database is down")
        return {key: key.upper() for key in keys}

    def make() -> Cache:
        redis_level = tier_from_url(fresh_redis_server.url, namespace=namespace, ttl=0.3)
        return Cache([MemoryTier(100, ttl=0.3), redis_level], origin, fail_safe_max_age=30)

    writer = make()
    assert writer.get("k") == "K"
    time.sleep(1.6)  # expired, and past ttl (0.3) + ttl_grace (1.0): gone unless stretched
    failing["now"] = True
    reader = make()  # another process, in effect: an empty L1
    assert reader.get("k") == "K"
    assert reader.stats().stale_served == 1
    assert reader.stats().levels[1].errors == 0
    writer.close()
    reader.close()

"""Bursts of concurrent misses on DIFFERENT keys over healthy Redis, Redis Cluster and
memcached levels, with their default pools of 64 connections (issue 10, point 1).

The single-key bursts (test_single_flight_remote.py) fit in any pool because reads of
one key are coalesced; distinct keys cannot be. Before, the 65th concurrent call failed
at once with MaxConnectionsError: 1,000 tasks gave 1,872 skipped reads and 936 extra
origin loads. Now a caller beyond the bound waits its turn, so every call is served, and
resident keys are all hits.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.config import tier_from_url

from .test_single_flight_remote import remote_url

TASKS = 1000
THREADS = 200
KEYS_PER_THREAD = 5
KINDS = ["redis", "redis-cluster", "memcached"]


def url_of(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster").cluster_url)
    return remote_url(kind, request)


class Origin:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads: list[str] = []

    def __call__(self, keys: list[str]) -> dict[str, str]:
        with self.lock:
            self.loads.extend(keys)
        return {key: key.upper() for key in keys}


def make_cache(cls: Any, kind: str, request: pytest.FixtureRequest, origin: Origin) -> Any:
    remote = tier_from_url(url_of(kind, request), namespace=f"burst-{uuid.uuid4().hex[:12]}")
    return cls([MemoryTier(100_000), remote], origin)


def assert_served_everything(cache: Any, origin: Origin, keys: list[str], loads: int) -> None:
    stats = cache.stats()
    assert len(origin.loads) == loads, "a read that could not get a connection went on"
    assert stats.levels[1].errors == 0, stats.levels[1]
    assert stats.levels[1].pool_timeouts == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_tasks_on_different_keys_all_get_a_connection(
    kind: str, request: pytest.FixtureRequest
) -> None:
    origin = Origin()
    keys = [f"task-{i}" for i in range(TASKS)]

    async def scenario() -> None:
        cache = make_cache(AsyncCache, kind, request, origin)
        try:
            got = await asyncio.gather(*(cache.get(key) for key in keys))
            assert got == [key.upper() for key in keys]
            assert_served_everything(cache, origin, keys, loads=TASKS)
            # The burst did outrun the pool: callers waited, none gave up.
            assert cache.stats().levels[1].pool_waits > 0
            cache.levels[0].clear()  # now every key is resident in the shared level only
            got = await asyncio.gather(*(cache.get(key) for key in keys))
            assert got == [key.upper() for key in keys]
            assert_served_everything(cache, origin, keys, loads=TASKS)
            assert cache.stats().levels[1].hits == TASKS
        finally:
            await cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_two_hundred_threads_on_different_keys_all_get_a_connection(
    kind: str, request: pytest.FixtureRequest
) -> None:
    origin = Origin()
    cache = make_cache(Cache, kind, request, origin)
    keys = [[f"thread-{t}-{i}" for i in range(KEYS_PER_THREAD)] for t in range(THREADS)]
    start = threading.Barrier(THREADS)
    wrong: list[str] = []

    def run(mine: list[str]) -> None:
        start.wait()
        for key in mine:
            if cache.get(key) != key.upper():
                wrong.append(key)

    def burst() -> None:
        threads = [threading.Thread(target=run, args=(mine,)) for mine in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    try:
        burst()
        every = [key for mine in keys for key in mine]
        assert wrong == []
        assert_served_everything(cache, origin, every, loads=len(every))
        cache.levels[0].clear()
        burst()
        assert wrong == []
        assert_served_everything(cache, origin, every, loads=len(every))
        assert cache.stats().levels[1].hits == len(every)
    finally:
        cache.close()

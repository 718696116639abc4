"""Bursts of concurrent misses of one key over real Redis and memcached levels.

Every round, 1,000 asyncio tasks (or 250 threads) miss one fresh key: exactly one origin
load, one value for all, and not one failed read. The levels keep their default
connection pools (64 connections): the burst fits in them because concurrent reads of one
key are coalesced (one read of the key per level at a time, the other callers take its
answer), not because the pool is large. The harness is the unit bursts'
(tests/unit/test_single_flight_bursts.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.config import tier_from_url

from ..unit.test_single_flight_bursts import (
    SPREAD,
    CountingLoader,
    assert_one_load_one_value,
    task_rounds,
    thread_rounds,
)

TASKS = 1000
THREADS = 250
KINDS = ["redis", "memcached"]


def remote_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        return str(request.getfixturevalue("redis_server").url)
    servers = request.getfixturevalue("memcached_servers")
    return "memcached://" + ",".join(f"{s.host}:{s.port}" for s in servers)


def make_levels(kind: str, request: pytest.FixtureRequest, *, l1: bool = True) -> list[Any]:
    # A namespace of its own: the servers are picked at run time, so they are not
    # emptied before the test (see tests/server_fixtures.py).
    namespace = f"burst-{uuid.uuid4().hex[:12]}"
    remote = tier_from_url(remote_url(kind, request), namespace=namespace)
    return [MemoryTier(10_000), remote] if l1 else [remote]


def assert_no_errors(cache: Any) -> None:
    stats = cache.stats()
    assert stats.origin_errors == 0
    assert [level.errors for level in stats.levels] == [0] * len(stats.levels)
    hierarchy = cache._hierarchy
    assert len(hierarchy.single_flight) == 0
    for reads in getattr(hierarchy, "read_flights", ()):
        assert reads is None or len(reads) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("l1", [True, False], ids=["below-l1", "alone"])
@pytest.mark.parametrize("spread", [SPREAD, 0.0], ids=["arriving", "all-at-once"])
def test_a_thousand_tasks_missing_one_key_load_it_once_and_read_it_once(
    kind: str, l1: bool, spread: float, request: pytest.FixtureRequest
) -> None:
    # "all-at-once": every task misses before the first read has answered, 1,000 reads
    # of one key against a pool of 64 unless they are coalesced.
    loader = CountingLoader()

    async def scenario() -> None:
        cache = AsyncCache(make_levels(kind, request, l1=l1), loader.aload)
        try:
            results = await task_rounds(cache.get, tasks=TASKS, spread=spread)
            assert_one_load_one_value(loader, results)
            assert_no_errors(cache)
            remote = cache.stats().levels[-1]
            # Each round: one read missed (then the leader's second look, if any, and
            # every other caller took an answer), one value written.
            assert remote.writes == len(results)
        finally:
            await cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_hundreds_of_threads_missing_one_key_load_it_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    loader = CountingLoader()
    cache = Cache(make_levels(kind, request), loader)
    try:
        results = thread_rounds(cache.get, threads=THREADS)
        assert_one_load_one_value(loader, results)
        assert_no_errors(cache)
    finally:
        cache.close()

"""Value fidelity over real stores: L1 (memory), L2 (Redis) and L3 (memcached) answer the
same value, of the same types all the way down, for every serializer."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from stratacache import Cache
from stratacache.tiers.memory import MemoryTier

from ..conformance.remote_kit import SIGNING_KEY, remote_factory
from ..conftest import FakeClock
from ..servers import MemcachedServer, RedisServer
from ..unit.test_value_fidelity import SERIALIZERS, same, values

_keys = itertools.count()


@pytest.mark.parametrize("serializer", SERIALIZERS)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=values)
def test_memory_redis_and_memcached_answers_agree(
    serializer: str,
    value: Any,
    redis_server: RedisServer,
    memcached_servers: list[MemcachedServer],
) -> None:
    clock = FakeClock()
    options: dict[str, Any] = {"namespace": f"fidelity-{serializer}", "serializer": serializer}
    if serializer == "pickle":
        options["signing_key"] = SIGNING_KEY
    key = f"k{next(_keys)}"

    def redis() -> Any:
        return remote_factory("redis", redis_server, clock)(name="L2", **options)

    def memcached() -> Any:
        return remote_factory("memcached", memcached_servers, clock)(name="L3", **options)

    with Cache([MemoryTier(10), redis(), memcached()]) as cache:
        cache.set(key, value)
        answers = {"L1": cache.get(key)}
    with Cache([MemoryTier(10), redis()]) as l2:
        answers["L2 (redis)"] = l2.get(key)
    with Cache([MemoryTier(10), memcached()]) as l3:
        answers["L3 (memcached)"] = l3.get(key)
    for level, answer in answers.items():
        assert same(value, answer), (level, value, answer)

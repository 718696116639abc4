"""What a Cache costs over the raw client, for each remote level, in one run.

For Redis, Redis Cluster and a memcached pool, this starts its own servers (with
``tests/servers.py``: a redis-server, a 3-master cluster, two memcached), stores the same
envelopes once, and then times, alternating in rounds, the tier and a raw client reading
the same bytes from the same servers (each over its own connections: the raw clients are
separate clients, made here, not the tier's):

* a hit: ``Cache.get(key)`` on a Cache whose only level is the remote tier (signing off,
  msgpack), against the raw client's single-key read (redis-py ``GET``, the cluster
  client's ``GET``, pymemcache ``HashClient.get``) plus ``Codec.decode`` of what it read;
* a batch of 100 hits: ``Cache.get_many(keys)`` against one raw ``MGET`` (the cluster
  client's ``mget_nonatomic``, ``HashClient.get_many``) plus decoding every value;
* both again with ``AsyncCache`` against redis-py's asyncio clients; memcached has no
  asyncio client, so its raw async figure is ``HashClient`` run in a thread pool, the way
  the tier runs;
* for memcached, sync and async, also against a *floor*: a plain pymemcache ``Client`` per
  server asked for exactly the names the tier routes to it (no hashing on the raw side),
  in the same kind of thread pool for the async face.

It prints the per-call time of the best round of each (on a shared machine noise only ever
adds time, so the best round is the steadiest estimate of what the code costs) and the
ratio cache / raw, with the bar the issue sets (1.3x for a hit, 1.5x for a batch).
Nothing here asserts: benchmarks report.

    python benchmarks/remote_overhead.py              # everything (about a minute)
    python benchmarks/remote_overhead.py --only redis --rounds 5
    python benchmarks/remote_overhead.py --profile redis   # where a Cache hit's time goes
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

import redis  # noqa: E402
import redis.asyncio  # noqa: E402
import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402
from pymemcache.client.base import Client as MemcacheClient  # noqa: E402
from pymemcache.client.hash import HashClient  # noqa: E402
from tests.servers import MemcachedServer, RedisCluster, RedisServer  # noqa: E402

from stratacache import AsyncCache, Cache  # noqa: E402
from stratacache.config import tier_from_url  # noqa: E402
from stratacache.entry import Entry  # noqa: E402
from stratacache.tiers.remote import RemoteTier  # noqa: E402

BATCH = 100
BARS = {"hit": 1.3, "get_many(100)": 1.5, "hit vs floor": 1.3, "get_many(100) vs floor": 1.5}
VALUE = {"id": 12345, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 99.5}


@dataclass
class Row:
    level: str
    face: str
    case: str
    raw_us: float
    cache_us: float

    @property
    def ratio(self) -> float:
        return self.cache_us / self.raw_us

    @property
    def bar(self) -> float:
        return BARS[self.case]


# ---------------------------------------------------------------------------- timing


def per_call(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


async def aper_call(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - start) / calls


def calls_for(fn: Callable[[], Any], budget: float) -> int:
    once = per_call(fn, 20)
    return max(20, int(budget / max(once, 1e-7)))


def compare(
    level: str,
    case: str,
    raw: Callable[[], Any],
    cache: Callable[[], Any],
    rounds: int,
    budget: float,
) -> Row:
    """Alternate raw and cache loops so that drift and neighbours hit both alike."""
    calls = calls_for(raw, budget)
    per_call(raw, calls // 10)
    per_call(cache, calls // 10)  # warm both
    raw_times, cache_times = [], []
    gc.collect()
    for _ in range(rounds):
        raw_times.append(per_call(raw, calls))
        cache_times.append(per_call(cache, calls))
    return Row(
        level,
        "sync",
        case,
        min(raw_times) * 1e6,
        min(cache_times) * 1e6,
    )


async def acompare(
    level: str,
    case: str,
    raw: Callable[[], Awaitable[Any]],
    cache: Callable[[], Awaitable[Any]],
    rounds: int,
    budget: float,
) -> Row:
    once = await aper_call(raw, 20)
    calls = max(20, int(budget / max(once, 1e-7)))
    await aper_call(raw, calls // 10)
    await aper_call(cache, calls // 10)
    raw_times, cache_times = [], []
    gc.collect()
    for _ in range(rounds):
        raw_times.append(await aper_call(raw, calls))
        cache_times.append(await aper_call(cache, calls))
    return Row(
        level,
        "async",
        case,
        min(raw_times) * 1e6,
        min(cache_times) * 1e6,
    )


# ---------------------------------------------------------------------------- levels


class Level:
    """One remote level: its tier URL, the raw clients, and the data both read."""

    name: str
    url: str

    def __init__(self) -> None:
        self.tier: RemoteTier = tier_from_url(self.url, namespace="bench")
        self.keys = [f"user:{i}" for i in range(BATCH)]
        self.tier.set_many({key: Entry(VALUE) for key in self.keys})
        self.names = [self.tier.storage_name(key) for key in self.keys]
        self.codec = self.tier.codec

    # raw clients, sync and async
    def raw_get(self, name: str) -> Any:
        raise NotImplementedError

    def raw_get_many(self, names: list[str]) -> list[Any]:
        raise NotImplementedError

    async def araw_get(self, name: str) -> Any:
        raise NotImplementedError

    async def araw_get_many(self, names: list[str]) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def close(self) -> None:
        self.tier.close()


class RedisLevel(Level):
    name = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        super().__init__()
        self.client = redis.Redis.from_url(server.url)
        self.aclient: Any = None

    def raw_get(self, name: str) -> Any:
        return self.client.get(name)

    def raw_get_many(self, names: list[str]) -> list[Any]:
        return self.client.mget(names)

    async def araw_get(self, name: str) -> Any:
        if self.aclient is None:
            self.aclient = redis.asyncio.Redis.from_url(self.url)
        return await self.aclient.get(name)

    async def araw_get_many(self, names: list[str]) -> list[Any]:
        if self.aclient is None:
            self.aclient = redis.asyncio.Redis.from_url(self.url)
        return await self.aclient.mget(names)

    async def aclose(self) -> None:
        if self.aclient is not None:
            await self.aclient.aclose()

    def close(self) -> None:
        self.client.close()
        super().close()


class ClusterLevel(Level):
    name = "redis-cluster"

    def __init__(self, cluster: RedisCluster) -> None:
        self.url = cluster.cluster_url
        super().__init__()
        host, port = cluster.addresses[0]
        self.client = redis.cluster.RedisCluster(host=host, port=port)
        self.address = (host, port)
        self.aclient: Any = None

    def _async(self) -> Any:
        if self.aclient is None:
            self.aclient = redis.asyncio.cluster.RedisCluster(
                host=self.address[0], port=self.address[1]
            )
        return self.aclient

    def raw_get(self, name: str) -> Any:
        return self.client.get(name)

    def raw_get_many(self, names: list[str]) -> list[Any]:
        return self.client.mget_nonatomic(names)

    async def araw_get(self, name: str) -> Any:
        return await self._async().get(name)

    async def araw_get_many(self, names: list[str]) -> list[Any]:
        return await self._async().mget_nonatomic(names)

    async def aclose(self) -> None:
        if self.aclient is not None:
            await self.aclient.aclose()

    def close(self) -> None:
        self.client.close()
        super().close()


class MemcachedLevel(Level):
    name = "memcached"

    def __init__(self, servers: list[MemcachedServer]) -> None:
        self.url = "memcached://" + ",".join(f"{s.host}:{s.port}" for s in servers)
        super().__init__()
        self.client = HashClient([(s.host, s.port) for s in servers], allow_unicode_keys=True)
        self.pool = ThreadPoolExecutor(8)
        # HashClient routes with its own hash, so it gets its own copy of the same bytes.
        blobs = {
            n: self.codec.encode(k, Entry(VALUE))
            for k, n in zip(self.keys, self.names, strict=True)
        }
        assert not self.client.set_many(blobs, noreply=False)

        # The floor: one plain pymemcache Client per server, each asked for exactly the
        # names the tier routes to it (no hashing at all on the raw side).
        self.floor_clients = {
            (s.host, s.port): MemcacheClient((s.host, s.port), allow_unicode_keys=True)
            for s in servers
        }
        routed: dict[tuple[str, int], list[str]] = {}
        for name in self.names:
            routed.setdefault(self.tier._ring.server(name).address, []).append(name)  # type: ignore[attr-defined]
        self.floor_groups = [(self.floor_clients[a], group) for a, group in routed.items()]
        self.floor_single = self.floor_clients[self.tier._ring.server(self.names[0]).address]  # type: ignore[attr-defined]

    def raw_get(self, name: str) -> Any:
        return self.client.get(name)

    def raw_get_many(self, names: list[str]) -> list[Any]:
        found = self.client.get_many(names)
        return [found.get(name) for name in names]

    def floor_get(self, name: str) -> Any:
        return self.floor_single.get(name)

    def floor_get_many(self, names: list[str]) -> list[Any]:
        found: dict[str, Any] = {}
        for client, group in self.floor_groups:
            found.update(client.get_many(group))
        return [found.get(name) for name in names]

    async def araw_get(self, name: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.client.get, name)

    async def araw_get_many(self, names: list[str]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.raw_get_many, names)

    async def afloor_get(self, name: str) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.floor_get, name)

    async def afloor_get_many(self, names: list[str]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.floor_get_many, names)

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()
        for client in self.floor_clients.values():
            client.close()
        super().close()


# ---------------------------------------------------------------------------- cases


def sync_rows(level: Level, rounds: int, budget: float) -> list[Row]:
    cache = Cache([level.tier])
    key, name, decode = level.keys[0], level.names[0], level.codec.decode
    keys, names = level.keys, level.names
    assert cache.get(key) == VALUE and len(cache.get_many(keys)) == BATCH

    def raw_hit() -> Any:
        return decode(key, level.raw_get(name)).value

    def raw_batch() -> dict[str, Any]:
        blobs = level.raw_get_many(names)
        return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

    rows = [
        compare(level.name, "hit", raw_hit, lambda: cache.get(key), rounds, budget),
        compare(
            level.name, "get_many(100)", raw_batch, lambda: cache.get_many(keys), rounds, budget
        ),
    ]
    if isinstance(level, MemcachedLevel):
        floor = level

        def floor_hit() -> Any:
            return decode(key, floor.floor_get(name)).value

        def floor_batch() -> dict[str, Any]:
            blobs = floor.floor_get_many(names)
            return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

        hit, batch = "hit vs floor", "get_many(100) vs floor"
        rows.append(compare(level.name, hit, floor_hit, lambda: cache.get(key), rounds, budget))
        rows.append(
            compare(level.name, batch, floor_batch, lambda: cache.get_many(keys), rounds, budget)
        )
    return rows


async def async_rows(level: Level, rounds: int, budget: float) -> list[Row]:
    """The async rows; runs last for its level: closing the AsyncCache closes the tier."""
    cache = AsyncCache([level.tier])
    try:
        return await _async_rows(level, cache, rounds, budget)
    finally:
        await cache.close()
        await level.aclose()


async def _async_rows(level: Level, cache: AsyncCache, rounds: int, budget: float) -> list[Row]:
    key, name, decode = level.keys[0], level.names[0], level.codec.decode
    keys, names = level.keys, level.names
    assert await cache.get(key) == VALUE and len(await cache.get_many(keys)) == BATCH

    async def raw_hit() -> Any:
        return decode(key, await level.araw_get(name)).value

    async def raw_batch() -> dict[str, Any]:
        blobs = await level.araw_get_many(names)
        return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

    rows = [
        await acompare(level.name, "hit", raw_hit, lambda: cache.get(key), rounds, budget),
        await acompare(
            level.name, "get_many(100)", raw_batch, lambda: cache.get_many(keys), rounds, budget
        ),
    ]
    if isinstance(level, MemcachedLevel):
        floor = level

        async def floor_hit() -> Any:
            return decode(key, await floor.afloor_get(name)).value

        async def floor_batch() -> dict[str, Any]:
            blobs = await floor.afloor_get_many(names)
            return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

        hit, batch = "hit vs floor", "get_many(100) vs floor"
        rows.append(
            await acompare(level.name, hit, floor_hit, lambda: cache.get(key), rounds, budget)
        )
        rows.append(
            await acompare(
                level.name, batch, floor_batch, lambda: cache.get_many(keys), rounds, budget
            )
        )
    return rows


def profile_hit(level: Level, calls: int = 20000) -> None:
    cache = Cache([level.tier])
    key = level.keys[0]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        cache.get(key)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


def table(rows: list[Row]) -> str:
    lines = [
        "| level | face | case | raw µs | cache µs | ratio | bar |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        verdict = "ok" if row.ratio <= row.bar else "over"
        lines.append(
            f"| {row.level} | {row.face} | {row.case} | {row.raw_us:.1f} | {row.cache_us:.1f} "
            f"| {row.ratio:.2f}x | {row.bar}x {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["redis", "redis-cluster", "memcached"], action="append")
    parser.add_argument("--rounds", type=int, default=40, help="alternating rounds per case")
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per timed loop")
    parser.add_argument("--profile", choices=["redis", "redis-cluster", "memcached"])
    args = parser.parse_args()
    wanted = set(args.only or ["redis", "redis-cluster", "memcached"])
    if args.profile:
        wanted = {args.profile}

    servers: list[Any] = []
    levels: list[Level] = []
    try:
        if "redis" in wanted:
            server = RedisServer().start()
            servers.append(server)
            levels.append(RedisLevel(server))
        if "redis-cluster" in wanted:
            cluster = RedisCluster(replicas_per_master=0).start()  # no replicas: less CPU
            servers.append(cluster)
            levels.append(ClusterLevel(cluster))
        if "memcached" in wanted:
            pair = [MemcachedServer().start(), MemcachedServer().start()]
            servers.extend(pair)
            levels.append(MemcachedLevel(pair))

        if args.profile:
            profile_hit(levels[0])
            return
        rows: list[Row] = []
        for level in levels:
            rows.extend(sync_rows(level, args.rounds, args.budget))
            rows.extend(asyncio.run(async_rows(level, args.rounds, args.budget)))
            print(table([row for row in rows if row.level == level.name]), flush=True)
        print()
        print(table(rows))
    finally:
        for level in levels:
            level.close()
        for server in servers:
            server.close()


if __name__ == "__main__":
    main()

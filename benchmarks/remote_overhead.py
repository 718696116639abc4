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
* both again with ``AsyncCache`` against redis-py's asyncio clients; pymemcache has no
  asyncio client, so memcached's raw async figure is ``HashClient`` run in a thread pool
  (the way the tier ran before it had its own asyncio client);
* for memcached, sync and async, also against a *floor*: a plain pymemcache ``Client`` per
  server asked for exactly the names the tier routes to it (no hashing on the raw side),
  in the same kind of thread pool for the async face.

It prints the per-call time of the best round of each (on a shared machine noise only ever
adds time, so the best round is the steadiest estimate of what the code costs) and the
ratio cache / raw, with the bar the issue sets (1.3x for a hit, 1.5x for a batch).
Nothing here asserts: benchmarks report.

With ``--before [REV]`` (default c1bdaeb, the commit before the redesign) the same run also
times that revision's Cache and AsyncCache (``stratacache_before``, built by before.py) over
the same servers, in the same rounds: each round times raw, then the two caches, which swap
places every round. Its tiers are built with the keywords that revision accepts, store
their own envelopes (that revision's format) under their own namespace, and the table gains
"before µs" and "before/after" (above 1: the current tree is faster).

    python benchmarks/remote_overhead.py              # everything (about a minute)
    python benchmarks/remote_overhead.py --only redis --rounds 5
    python benchmarks/remote_overhead.py --before     # and c1bdaeb's caches, side by side
    python benchmarks/remote_overhead.py --before HEAD~2 --only memcached
    python benchmarks/remote_overhead.py --profile redis   # where a Cache hit's time goes
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import inspect
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

import redis  # noqa: E402
import redis.asyncio  # noqa: E402
import redis.asyncio.cluster  # noqa: E402
import redis.cluster  # noqa: E402
from pymemcache.client.base import Client as MemcacheClient  # noqa: E402
from pymemcache.client.hash import HashClient  # noqa: E402
from tests.servers import MemcachedServer, RedisCluster, RedisServer  # noqa: E402

from before import DEFAULT_REV, load_before, verify  # noqa: E402
from stratacache import AsyncCache, Cache  # noqa: E402
from stratacache.config import SCHEMES, tier_from_url  # noqa: E402
from stratacache.entry import Entry  # noqa: E402
from stratacache.tiers.remote import RemoteTier  # noqa: E402

BATCH = 100
#: threads of the raw async memcached side, and of the old memcached tier's async face
POOL = 8
BARS = {"hit": 1.3, "get_many(100)": 1.5, "hit vs floor": 1.3, "get_many(100) vs floor": 1.5}
VALUE = {"id": 12345, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 99.5}


@dataclass
class Row:
    level: str
    face: str
    case: str
    raw_us: float
    cache_us: float
    before_us: float | None = None

    @property
    def ratio(self) -> float:
        return self.cache_us / self.raw_us

    @property
    def speedup(self) -> float | None:
        """before / after: above 1, the current tree is faster."""
        return None if self.before_us is None else self.before_us / self.cache_us

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


def in_turn(contenders: dict[str, Any], round_: int) -> list[str]:
    """The order of one round: raw first, then the caches, which swap places every round
    so that neither always runs right after raw (with no before-cache: raw, cache)."""
    raw, *caches = contenders
    return [raw, *(caches if round_ % 2 == 0 else caches[::-1])]


def best_row(level: str, face: str, case: str, times: dict[str, list[float]]) -> Row:
    before = times.get("before")
    return Row(
        level,
        face,
        case,
        min(times["raw"]) * 1e6,
        min(times["cache"]) * 1e6,
        None if before is None else min(before) * 1e6,
    )


def compare(
    level: str,
    case: str,
    raw: Callable[[], Any],
    cache: Callable[[], Any],
    rounds: int,
    budget: float,
    before: Callable[[], Any] | None = None,
) -> Row:
    """Alternate raw and cache loops (and the before-cache's) so that drift and neighbours
    hit all alike."""
    contenders = {"raw": raw, "cache": cache}
    if before is not None:
        contenders["before"] = before
    calls = calls_for(raw, budget)
    for fn in contenders.values():  # warm all
        per_call(fn, calls // 10)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    gc.collect()
    for round_ in range(rounds):
        for name in in_turn(contenders, round_):
            times[name].append(per_call(contenders[name], calls))
    return best_row(level, "sync", case, times)


async def acompare(
    level: str,
    case: str,
    raw: Callable[[], Awaitable[Any]],
    cache: Callable[[], Awaitable[Any]],
    rounds: int,
    budget: float,
    before: Callable[[], Awaitable[Any]] | None = None,
) -> Row:
    contenders = {"raw": raw, "cache": cache}
    if before is not None:
        contenders["before"] = before
    once = await aper_call(raw, 20)
    calls = max(20, int(budget / max(once, 1e-7)))
    for fn in contenders.values():
        await aper_call(fn, calls // 10)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    gc.collect()
    for round_ in range(rounds):
        for name in in_turn(contenders, round_):
            times[name].append(await aper_call(contenders[name], calls))
    return best_row(level, "async", case, times)


# ---------------------------------------------------------------------------- levels


class Level:
    """One remote level: its tier URL, the raw clients, and the data both read; with a
    before-package, also that revision's tier over the same servers."""

    name: str
    url: str
    #: keywords of the tier beyond the URL, for the current package and the before one
    #: (the tiers' keywords changed with the redesign: each gets those it accepts)
    options: ClassVar[Mapping[str, Any]] = {}
    before_options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, before: ModuleType | None = None) -> None:
        self.tier: RemoteTier = tier_from_url(self.url, namespace="bench", **self.options)
        self.keys = [f"user:{i}" for i in range(BATCH)]
        self.tier.set_many({key: Entry(VALUE) for key in self.keys})
        self.names = [self.tier.storage_name(key) for key in self.keys]
        self.codec = self.tier.codec
        self.before = before
        self.before_tier: Any = None
        if before is not None:
            # Its own namespace: the envelope format changed, each tier reads what it wrote.
            self.before_tier = before.config.tier_from_url(
                self.url,
                namespace="bench-before",
                **accepted_by(before, self.url, self.before_options),
            )
            self.before_tier.set_many({key: before.Entry(VALUE) for key in self.keys})
            verify(before)  # again: building the tier imported its module just now

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
        if self.before_tier is not None:
            self.before_tier.close()


def accepted_by(package: ModuleType, url: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``options`` that ``package``'s tier for ``url`` takes.

    ``before_options`` are written for one revision, but ``--before`` takes any: a keyword
    a revision's tier does not know makes it refuse to build at all (4dda6b0's memcached
    tier and ``async_workers``, which only c1bdaeb's had). Such a keyword is left out, so
    that revision runs with its own default, and said on stderr so the table is read
    knowing it."""
    scheme = SCHEMES[url.split("://", 1)[0].lower()]
    module = importlib.import_module(package.__name__ + scheme.module.removeprefix("stratacache"))
    tier_class = getattr(module, scheme.tier)
    spec = getattr(tier_class, "Options", None)
    if spec is not None and hasattr(spec, "accepted"):
        known = set(spec.accepted())
    else:
        # Before the options dataclasses (c1bdaeb): the constructors' own keywords, down
        # the classes for as long as each passes **options on to its base.
        known = set()
        for cls in tier_class.__mro__:
            if "__init__" not in vars(cls):
                continue
            params = inspect.signature(cls.__init__).parameters.values()
            known |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        else:
            return dict(options)
    dropped = sorted(set(options) - known)
    if dropped:
        print(
            f"note: {package.__name__}.{scheme.tier} takes no {', '.join(dropped)}: "
            "left at that revision's default",
            file=sys.stderr,
        )
    return {name: value for name, value in options.items() if name in known}


class RedisLevel(Level):
    name = "redis"

    def __init__(self, server: RedisServer, before: ModuleType | None = None) -> None:
        self.url = server.url
        super().__init__(before)
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

    def __init__(self, cluster: RedisCluster, before: ModuleType | None = None) -> None:
        self.url = cluster.cluster_url
        super().__init__(before)
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
    # The current tier's async face is its own asyncio client (max_connections, default);
    # c1bdaeb's ran pymemcache in a thread pool, here as wide as the raw side's. Later
    # revisions have the asyncio client and no such keyword (accepted_by leaves it out).
    before_options: ClassVar[Mapping[str, Any]] = {"async_workers": POOL}

    def __init__(self, servers: list[MemcachedServer], before: ModuleType | None = None) -> None:
        self.url = "memcached://" + ",".join(f"{s.host}:{s.port}" for s in servers)
        super().__init__(before)
        self.client = HashClient([(s.host, s.port) for s in servers], allow_unicode_keys=True)
        self.pool = ThreadPoolExecutor(POOL)
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


def cache_calls(cache: Any, key: str, keys: list[str]) -> tuple[Callable[[], Any], ...]:
    """A hit and a batch on ``cache`` (sync or async): the same closures for the current
    cache and the before one, so that neither pays for a different wrapper."""

    def hit() -> Any:
        return cache.get(key)

    def batch() -> Any:
        return cache.get_many(keys)

    return hit, batch


def sync_rows(level: Level, rounds: int, budget: float) -> list[Row]:
    cache = Cache([level.tier])
    key, name, decode = level.keys[0], level.names[0], level.codec.decode
    keys, names = level.keys, level.names
    assert cache.get(key) == VALUE and len(cache.get_many(keys)) == BATCH
    hit, batch = cache_calls(cache, key, keys)
    old_hit = old_batch = None
    if level.before is not None:
        old = level.before.Cache([level.before_tier])
        assert old.get(key) == VALUE and len(old.get_many(keys)) == BATCH
        old_hit, old_batch = cache_calls(old, key, keys)

    def raw_hit() -> Any:
        return decode(key, level.raw_get(name)).value

    def raw_batch() -> dict[str, Any]:
        blobs = level.raw_get_many(names)
        return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

    rows = [
        compare(level.name, "hit", raw_hit, hit, rounds, budget, old_hit),
        compare(level.name, "get_many(100)", raw_batch, batch, rounds, budget, old_batch),
    ]
    if isinstance(level, MemcachedLevel):
        floor = level

        def floor_hit() -> Any:
            return decode(key, floor.floor_get(name)).value

        def floor_batch() -> dict[str, Any]:
            blobs = floor.floor_get_many(names)
            return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

        rows.append(compare(level.name, "hit vs floor", floor_hit, hit, rounds, budget, old_hit))
        rows.append(
            compare(
                level.name, "get_many(100) vs floor", floor_batch, batch, rounds, budget, old_batch
            )
        )
    return rows


async def async_rows(level: Level, rounds: int, budget: float) -> list[Row]:
    """The async rows; runs last for its level: closing the AsyncCache closes the tier."""
    cache = AsyncCache([level.tier])
    old = None if level.before is None else level.before.AsyncCache([level.before_tier])
    try:
        return await _async_rows(level, cache, old, rounds, budget)
    finally:
        await cache.close()
        if old is not None:
            await old.close()
        await level.aclose()


async def _async_rows(
    level: Level, cache: AsyncCache, old: Any, rounds: int, budget: float
) -> list[Row]:
    key, name, decode = level.keys[0], level.names[0], level.codec.decode
    keys, names = level.keys, level.names
    assert await cache.get(key) == VALUE and len(await cache.get_many(keys)) == BATCH
    hit, batch = cache_calls(cache, key, keys)
    old_hit = old_batch = None
    if old is not None:
        assert await old.get(key) == VALUE and len(await old.get_many(keys)) == BATCH
        old_hit, old_batch = cache_calls(old, key, keys)

    async def raw_hit() -> Any:
        return decode(key, await level.araw_get(name)).value

    async def raw_batch() -> dict[str, Any]:
        blobs = await level.araw_get_many(names)
        return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

    rows = [
        await acompare(level.name, "hit", raw_hit, hit, rounds, budget, old_hit),
        await acompare(level.name, "get_many(100)", raw_batch, batch, rounds, budget, old_batch),
    ]
    if isinstance(level, MemcachedLevel):
        floor = level

        async def floor_hit() -> Any:
            return decode(key, await floor.afloor_get(name)).value

        async def floor_batch() -> dict[str, Any]:
            blobs = await floor.afloor_get_many(names)
            return {k: decode(k, b).value for k, b in zip(keys, blobs, strict=True)}

        rows.append(
            await acompare(level.name, "hit vs floor", floor_hit, hit, rounds, budget, old_hit)
        )
        rows.append(
            await acompare(
                level.name, "get_many(100) vs floor", floor_batch, batch, rounds, budget, old_batch
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


def table(rows: list[Row], before: str | None = None) -> str:
    """The rows as markdown; with ``before`` (its revision), its two columns too."""
    if before is None:
        lines = [
            "| level | face | case | raw µs | cache µs | ratio | bar |",
            "|---|---|---|---:|---:|---:|---|",
        ]
    else:
        lines = [
            f"| level | face | case | raw µs | cache µs | before µs ({before}) | ratio "
            "| before/after | bar |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
    for row in rows:
        verdict = "ok" if row.ratio <= row.bar else "over"
        cells = [row.level, row.face, row.case, f"{row.raw_us:.1f}", f"{row.cache_us:.1f}"]
        if before is not None:
            cells.append(f"{row.before_us:.1f}")
        cells.append(f"{row.ratio:.2f}x")
        if before is not None:
            cells.append(f"{row.speedup:.2f}")
        cells.append(f"{row.bar}x {verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["redis", "redis-cluster", "memcached"], action="append")
    parser.add_argument("--rounds", type=int, default=40, help="alternating rounds per case")
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per timed loop")
    parser.add_argument("--profile", choices=["redis", "redis-cluster", "memcached"])
    parser.add_argument(
        "--before",
        nargs="?",
        const=DEFAULT_REV,
        metavar="REV",
        help=f"also time this revision's caches, side by side (default {DEFAULT_REV}; "
        "not with --profile)",
    )
    args = parser.parse_args()
    wanted = set(args.only or ["redis", "redis-cluster", "memcached"])
    if args.profile:
        wanted = {args.profile}
    # Built (or reused) before any server starts: a failed build costs no server start-up.
    before = None if args.before is None or args.profile else load_before(args.before)

    servers: list[Any] = []
    levels: list[Level] = []
    try:
        if "redis" in wanted:
            server = RedisServer().start()
            servers.append(server)
            levels.append(RedisLevel(server, before))
        if "redis-cluster" in wanted:
            cluster = RedisCluster(replicas_per_master=0).start()  # no replicas: less CPU
            servers.append(cluster)
            levels.append(ClusterLevel(cluster, before))
        if "memcached" in wanted:
            pair = [MemcachedServer().start(), MemcachedServer().start()]
            servers.extend(pair)
            levels.append(MemcachedLevel(pair, before))

        if args.profile:
            profile_hit(levels[0])
            return
        rows: list[Row] = []
        for level in levels:
            rows.extend(sync_rows(level, args.rounds, args.budget))
            rows.extend(asyncio.run(async_rows(level, args.rounds, args.budget)))
            print(table([row for row in rows if row.level == level.name], args.before), flush=True)
        print()
        print(table(rows, args.before))
    finally:
        for level in levels:
            level.close()
        for server in servers:
            server.close()


if __name__ == "__main__":
    main()

"""1,000 concurrent gets of 1,000 resident keys through a default Redis pool (64
connections): no errors, no origin loads, and what the bounded wait costs.

A burst wider than the pool is normal traffic: every key is in Redis, so every get must
be answered there. Before the tiers waited for a connection, redis-py's default pool
raised ``MaxConnectionsError`` for the 65th concurrent caller, the level was skipped and
the origin loaded a key Redis held. This starts a private redis-server
(``tests/servers.py``; never the machine's own), stores ``--keys`` keys through a Cache,
and then runs ``--rounds`` rounds of one burst each:

* async: ``asyncio.gather`` of one ``get`` per key on ``AsyncCache([redis_tier], origin)``
  (Redis its only level, so every get goes to Redis; default options, so 64 connections),
  against redis-py's asyncio client GETting the same storage names through a
  ``BlockingConnectionPool(max_connections=64)`` (it waits for a connection as the tier
  does), the same plus decoding each envelope (the work the cache does on top of a GET),
  and a default ``ConnectionPool(max_connections=64)``, which fails the callers past 64
  (their errors are counted, their time is a failure's, not a read's);
* sync: the same with a ``Cache`` and ``--threads`` threads (200) sharing the tier,
  against redis-py's sync client with the same pools, in the same thread pool.

Within a round the contenders take turns in an order that rotates, so that drift and
neighbours on a shared machine hit all alike. An untimed first round per contender opens
its connections (its errors still count). Every answer is checked against the stored
value after its round's clock stops. It prints per contender the best and the median
round, gets/s at the median, errors, and for the cache its level counters and origin
loads, then the ratio of the cache's median round to each raw one. Nothing asserts:
benchmarks report.

    python benchmarks/burst_resident.py                # ~15 s
    python benchmarks/burst_resident.py --rounds 50 --no-sync
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers

import redis  # noqa: E402
import redis.asyncio  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

from stratacache import AsyncCache, Cache  # noqa: E402
from stratacache.config import DEFAULT_MAX_CONNECTIONS, tier_from_url  # noqa: E402

NAMESPACE = "burst"
CACHE = "stratacache"


def value_of(key: str) -> dict[str, Any]:
    return {"key": key, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 99.5}


class Origin:
    """Counts loads: with every key resident, each one is a get that Redis did not answer."""

    def __init__(self) -> None:
        self.loads = 0
        self._lock = threading.Lock()

    def __call__(self, keys: list[str]) -> dict[str, Any]:
        with self._lock:
            self.loads += len(keys)
        return {key: value_of(key) for key in keys}


@dataclass
class Contender:
    name: str
    #: one burst (a coroutine function for the async side); returns one outcome per key
    run: Callable[[], Any]
    #: an outcome to the value it stands for, applied after the clock stops
    value: Callable[[str, Any], Any]
    times: list[float] = field(default_factory=list)  # seconds per timed round
    cold: float = 0.0  # the untimed first round
    errors: int = 0  # callers that got an exception, first round included
    wrong: int = 0  # answers that were not the stored value
    first_error: str | None = None

    def check(self, keys: list[str], outcomes: list[Any]) -> None:
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.errors += 1
                if self.first_error is None:
                    self.first_error = f"{type(outcome).__name__}: {outcome}"
            elif self.value(key, outcome) != value_of(key):
                self.wrong += 1

    def record(self, round_: int, elapsed: float) -> None:
        if round_ == 0:
            self.cold = elapsed
        else:
            self.times.append(elapsed)


def rotated(items: list[Contender], round_: int) -> list[Contender]:
    shift = round_ % len(items)
    return items[shift:] + items[:shift]


def cache_counters(cache: Cache | AsyncCache, origin: Origin) -> dict[str, int]:
    stats = cache.stats()
    level = stats.levels[0]
    return {
        "origin loads": stats.origin_loads,
        "origin loads (the origin's count)": origin.loads,
        "level errors": level.errors,
        "level hits": level.hits,
        "level misses": level.misses,
        "skipped (breaker)": level.skipped,
        "breaker opens": level.breaker_opens,
        "pool_waits": level.pool_waits,
        "pool_timeouts": level.pool_timeouts,
    }


# ---------------------------------------------------------------------------- async


async def async_side(
    url: str, keys: list[str], rounds: int, pool: int
) -> tuple[list[Contender], dict[str, int]]:
    origin = Origin()
    tier = tier_from_url(url, namespace=NAMESPACE)
    cache = AsyncCache([tier], origin)
    names = [tier.storage_name(key) for key in keys]
    decode = tier.codec.decode
    blocking = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=pool)
    )
    default = redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool.from_url(url, max_connections=pool)
    )

    async def cached() -> list[Any]:
        return await asyncio.gather(*(cache.get(key) for key in keys), return_exceptions=True)

    async def raw_blocking() -> list[Any]:
        return await asyncio.gather(*map(blocking.get, names), return_exceptions=True)

    async def raw_blocking_decoded() -> list[Any]:
        blobs = await asyncio.gather(*map(blocking.get, names), return_exceptions=True)
        return [
            blob if isinstance(blob, BaseException) else decode(key, blob).value
            for key, blob in zip(keys, blobs, strict=True)
        ]

    async def raw_default() -> list[Any]:
        return await asyncio.gather(*map(default.get, names), return_exceptions=True)

    contenders = [
        Contender(f"{CACHE} AsyncCache.get", cached, lambda _k, v: v),
        *raw_rows(pool, raw_blocking, raw_blocking_decoded, raw_default, decode),
    ]
    try:
        for round_ in range(rounds + 1):
            for contender in rotated(contenders, round_):
                start = time.perf_counter()
                outcomes = await contender.run()
                contender.record(round_, time.perf_counter() - start)
                contender.check(keys, outcomes)
        counters = cache_counters(cache, origin)
    finally:
        await cache.close()
        await blocking.aclose()
        await default.aclose()
    return contenders, counters


def raw_rows(
    pool: int,
    blocking: Callable[[], Any],
    blocking_decoded: Callable[[], Any],
    default: Callable[[], Any],
    decode: Callable[[str, bytes], Any],
) -> list[Contender]:
    """The raw contenders, alike on both faces; a raw GET's answer is checked decoded."""

    def envelope(key: str, blob: bytes) -> Any:
        return decode(key, blob).value

    return [
        Contender(f"raw BlockingConnectionPool({pool}) GET", blocking, envelope),
        Contender(
            f"raw BlockingConnectionPool({pool}) GET + decode", blocking_decoded, lambda _k, v: v
        ),
        Contender(f"raw ConnectionPool(max_connections={pool}) GET", default, envelope),
    ]


# ---------------------------------------------------------------------------- sync


def sync_side(
    url: str, keys: list[str], rounds: int, pool: int, threads: int
) -> tuple[list[Contender], dict[str, int]]:
    origin = Origin()
    tier = tier_from_url(url, namespace=NAMESPACE)
    cache = Cache([tier], origin)
    names = [tier.storage_name(key) for key in keys]
    decode = tier.codec.decode
    blocking = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=pool)
    )
    default = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, max_connections=pool))
    executor = ThreadPoolExecutor(threads)

    def burst(fn: Callable[[Any], Any], args: list[Any]) -> Callable[[], list[Any]]:
        def caught(arg: Any) -> Any:
            try:
                return fn(arg)
            except Exception as exc:  # a caller's error is what is being counted
                return exc

        def run() -> list[Any]:
            return list(executor.map(caught, args))

        return run

    def get_decoded(i: int) -> Any:
        return decode(keys[i], blocking.get(names[i])).value

    contenders = [
        Contender(f"{CACHE} Cache.get", burst(cache.get, keys), lambda _k, v: v),
        *raw_rows(
            pool,
            burst(blocking.get, names),
            burst(get_decoded, list(range(len(keys)))),
            burst(default.get, names),
            decode,
        ),
    ]
    try:
        # Every thread of the pool started before the first timed burst.
        list(executor.map(time.sleep, [0.01] * threads))
        for round_ in range(rounds + 1):
            for contender in rotated(contenders, round_):
                start = time.perf_counter()
                outcomes = contender.run()
                contender.record(round_, time.perf_counter() - start)
                contender.check(keys, outcomes)
        counters = cache_counters(cache, origin)
    finally:
        executor.shutdown()
        cache.close()
        blocking.close()
        default.close()
    return contenders, counters


# ---------------------------------------------------------------------------- report


def report(title: str, contenders: list[Contender], counters: dict[str, int], n: int) -> None:
    print(f"### {title}")
    print()
    print(
        "| contender | best ms | median ms | cold ms | gets/s (median) | errors | wrong "
        "| cache / this (median) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    cache = contenders[0]
    cache_median = statistics.median(cache.times)

    def ratio(c: Contender) -> str:
        if c is cache:
            return "-"
        if c.errors:
            # Its failed gets return at once: a faster round that read less is no floor.
            return "n/a (failed gets)"
        return f"{cache_median / statistics.median(c.times):.2f}x"

    for c in contenders:
        median = statistics.median(c.times)
        print(
            f"| {c.name} | {min(c.times) * 1e3:.1f} | {median * 1e3:.1f} | {c.cold * 1e3:.1f} "
            f"| {n / median:,.0f} | {c.errors} | {c.wrong} "
            f"| {ratio(c)} |"
        )
    print()
    print("cache level: " + ", ".join(f"{name} {value}" for name, value in counters.items()))
    for c in contenders:
        if c.first_error:
            print(f"first error of {c.name}: {c.first_error}")
    verdict = (
        "PASS"
        if cache.errors == 0 and counters["origin loads"] == 0 and counters["level errors"] == 0
        else "FAIL"
    )
    print(
        f"bar (0 caller errors, 0 level errors, 0 origin loads): {verdict} "
        f"({cache.errors} caller errors, {counters['level errors']} level errors, "
        f"{counters['origin loads']} origin loads)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1000, help="resident keys = burst width")
    parser.add_argument("--rounds", type=int, default=20, help="timed bursts per contender")
    parser.add_argument("--threads", type=int, default=200, help="threads of the sync side")
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="the raw clients' max_connections (the tier keeps its default)",
    )
    parser.add_argument("--no-sync", action="store_true", help="the async side only")
    args = parser.parse_args()

    server = RedisServer().start()
    try:
        keys = [f"user:{i}" for i in range(args.keys)]
        # Stored through a Cache, so the envelopes are the tier's own.
        filler = Cache([tier_from_url(server.url, namespace=NAMESPACE)], Origin())
        for i in range(0, len(keys), 500):
            filler.set_many({key: value_of(key) for key in keys[i : i + 500]})
        filler.close()
        print(
            f"{args.keys} resident keys, {args.rounds} timed rounds (+1 cold), one burst of "
            f"{args.keys} concurrent gets per round and contender; tier max_connections "
            f"{DEFAULT_MAX_CONNECTIONS} (default), raw pools {args.pool}"
        )
        print()
        contenders, counters = asyncio.run(async_side(server.url, keys, args.rounds, args.pool))
        report(f"async: {args.keys} tasks", contenders, counters, args.keys)
        if not args.no_sync:
            contenders, counters = sync_side(server.url, keys, args.rounds, args.pool, args.threads)
            report(f"sync: {args.threads} threads", contenders, counters, args.keys)
    finally:
        server.close()


if __name__ == "__main__":
    main()

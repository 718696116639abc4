"""Counters and latency histograms per level, and the hierarchy's summary.

Everything here is plain attributes bumped on the paths that already run; exporters read
them when scraped. Counters are updated without a lock: under the GIL an increment can
rarely be lost when threads race on the same counter, which is acceptable for statistics
and keeps the L1 hit path free of locks.

The average response time follows the classic formula for a hierarchy,
``AMAT = T1 + m1 (T2 + m2 (... + mn T_origin))``, with every T and m measured: T is a
level's mean latency per lookup, m its miss rate (misses / lookups at that level).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _accel
from .hotkeys import HotKey

__all__ = [
    "CacheStats",
    "LatencyHistogram",
    "LevelSnapshot",
    "LevelStats",
    "OriginStats",
    "amat",
]


def amat(latencies: Sequence[float], miss_ratios: Sequence[float], origin_latency: float) -> float:
    """``T1 + m1 (T2 + m2 (... + mn T_origin))``, evaluated from the origin upward. The
    live cache (``CacheStats.amat_us``) and the simulator both use this one function."""
    time = origin_latency
    for latency, miss_ratio in zip(reversed(latencies), reversed(miss_ratios), strict=True):
        time = latency + miss_ratio * time
    return time


T = TypeVar("T")

_SUB_BITS = 4  # 16 sub-buckets per power of two: quantiles within ~6%
_SUB = 1 << _SUB_BITS


class LatencyHistogram:
    """Log-linear histogram of durations in nanoseconds (HdrHistogram's bucketing idea):
    constant memory, O(1) record, quantiles accurate to a few percent."""

    __slots__ = ("_buckets", "count", "total_ns")

    def __init__(self) -> None:
        self._buckets = [0] * (64 * _SUB)
        self.count = 0
        self.total_ns = 0

    @staticmethod
    def _index(ns: int) -> int:
        if ns < _SUB:
            return max(ns, 0)
        shift = ns.bit_length() - _SUB_BITS - 1
        return (shift + 1) * _SUB + ((ns >> shift) - _SUB)

    @staticmethod
    def _value(index: int) -> float:
        if index < _SUB:
            return float(index)
        shift = index // _SUB - 1
        mantissa = index % _SUB + _SUB
        # The middle of the bucket.
        return (mantissa + 0.5) * (1 << shift)

    def record(self, ns: int) -> None:
        self._buckets[self._index(ns)] += 1
        self.count += 1
        self.total_ns += ns

    def timed(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, its duration recorded (also when it raises)."""
        start = time.perf_counter_ns()
        try:
            return fn(*args)
        finally:
            self.record(time.perf_counter_ns() - start)

    async def atimed(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable``, its duration recorded (also when it raises)."""
        start = time.perf_counter_ns()
        try:
            return await awaitable
        finally:
            self.record(time.perf_counter_ns() - start)

    def mean_us(self) -> float | None:
        return self.total_ns / self.count / 1000 if self.count else None

    def quantile_us(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                return self._value(index) / 1000
        return None  # pragma: no cover - counts are consistent

    def reset(self) -> None:
        self._buckets = [0] * (64 * _SUB)
        self.count = 0
        self.total_ns = 0


class _PyCounters:
    """The pure-Python twin of ``_speedups.Counters``: the same fields, as slots."""

    __slots__ = (
        "corrupt",
        "errors",
        "evictions",
        "hits",
        "misses",
        "too_large",
        "unencodable",
        "writes",
    )


# One object per level holds its counters. With the compiled module it is a C struct
# that the L1 Reader and Writer bump directly, so no path keeps counts of its own that
# would have to be summed up later.
_Counters: type = _accel.speedups.Counters if _accel.speedups is not None else _PyCounters


class LevelStats(_Counters):  # type: ignore[misc]
    """What one level counts. ``lookups`` counts keys looked up (a batch of 100 keys is 100
    lookups); ``latency`` records one sample per call to the tier.

    Who counts what: the hierarchy's flow counts the outcome of every operation it sends a
    level (hits, misses, writes, errors); the L1 fast paths count the operations they
    answer without the flow; a tier counts only what happens inside it (evictions,
    corrupt payloads)."""

    hits: int
    misses: int
    errors: int  # transient failures: the level was skipped
    #: set by a tier's circuit breaker (see stratacache.tiers.breaker); plain attributes
    breaker: str
    breaker_opens: int
    skipped: int  # calls the open breaker refused without I/O (also counted in errors)
    #: calls that waited for a free connection, and those that gave up (see tiers.permits)
    pool_waits: int
    pool_timeouts: int
    corrupt: int  # payloads rejected as corrupt, foreign or forged (read as misses)
    too_large: int  # values not stored here because they exceed this level's maximum
    unencodable: int  # loaded values its serializer could not encode (not stored)
    writes: int
    evictions: int
    #: writes and fills a shared level did not take: it held a newer version, a write
    #: held the key, or the fill's lease was lost (see stratacache.hierarchy.claims)
    refused: int
    #: entries read that were older than a version this process saw written (an
    #: envelope copied back, a level a write could not reach): read as misses
    outdated: int

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.latency = LatencyHistogram()
        self.breaker = "closed"
        self.breaker_opens = 0
        self.reset()

    def snapshot(self) -> LevelSnapshot:
        hits, misses = self.hits, self.misses
        lookups = hits + misses
        return LevelSnapshot(
            name=self.name,
            kind=self.kind,
            lookups=lookups,
            hits=hits,
            misses=misses,
            hit_rate=hits / lookups if lookups else 0.0,
            mean_us=self.latency.mean_us(),
            p50_us=self.latency.quantile_us(0.50),
            p99_us=self.latency.quantile_us(0.99),
            errors=self.errors,
            corrupt=self.corrupt,
            too_large=self.too_large,
            unencodable=self.unencodable,
            writes=self.writes,
            evictions=self.evictions,
            breaker=self.breaker,
            breaker_opens=self.breaker_opens,
            skipped=self.skipped,
            pool_waits=self.pool_waits,
            pool_timeouts=self.pool_timeouts,
            refused=self.refused,
            outdated=self.outdated,
        )

    def reset(self) -> None:
        self.skipped = self.pool_waits = self.pool_timeouts = self.refused = 0
        self.outdated = 0
        self.hits = self.misses = self.errors = self.corrupt = 0
        self.too_large = self.unencodable = self.writes = self.evictions = 0
        self.latency.reset()


class OriginStats:
    def __init__(self) -> None:
        self.loads = 0  # keys asked of the origin
        self.calls = 0  # calls made (a batch is one call)
        self.found = 0
        self.errors = 0
        self.stores = 0
        self.deletes = 0
        self.latency = LatencyHistogram()

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


@dataclass(frozen=True)
class LevelSnapshot:
    name: str
    kind: str
    lookups: int
    hits: int
    misses: int
    hit_rate: float
    mean_us: float | None
    p50_us: float | None
    p99_us: float | None
    errors: int = 0
    corrupt: int = 0
    too_large: int = 0
    unencodable: int = 0
    writes: int = 0
    evictions: int = 0
    #: the circuit breaker's state (``closed``, ``open``, ``half-open``; a tier without
    #: one is always ``closed``), how often it opened, and the calls it refused
    breaker: str = "closed"
    breaker_opens: int = 0
    skipped: int = 0
    #: calls that waited for a free connection of the tier's pool, and waits that ran out
    #: (also counted in errors)
    pool_waits: int = 0
    pool_timeouts: int = 0
    refused: int = 0
    outdated: int = 0
    #: what the level holds now, where the cache can tell without I/O (an in-process
    #: level: entries, and bytes when it is bounded by bytes); None when unknown
    entries: int | None = None
    bytes: int | None = None

    @property
    def miss_rate(self) -> float:
        return self.misses / self.lookups if self.lookups else 1.0


@dataclass(frozen=True)
class CacheStats:
    levels: list[LevelSnapshot]
    origin_loads: int
    origin_calls: int
    origin_errors: int
    origin_mean_us: float | None
    origin_p99_us: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    #: keys a caller got from another caller's load of them (single flight) instead of
    #: loading them itself
    loads_coalesced: int = 0
    #: values the fail-safe served after their load failed or overran soft_timeout
    stale_served: int = 0
    #: reads that gave up at hard_timeout with nothing stale to serve
    load_timeouts: int = 0
    #: background reloads started before expiry (refresh_ahead, XFetch)
    early_refreshes: int = 0
    #: keys another process loaded while this one waited on its lease (no origin load)
    lease_waits: int = 0
    #: keys whose wait on another process's lease ran out (loaded here, or served stale)
    lease_wait_timeouts: int = 0
    #: keys whose lease holder went away without a fill while this process waited
    lease_retakes: int = 0
    #: writes that waited for another process's write lock on a key
    lock_waits: int = 0
    #: the invalidation bus (see stratacache.coherence), when the cache has one
    bus: dict[str, Any] = field(default_factory=dict)
    #: the write-behind queue (see stratacache.behind), under write="behind"
    write_behind: dict[str, Any] = field(default_factory=dict)
    #: the keys asked for most right now, hottest first, with their estimated rates
    #: (see stratacache.hotkeys; empty when the cache does not count them)
    hot_keys: list[HotKey] = field(default_factory=list)
    #: keys hot-key protection held in L1 after the policy would not (see hierarchy/hot)
    hot_pins: int = 0

    @property
    def amat_us(self) -> float:
        """Average response time per lookup from the measured figures:
        ``T1 + m1 (T2 + m2 (... + mn T_origin))``. An unmeasured level counts as 0 µs; a
        level with no lookups (down the whole time) passes everything on (m = 1)."""
        return amat(
            [level.mean_us or 0.0 for level in self.levels],
            [level.miss_rate for level in self.levels],
            self.origin_mean_us or 0.0,
        )

    @property
    def no_cache_us(self) -> float:
        """What every lookup would cost going straight to the origin."""
        return self.origin_mean_us or 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "amat_us": self.amat_us,
            "no_cache_us": self.no_cache_us,
            "levels": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "lookups": s.lookups,
                    "hits": s.hits,
                    "misses": s.misses,
                    "hit_rate": s.hit_rate,
                    "mean_us": s.mean_us,
                    "p50_us": s.p50_us,
                    "p99_us": s.p99_us,
                    "errors": s.errors,
                    "corrupt": s.corrupt,
                    "too_large": s.too_large,
                    "unencodable": s.unencodable,
                    "writes": s.writes,
                    "evictions": s.evictions,
                    "breaker": s.breaker,
                    "breaker_opens": s.breaker_opens,
                    "skipped": s.skipped,
                    "pool_waits": s.pool_waits,
                    "pool_timeouts": s.pool_timeouts,
                    "refused": s.refused,
                    "outdated": s.outdated,
                    "entries": s.entries,
                    "bytes": s.bytes,
                }
                for s in self.levels
            ],
            "origin": {
                "loads": self.origin_loads,
                "calls": self.origin_calls,
                "errors": self.origin_errors,
                "mean_us": self.origin_mean_us,
                "p99_us": self.origin_p99_us,
            },
            "loads_coalesced": self.loads_coalesced,
            "stale_served": self.stale_served,
            "load_timeouts": self.load_timeouts,
            "early_refreshes": self.early_refreshes,
            "lease_waits": self.lease_waits,
            "lease_wait_timeouts": self.lease_wait_timeouts,
            "lease_retakes": self.lease_retakes,
            "lock_waits": self.lock_waits,
            "bus": dict(self.bus),
            "write_behind": dict(self.write_behind),
            "hot_keys": [{"key": h.key, "rate": h.rate} for h in self.hot_keys],
            "hot_pins": self.hot_pins,
        }

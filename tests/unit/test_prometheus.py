"""The Prometheus exporter: real caches, a known workload, a real /metrics endpoint scraped
over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import importlib
import random
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stratacache import Cache, CallableOrigin, ConfigurationError, MemoryTier, SQLiteTier
from stratacache.metrics import LatencyHistogram
from stratacache.prometheus import (
    LATENCY_BUCKETS,
    CacheCollector,
    cumulative_counts,
    serve_cache_metrics,
    start_metrics_server,
)

KEYS = [f"user:{i}" for i in range(10)]
LEVEL_COUNTERS = [
    "writes",
    "evictions",
    "errors",
    "corrupt",
    "too_large",
    "unencodable",
    "refused",
    "outdated",
    "skipped",
    "pool_waits",
    "pool_timeouts",
    "breaker_opens",
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class CountingOrigin:
    """A load function that records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, keys: list[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        return {key: f"value of {key}" for key in keys}


def make_cache(path: Path, origin: Any, **options: Any) -> Cache:
    # measure_l1_latency: the L1 histogram is empty otherwise (hits are not timed)
    return Cache(
        [MemoryTier(100), SQLiteTier(path)],
        origin=origin,
        bus=None,
        measure_l1_latency=True,
        **options,
    )


@pytest.fixture
def origin() -> CountingOrigin:
    return CountingOrigin()


@pytest.fixture
def users(tmp_path: Path, origin: CountingOrigin) -> Iterator[Cache]:
    """10 misses everywhere (10 origin loads), then 15 L1 hits."""
    cache = make_cache(tmp_path / "l2.db", origin)
    for key in KEYS:
        assert cache.get(key) == f"value of {key}"
    for key in KEYS + KEYS[:5]:
        assert cache.get(key) == f"value of {key}"
    yield cache
    cache.close()


@pytest.fixture
def orders(tmp_path: Path, users: Cache) -> Iterator[Cache]:
    """A second cache over the same SQLite file: 3 L1 misses that L2 answers."""
    loads = CountingOrigin()
    cache = make_cache(tmp_path / "l2.db", loads)
    for key in KEYS[:3]:
        assert cache.get(key) == f"value of {key}"
    assert loads.calls == []
    yield cache
    cache.close()


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


def histogram_series(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """The (le, cumulative count) pairs of one histogram series, by le."""
    series = [
        (float(dict(key)["le"]), count)
        for (sample, key), count in samples.items()
        if sample == f"{name}_bucket" and {k: v for k, v in key if k != "le"} == labels
    ]
    return sorted(series)


def check_histogram(
    samples: Samples, name: str, histogram: LatencyHistogram, **labels: str
) -> None:
    series = histogram_series(samples, name, **labels)
    assert [le for le, _ in series] == [*LATENCY_BUCKETS, float("inf")]
    counts = [count for _, count in series]
    assert counts == sorted(counts), "buckets are cumulative"
    assert counts[-1] == value(samples, f"{name}_count", **labels) == histogram.count
    assert value(samples, f"{name}_sum", **labels) == pytest.approx(histogram.total_ns / 1e9)


# ---------------------------------------------------------------------- over HTTP


def test_scrape_matches_stats_and_the_workload(
    users: Cache, orders: Cache, origin: CountingOrigin
) -> None:
    registry = CollectorRegistry()
    collector = CacheCollector(users, name="users", hot_keys=3)
    collector.add(orders, name="orders")
    registry.register(collector)
    with start_metrics_server(0, registry=registry) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        text = scrape(server.url)
    samples = parse(text)

    # What the workload implies, independently of stats().
    gets = "stratacache_level_gets_total"
    assert value(samples, gets, cache="users", level="L1", result="hit") == 15
    assert value(samples, gets, cache="users", level="L1", result="miss") == 10
    assert value(samples, gets, cache="users", level="L2", result="hit") == 0
    assert value(samples, gets, cache="users", level="L2", result="miss") == 10
    assert value(samples, gets, cache="orders", level="L1", result="miss") == 3
    assert value(samples, gets, cache="orders", level="L2", result="hit") == 3
    assert value(samples, "stratacache_origin_loads_total", cache="users") == len(origin.calls)
    assert len(origin.calls) == 10
    assert value(samples, "stratacache_origin_calls_total", cache="users") == 10
    assert value(samples, "stratacache_origin_loads_total", cache="orders") == 0
    assert (
        value(samples, "stratacache_level_latency_seconds_count", cache="users", level="L2") == 10
    )

    for name, cache in (("users", users), ("orders", orders)):
        check_against_stats(samples, name, cache)


def check_against_stats(samples: Samples, name: str, cache: Cache) -> None:
    stats = cache.stats()
    for tier, level in zip(cache.levels, stats.levels, strict=True):
        labels = {"cache": name, "level": level.name}
        assert value(samples, "stratacache_level_info", kind=level.kind, **labels) == 1
        gets = "stratacache_level_gets_total"
        assert value(samples, gets, result="hit", **labels) == level.hits
        assert value(samples, gets, result="miss", **labels) == level.misses
        for field in LEVEL_COUNTERS:
            metric = f"stratacache_level_{field}_total"
            assert value(samples, metric, **labels) == getattr(level, field), metric
        for field in ("entries", "bytes"):
            expected = getattr(level, field, None)
            key = (f"stratacache_level_{field}", frozenset(labels.items()))
            assert samples.get(key) == expected  # None: no sample at all
        for state in ("closed", "open", "half-open"):
            current = value(samples, "stratacache_level_breaker_state", state=state, **labels)
            assert current == (state == level.breaker)
        check_histogram(samples, "stratacache_level_latency_seconds", tier.stats.latency, **labels)
        assert tier.stats.latency.count == level.lookups  # one call per single-key get
    assert value(samples, "stratacache_origin_calls_total", cache=name) == stats.origin_calls
    assert value(samples, "stratacache_origin_errors_total", cache=name) == stats.origin_errors
    for field in ("stale_served", "loads_coalesced", "load_timeouts", "early_refreshes"):
        assert value(samples, f"stratacache_{field}_total", cache=name) == getattr(stats, field)
    for field in ("lease_waits", "lease_wait_timeouts", "lease_retakes", "lock_waits"):
        assert value(samples, f"stratacache_{field}_total", cache=name) == getattr(stats, field)
    origin_latency = cache._hierarchy.origin_stats.latency
    assert origin_latency.count == stats.origin_calls
    check_histogram(samples, "stratacache_origin_latency_seconds", origin_latency, cache=name)
    assert value(samples, "stratacache_amat_seconds", cache=name) == pytest.approx(
        stats.amat_us / 1e6
    )


def test_each_family_is_announced_once_for_several_caches(users: Cache, orders: Cache) -> None:
    registry = CollectorRegistry()
    collector = CacheCollector(users, name="users")
    collector.add(orders, name="orders")
    registry.register(collector)
    text = generate_latest(registry).decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert {"users", "orders"} == {
        dict(key)["cache"] for (name, key) in parse(text) if name == "stratacache_amat_seconds"
    }


def test_a_second_collector_in_one_registry_fails_at_registration(
    users: Cache, orders: Cache
) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(users, name="users"))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(CacheCollector(orders, name="orders"))


def test_hot_keys_are_the_caches_top_n(users: Cache) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(users, name="users", hot_keys=3))
    samples = parse(generate_latest(registry).decode())
    hot = {
        dict(key)["key"]: rate
        for (name, key), rate in samples.items()
        if name == "stratacache_hot_key_rate"
    }
    assert set(hot) == {h.key for h in users.hot_keys(3)}
    assert len(hot) == 3
    assert all(rate > 0 for rate in hot.values())


def test_hot_keys_zero_exports_none(users: Cache) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(users, name="users", hot_keys=0))
    samples = parse(generate_latest(registry).decode())
    assert not [name for name, _ in samples if name == "stratacache_hot_key_rate"]


def test_bus_and_write_behind_sections(tmp_path: Path) -> None:
    stored: dict[str, Any] = {}
    cache = Cache(
        [MemoryTier(100), SQLiteTier(tmp_path / "l2.db")],
        origin=CallableOrigin(lambda keys: {}, stored.update),
        write="behind",
        journal=tmp_path / "journal",
    )
    for i in range(5):
        cache.set(f"k{i}", i)
    cache.close()  # flushes the queue and stops the bus: the figures hold still
    assert stored == {f"k{i}": i for i in range(5)}
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache, name="c"))
    samples = parse(generate_latest(registry).decode())
    stats = cache.stats()
    assert stats.bus and stats.write_behind
    bus, behind = stats.bus, stats.write_behind
    assert value(samples, "stratacache_bus_published_total", cache="c") == bus["published"]
    assert value(samples, "stratacache_bus_healthy", cache="c") == bus["healthy"]
    assert value(samples, "stratacache_write_behind_stored_total", cache="c") == 5
    assert value(samples, "stratacache_write_behind_depth", cache="c") == behind["depth"] == 0
    assert value(samples, "stratacache_write_behind_lag_seconds", cache="c") == 0
    # not measured yet (no message received): no sample rather than a made-up 0
    assert bus["delay_p50_ms"] is None
    assert not [n for n, _ in samples if n == "stratacache_bus_delay_p50_seconds"]


def test_serve_cache_metrics_and_shutdown(users: Cache) -> None:
    registry = CollectorRegistry()
    server = serve_cache_metrics(users, "users", 0, registry=registry)
    samples = parse(scrape(server.url))
    assert value(samples, "stratacache_origin_loads_total", cache="users") == 10
    server.shutdown()
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)
    assert b"stratacache_" not in generate_latest(registry)  # the collector is gone
    server.shutdown()  # twice is harmless


def test_collector_arguments_are_checked(users: Cache) -> None:
    with pytest.raises(ConfigurationError, match="name the cache"):
        CacheCollector(users)
    with pytest.raises(ConfigurationError, match="hot_keys"):
        CacheCollector(users, name="users", hot_keys=-1)
    with pytest.raises(ConfigurationError, match="latency_buckets"):
        CacheCollector(users, name="users", latency_buckets=[0.1, 0.01])
    collector = CacheCollector(users, name="users")
    with pytest.raises(ConfigurationError, match="already exported"):
        collector.add(users, name="users")
    collector.remove("users")
    assert collector.names == []


def test_describe_lists_families_without_reading_the_cache() -> None:
    class Untouchable:
        def stats(self) -> None:
            raise AssertionError("describe() must not read the cache")

    collector = CacheCollector(Untouchable(), name="x")  # type: ignore[arg-type]
    names = {family.name for family in collector.describe()}
    assert {"stratacache_level_gets", "stratacache_level_latency_seconds"} <= names
    assert all(not family.samples for family in collector.describe())


# ---------------------------------------------------------------------- the buckets


def test_cumulative_counts_of_known_durations() -> None:
    histogram = LatencyHistogram()
    for ns in (500, 2_000, 3_000_000, 20_000_000_000):  # 0.5 µs, 2 µs, 3 ms, 20 s
        histogram.record(ns)
    bounds = [round(b * 1e9) for b in LATENCY_BUCKETS]
    counts = dict(
        zip([*LATENCY_BUCKETS, float("inf")], cumulative_counts(histogram, bounds), strict=True)
    )
    assert counts[1e-6] == 1
    assert counts[2.5e-6] == counts[1e-3] == counts[2.5e-3] == 2
    assert counts[5e-3] == counts[10.0] == 3
    assert counts[float("inf")] == 4


def test_cumulative_counts_never_overcount() -> None:
    """A bucket straddling a bound counts under the next one: at bound B the count is
    between the true count at B(1 - 1/16) and the true count at B."""
    rng = random.Random(12)
    durations = [int(10 ** rng.uniform(2, 10)) for _ in range(5_000)]
    histogram = LatencyHistogram()
    for ns in durations:
        histogram.record(ns)
    bounds = [round(b * 1e9) for b in LATENCY_BUCKETS]
    counts = cumulative_counts(histogram, bounds)
    assert counts[-1] == len(durations)
    for bound, count in zip(bounds, counts, strict=False):
        assert sum(d <= bound * 15 / 16 for d in durations) <= count
        assert count <= sum(d <= bound for d in durations)


def test_an_empty_histogram_has_zero_counts() -> None:
    assert cumulative_counts(LatencyHistogram(), [1_000, 2_000]) == [0, 0, 0]


# ---------------------------------------------------------------------- without the extra


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "stratacache.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'stratacache\[metrics\]'"):
        importlib.import_module("stratacache.prometheus")

"""The OpenTelemetry exporter: real caches, the SDK's MeterProvider with an in-memory
reader, values compared with ``cache.stats()`` and with what the workload implies."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from stratacache import Cache, MemoryTier, SQLiteTier
from stratacache.otel_metrics import INSTRUMENTS, instrument

KEYS = [f"user:{i}" for i in range(10)]

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


def load(keys: list[str]) -> dict[str, str]:
    return {key: f"value of {key}" for key in keys}


def make_cache(path: Path) -> Cache:
    return Cache(
        [MemoryTier(100), SQLiteTier(path)], origin=load, bus=None, measure_l1_latency=True
    )


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def users(tmp_path: Path) -> Iterator[Cache]:
    """10 misses everywhere (10 origin loads), then 15 L1 hits."""
    cache = make_cache(tmp_path / "users.db")
    for key in KEYS + KEYS + KEYS[:5]:
        cache.get(key)
    yield cache
    cache.close()


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, str]]:
    """Every data point by (instrument, attributes), and each instrument's unit."""
    points: Points = {}
    units: dict[str, str] = {}
    data = reader.get_metrics_data()
    if data is None:
        return points, units
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "stratacache"
            for metric in scope.metrics:
                units[metric.name] = metric.unit or ""
                for point in metric.data.data_points:
                    key = (metric.name, frozenset(dict(point.attributes or {}).items()))
                    assert key not in points
                    points[key] = point.value  # type: ignore[union-attr]
    return points, units


def value(points: Points, name: str, **attributes: str) -> float:
    return points[(name, frozenset(attributes.items()))]


def caches_in(points: Points) -> set[str]:
    return {dict(attrs)["cache"] for _, attrs in points}


def test_values_match_stats_and_the_workload(
    users: Cache, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(users, name="users", meter_provider=provider, hot_keys=3)
    points, units = collect(reader)
    stats = users.stats()

    gets = "stratacache.level.gets"
    assert value(points, gets, cache="users", level="L1", result="hit") == 15
    assert value(points, gets, cache="users", level="L1", result="miss") == 10
    assert value(points, gets, cache="users", level="L2", result="miss") == 10
    assert value(points, "stratacache.origin.loads", cache="users") == 10
    assert value(points, "stratacache.origin.calls", cache="users") == 10

    for level in stats.levels:
        labels = {"cache": "users", "level": level.name}
        for field in ("writes", "evictions", "errors", "corrupt", "refused", "skipped"):
            assert value(points, f"stratacache.level.{field}", **labels) == getattr(level, field)
        assert value(points, "stratacache.level.pool.timeouts", **labels) == level.pool_timeouts
        assert value(points, "stratacache.level.breaker.opens", **labels) == level.breaker_opens
        assert value(points, "stratacache.level.breaker.state", state="closed", **labels) == 1
        assert value(points, "stratacache.level.breaker.state", state="open", **labels) == 0
        for stat in ("mean", "p50", "p99"):
            expected = getattr(level, f"{stat}_us")
            assert expected is not None  # measure_l1_latency: every level is timed
            got = value(points, f"stratacache.level.latency.{stat}", **labels)
            assert got == pytest.approx(expected / 1e6)
        for field, name in (("entries", "entries"), ("bytes", "size")):
            key = (f"stratacache.level.{name}", frozenset(labels.items()))
            assert points.get(key) == getattr(level, field, None)

    origin = users._hierarchy.origin_stats.latency
    assert value(points, "stratacache.origin.latency.mean", cache="users") == pytest.approx(
        stats.origin_mean_us / 1e6  # type: ignore[operator]
    )
    assert value(points, "stratacache.origin.latency.p50", cache="users") == pytest.approx(
        origin.quantile_us(0.5) / 1e6  # type: ignore[operator]
    )
    assert value(points, "stratacache.amat", cache="users") == pytest.approx(stats.amat_us / 1e6)
    for field in ("stale_served", "early_refreshes"):
        assert value(points, f"stratacache.{field}", cache="users") == getattr(stats, field)
    assert value(points, "stratacache.loads.coalesced", cache="users") == stats.loads_coalesced

    hot = {dict(attrs)["key"] for name, attrs in points if name == "stratacache.hot_key.rate"}
    assert hot == {h.key for h in users.hot_keys(3)}

    assert units[gets] == "{lookup}"
    assert units["stratacache.level.latency.p99"] == "s"
    assert units["stratacache.amat"] == "s"


def test_each_collection_reads_the_cache_again(
    users: Cache, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    instrument(users, name="users", meter_provider=provider)
    before, _ = collect(reader)
    users.get("another key")
    after, _ = collect(reader)
    loads = "stratacache.origin.loads"
    assert value(after, loads, cache="users") == value(before, loads, cache="users") + 1 == 11


def test_several_caches_on_one_provider(
    users: Cache, tmp_path: Path, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    orders = make_cache(tmp_path / "orders.db")
    orders.get("order:1")
    try:
        first = instrument(users, name="users", meter_provider=provider)
        instrument(orders, name="orders", meter_provider=provider)
        with pytest.raises(ValueError, match="already reported"):
            instrument(orders, name="users", meter_provider=provider)
        points, _ = collect(reader)
        assert caches_in(points) == {"users", "orders"}
        assert value(points, "stratacache.origin.loads", cache="orders") == 1
        assert value(points, "stratacache.origin.loads", cache="users") == 10

        first.close()
        assert first.closed
        points, _ = collect(reader)
        assert caches_in(points) == {"orders"}
        instrument(users, name="users", meter_provider=provider)  # the name is free again
        points, _ = collect(reader)
        assert caches_in(points) == {"users", "orders"}
    finally:
        orders.close()


def test_closed_handle_reports_nothing(
    users: Cache, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with instrument(users, name="users", meter_provider=provider) as handle:
        points, _ = collect(reader)
        assert caches_in(points) == {"users"}
    assert handle.closed
    points, _ = collect(reader)
    assert points == {}


def test_the_provider_does_not_keep_the_cache_alive(
    tmp_path: Path, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    cache = make_cache(tmp_path / "l2.db")
    cache.get("a")
    handle = instrument(cache, name="gone", meter_provider=provider)
    cache.close()
    del cache
    gc.collect()
    assert handle.closed
    points, _ = collect(reader)
    assert points == {}


def test_every_instrument_has_a_unit_and_a_unique_name() -> None:
    names = [spec.name for spec in INSTRUMENTS]
    assert len(names) == len(set(names))
    assert all(name.startswith("stratacache.") for name in names)
    assert all(spec.unit and spec.description for spec in INSTRUMENTS)
    assert {spec.kind for spec in INSTRUMENTS} == {"counter", "updown", "gauge"}


def test_arguments_are_checked(users: Cache, provider: MeterProvider) -> None:
    with pytest.raises(ValueError, match="name"):
        instrument(users, name="", meter_provider=provider)
    with pytest.raises(ValueError, match="hot_keys"):
        instrument(users, name="users", meter_provider=provider, hot_keys=-1)


def test_missing_opentelemetry_names_the_extra(
    users: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError, match=r"pip install 'stratacache\[otel\]'"):
        instrument(users, name="users")

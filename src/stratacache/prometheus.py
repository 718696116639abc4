"""Prometheus exposition of a cache's statistics.

``CacheCollector`` reads ``cache.stats()`` on every scrape and turns it into metric
families; nothing is counted twice and nothing runs between scrapes::

    from prometheus_client import REGISTRY
    from stratacache.prometheus import CacheCollector, start_metrics_server

    REGISTRY.register(CacheCollector(cache, name="users"))
    server = start_metrics_server(9100)  # GET http://127.0.0.1:9100/metrics

The metric names, types and labels are listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

try:
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the module
    raise ImportError(
        "stratacache.prometheus needs prometheus_client: pip install 'stratacache[metrics]'"
    ) from exc

from .errors import ConfigurationError
from .metrics import LatencyHistogram, LevelSnapshot

if TYPE_CHECKING:
    from .hierarchy.base import BaseCache

__all__ = [
    "LATENCY_BUCKETS",
    "CacheCollector",
    "MetricsServer",
    "cumulative_counts",
    "serve_cache_metrics",
    "start_metrics_server",
]

#: The ``le`` bounds of the latency histograms, in seconds: 1 µs (an L1 hit) to 10 s (an
#: origin in trouble). Fixed and modest, so that every series has the same 22 buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    1e-6, 2.5e-6, 5e-6,
    1e-5, 2.5e-5, 5e-5,
    1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: The breaker states a level can report (``LevelSnapshot.breaker``).
BREAKER_STATES = ("closed", "open", "half-open")

#: Per-level counters: LevelSnapshot field, metric name (without ``_total``), help text.
_LEVEL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("writes", "stratacache_level_writes", "Entries written to the level (sets and fills)."),
    ("evictions", "stratacache_level_evictions", "Entries the level evicted to make room."),
    ("errors", "stratacache_level_errors", "Calls that failed; the level was skipped."),
    ("corrupt", "stratacache_level_corrupt", "Payloads rejected as corrupt, foreign or forged."),
    ("too_large", "stratacache_level_too_large", "Values not stored: above the size limit."),
    ("unencodable", "stratacache_level_unencodable", "Values the serializer could not encode."),
    ("refused", "stratacache_level_refused", "Writes and fills refused by version or lease."),
    ("outdated", "stratacache_level_outdated", "Entries read as misses: older than a write."),
    ("skipped", "stratacache_level_skipped", "Calls the open breaker refused without I/O."),
    ("pool_waits", "stratacache_level_pool_waits", "Calls that waited for a free connection."),
    ("pool_timeouts", "stratacache_level_pool_timeouts", "Waits for a connection that ran out."),
    ("breaker_opens", "stratacache_level_breaker_opens", "Times the circuit breaker opened."),
)

#: Cache-wide counters: CacheStats field, metric name (without ``_total``), help text.
_CACHE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("stale_served", "stratacache_stale_served", "Stale values served by the fail-safe."),
    ("loads_coalesced", "stratacache_loads_coalesced", "Keys answered by another's load."),
    ("load_timeouts", "stratacache_load_timeouts", "Reads that gave up at hard_timeout."),
    ("early_refreshes", "stratacache_early_refreshes", "Background reloads before expiry."),
    ("lease_waits", "stratacache_lease_waits", "Keys another process loaded during a wait."),
    (
        "lease_wait_timeouts",
        "stratacache_lease_wait_timeouts",
        "Keys whose wait on another process's lease ran out.",
    ),
    (
        "lease_retakes",
        "stratacache_lease_retakes",
        "Keys whose lease holder went away without a fill.",
    ),
    ("lock_waits", "stratacache_lock_waits", "Writes that waited for another's write lock."),
    ("origin_loads", "stratacache_origin_loads", "Keys asked of the origin."),
    ("origin_calls", "stratacache_origin_calls", "Calls made to the origin (a batch is one)."),
    ("origin_errors", "stratacache_origin_errors", "Origin calls that failed."),
    ("hot_pins", "stratacache_hot_pins", "Hot keys held in L1 after the policy would not."),
)

#: Entries of ``stats().bus`` / ``stats().write_behind`` that are levels, not counts.
_SECTION_GAUGES = frozenset({"depth", "lag_seconds", "journal_bytes", "healthy"})
_NOT_A_NAME = re.compile(r"[^a-zA-Z0-9_]")


def cumulative_counts(histogram: LatencyHistogram, bounds_ns: Sequence[int]) -> list[int]:
    """The samples of ``histogram`` at most each bound (ns, ascending), then all samples:
    ``len(bounds_ns) + 1`` non-decreasing counts, the last one the ``+Inf`` bucket.

    An internal bucket counts under a bound only when all its values are at most the bound;
    one that straddles a bound (16 per power of two: up to 6% wide) counts under the next.
    So a count is exact or low, never high: "at most B" stays a true statement."""
    buckets = list(histogram._buckets)  # one copy: every count comes from the same state
    counts: list[int] = []
    taken = running = 0
    for bound in bounds_ns:
        # The bucket holding bound + 1 is the first with a value above the bound; the
        # ones before it hold only values <= bound (the bucketing is monotonic).
        upto = LatencyHistogram._index(bound + 1)
        running += sum(buckets[taken:upto])
        taken = max(taken, upto)
        counts.append(running)
    counts.append(running + sum(buckets[taken:]))
    return counts


def _hot_keys(cache: BaseCache, n: int) -> list[tuple[str, float]]:
    """``cache.hot_keys(n)`` (hottest first, each with ``key`` and ``rate`` in requests per
    second) as pairs; [] when ``n`` is 0 or the cache does not count hot keys."""
    method = getattr(cache, "hot_keys", None)
    if n <= 0 or not callable(method):
        return []
    return [(str(hot.key), float(hot.rate)) for hot in method(n)][:n]


def _origin_histogram(cache: BaseCache) -> LatencyHistogram | None:
    """The origin's latency histogram: ``stats()`` has only its mean and p99."""
    hierarchy = getattr(cache, "_hierarchy", None)
    origin_stats = getattr(hierarchy, "origin_stats", None)
    latency = getattr(origin_stats, "latency", None)
    return latency if isinstance(latency, LatencyHistogram) else None


_CACHE = ("cache",)
_LEVEL = ("cache", "level")

#: Every family that does not depend on the workload: kind, name, help text, labels.
#: ``describe()`` lists them all, ``collect()`` fills them.
_FIXED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("gauge", "stratacache_level_info", "1 per level, with the kind of its store.",
     ("cache", "level", "kind")),
    ("counter", "stratacache_level_gets", "Keys looked up at the level, by result.",
     ("cache", "level", "result")),
    *(("counter", metric, doc, _LEVEL) for _, metric, doc in _LEVEL_COUNTERS),
    ("gauge", "stratacache_level_entries", "Entries held by the level.", _LEVEL),
    ("gauge", "stratacache_level_bytes", "Bytes held by the level.", _LEVEL),
    ("gauge", "stratacache_level_breaker_state",
     "1 for the circuit breaker's current state, 0 for the others.",
     ("cache", "level", "state")),
    ("histogram", "stratacache_level_latency_seconds", "Duration of each call to the level.",
     _LEVEL),
    *(("counter", metric, doc, _CACHE) for _, metric, doc in _CACHE_COUNTERS),
    ("histogram", "stratacache_origin_latency_seconds",
     "Duration of each call to the origin (a batch is one call).", _CACHE),
    ("gauge", "stratacache_amat_seconds",
     "Average response time per lookup: T1 + m1 (T2 + m2 (... + mn T_origin)).", _CACHE),
    ("gauge", "stratacache_hot_key_rate",
     "Requests per second of the hottest keys (the top N of each cache).", ("cache", "key")),
)  # fmt: skip


def _family(kind: str, name: str, doc: str, labels: Sequence[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


class _Scrape:
    """The families of one scrape, filled cache by cache: each name appears once in the
    exposition whatever the number of caches (a second TYPE line for a name is invalid)."""

    def __init__(self, bounds_ns: list[int], bounds_le: list[str]) -> None:
        self.bounds_ns = bounds_ns
        self.bounds_le = bounds_le
        self.families: dict[str, Metric] = {}
        for kind, name, doc, labels in _FIXED:
            self.declare(kind, name, doc, labels)

    def declare(self, kind: str, name: str, doc: str, labels: Sequence[str]) -> Metric:
        if name not in self.families:
            self.families[name] = _family(kind, name, doc, labels)
        return self.families[name]

    def add(self, name: str, labels: Sequence[str], value: float) -> None:
        family = self.families[name]
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
        family.add_metric(labels, value)

    def add_latency(self, name: str, labels: Sequence[str], histogram: LatencyHistogram) -> None:
        family = self.families[name]
        assert isinstance(family, HistogramMetricFamily)
        counts = cumulative_counts(histogram, self.bounds_ns)
        les = [*self.bounds_le, "+Inf"]
        buckets = [(le, float(n)) for le, n in zip(les, counts, strict=True)]
        family.add_metric(labels, buckets, histogram.total_ns / 1e9)

    def add_section(self, prefix: str, name: str, section: Mapping[str, Any]) -> None:
        """The numeric entries of ``stats().bus`` or ``stats().write_behind``: levels as
        gauges, counts as ``_total`` counters; milliseconds become seconds."""
        for key, raw in section.items():
            if raw is None or not isinstance(raw, int | float):
                continue  # not measured yet, or not a number
            metric = f"{prefix}_{_NOT_A_NAME.sub('_', key)}"
            value = float(raw)
            if metric.endswith("_ms"):
                metric, value = metric.removesuffix("_ms") + "_seconds", value / 1000
            kind = "gauge" if key in _SECTION_GAUGES or key.endswith("_ms") else "counter"
            doc = f"stats().{prefix.removeprefix('stratacache_')}[{key!r}]"
            self.declare(kind, metric, doc, _CACHE)
            self.add(metric, [name], value)


class CacheCollector(Collector):
    """A Prometheus collector over one or more caches, each under its ``cache`` label.

    Register one collector per registry and :meth:`add` further caches to it: two
    collectors in one registry would both announce the same metric names. ``describe``
    lists the names, so that such a clash fails at registration (the registry raises
    "Duplicated timeseries") instead of producing an invalid exposition.

    ``hot_keys``: how many of the hottest keys to export per cache (``cache.hot_keys(n)``,
    when the cache has it; 0 turns it off). Each key is a label value, so this bounds the
    number of series. ``latency_buckets``: the ``le`` bounds in seconds."""

    def __init__(
        self,
        cache: BaseCache | None = None,
        name: str | None = None,
        *,
        hot_keys: int = 10,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if not isinstance(hot_keys, int) or hot_keys < 0:
            raise ConfigurationError(f"hot_keys must be an int >= 0, got {hot_keys!r}")
        bounds = [float(b) for b in latency_buckets]
        if not bounds or bounds != sorted(set(bounds)) or bounds[0] <= 0:
            raise ConfigurationError(
                f"latency_buckets must be ascending positive seconds, got {latency_buckets!r}"
            )
        self.hot_keys = hot_keys
        self._bounds_ns = [round(b * 1e9) for b in bounds]
        # The client's own label format for bounds, so that ours read like its histograms.
        self._bounds_le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._caches: dict[str, BaseCache] = {}
        self._lock = threading.Lock()  # add/remove may race a scrape on the server thread
        if cache is not None:
            if name is None:
                raise ConfigurationError("CacheCollector(cache, name=...): name the cache")
            self.add(cache, name)
        elif name is not None:
            raise ConfigurationError("CacheCollector: name given without a cache")

    def add(self, cache: BaseCache, name: str) -> None:
        """Export ``cache`` too, with the label ``cache=name``."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a cache's name must be a non-empty str, got {name!r}")
        if not callable(getattr(cache, "stats", None)):
            raise ConfigurationError(f"not a cache (no stats()): {cache!r}")
        with self._lock:
            if name in self._caches:
                raise ConfigurationError(f"a cache named {name!r} is already exported here")
            self._caches[name] = cache

    def remove(self, name: str) -> None:
        """Stop exporting the cache named ``name`` (KeyError when there is none)."""
        with self._lock:
            del self._caches[name]

    @property
    def names(self) -> list[str]:
        """The ``cache`` label values exported."""
        with self._lock:
            return list(self._caches)

    def describe(self) -> list[Metric]:
        """The fixed families, without samples: the registry checks names with them
        instead of running a whole scrape at registration."""
        return list(_Scrape(self._bounds_ns, self._bounds_le).families.values())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            caches = list(self._caches.items())
        scrape = _Scrape(self._bounds_ns, self._bounds_le)
        for name, cache in caches:
            self._collect_cache(scrape, name, cache)
        yield from scrape.families.values()

    def _collect_cache(self, scrape: _Scrape, name: str, cache: BaseCache) -> None:
        stats = cache.stats()
        tiers = cache.levels
        for index, level in enumerate(stats.levels):
            # stats().levels follows cache.levels, top first
            histogram = tiers[index].stats.latency if index < len(tiers) else None
            _collect_level(scrape, name, level, histogram)
        for attr, metric, _ in _CACHE_COUNTERS:
            value = getattr(stats, attr, None)  # None: a field this version does not have
            if value is not None:
                scrape.add(metric, [name], value)
        scrape.add("stratacache_amat_seconds", [name], stats.amat_us / 1e6)
        origin = _origin_histogram(cache)
        if origin is not None:
            scrape.add_latency("stratacache_origin_latency_seconds", [name], origin)
        for key, rate in _hot_keys(cache, self.hot_keys):
            scrape.add("stratacache_hot_key_rate", [name, key], rate)
        scrape.add_section("stratacache_bus", name, stats.bus)
        scrape.add_section("stratacache_write_behind", name, stats.write_behind)


def _collect_level(
    scrape: _Scrape, name: str, level: LevelSnapshot, histogram: LatencyHistogram | None
) -> None:
    labels = [name, level.name]
    scrape.add("stratacache_level_info", [*labels, level.kind], 1)
    scrape.add("stratacache_level_gets", [*labels, "hit"], level.hits)
    scrape.add("stratacache_level_gets", [*labels, "miss"], level.misses)
    for attr, metric, _ in _LEVEL_COUNTERS:
        scrape.add(metric, labels, getattr(level, attr))
    # getattr: the fields are newer than some snapshots; None means the tier cannot tell
    # (a store shared with other caches), and no sample beats a made-up one.
    for attr in ("entries", "bytes"):
        value = getattr(level, attr, None)
        if value is not None:
            scrape.add(f"stratacache_level_{attr}", labels, value)
    for state in BREAKER_STATES:
        current = 1.0 if level.breaker == state else 0.0
        scrape.add("stratacache_level_breaker_state", [*labels, state], current)
    if histogram is not None:
        scrape.add_latency("stratacache_level_latency_seconds", labels, histogram)


# ---------------------------------------------------------------------- serving /metrics


class MetricsServer:
    """A running ``/metrics`` endpoint (prometheus_client's threaded WSGI server).
    ``shutdown()`` (or ``close()``, or leaving a ``with`` block) stops it and frees the
    port."""

    def __init__(
        self,
        server: WSGIServer,
        thread: threading.Thread,
        on_close: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.server = server
        self.thread = thread
        self._on_close = list(on_close)
        self._closed = False

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS picked when asked for port 0)."""
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        if isinstance(host, bytes):
            host = host.decode()
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        for callback in self._on_close:
            callback()

    close = shutdown

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread, for a
    process without a web server of its own. ``port=0`` lets the OS pick (see
    ``.port``). Listens on loopback by default: pass ``addr="0.0.0.0"`` for scrapers on
    other hosts."""
    # Typed as object: releases of prometheus_client before the server and thread were
    # returned give None, and that must not pass for a server that can be stopped.
    started: object = start_http_server(port, addr=addr, registry=registry)
    if not isinstance(started, tuple):
        raise RuntimeError(
            "this prometheus_client cannot stop its server: pip install -U 'stratacache[metrics]'"
        )
    server, thread = started
    return MetricsServer(server, thread)


def serve_cache_metrics(
    cache: BaseCache,
    name: str,
    port: int,
    addr: str = "127.0.0.1",
    *,
    registry: CollectorRegistry = REGISTRY,
    hot_keys: int = 10,
) -> MetricsServer:
    """Register a :class:`CacheCollector` for ``cache`` in ``registry`` and serve it; the
    returned server's ``shutdown()`` also unregisters the collector."""
    collector = CacheCollector(cache, name=name, hot_keys=hot_keys)
    registry.register(collector)
    try:
        served = start_metrics_server(port, addr=addr, registry=registry)
    except BaseException:
        registry.unregister(collector)
        raise
    served._on_close.append(lambda: registry.unregister(collector))
    return served

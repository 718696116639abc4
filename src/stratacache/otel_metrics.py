"""OpenTelemetry metrics of a cache: the figures of ``cache.stats()`` as observable
instruments, read by the SDK's reader when it collects::

    from stratacache.otel_metrics import instrument

    handle = instrument(cache, name="users")  # the global MeterProvider
    ...
    handle.close()

Counters are ``ObservableCounter`` (cumulative), sizes ``ObservableUpDownCounter``, the
rest ``ObservableGauge``. OpenTelemetry has no observable histogram, so latencies are
exported as gauges of their mean, p50 and p99 (in seconds) rather than as buckets; the
Prometheus exporter (:mod:`stratacache.prometheus`) exports the full histograms.

Only ``opentelemetry-api`` is needed (``pip install 'stratacache[otel]'``); without an SDK
configured the API's no-op provider records nothing. The names, units and attributes are
listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .metrics import CacheStats, LatencyHistogram

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from .hierarchy.base import BaseCache

__all__ = ["INSTRUMENTS", "OTelHandle", "instrument"]

#: One reading: a value and its attributes (besides ``cache``, which every reading has).
Reading = tuple[float, dict[str, str]]


@dataclass(frozen=True)
class _Source:
    """What one collection reads: the stats, and the cache for what stats() leaves out
    (the hot keys, the origin's p50)."""

    stats: CacheStats
    cache: BaseCache
    hot_keys: int


Read = Callable[[_Source], Iterable[Reading]]


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # "counter", "updown" or "gauge"
    unit: str
    description: str
    read: Read


def _per_level(field: str, scale: float = 1.0) -> Read:
    """A reading per level of ``LevelSnapshot.<field>``; None (not measured, or a field
    this version lacks) gives no reading rather than a made-up 0."""

    def read(source: _Source) -> Iterator[Reading]:
        for level in source.stats.levels:
            value = getattr(level, field, None)
            if value is not None:
                yield (value if scale == 1.0 else value * scale), {"level": level.name}

    return read


def _cache_wide(field: str) -> Read:
    def read(source: _Source) -> Iterator[Reading]:
        value = getattr(source.stats, field, None)
        if value is not None:
            yield value, {}

    return read


def _gets(source: _Source) -> Iterator[Reading]:
    for level in source.stats.levels:
        yield level.hits, {"level": level.name, "result": "hit"}
        yield level.misses, {"level": level.name, "result": "miss"}


def _breaker_state(source: _Source) -> Iterator[Reading]:
    for level in source.stats.levels:
        for state in ("closed", "open", "half-open"):
            yield (1 if level.breaker == state else 0), {"level": level.name, "state": state}


def _origin_latency(stat: str) -> Read:
    """The origin's ``mean``, ``p50`` or ``p99`` in seconds: ``stats()`` has the mean and
    the p99, the origin's histogram the rest."""

    def read(source: _Source) -> Iterator[Reading]:
        stats = source.stats
        value: float | None
        if stat == "mean":
            value = stats.origin_mean_us
        elif stat == "p99":
            value = stats.origin_p99_us
        else:
            histogram = _origin_histogram(source.cache)
            value = histogram.quantile_us(int(stat[1:]) / 100) if histogram else None
        if value is not None:
            yield value / 1e6, {}

    return read


def _origin_histogram(cache: BaseCache) -> LatencyHistogram | None:
    origin_stats = getattr(getattr(cache, "_hierarchy", None), "origin_stats", None)
    latency = getattr(origin_stats, "latency", None)
    return latency if isinstance(latency, LatencyHistogram) else None


def _amat(source: _Source) -> Iterator[Reading]:
    yield source.stats.amat_us / 1e6, {}


def _hot_key_rates(source: _Source) -> Iterator[Reading]:
    method = getattr(source.cache, "hot_keys", None)
    if source.hot_keys <= 0 or not callable(method):
        return
    for hot in list(method(source.hot_keys))[: source.hot_keys]:
        yield float(hot.rate), {"key": str(hot.key)}


def _level_counter(name: str, field: str, unit: str, description: str) -> _Spec:
    return _Spec(f"stratacache.level.{name}", "counter", unit, description, _per_level(field))


def _latency(scope: str, read: Callable[[str], Read]) -> list[_Spec]:
    """Gauges of the mean, p50 and p99 of a latency histogram, in seconds."""
    return [
        _Spec(f"stratacache.{scope}.latency.{stat}", "gauge", "s",
              f"{label} of the calls to the {scope}.", read(stat))
        for stat, label in (("mean", "Mean duration"), ("p50", "Median duration"),
                            ("p99", "99th percentile duration"))
    ]  # fmt: skip


#: Per-level counters: instrument name (after ``stratacache.level.``), LevelSnapshot
#: field, unit, description.
_LEVEL_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("writes", "writes", "{entry}", "Entries written to the level (sets and fills)."),
    ("evictions", "evictions", "{entry}", "Entries the level evicted to make room."),
    ("errors", "errors", "{call}", "Calls that failed; the level was skipped."),
    ("corrupt", "corrupt", "{payload}", "Payloads rejected as corrupt, foreign or forged."),
    ("too_large", "too_large", "{value}", "Values not stored: above the size limit."),
    ("unencodable", "unencodable", "{value}", "Values the serializer could not encode."),
    ("refused", "refused", "{write}", "Writes and fills refused by version or lease."),
    ("outdated", "outdated", "{entry}", "Entries read as misses: older than a write."),
    ("skipped", "skipped", "{call}", "Calls the open breaker refused without I/O."),
    ("pool.waits", "pool_waits", "{call}", "Calls that waited for a free connection."),
    ("pool.timeouts", "pool_timeouts", "{call}", "Waits for a connection that ran out."),
    ("breaker.opens", "breaker_opens", "{open}", "Times the circuit breaker opened."),
)

#: Every instrument ``instrument()`` registers (name, kind, unit, description, reading).
INSTRUMENTS: tuple[_Spec, ...] = (
    _Spec("stratacache.level.gets", "counter", "{lookup}",
          "Keys looked up at the level, by result (hit or miss).", _gets),
    *_latency("level", lambda stat: _per_level(f"{stat}_us", 1e-6)),
    _Spec("stratacache.level.entries", "updown", "{entry}", "Entries held by the level.",
          _per_level("entries")),
    _Spec("stratacache.level.size", "updown", "By", "Bytes held by the level.",
          _per_level("bytes")),
    *(_level_counter(*row) for row in _LEVEL_COUNTERS),
    _Spec("stratacache.level.breaker.state", "gauge", "1",
          "1 for the circuit breaker's current state, 0 for the others.", _breaker_state),
    _Spec("stratacache.stale_served", "counter", "{value}",
          "Stale values served by the fail-safe.", _cache_wide("stale_served")),
    _Spec("stratacache.loads.coalesced", "counter", "{key}",
          "Keys answered by another caller's load.", _cache_wide("loads_coalesced")),
    _Spec("stratacache.load.timeouts", "counter", "{read}",
          "Reads that gave up at hard_timeout.", _cache_wide("load_timeouts")),
    _Spec("stratacache.early_refreshes", "counter", "{load}",
          "Background reloads started before expiry.", _cache_wide("early_refreshes")),
    _Spec("stratacache.lease.waits", "counter", "{key}",
          "Keys another process loaded while this one waited.", _cache_wide("lease_waits")),
    _Spec("stratacache.lease.wait_timeouts", "counter", "{key}",
          "Keys whose wait on another process's lease ran out.",
          _cache_wide("lease_wait_timeouts")),
    _Spec("stratacache.lease.retakes", "counter", "{key}",
          "Keys whose lease holder went away without a fill.", _cache_wide("lease_retakes")),
    _Spec("stratacache.lock.waits", "counter", "{write}",
          "Writes that waited for another process's write lock.", _cache_wide("lock_waits")),
    _Spec("stratacache.hot_pins", "counter", "{key}",
          "Hot keys held in L1 after the policy would not.", _cache_wide("hot_pins")),
    _Spec("stratacache.origin.loads", "counter", "{key}", "Keys asked of the origin.",
          _cache_wide("origin_loads")),
    _Spec("stratacache.origin.calls", "counter", "{call}",
          "Calls made to the origin (a batch is one call).", _cache_wide("origin_calls")),
    _Spec("stratacache.origin.errors", "counter", "{call}", "Origin calls that failed.",
          _cache_wide("origin_errors")),
    *_latency("origin", _origin_latency),
    _Spec("stratacache.amat", "gauge", "s",
          "Average response time per lookup: T1 + m1 (T2 + m2 (... + mn T_origin)).", _amat),
    _Spec("stratacache.hot_key.rate", "gauge", "{request}/s",
          "Requests per second of the hottest keys (the top N of each cache).", _hot_key_rates),
)  # fmt: skip


class OTelHandle:
    """One cache reported through a meter provider (see :func:`instrument`). ``close()``
    stops its readings; the instruments stay (OpenTelemetry cannot unregister one) and
    keep reporting the provider's other caches."""

    def __init__(self, cache: BaseCache, name: str, hot_keys: int, group: _Group) -> None:
        # A weak reference: the provider keeps the instruments' callbacks for the life of
        # the process, and must not keep a cache (its threads, files, connections) alive.
        self._cache = weakref.ref(cache)
        self.name = name
        self.hot_keys = hot_keys
        self._group = group
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after ``close()``, or once the cache was garbage collected."""
        return self._closed or self._cache() is None

    def close(self) -> None:
        self._closed = True
        self._group.discard(self)

    def __enter__(self) -> OTelHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _source(self) -> _Source | None:
        cache = self._cache()
        if self._closed or cache is None:
            return None
        return _Source(cache.stats(), cache, self.hot_keys)


class _Group:
    """The instruments of one meter provider and the caches they report. A meter hands
    back the instrument already made for a name and drops the new callbacks, so each
    provider gets one set of instruments whose callbacks read every cache in turn."""

    def __init__(self, meter: Any, observation: type[Observation]) -> None:
        self._handles: list[OTelHandle] = []
        self._lock = threading.Lock()
        self._observation = observation
        create = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        self.instruments = [
            create[spec.kind](
                spec.name,
                callbacks=[self._callback(spec.read)],
                unit=spec.unit,
                description=spec.description,
            )
            for spec in INSTRUMENTS
        ]

    def add(self, handle: OTelHandle) -> None:
        with self._lock:
            self._handles = [h for h in self._handles if not h.closed]
            if any(h.name == handle.name for h in self._handles):
                raise ValueError(
                    f"a cache named {handle.name!r} is already reported through this meter "
                    f"provider; close its handle first or pick another name"
                )
            self._handles.append(handle)

    def discard(self, handle: OTelHandle) -> None:
        with self._lock:
            self._handles = [h for h in self._handles if h is not handle and not h.closed]

    def _callback(self, read: Read) -> Callable[[CallbackOptions], list[Observation]]:
        observation = self._observation

        def callback(options: CallbackOptions) -> list[Observation]:
            with self._lock:
                handles = list(self._handles)
            found: list[Observation] = []
            for handle in handles:
                source = handle._source()
                if source is not None:
                    found += [
                        observation(value, {"cache": handle.name, **attributes})
                        for value, attributes in read(source)
                    ]
            return found

        return callback


# Per meter provider, weakly: a provider that goes away takes its group along.
_groups: weakref.WeakKeyDictionary[Any, _Group] = weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def _load_api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            "stratacache.otel_metrics needs opentelemetry-api: pip install 'stratacache[otel]'"
        ) from exc
    return metrics


def instrument(
    cache: BaseCache,
    name: str = "default",
    meter_provider: MeterProvider | None = None,
    *,
    hot_keys: int = 10,
) -> OTelHandle:
    """Report ``cache``'s statistics through observable instruments, each reading with
    the attribute ``cache=name`` (per level also ``level``). ``meter_provider``: the
    global one by default. ``hot_keys``: how many of the hottest keys to report (0: none).
    Several caches can be instrumented on one provider, under different names.

    The callbacks read ``cache.stats()`` when the SDK collects (tens of microseconds per
    instrument), so nothing runs between collections."""
    api = _load_api()
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not isinstance(hot_keys, int) or hot_keys < 0:
        raise ValueError(f"hot_keys must be an int >= 0, got {hot_keys!r}")
    if not callable(getattr(cache, "stats", None)):
        raise TypeError(f"not a cache (no stats()): {cache!r}")
    provider = meter_provider if meter_provider is not None else api.get_meter_provider()
    group = _group(provider, api)
    handle = OTelHandle(cache, name, hot_keys, group)
    group.add(handle)
    return handle


def _group(provider: Any, api: Any) -> _Group:
    from . import __version__

    with _groups_lock:
        group = _groups.get(provider)
        if group is None:
            meter = provider.get_meter("stratacache", __version__)
            group = _groups[provider] = _Group(meter, api.Observation)
        return group

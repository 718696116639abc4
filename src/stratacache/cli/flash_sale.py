"""A flash sale replayed through a cache, with hot-key protection off and then on.

One key (``SaleSettings.sale_key``, ``product:sale`` by default) takes ``share`` of the
requests; the rest browse a catalogue of ``keys`` products (``SaleSettings.key_format``,
``product:0``...), each about equally likely (a scan-like background that keeps an LRU L1
churning). The run counts, for the sale key, the reads that got past L1 (each one an
L2 read) and its origin loads, through the cache's own event listeners; and it reports
whether the hot-key counter found the sale key, with its rate.

What to expect: an L1 whose policy keeps the key anyway (the default W-TinyLFU does for
any key this hot) gains nothing from protection; one that churns it out (a small LRU, or
a policy that will not admit it) sends the sale key to L2 on a large share of its
requests without protection, and about once per ``hot_key_ttl`` with it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from ..events import CacheEvent
from ..hierarchy.sync import Cache
from ..tiers.base import Tier

__all__ = ["SALE_KEY", "SaleSettings", "run_flash_sale"]

SALE_KEY = "product:sale"

#: ``watch(cache, protected)``: a context manager around one run (see run_flash_sale)
Watch = Callable[[Cache, bool], AbstractContextManager[object]]


@dataclass(frozen=True)
class SaleSettings:
    requests: int = 100_000
    share: float = 0.02
    keys: int = 100_000
    #: requests/second above which a key is protected (per process)
    threshold: float = 50.0
    hot_key_ttl: float = 1.0
    seed: int = 42
    #: the key on sale, and the background's key for catalogue number i (the caller's
    #: origin must answer both; keep the sale key out of the background's range)
    sale_key: str = SALE_KEY
    key_format: str = "product:{}"


def _workload(settings: SaleSettings) -> list[str]:
    rng = random.Random(settings.seed)
    sale, background = settings.sale_key, settings.key_format
    return [
        sale if rng.random() < settings.share else background.format(rng.randrange(settings.keys))
        for _ in range(settings.requests)
    ]


def _one_run(
    make_levels: Callable[[], Sequence[Tier]],
    origin: Callable[[list[str]], Mapping[str, Any]],
    workload: list[str],
    settings: SaleSettings,
    protected: bool,
    watch: Watch | None,
) -> dict[str, Any]:
    cache = Cache(
        list(make_levels()),
        origin,
        hot_key_threshold=settings.threshold if protected else None,
        hot_key_ttl=settings.hot_key_ttl,
    )
    sale = settings.sale_key
    past_l1 = [0]
    loads = [0]

    def on_miss(event: CacheEvent) -> None:
        if event.key == sale and event.level == cache.levels[0].name:
            past_l1[0] += 1

    def on_load(event: CacheEvent) -> None:
        loads[0] += event.keys.count(sale)

    try:
        cache.clear()
        cache.reset_stats()
        cache.on("miss", on_miss)
        cache.on("load", on_load)
        with watch(cache, protected) if watch is not None else nullcontext():
            started = time.perf_counter()
            for key in workload:
                cache.get(key)
            elapsed = time.perf_counter() - started
        stats = cache.stats()
        top = cache.hot_keys(3)
        return {
            "protection": protected,
            "sale_requests": workload.count(sale),
            "sale_reads_past_l1": past_l1[0],
            "sale_origin_loads": loads[0],
            "reads_past_l1": stats.levels[0].misses,
            "origin_loads": stats.origin_loads,
            "hot_pins": stats.hot_pins,
            "hot_keys": [{"key": h.key, "rate": round(h.rate, 1)} for h in top],
            "elapsed_s": round(elapsed, 3),
        }
    finally:
        cache.close()


def run_flash_sale(
    make_levels: Callable[[], Sequence[Tier]],
    origin: Callable[[list[str]], Mapping[str, Any]],
    settings: SaleSettings,
    *,
    watch: Watch | None = None,
) -> dict[str, Any]:
    """The same workload without and with protection; ``make_levels`` builds fresh
    levels for each run (the second starts from an empty cache too). ``watch(cache,
    protected)``, a context manager, is entered around each run's requests: to look at
    the cache while it runs (the demo serves its metrics)."""
    workload = _workload(settings)
    return {
        "sale_key": settings.sale_key,
        "share": settings.share,
        "threshold_per_s": settings.threshold,
        "hot_key_ttl_s": settings.hot_key_ttl,
        "runs": [
            _one_run(make_levels, origin, workload, settings, protected, watch)
            for protected in (False, True)
        ],
    }

"""stratacache adapters for ../shared/bench/l1_bench.py (the shared L1 speed harness).

Run from the project root (see BENCHMARKS.md for the full command)::

    python ../shared/bench/l1_bench.py --plugin benchmarks/l1_adapter.py \
        --only hit,missset,zipf --reps 5 \
        --adapters DictAdapter,LruCacheAdapter,CachetoolsLRUAdapter,TheineAdapter,StratacacheAdapter

``StratacacheAdapter`` uses only the public API: a sync ``Cache`` whose single level is a
``MemoryTier`` with the default policy and a 600 s TTL, driven through ``get``/``set``.
A miss is the ``MISSING`` sentinel (None is a cacheable value), so the loops compare with
it instead of None. After every loop the adapter checks that the cache never holds more
entries than its capacity.
"""

from __future__ import annotations

from typing import Any

from l1_bench import Adapter  # type: ignore[import-not-found]

from stratacache import MISSING, Cache, MemoryTier


class StratacacheAdapter(Adapter):  # type: ignore[misc]
    name = "stratacache Cache (L1 only, default policy, ttl 600s)"
    policy: str | None = None

    def make(self, capacity: int) -> None:
        options: dict[str, Any] = {"ttl": 600.0}
        if self.policy is not None:
            options["policy"] = self.policy
        self.capacity = capacity
        self.c = cache = Cache([MemoryTier(capacity, **options)])
        self.level = cache.levels[0]
        self.get = cache.get
        self.set = cache.set

    def _check_bound(self) -> None:
        held = len(self.level)
        if held > self.capacity:
            raise AssertionError(f"{self.name} holds {held} entries, capacity {self.capacity}")

    def zipf_loop(self, trace: list[str]) -> int:
        get, set_, missing = self.get, self.set, MISSING
        misses = 0
        for key in trace:
            if get(key) is missing:
                misses += 1
                set_(key, key)
        self._check_bound()
        return misses

    def missset_loop(self, keys: list[str]) -> None:
        get, set_, missing = self.get, self.set, MISSING
        for key in keys:
            if get(key) is missing:
                set_(key, key)
        self._check_bound()

    def hit_loop(self, keys: list[str]) -> None:
        get = self.get
        for key in keys:
            get(key)


class StratacacheLRUAdapter(StratacacheAdapter):
    name = "stratacache Cache (L1 only, LRU, ttl 600s)"
    policy = "lru"


ADAPTERS = [StratacacheAdapter, StratacacheLRUAdapter]

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

``StratacacheBeforeAdapter`` and ``StratacacheLRUBeforeAdapter`` are the same over an older
revision (``STRATACACHE_BEFORE_REV``, default c1bdaeb, the commit before the redesign),
imported as ``stratacache_before`` by before.py, so that one run measures before and after
in the same alternating repetitions::

    python ../shared/bench/l1_bench.py --plugin benchmarks/l1_adapter.py \
        --only hit,missset,zipf --reps 5 \
        --adapters StratacacheAdapter,StratacacheBeforeAdapter,\
StratacacheLRUAdapter,StratacacheLRUBeforeAdapter
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from l1_bench import Adapter  # type: ignore[import-not-found]

import stratacache

BEFORE_REV = os.environ.get("STRATACACHE_BEFORE_REV", "c1bdaeb")


@functools.cache
def _before_module() -> ModuleType:
    """before.py, next to this file: l1_bench loads this plugin by path, so this directory
    is not on sys.path."""
    path = Path(__file__).resolve().with_name("before.py")
    spec = importlib.util.spec_from_file_location("stratacache_bench_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StratacacheAdapter(Adapter):  # type: ignore[misc]
    name = "stratacache Cache (L1 only, default policy, ttl 600s)"
    policy: str | None = None

    def package(self) -> ModuleType:
        """The stratacache package measured."""
        return stratacache

    def make(self, capacity: int) -> None:
        package = self.package()
        options: dict[str, Any] = {"ttl": 600.0}
        if self.policy is not None:
            options["policy"] = self.policy
        self.capacity = capacity
        # Each package has its own sentinel: a miss of one is not the other's MISSING.
        self.missing = package.MISSING
        self.c = cache = package.Cache([package.MemoryTier(capacity, **options)])
        self.level = cache.levels[0]
        self.get = cache.get
        self.set = cache.set

    def _check_bound(self) -> None:
        held = len(self.level)
        if held > self.capacity:
            raise AssertionError(f"{self.name} holds {held} entries, capacity {self.capacity}")

    def zipf_loop(self, trace: list[str]) -> int:
        get, set_, missing = self.get, self.set, self.missing
        misses = 0
        for key in trace:
            if get(key) is missing:
                misses += 1
                set_(key, key)
        self._check_bound()
        return misses

    def missset_loop(self, keys: list[str]) -> None:
        get, set_, missing = self.get, self.set, self.missing
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


class StratacacheBeforeAdapter(StratacacheAdapter):
    name = f"stratacache before ({BEFORE_REV}) (L1 only, default policy, ttl 600s)"

    def package(self) -> ModuleType:
        # Built (or reused) and imported on first use, not when the plugin loads: a run
        # that does not select these adapters pays nothing. Then cached in sys.modules.
        package: ModuleType = _before_module().load_before(BEFORE_REV)
        return package


class StratacacheLRUBeforeAdapter(StratacacheBeforeAdapter):
    name = f"stratacache before ({BEFORE_REV}) (L1 only, LRU, ttl 600s)"
    policy = "lru"


ADAPTERS = [
    StratacacheAdapter,
    StratacacheLRUAdapter,
    StratacacheBeforeAdapter,
    StratacacheLRUBeforeAdapter,
]

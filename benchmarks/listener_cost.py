"""L1 hit cost with no listener, a load listener, a hit listener, and hot-key counting off:
four Caches timed in turn, 7 alternating rounds of 500k gets over 10k resident keys.

    python benchmarks/listener_cost.py
"""

import random
import statistics
import time

from stratacache import Cache, MemoryTier

random.seed(1)
keys = [f"k{random.randrange(10000)}" for _ in range(500000)]


def run(mode):
    c = Cache([MemoryTier(10000, ttl=600)])
    if mode == "load listener":
        c.on("load", lambda e: None)
    if mode == "hit listener":
        c.on("hit", lambda e: None)
    if mode == "counting off":
        c = Cache([MemoryTier(10000, ttl=600)], hot_keys=False)
    for k in set(keys):
        c.set(k, 1)
    g = c.get
    t0 = time.perf_counter()
    for k in keys:
        g(k)
    return (time.perf_counter() - t0) / len(keys) * 1e9


res = {}
modes = ("no listener", "load listener", "hit listener", "counting off")
for rep in range(7):
    for m in modes if rep % 2 else modes[::-1]:
        res.setdefault(m, []).append(run(m))
for k, v in res.items():
    print(f"{k:15} median {statistics.median(v):6.1f} ns  min {min(v):6.1f}")

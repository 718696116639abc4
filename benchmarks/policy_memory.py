"""Bytes each eviction policy keeps per resident key, as tracemalloc sees them.

The figures behind ``stratacache.policies.entry_bytes``, which a byte-bounded MemoryTier
charges to every entry. Each policy is bounded at N entries and fed 3N distinct keys (the
keys themselves are made before measuring and not counted); W-TinyLFU's figure includes
its sketches, which grow with the resident count.

    python benchmarks/policy_memory.py [--sizes 10000,70000,300000]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from stratacache.policies import POLICIES, entry_bytes, make_policy


def per_key(name: str, n: int, keys: list[str]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        policy = make_policy(name, n)
        for key in keys:
            policy.on_insert(key, 1)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del policy
    return used / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,70000,300000")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    names = sorted(POLICIES)
    print(f"{'entries':>8} " + " ".join(f"{name:>9}" for name in names))
    for n in sizes:
        keys = [f"key:{i:08d}" for i in range(3 * n)]
        print(f"{n:>8} " + " ".join(f"{per_key(name, n, keys):>9.0f}" for name in names))
    print(f"{'charged':>8} " + " ".join(f"{entry_bytes(name):>9}" for name in names))


if __name__ == "__main__":
    main()

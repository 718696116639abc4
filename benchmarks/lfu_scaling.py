"""Does the ``lfu`` policy's insert stay flat as the cache grows? LFU against LRU, one run.

For each size N (10k, 100k, 1M entries by default), each policy is filled with N unique keys
(not timed), then ``--inserts`` more unique keys are inserted with ``on_insert``: every one
is a miss at capacity that evicts exactly one key, the hot path of a full cache. The cost
per insert is the median over ``--rounds`` rounds, each round timing every policy in turn on
a fresh copy (the machine is shared: alternating rounds spread its noise over all of them).

Compared:

* ``lfu``: ``make_policy("lfu", N)`` (Python only; there is no compiled LFU);
* ``lru``: ``make_policy("lru", N)``: the compiled class when ``stratacache._cpolicies`` is
  built and ``STRATACACHE_PURE_PYTHON`` is not set, else the Python class (the column
  header says which);
* ``lru-py``: the Python ``LRUPolicy``, always.

Then a stream of ``--stream`` unique keys (5M) goes through a ``--stream-capacity``
(1M-entry) cache with ``access``, from empty, for ``lfu`` and ``lru``: the total time.

    python benchmarks/lfu_scaling.py [--sizes 10000,100000,1000000] [--inserts 200000]
                                     [--rounds 3] [--stream 5000000]
                                     [--stream-capacity 1000000]
    STRATACACHE_PURE_PYTHON=1 python benchmarks/lfu_scaling.py   # make_policy's lru in Python
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

from stratacache.policies import LRUPolicy, Policy, make_policy

Factory = Callable[[int], Policy]


def factories() -> dict[str, Factory]:
    return {
        "lfu": lambda n: make_policy("lfu", n),
        "lru": lambda n: make_policy("lru", n),
        "lru-py": LRUPolicy,
    }


def describe(policy: Policy) -> str:
    cls = type(policy)
    kind = "C" if cls.__module__.endswith("_cpolicies") else "Python"
    return f"{cls.__module__}.{cls.__qualname__} ({kind})"


def insert_cost(factory: Factory, size: int, inserts: int) -> float:
    """Seconds per ``on_insert`` of a new key into a full cache of ``size`` entries."""
    policy = factory(size)
    insert = policy.on_insert
    for key in range(size):
        insert(key)
    assert len(policy) == size
    gc.collect()
    start = time.perf_counter()
    for key in range(size, size + inserts):
        insert(key)
    elapsed = time.perf_counter() - start
    assert len(policy) == size
    del policy, insert
    gc.collect()
    return elapsed / inserts


def stream_time(factory: Factory, capacity: int, keys: int) -> float:
    """Seconds to ``access`` ``keys`` unique keys, from empty, at ``capacity`` entries."""
    policy = factory(capacity)
    access = policy.access
    gc.collect()
    start = time.perf_counter()
    for key in range(keys):
        access(key)
    elapsed = time.perf_counter() - start
    assert len(policy) == min(capacity, keys)
    del policy, access
    gc.collect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--inserts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", type=int, default=5_000_000)
    parser.add_argument("--stream-capacity", type=int, default=1_000_000)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    made = factories()

    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"STRATACACHE_PURE_PYTHON={os.environ.get('STRATACACHE_PURE_PYTHON', '')!r}")
    for name, factory in made.items():
        print(f"  {name:7} = {describe(factory(4))}")
    print(
        f"\nPer insert at capacity (median of {args.rounds} rounds, {args.inserts:,} "
        "unique keys each, every one evicting one key):"
    )
    header = f"{'entries':>10} {'lfu µs':>8} {'lru µs':>8} {'lru-py µs':>10}"
    header += f" {'lfu/lru':>8} {'lfu/lru-py':>11}"
    print(header)
    for size in sizes:
        runs: dict[str, list[float]] = {name: [] for name in made}
        for _ in range(args.rounds):
            for name, factory in made.items():
                runs[name].append(insert_cost(factory, size, args.inserts))
        cost = {name: statistics.median(values) for name, values in runs.items()}
        print(
            f"{size:>10,} {cost['lfu'] * 1e6:>8.3f} {cost['lru'] * 1e6:>8.3f}"
            f" {cost['lru-py'] * 1e6:>10.3f} {cost['lfu'] / cost['lru']:>8.2f}"
            f" {cost['lfu'] / cost['lru-py']:>11.2f}"
        )

    if args.stream:
        print(
            f"\n{args.stream:,} unique keys through a {args.stream_capacity:,}-entry cache "
            "(access, from empty, one run):"
        )
        seconds = {
            name: stream_time(made[name], args.stream_capacity, args.stream)
            for name in ("lfu", "lru")
        }
        for name, value in seconds.items():
            print(f"  {name:4} {value:7.2f} s  ({value / args.stream * 1e6:.3f} µs per key)")
        print(f"  lfu/lru {seconds['lfu'] / seconds['lru']:.2f}")


if __name__ == "__main__":
    main()

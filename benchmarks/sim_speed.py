"""How fast the simulator replays a trace, against libCacheSim on the same trace in the same run.

Replays the OLTP trace (914k requests) through LRU, the default policy and any ``--policy``
with our engine and with the ``libcachesim`` Python package (0.3.5), and prints requests
per second and ratios. libCacheSim is measured three ways:

* native: ``cache.process_trace(reader)``, its C++ loop over an oracleGeneral file (the
  trace is written once, uncompressed, to a temporary file; writing is not timed), with
  its default hash table (2**24 buckets) and with one sized to the cache;
* per request from Python: ``cache.get(request)`` in a Python loop, which is what a Python
  program driving libCacheSim one request at a time pays.

Ours is ``engine.replay``: the same policy objects the in-process L1 uses. Each figure is
the best of ``--repeat`` runs (the machine is shared: best-of filters out interference).
The miss ratios are printed alongside so a speed figure is never for a different result.

    python benchmarks/sim_speed.py [--trace PATH] [--size 1%] [--repeat 3] [--policy NAME]...
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stratacache.policies import DEFAULT_POLICY
from stratacache.sim.engine import available_policies, build_policy, footprint, parse_size, replay
from stratacache.sim.traces import Trace, read_trace

DEFAULT_TRACE = Path("/work/shared/traces/OLTP.lis.zst")

# Our policy names -> libCacheSim's classes for the same algorithm.
LIBCACHESIM_NAMES = {
    "lru": "LRU",
    "lfu": "LFU",
    "arc": "ARC",
    "wtinylfu": "WTinyLFU",
    "s3fifo": "S3FIFO",
    "sieve": "Sieve",
    "gdsf": "GDSF",
    "opt": "Belady",
}


def best_of(repeat: int, run: Callable[[], float]) -> tuple[float, float]:
    """(best seconds, miss ratio of the last run)."""
    best = float("inf")
    ratio = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        ratio = run()
        best = min(best, time.perf_counter() - start)
    return best, ratio


def write_oracle_general(trace: Trace, path: Path) -> None:
    """The trace as libCacheSim's oracleGeneral records, with real next-access times so
    Belady works too."""
    keys = np.asarray(trace.keys, dtype=np.uint64)
    n = len(keys)
    order = np.argsort(keys, kind="stable")
    next_access = np.full(n, -1, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    next_access[order[:-1][same]] = order[1:][same]
    records = np.zeros(n, dtype=[("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])
    records["time"] = np.arange(n)
    records["key"] = keys
    records["size"] = 1
    records["next"] = next_access
    records.tofile(path)


def ours(trace: Trace, policy: str, capacity: int) -> Callable[[], float]:
    def run() -> float:
        return replay(trace, build_policy(policy, capacity, trace)).miss_ratio

    return run


def libcachesim_native(
    lcs: Any, cls: Any, path: Path, capacity: int, hashpower: int
) -> Callable[[], float]:
    def run() -> float:
        reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
        cache = cls(capacity, hashpower=hashpower)
        miss_ratio, _byte_miss_ratio = cache.process_trace(reader)
        return float(miss_ratio)

    return run


def libcachesim_per_request(
    lcs: Any, cls: Any, trace: Trace, capacity: int, hashpower: int
) -> Callable[[], float]:
    def run() -> float:
        get = cls(capacity, hashpower=hashpower).get
        request = lcs.Request()
        request.obj_size = 1
        hits = 0
        for key in trace.keys:
            request.obj_id = key
            hits += get(request)
        return 1 - hits / len(trace.keys)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--size", default="1%", help="cache size (default 1%% of unique keys)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--policy", action="append", default=[], help="more policies, beyond lru and the default"
    )
    args = parser.parse_args()

    import libcachesim as lcs

    start = time.perf_counter()
    trace = read_trace(args.trace)
    read_seconds = time.perf_counter() - start
    capacity = parse_size(args.size).resolve(footprint(trace))
    policies = list(dict.fromkeys(["lru", DEFAULT_POLICY, *args.policy]))
    n = len(trace)

    versions = f"python {platform.python_version()}, libcachesim {lcs.__version__}"
    print(f"{versions}, {os.cpu_count()} cpus")
    print(
        f"trace {trace.name}: {n:,} requests, {trace.unique_keys():,} unique keys, read in "
        f"{read_seconds:.2f}s ({n / read_seconds / 1e6:.2f}M req/s); cache size {capacity:,} "
        f"({args.size}); best of {args.repeat}"
    )
    # libCacheSim's default hash table has 2**24 buckets whatever the cache size; touching
    # that much memory dominates a small cache's replay, so it is also measured with a
    # table sized to the cache (about two buckets per cached object).
    sized = max(10, math.ceil(math.log2(capacity)) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        oracle = Path(tmp) / f"{trace.name}.oracleGeneral.bin"
        write_oracle_general(trace, oracle)
        for policy in policies:
            if policy not in available_policies():
                print(f"\n{policy}: not available here; accepted: {available_policies()}")
                continue
            our_time, our_ratio = best_of(args.repeat, ours(trace, policy, capacity))
            cls = getattr(lcs, LIBCACHESIM_NAMES.get(policy, ""), None)
            if cls is None:
                print(f"\n{policy}: ours {n / our_time / 1e6:.2f}M req/s, no libCacheSim twin")
                continue
            rows: list[tuple[str, float, float]] = []
            runs = {
                "native process_trace, hashpower 24 (default)": libcachesim_native(
                    lcs, cls, oracle, capacity, 24
                ),
                f"native process_trace, hashpower {sized} (sized)": libcachesim_native(
                    lcs, cls, oracle, capacity, sized
                ),
            }
            # Belady reads each request's next-access time, which only the trace reader fills
            # in; a hand-built Request would give it a different (wrong) answer.
            if policy != "opt":
                runs[f"Python loop over cache.get, hashpower {sized}"] = libcachesim_per_request(
                    lcs, cls, trace, capacity, sized
                )
            for label, run in runs.items():
                seconds, ratio = best_of(args.repeat, run)
                rows.append((label, seconds, ratio))
            ratios = ", ".join(sorted({f"{ratio:.4f}" for _, _, ratio in rows}))
            print(f"\n{policy}: miss ratio ours {our_ratio:.4f}, libCacheSim {ratios}")
            print(f"  {'ours: engine.replay':<60} {n / our_time / 1e6:6.2f}M req/s")
            for label, seconds, _ in rows:
                print(
                    f"  {'libCacheSim ' + label:<60} {n / seconds / 1e6:6.2f}M req/s"
                    f"   ours/libCacheSim = {seconds / our_time:.2f}"
                )
    print("\nours/libCacheSim > 1 means ours is faster; M = million requests per second")


if __name__ == "__main__":
    main()

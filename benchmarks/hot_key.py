"""One very hot key (a flash sale) through L1 -> SQLite L2 -> origin: the reads of that
key that get past L1 (each an L2 read) and its origin loads, with hot-key protection off
and on, for L1 policies and sizes side by side.

The workload is :mod:`stratacache.cli.flash_sale`'s: ``--share`` of the requests for the
sale key, the rest spread evenly over ``--keys`` products (a browsing background that
churns an LRU L1). Each configuration runs the same request sequence twice from an empty
cache, protection off then on (threshold ``--threshold`` requests/s, pins lasting
``--hot-key-ttl`` s). Single-threaded and in one process: the counts are what the cache
did for this sequence, not a throughput figure (``elapsed_s`` is shown only to see what
protection costs). Nothing asserts: benchmarks report.

    python benchmarks/hot_key.py                       # ~1 min
    python benchmarks/hot_key.py --share 0.05 --requests 200000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from stratacache import MemoryTier, SQLiteTier
from stratacache.cli.flash_sale import SaleSettings, run_flash_sale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=50.0)
    parser.add_argument("--hot-key-ttl", type=float, default=1.0)
    parser.add_argument("--policies", default="lru,wtinylfu")
    parser.add_argument("--l1-sizes", default="100,1000")
    args = parser.parse_args()
    settings = SaleSettings(
        requests=args.requests,
        share=args.share,
        keys=args.keys,
        threshold=args.threshold,
        hot_key_ttl=args.hot_key_ttl,
    )
    loads = [0]

    def origin(keys: list[str]) -> dict[str, Any]:
        loads[0] += len(keys)
        return {key: {"id": key, "price": 10} for key in keys}

    print(
        f"{settings.requests} requests, {settings.share:.0%} for the sale key, "
        f"background over {settings.keys} keys; threshold {settings.threshold}/s, "
        f"pins {settings.hot_key_ttl}s"
    )
    header = (
        f"{'policy':9} {'L1':>5} {'protect':>7} {'sale reqs':>9} {'sale->L2':>9} "
        f"{'sale origin':>11} {'pins':>5} {'all->L2':>8} {'top key (rate/s)':>28} {'s':>6}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies.split(","):
            for size in (int(s) for s in args.l1_sizes.split(",")):
                path = Path(tmp) / f"{policy}-{size}.db"

                def levels(policy: str = policy, size: int = size, path: Path = path) -> Any:
                    return [MemoryTier(size, policy=policy), SQLiteTier(path)]

                report = run_flash_sale(levels, origin, settings)
                for run in report["runs"]:
                    top = run["hot_keys"][0] if run["hot_keys"] else {"key": "-", "rate": 0}
                    print(
                        f"{policy:9} {size:>5} {'on' if run['protection'] else 'off':>7} "
                        f"{run['sale_requests']:>9} {run['sale_reads_past_l1']:>9} "
                        f"{run['sale_origin_loads']:>11} {run['hot_pins']:>5} "
                        f"{run['reads_past_l1']:>8} "
                        f"{top['key'] + ' (' + str(top['rate']) + ')':>28} "
                        f"{run['elapsed_s']:>6.2f}"
                    )


if __name__ == "__main__":
    main()

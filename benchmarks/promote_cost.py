"""What a read that gets past L1 costs, before and after a revision, in the same run.

A hit in the shared level is copied into L1 (a *promotion*); a miss everywhere is loaded
and filled into every level (a *fill*). Both end with the write fence's check for a write
that raced them (``Hierarchy._unfill_raced``), which is what changed in cd7b566: it now
records, per level, what the copy or fill stored. This times both paths through the
public ``Cache``, the current tree against ``--before`` (built by before.py), alternating
in rounds, best round of each (noise on a shared machine only ever adds time):

* **promote**: ``Cache([MemoryTier(50), L2])`` over 2,000 keys resident in L2, read in a
  cycle, so nearly every ``get`` is an L2 hit copied into L1 (and an L1 eviction);
* **fill**: the same cache reading keys nobody has stored, from an origin that answers
  at once: one lease, one load, a fill of both levels per ``get``.

L2 is an embedded SQLite file and a redis-server this script starts (``tests/servers.py``;
never the machine's own). Nothing asserts: benchmarks report.

    python benchmarks/promote_cost.py --before 1e3cf57
    python benchmarks/promote_cost.py --before 1e3cf57 --rounds 7 --reads 3000
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.servers
sys.path.insert(0, str(ROOT / "benchmarks"))  # before

from tests.servers import RedisServer  # noqa: E402

import stratacache  # noqa: E402
from before import load_before  # noqa: E402

KEYS = 2_000
_fresh = itertools.count()


def origin(keys: list[str]) -> dict[str, str]:
    return {key: "v" * 100 for key in keys}


def make(package: ModuleType, l2: str) -> Any:
    return package.Cache([package.MemoryTier(50), l2], origin)


def time_promote(cache: Any, reads: int) -> float:
    keys = [f"p{i}" for i in range(KEYS)]
    cache.get_many(keys)  # resident in L2 (L1 keeps 50)
    began = time.perf_counter()
    for i in range(reads):
        cache.get(keys[i % KEYS])
    return (time.perf_counter() - began) / reads


def time_fill(cache: Any, reads: int) -> float:
    run = next(_fresh)
    keys = [f"f{run}-{i}" for i in range(reads)]
    began = time.perf_counter()
    for key in keys:
        cache.get(key)
    return (time.perf_counter() - began) / reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", type=int, default=2_000)
    args = parser.parse_args()
    before = load_before(args.before)
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            levels = {"sqlite": f"sqlite:///{tmp}/l2.db", "redis": server.url}
            paths: dict[str, Callable[[Any, int], float]] = {
                "promote": time_promote,
                "fill": time_fill,
            }
            best: dict[tuple[str, str, str], float] = {}
            for round_ in range(args.rounds):
                for (level, url), (path, timed) in itertools.product(levels.items(), paths.items()):
                    contenders = [("after", stratacache), ("before", before)]
                    if round_ % 2:
                        contenders.reverse()
                    for name, package in contenders:
                        # one namespace per contender: each reads its own envelopes
                        cache = make(package, f"{url}{'&' if '?' in url else '?'}namespace={name}")
                        try:
                            took = timed(cache, args.reads)
                        finally:
                            cache.close()
                        key = (level, path, name)
                        best[key] = min(best.get(key, took), took)
            print(f"best of {args.rounds} rounds, {args.reads} reads each; before = {args.before}")
            print(f"{'L2':8} {'path':8} {'before µs':>10} {'after µs':>10} {'before/after':>13}")
            for level, path in itertools.product(levels, paths):
                was, now = best[(level, path, "before")], best[(level, path, "after")]
                print(f"{level:8} {path:8} {was * 1e6:10.1f} {now * 1e6:10.1f} {was / now:13.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

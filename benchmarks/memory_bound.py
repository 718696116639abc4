"""How much a MemoryTier bounded by max_bytes really holds, per value family.

Fills a 20 MB-bounded MemoryTier (default policy) with each family, well past capacity,
and prints the growth of RSS (psutil) and of tracemalloc's traced memory against the bound,
plus what one weigh of such a value costs. Each family runs in a fresh child process, so
RSS from one does not hide the next. The tier is built while measuring: what it holds
from the start (W-TinyLFU's first sketches) counts against the bound too.

    python benchmarks/memory_bound.py [--bound BYTES]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import timeit
import tracemalloc
from dataclasses import dataclass
from typing import Any

import psutil

from stratacache.entry import NEVER, Entry
from stratacache.tiers.memory import MemoryTier, default_weigher


class Plain:
    def __init__(self, i: int) -> None:
        self.id = i
        self.name = f"user-{i}"
        self.score = i * 0.5
        self.tags = [f"t{i}", f"u{i}"]


class Slotted:
    __slots__ = ("id", "name", "score")

    def __init__(self, i: int) -> None:
        self.id = i * 1000
        self.name = f"user-{i}"
        self.score = i * 0.5


@dataclass
class Record:
    id: int
    name: str
    values: list[float]


FAMILIES: dict[str, Any] = {
    "str, 100 chars": lambda i: f"{i:08d}" + "x" * 92,
    "bytes, 100": lambda i: f"{i:08d}".encode() + b"x" * 92,
    "bytes, 4 kB": lambda i: f"{i:08d}".encode() * 512,
    "list of 200 floats": lambda i: [i + j / 7 for j in range(200)],
    "tuple of 20 (int, str)": lambda i: tuple((i * 1000 + j, f"s{i}-{j}") for j in range(20)),
    "set of 30 str": lambda i: {f"{i}-{j}" for j in range(30)},
    "dict of 50 small dicts": lambda i: {
        f"k{j}": {"id": i * 1000 + j, "name": f"n{i}-{j}", "score": j + i / 3} for j in range(50)
    },
    "object with __dict__": Plain,
    "list of 10 __slots__ objs": lambda i: [Slotted(i * 10 + j) for j in range(10)],
    "dataclass + 20 floats": lambda i: Record(
        i * 1000, f"rec-{i}", [float(i + j) for j in range(20)]
    ),
}


def run_one(name: str, bound: int, traced_run: bool) -> dict[str, Any]:
    """One fill; RSS and tracemalloc are measured in separate runs (tracemalloc's own
    bookkeeping, tens of bytes per live block, would swell RSS)."""
    make = FAMILIES[name]
    sample = make(0)
    n = 2000
    weigh_ns = min(
        timeit.repeat(lambda: default_weigher("key:00000000", sample), number=n, repeat=5)
    )
    weigh_ns = weigh_ns / n * 1e9
    process = psutil.Process()
    gc.collect()
    rss0 = process.memory_info().rss
    if traced_run:
        tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    tier = MemoryTier(max_bytes=bound)
    i = 0
    while i < 2_000_000 and not (tier.weight > 0.9 * bound and i > 3 * len(tier)):
        tier.write(
            tier.prepare({f"key:{i + j:08d}": Entry(make(i + j), NEVER) for j in range(100)})
        )
        i += 100
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    rss = process.memory_info().rss - rss0
    return {
        "entries": len(tier),
        "written": i,
        "weight": tier.weight,
        "traced": traced,
        "rss": rss,
        "weigh_ns": weigh_ns,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound", type=int, default=20_000_000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.bound, args.traced)))
        return
    mb = 1e6
    print(f"MemoryTier(max_bytes={args.bound:,}), default policy, Python {sys.version.split()[0]}")
    print(
        f"{'family':28} {'entries':>8} {'weigh':>9} {'traced MB':>10} {'x bound':>8}"
        f" {'RSS MB':>8} {'x bound':>8}"
    )
    for name in FAMILIES:
        runs = []
        for flag in (["--traced"], []):
            command = [sys.executable, __file__, "--bound", str(args.bound), "--one", name, *flag]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out))
        traced, rss = runs[0]["traced"], runs[1]["rss"]
        print(
            f"{name:28} {runs[0]['entries']:>8} {runs[0]['weigh_ns']:>7.0f}ns"
            f" {traced / mb:>10.1f} {traced / args.bound:>8.2f}"
            f" {rss / mb:>8.1f} {rss / args.bound:>8.2f}"
        )


if __name__ == "__main__":
    main()

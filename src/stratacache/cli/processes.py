"""``stratacache demo --processes N``: several worker processes, one cache each, over one
shared L2 and one origin, writing and reading the same keys.

Each worker has its own L1, as a web server's workers do. It reads and writes a Zipf
stream of user profiles; every value carries who wrote it and when. Two things are
measured per worker:

* **stale reads**: a read that returned a value older than a write that had completed,
  in any process, at least ``GRACE`` (50 ms) before the read began. The workers record
  each completed write in a ledger (a small SQLite file beside the origin, which holds
  what the origin holds under write-through); after the run every read is checked
  against it. With the invalidation bus, versions and write locks the answer is 0.
  Reads that saw an older value within the grace window, while the invalidation was
  still on its way (about a millisecond on one host), are counted apart as
  ``in_flight``: no cache that lets a process read its own memory can avoid those.
* **invalidation latency**: per worker, from the moment another worker's invalidation
  left it to the moment this worker's L1 had dropped the keys (the bus measures it on
  every message it applies: ``stats().bus["delay_p50_ms"]`` and ``delay_p99_ms``).
  A worker busy in Python applies messages when its bus thread gets the GIL, so under
  load this includes the interpreter's thread switching (5 ms by default).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import CacheError
from ..origin import SQLOrigin
from ..tiers.memory import MemoryTier
from ..tiers.sqlite import SQLiteTier

__all__ = ["run_processes"]

#: how long after a write completes a read elsewhere must see it (see the docstring)
GRACE = 0.05
_SPAWN = mp.get_context("spawn")


def _now_us() -> int:
    return time.time_ns() // 1000


def _ledger(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS writes (key TEXT, stamp INTEGER, done INTEGER, "
        "PRIMARY KEY (key, stamp))"
    )
    return conn


def _worker(settings: dict[str, Any], worker: int, start_at: float, out: Any) -> None:
    from ..config import tier_from_url
    from ..hierarchy.sync import Cache

    data_dir = Path(settings["data_dir"])
    rng = random.Random(settings["seed"] * 1000 + worker)
    origin = SQLOrigin(
        f"sqlite:///{data_dir / 'origin-users.db'}", "users", key_column="id", key_prefix="user:"
    )
    shared: Any = (
        tier_from_url(settings["l2_url"], name="L2", namespace="demo-processes", ttl=3600.0)
        if settings["l2_url"]
        else SQLiteTier(data_dir / "l2-cache.db", namespace="demo-processes", ttl=3600.0)
    )
    options: dict[str, Any] = {"write": settings["write_policy"]}
    if not settings["bus"]:
        options["bus"] = None
    if settings["write_policy"] == "behind":
        options["journal"] = data_dir / "journal"
    cache = Cache([MemoryTier(settings["l1_size"], ttl=300.0), shared], origin, **options)
    ledger = _ledger(data_dir / "ledger.db")
    keys, skew = settings["keys"], settings["skew"]
    weights = [1.0 / (i + 1) ** skew for i in range(keys)]
    reads: list[tuple[str, int, int]] = []  # key, read began, stamp of the value read (µs)
    errors = 0
    kinds: dict[str, int] = {}
    samples: list[str] = []

    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + settings["seconds"]
    stream = rng.choices(range(keys), weights, k=4096)
    step = 0
    while time.monotonic() < deadline:
        key = f"user:{stream[step % len(stream)]}"
        step += 1
        try:
            if rng.random() < settings["write_ratio"]:
                profile = cache.get(key)
                if isinstance(profile, dict):
                    # the score is the write's time in microseconds: which write a read saw
                    stamp = _now_us()
                    cache.set(key, {**profile, "score": stamp})
                    ledger.execute(
                        "INSERT OR REPLACE INTO writes VALUES (?, ?, ?)", (key, stamp, _now_us())
                    )
            else:
                began = _now_us()
                profile = cache.get(key)
                if isinstance(profile, dict):
                    reads.append((key, began, int(profile.get("score", 0))))
        except CacheError as exc:
            errors += 1
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            if len(samples) < 3:
                samples.append(f"{type(exc).__name__}: {exc}"[:300])
    stats = cache.stats()
    cache.close()
    ledger.close()
    out.put(
        {
            "worker": worker,
            "reads": reads,
            "errors": errors,
            "error_kinds": kinds,
            "error_samples": samples,
            "writes": stats.levels[1].writes,
            "l1_hit_rate": stats.levels[0].hit_rate,
            "origin_loads": stats.origin_loads,
            "bus": stats.bus,
            "lease_waits": stats.lease_waits,
        }
    )


def _stale_reads(ledger_path: Path, reads: list[tuple[str, int, int]]) -> tuple[int, int]:
    """Reads that returned a value superseded ``GRACE`` before they began, and those that
    returned one superseded more recently (still in flight).

    Writes of one key that overlap in time may land in either order (the write lock
    decides), so a value is *superseded* only by a write that began after the value's
    own write had completed; that write's completion is when every process must see
    it. Each value carries its write's start time (its stamp), which names the write."""
    conn = _ledger(ledger_path)
    writes: dict[str, list[tuple[int, int]]] = {}  # key -> [(start, done)]
    for key, stamp, done in conn.execute("SELECT key, stamp, done FROM writes"):
        writes.setdefault(key, []).append((stamp, done))
    conn.close()
    done_of = {(key, start): done for key, history in writes.items() for start, done in history}
    grace = int(GRACE * 1e6)
    stale = in_flight = 0
    for key, began, got in reads:
        # the value read was written by the write that started at `got` (0: the origin's
        # first value, written before the run)
        written = done_of.get((key, got), 0)
        superseded = [
            done for start, done in writes.get(key, ()) if start > written and done < began
        ]
        if not superseded:
            continue
        if min(superseded) < began - grace:
            stale += 1
        else:
            in_flight += 1
    return stale, in_flight


def run_processes(
    *,
    processes: int,
    seconds: float,
    write_policy: str,
    keys: int,
    skew: float,
    write_ratio: float,
    l1_size: int,
    seed: int,
    data_dir: Path,
    l2_url: str | None,
    bus: bool = True,
) -> dict[str, Any]:
    """Run ``processes`` workers for ``seconds`` and return the report. ``bus=False``
    runs them without the invalidation bus, to show what it prevents."""
    settings = {
        "data_dir": str(data_dir),
        "seed": seed,
        "keys": keys,
        "skew": skew,
        "write_ratio": write_ratio,
        "l1_size": l1_size,
        "l2_url": l2_url,
        "write_policy": write_policy,
        "seconds": seconds,
        "bus": bus,
    }
    _ledger(data_dir / "ledger.db").close()
    out = _SPAWN.Queue()
    start_at = time.time() + 2.0 + 0.5 * processes  # every worker imported and connected
    workers = [
        _SPAWN.Process(target=_worker, args=(settings, n, start_at, out), daemon=True)
        for n in range(processes)
    ]
    for proc in workers:
        proc.start()
    results = sorted(
        (out.get(timeout=seconds + 120) for _ in workers), key=lambda r: int(r["worker"])
    )
    for proc in workers:
        proc.join(timeout=30)
    report_workers = []
    for result in results:
        stale, in_flight = _stale_reads(data_dir / "ledger.db", result["reads"])
        report_workers.append(
            {
                "worker": result["worker"],
                "reads_checked": len(result["reads"]),
                "stale_reads": stale,
                "in_flight": in_flight,
                "errors": result["errors"],
                "error_kinds": result["error_kinds"],
                "error_samples": result["error_samples"],
                "invalidation_p50_ms": result["bus"].get("delay_p50_ms"),
                "invalidation_p99_ms": result["bus"].get("delay_p99_ms"),
                "invalidations_received": result["bus"].get("received_keys", 0),
                "l1_hit_rate": round(result["l1_hit_rate"], 4),
                "origin_loads": result["origin_loads"],
                "lease_waits": result["lease_waits"],
                "bus_resets": result["bus"].get("resets", 0) if result["bus"] else None,
            }
        )
    return {
        "processes": processes,
        "write_policy": write_policy,
        "bus": bus,
        "seconds": seconds,
        "l2": l2_url or "sqlite file (embedded)",
        "workers": report_workers,
        "stale_reads": sum(w["stale_reads"] for w in report_workers),
        "in_flight": sum(w["in_flight"] for w in report_workers),
        "invalidation_p99_ms": max(
            (w["invalidation_p99_ms"] or 0.0 for w in report_workers), default=None
        ),
    }


def print_processes(report: dict[str, Any], echo: Any) -> None:
    echo(
        f"{report['processes']} processes, write={report['write_policy']}, "
        f"bus {'on' if report['bus'] else 'OFF'}, "
        f"L2: {report['l2']}, {report['seconds']:g}s"
    )
    echo(
        f"{'worker':>6} {'reads':>8} {'stale':>6} {'flight':>6} {'inval p50':>10} "
        f"{'inval p99':>10} {'L1 hit':>7} {'loads':>7} {'errors':>6}"
    )
    for w in report["workers"]:

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}ms"

        echo(
            f"{w['worker']:>6} {w['reads_checked']:>8,} {w['stale_reads']:>6} {w['in_flight']:>6} "
            f"{ms(w['invalidation_p50_ms']):>10} {ms(w['invalidation_p99_ms']):>10} "
            f"{w['l1_hit_rate']:>7.1%} {w['origin_loads']:>7,} {w['errors']:>6}"
        )
    echo(
        f"stale reads (older than a write completed {GRACE * 1000:g} ms before the read): "
        f"{report['stale_reads']}; in flight: {report['in_flight']}; invalidation latency "
        f"p99 (worst worker) {report['invalidation_p99_ms']} ms"
    )

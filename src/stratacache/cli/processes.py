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
* **invalidation latency**: worker 0 rewrites a probe key every 20 ms with the time it
  wrote it; the others watch it through their own L1 and note how long each new value
  took to reach them.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CacheError
from ..origin import SQLOrigin
from ..tiers.memory import MemoryTier
from ..tiers.sqlite import SQLiteTier

__all__ = ["run_processes"]

#: the probe is one more user, past the workload's keys
#: how long after a write completes a read elsewhere must see it (see the docstring)
GRACE = 0.05
_PROBE_EVERY = 0.02
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
    arrivals: list[float] = []
    stop = threading.Event()

    probe_key = f"user:{keys}"

    def probe() -> None:
        if worker == 0:
            while not stop.is_set():
                profile = cache.get(probe_key)
                if isinstance(profile, dict):
                    cache.set(probe_key, {**profile, "score": _now_us()})
                time.sleep(_PROBE_EVERY)
            return
        last = None
        while not stop.is_set():
            value = cache.get(probe_key)
            sent = value.get("score") if isinstance(value, dict) else None
            if isinstance(sent, int) and sent != last:
                if last is not None:
                    arrivals.append((_now_us() - sent) / 1e6)
                last = sent
            time.sleep(0.0005)

    time.sleep(max(0.0, start_at - time.time()))
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
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
    stop.set()
    prober.join(timeout=5)
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
            "arrivals": arrivals,
            "writes": stats.levels[1].writes,
            "l1_hit_rate": stats.levels[0].hit_rate,
            "origin_loads": stats.origin_loads,
            "bus": stats.bus,
            "lease_waits": stats.lease_waits,
        }
    )


def _stale_reads(ledger_path: Path, reads: list[tuple[str, int, int]]) -> tuple[int, int]:
    """Reads that returned a value older than a write completed ``GRACE`` before they
    began, and those that did so within the grace window."""
    conn = _ledger(ledger_path)
    completed: dict[str, list[tuple[int, int]]] = {}
    for key, stamp, done in conn.execute("SELECT key, stamp, done FROM writes"):
        completed.setdefault(key, []).append((done, stamp))
    conn.close()
    for history in completed.values():
        history.sort()
    stale = in_flight = 0
    for key, began, got in reads:
        settled = recent = 0
        for done, stamp in completed.get(key, ()):
            if done >= began:
                break
            if done < began - GRACE * 1e6:
                settled = max(settled, stamp)
            recent = max(recent, stamp)
        if got < settled:
            stale += 1
        elif got < recent:
            in_flight += 1
    return stale, in_flight


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


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
) -> dict[str, Any]:
    """Run ``processes`` workers for ``seconds`` and return the report."""
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
        arrivals = result["arrivals"]
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
                "invalidation_p50_ms": _ms(arrivals, 0.5),
                "invalidation_p99_ms": _ms(arrivals, 0.99),
                "invalidations_seen": len(arrivals),
                "l1_hit_rate": round(result["l1_hit_rate"], 4),
                "origin_loads": result["origin_loads"],
                "lease_waits": result["lease_waits"],
                "bus_resets": result["bus"].get("resets", 0) if result["bus"] else None,
            }
        )
    every_arrival = [a for r in results for a in r["arrivals"]]
    return {
        "processes": processes,
        "write_policy": write_policy,
        "seconds": seconds,
        "l2": l2_url or "sqlite file (embedded)",
        "workers": report_workers,
        "stale_reads": sum(w["stale_reads"] for w in report_workers),
        "in_flight": sum(w["in_flight"] for w in report_workers),
        "invalidation_p50_ms": _ms(every_arrival, 0.5),
        "invalidation_p99_ms": _ms(every_arrival, 0.99),
        "invalidation_mean_ms": (
            round(statistics.fmean(every_arrival) * 1000, 3) if every_arrival else None
        ),
    }


def print_processes(report: dict[str, Any], echo: Any) -> None:
    echo(
        f"{report['processes']} processes, write={report['write_policy']}, "
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
        f"{report['stale_reads']}; in flight: {report['in_flight']}; invalidation latency p50 "
        f"{report['invalidation_p50_ms']} ms, p99 {report['invalidation_p99_ms']} ms"
    )

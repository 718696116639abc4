"""Do the processes agree with the origin after a Redis pause? (A try, not a timing.)

Two writer processes (``--writers N``: N), 3 threads each, write 25 keys through their
own ``Cache([MemoryTier, Redis], SQLOrigin)`` for 6 s; 3 s in, the Redis server (started
here, never the machine's own) is stopped with SIGSTOP for 3 s. Once all are done
(write-behind queues drained), each reads every key 1 s later and compares with the
origin's rows; a late process reads too. Prints every disagreement with what that
process's L1 and L2 held right after the read, and the count (0 is the goal). ``--pause
writer`` stops the first writer process instead of Redis (its locks, leases and half-done
writes stall mid-flight), ``both`` stops both at once, ``none`` nothing::

    python benchmarks/pause_agreement.py [through|behind] [--runs N]
        [--pause redis|writer|both|none] [--writers N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEYS = 25


def build(url: str, origin_url: str, journal: str, policy: str) -> Any:
    from stratacache import Cache, MemoryTier
    from stratacache.origin import SQLOrigin

    options: dict[str, Any] = {"write": "behind", "journal": journal} if policy == "behind" else {}
    origin = SQLOrigin(origin_url, "items", value_column="value")
    return Cache([MemoryTier(1000), url], origin, **options)


def writer(
    url: str, origin_url: str, journal: str, policy: str, w: int, q: Any, inbox: Any
) -> None:
    cache = build(url, origin_url, journal, policy)
    stop = time.monotonic() + 6
    errors: list[str] = []

    def loop(t: int) -> None:
        rng = random.Random(w * 10 + t)
        n = 0
        while time.monotonic() < stop:
            n += 1
            key = f"k{rng.randrange(KEYS)}"
            try:
                cache.set(key, f"w{w}t{t}n{n}")
                if rng.random() < 0.5:
                    cache.get(key)
            except Exception as exc:  # counted and reported
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 60
    while cache.stats().write_behind.get("depth", 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.put(sorted(set(errors)))
    assert inbox.get(timeout=120) == "read"
    time.sleep(1.0)
    got = {f"k{i}": cache.get(f"k{i}") for i in range(KEYS)}
    rows = dict(
        sqlite3.connect(origin_url.removeprefix("sqlite:///")).execute(
            "SELECT key, value FROM items"
        )
    )
    for key in [k for k in got if got[k] != rows.get(k)]:
        held = [
            {k: e.value for k, e in level.get_many([key]).items()} for level in cache.levels[:2]
        ]
        print(
            f"  process {w} {key}: read {got[key]!r}, origin {rows.get(key)!r}, "
            f"then L1 {held[0]} L2 {held[1]}, read again {cache.get(key)!r}",
            flush=True,
        )
    q.put(got)
    cache.close()


def one_run(policy: str, pause: str, writers: int = 2) -> int:
    from tests.integration.origin_table import make_origin_db, origin_rows
    from tests.servers import RedisServer

    server = RedisServer().start()
    tmp = Path(tempfile.mkdtemp())
    origin_url = make_origin_db(tmp / "origin.db")
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in range(writers)]
    inboxes = [ctx.Queue() for _ in range(writers)]
    procs = [
        ctx.Process(
            target=writer,
            args=(server.url, origin_url, str(tmp / "journal"), policy, w, queues[w], inboxes[w]),
        )
        for w in range(writers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3.0)
    stopped = procs[0].pid if pause in ("writer", "both") else None
    if pause in ("redis", "both"):  # "none": nothing stops
        server.pause()
    if stopped is not None:
        os.kill(stopped, signal.SIGSTOP)
    time.sleep(3.0)
    if pause in ("redis", "both"):
        server.resume()
    if stopped is not None:
        os.kill(stopped, signal.SIGCONT)
    errors = [q.get(timeout=180) for q in queues]
    truth = origin_rows(tmp / "origin.db")
    for inbox in inboxes:
        inbox.put("read")
    seen = [q.get(timeout=60) for q in queues]
    for proc in procs:
        proc.join(60)
    late = build(server.url, origin_url, str(tmp / "late"), "through")
    seen.append({key: late.get(key) for key in truth})
    late.close()
    server.stop()
    bad = sum(1 for got in seen for key in truth if got.get(key) != truth[key])
    print(
        f"{policy}, {pause} paused: set() errors {errors}; "
        f"disagreements {bad} of {(writers + 1) * len(truth)} reads"
    )
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", nargs="?", default="through", choices=["through", "behind"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pause", default="redis", choices=["redis", "writer", "both", "none"])
    parser.add_argument("--writers", type=int, default=2, help="writer processes")
    args = parser.parse_args()
    total = sum(one_run(args.policy, args.pause, args.writers) for _ in range(args.runs))
    print(f"total disagreements over {args.runs} runs: {total}")


if __name__ == "__main__":
    main()

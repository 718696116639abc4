"""What a write costs the caller: write-behind ``submit()`` against write-through.

Write-through here is one ``origin.store_many({key: value})`` per write, as a cache with
``write="through"`` would do; write-behind is ``WriteBehind.submit({key: value})`` under
each fsync policy, with the same origin storing the batches in the background. The origin
is a ``kv`` table in a SQLite file (WAL, ``synchronous=FULL``: each commit is fsynced, as
durable as the journal's "always"). Every write is a distinct key with a ~100-byte dict
value; one thread, then 8 threads sharing the work.

Printed per row: the caller's rate (writes acknowledged per second), its ratio to
write-through with the same threads, and for write-behind the end-to-end rate (until
``flush()`` returned: every write in the origin).

    python benchmarks/write_behind.py [--writes N] [--through-writes N] [--repeat N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stratacache.behind import WriteBehind
from stratacache.origin import Origin


class SQLiteOrigin(Origin):
    writable = True

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        with self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        raise NotImplementedError

    def store_many(self, items: Mapping[str, Any]) -> None:
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rows,
            )

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in keys])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM kv").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def value_of(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "email": f"user{i}@example.com", "score": i * 0.5}


def in_threads(threads: int, writes: int, write: Callable[[int], None]) -> float:
    """Seconds for ``threads`` threads to call ``write(i)`` for every i below ``writes``."""
    start = threading.Barrier(threads + 1)

    def work(first: int) -> None:
        start.wait()
        for i in range(first, writes, threads):
            write(i)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def through(directory: Path, threads: int, writes: int) -> tuple[float, float | None]:
    origin = SQLiteOrigin(directory / "origin.db")
    seconds = in_threads(threads, writes, lambda i: origin.store_many({f"k{i}": value_of(i)}))
    assert origin.count() == writes
    origin.close()
    return writes / seconds, None


def behind(directory: Path, threads: int, writes: int, fsync: Any) -> tuple[float, float | None]:
    origin = SQLiteOrigin(directory / "origin.db")
    queue = WriteBehind(origin, directory / "journal", fsync=fsync, max_pending=writes + 1)
    began = time.perf_counter()
    seconds = in_threads(threads, writes, lambda i: queue.submit({f"k{i}": value_of(i)}))
    assert queue.flush(120)
    drained = time.perf_counter() - began
    assert origin.count() == writes
    queue.close()
    origin.close()
    return writes / seconds, writes / drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=20_000, help="writes per write-behind run")
    parser.add_argument(
        "--through-writes", type=int, default=3_000, help="writes per write-through run"
    )
    parser.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is shown")
    args = parser.parse_args()

    print(f"{'mode':<28}{'threads':>8}{'caller ops/s':>14}{'x through':>11}{'end-to-end/s':>14}")
    for threads in (1, 8):
        baseline = 0.0
        for fsync in (None, "always", "interval", "never"):
            results = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                    if fsync is None:
                        results.append(through(Path(tmp), threads, args.through_writes))
                    else:
                        results.append(behind(Path(tmp), threads, args.writes, fsync))
            label = "write-through store_many" if fsync is None else f"write-behind fsync={fsync}"
            rate = statistics.median(r[0] for r in results)
            ends = [r[1] for r in results if r[1] is not None]
            end_to_end = statistics.median(ends) if ends else None
            baseline = baseline or rate
            tail = f"{end_to_end:>14,.0f}" if end_to_end is not None else f"{'':>14}"
            print(f"{label:<28}{threads:>8}{rate:>14,.0f}{rate / baseline:>10.1f}x{tail}")


if __name__ == "__main__":
    main()

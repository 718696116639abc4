"""Write-behind against real crashes: a child process queues 10,000 writes while its
origin (a SQLite file) is down, reports that every ``submit`` returned, and is killed with
SIGKILL. A new queue on the same journal directory must replay every one of them.

Also: the origin going down while writes continue (the queue stays bounded, refuses with
WriteBehindFullError, loses nothing it accepted, and drains when the origin is back)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from stratacache.behind import WriteBehind, WriteBehindFullError
from stratacache.origin import Origin

ROOT = Path(__file__).resolve().parents[2]
COUNT = 10_000


class SQLiteOrigin(Origin):
    """A ``kv`` table in a SQLite file, values as JSON. While ``down`` is set, every write
    fails as a database that cannot be reached would."""

    writable = True

    def __init__(self, path: str | Path, *, down: bool = False) -> None:
        self.down = threading.Event()
        if down:
            self.down.set()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        found = {}
        with self._lock:
            for key in keys:
                row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    found[key] = json.loads(row[0])
        return found

    def store_many(self, items: Mapping[str, Any]) -> None:
        if self.down.is_set():
            raise ConnectionError("the database is down")
        rows = [(key, json.dumps(value)) for key, value in items.items()]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rows,
            )

    def delete_many(self, keys: Sequence[str]) -> None:
        if self.down.is_set():
            raise ConnectionError("the database is down")
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in keys])

    def everything(self) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM kv").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def close(self) -> None:
        self._conn.close()


def value_of(i: int) -> dict[str, Any]:
    return {"i": i, "name": f"value-{i}", "tags": [i % 7, "x" * (i % 13)]}


# The child: "queue" submits COUNT writes from 4 threads (one key per call) with the
# origin down; "replay" only starts a queue (which adopts the journal) with the origin
# down. Either way it prints what it did, then waits to be killed.
CHILD = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from stratacache.behind import WriteBehind
from tests.integration.test_write_behind_crash import SQLiteOrigin, value_of
_, _, db, journal, policy, mode, count = sys.argv
count = int(count)
queue = WriteBehind(SQLiteOrigin(db, down=True), journal, fsync=policy, name="crash",
                    retry_base=0.05, retry_max=0.2)
if mode == "queue":
    def write(first):
        for i in range(first, count, 4):
            queue.submit({f"key-{i}": value_of(i)})
    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(mode, queue.stats.depth, queue.stats.replayed, flush=True)
sys.stdin.read()
"""


def run_child(tmp_path: Path, policy: str, mode: str) -> list[str]:
    """Run the child until it reports, SIGKILL it, and return its report."""
    stderr = open(tmp_path / f"child-{mode}.err", "w+")  # noqa: SIM115 (closed below)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ROOT),
            str(tmp_path / "origin.db"),
            str(tmp_path / "journal"),
            policy,
            mode,
            str(COUNT),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    try:
        assert lines and lines[0], "the child reported nothing: " + (
            stderr.seek(0) or stderr.read()
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no close(), no flush of anything
        child.wait(10)
        assert child.returncode == -signal.SIGKILL
        stderr.close()
    return lines[0].split()


def expected() -> dict[str, Any]:
    return {f"key-{i}": value_of(i) for i in range(COUNT)}


def replay_everything(tmp_path: Path) -> WriteBehind:
    origin = SQLiteOrigin(tmp_path / "origin.db")
    assert origin.everything() == {}, "the origin was down the whole time"
    queue = WriteBehind(origin, tmp_path / "journal", name="crash", flush_interval=0.01)
    assert queue.stats.replayed == COUNT
    assert queue.flush(30)
    stored = origin.everything()
    assert len(stored) == COUNT, f"{COUNT - len(stored)} writes lost"
    assert stored == expected()
    queue.close()
    origin.close()
    assert list((tmp_path / "journal").glob("*.journal")) == []
    return queue


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, policy: str) -> None:
    report = run_child(tmp_path, policy, "queue")
    assert report == ["queue", str(COUNT), "0"]
    replay_everything(tmp_path)


def test_kill_9_during_replay_loses_nothing(tmp_path: Path) -> None:
    assert run_child(tmp_path, "always", "queue") == ["queue", str(COUNT), "0"]
    first = sorted((tmp_path / "journal").glob("*.journal"))
    # A second process adopts the journal (copies what it owes, deletes the old files)
    # and is killed before its origin comes back.
    assert run_child(tmp_path, "never", "replay") == ["replay", str(COUNT), str(COUNT)]
    second = sorted((tmp_path / "journal").glob("*.journal"))
    assert second and not set(first) & set(second)
    replay_everything(tmp_path)


def test_origin_outage_while_writes_continue(tmp_path: Path) -> None:
    origin = SQLiteOrigin(tmp_path / "origin.db")
    limit = 2000
    queue = WriteBehind(
        origin,
        tmp_path / "journal",
        max_pending=limit,
        batch_size=200,
        flush_interval=0.01,
        retry_base=0.02,
        retry_max=0.2,
    )
    accepted: dict[str, Any] = {}
    refusals = 0
    deepest = 0
    stop = threading.Event()
    recovered = threading.Event()
    accepted_after_recovery = 0

    def write() -> None:
        nonlocal refusals, accepted_after_recovery
        i = 0
        while not stop.is_set():
            batch = {f"k{i + j}": value_of(i + j) for j in range(10)}
            if accepted and i % 50 == 0:  # and rewrite an accepted key now and then
                old = next(reversed(accepted))
                batch[old] = {"rewritten": i}
            try:
                queue.submit(batch)
            except WriteBehindFullError:
                refusals += 1
                time.sleep(0.002)
            else:
                accepted.update(batch)
                if recovered.is_set():
                    accepted_after_recovery += 1
            i += 10

    def sample() -> None:
        nonlocal deepest
        while not stop.is_set():
            deepest = max(deepest, queue.stats.depth)
            time.sleep(0.002)

    threads = [threading.Thread(target=write), threading.Thread(target=sample)]
    queue.submit({"before": 1})
    assert queue.flush(5)
    origin.down.set()
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    assert refusals > 0, "the queue filled up while the origin was down"
    assert queue.stats.depth <= limit
    assert origin.everything() == {"before": 1}
    origin.down.clear()
    recovered.set()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()

    assert deepest <= limit
    assert accepted_after_recovery > 0, "it drained and took writes again"
    assert queue.flush(20)
    stored = origin.everything()
    stored.pop("before")
    assert stored == accepted, "every accepted write, and nothing refused, is in the origin"
    assert queue.stats.retries > 0 and queue.stats.failures == 0
    queue.close()
    origin.close()

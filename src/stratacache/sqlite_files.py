"""Opening a SQLite file that several processes share: the SQLite level
(:mod:`stratacache.tiers.sqlite`) and the SQLite bus (:mod:`stratacache.coherence`).

Switching a file to WAL takes an exclusive lock, and SQLite reports "database is locked"
at once, without its busy handler, when another process holds the file at that moment
(typically several processes starting together). So the setup is retried until
``busy_timeout``, as every later statement waits that long.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["is_busy", "open_wal"]


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock this statement needed."""
    text = str(exc)
    return "locked" in text or "busy" in text


def open_wal(
    path: Path,
    busy_timeout: float,
    setup: Callable[[sqlite3.Connection], object],
) -> sqlite3.Connection:
    """An autocommit connection to ``path`` (its directory made) in WAL mode, usable from
    any thread, after ``setup(conn)`` (creating tables) succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,  # autocommit; explicit BEGIN where needed
        check_same_thread=False,
    )
    deadline = time.monotonic() + busy_timeout
    pause = 0.002
    try:
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                setup(conn)
                return conn
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)  # a real wait for another process, not simulated time
            pause = min(pause * 2, 0.05)
    except BaseException:
        conn.close()  # whatever went wrong (not a database...), do not leak the handle
        raise

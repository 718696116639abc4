"""The invalidation bus over a SQLite file: host-local, no server.

Every payload is a row of ``stratacache_bus`` (the file may be the one a SQLite L2 tier
uses; the table is its own). Publishing is one autocommit INSERT on the publisher's own
connection: SQLite's write lock is held for that statement only. Receiving polls
``PRAGMA data_version`` every ``poll_interval`` on the receiver's own connection: it is
read from the shared WAL index, without touching the table, and changes only when another
connection committed, so an idle receiver costs little (measured by
``benchmarks/bus_latency.py``). Only when it changed does the receiver read the rows past
the last id it saw. A receiver starts at the newest row: there is no history to replay.
On Linux a publisher also rings every receiver of the channel after its INSERT (see
:mod:`.doorbell`), and receivers block until rung, reading the file every 0.1 s as a
fallback: an idle or busy process then pays no polling wake-ups, and a message arrives
as soon as the receiver's thread runs.

Rows older than ``keep_seconds`` are trimmed by publishers (every 1,000 inserts or 10 s).
A receiver that finds rows it had not read trimmed (the next id is not the one after the
last it saw), or that was held up longer than ``keep_seconds / 2`` between polls, calls
``reset("fell behind")``. Ids come from AUTOINCREMENT: SQLite serializes writers, so rows
become visible in id order and a hole in the ids means deleted rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..errors import ConfigurationError
from ..logs import Throttle
from ..sqlite_files import is_busy, open_wal
from . import doorbell
from .doorbell import DOORBELL_SCHEMA, Bell, Ringer
from .options import check_transport

__all__ = ["SQLiteTransport"]

logger = logging.getLogger("stratacache.coherence")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS stratacache_bus (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    at REAL NOT NULL,
    payload BLOB NOT NULL
);
"""
#: Delete every row before the first one young enough to keep (a prefix of the ids, so
#: receivers can tell a trimmed row from one never written).
_TRIM: Final = """
DELETE FROM stratacache_bus WHERE id < coalesce(
    (SELECT id FROM stratacache_bus WHERE at >= ? ORDER BY id LIMIT 1),
    (SELECT max(id) + 1 FROM stratacache_bus)
)
"""
#: Every row past the last one seen; other channels' rows come without their payload, so
#: that the last id seen covers them too.
_READ: Final = (
    "SELECT id, CASE WHEN channel = ? THEN payload END FROM stratacache_bus "
    "WHERE id > ? ORDER BY id LIMIT 1000"
)
_TRIM_EVERY_INSERTS: Final = 1000
_TRIM_EVERY_SECONDS: Final = 10.0
_BACKOFF: Final = (0.05, 1.0)
#: with a doorbell, how often the receiver reads the file anyway (a ring lost to a full
#: socket buffer, a publisher that could not ring): 10 wake-ups a second
FALLBACK_POLL: Final = 0.1


def _open(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection in WAL mode with the tables made (see :mod:`stratacache.sqlite_files`)."""
    return open_wal(path, busy_timeout, lambda conn: conn.executescript(_SCHEMA + DOORBELL_SCHEMA))


class SQLiteTransport:
    """Bus payloads as rows of a SQLite file shared by the processes of one host."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        channel: str,
        *,
        poll_interval: float = 0.001,
        keep_seconds: float = 60.0,
        busy_timeout: float = 5.0,
    ) -> None:
        check_transport(
            channel,
            poll_interval=poll_interval,
            keep_seconds=keep_seconds,
            busy_timeout=busy_timeout,
        )
        if poll_interval > 0.25:
            raise ConfigurationError(f"poll_interval must be at most 0.25 s, got {poll_interval}")
        self.path = Path(path)
        self.channel = channel
        self.poll_interval = float(poll_interval)
        self.keep_seconds = float(keep_seconds)
        self.busy_timeout = float(busy_timeout)
        #: set while the receiver is reading the table (tests and benchmarks wait for it)
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._inserts = 0
        self._trimmed_at = time.monotonic()
        self._closed = False
        self._warnings = Throttle(logger)
        # Woken by publishers where the platform allows (see .doorbell), the receiver
        # then only polls as a fallback, every FALLBACK_POLL seconds.
        self.doorbell = doorbell.available()
        self._ringer: Ringer | None = None
        self._bell: Bell | None = None

    def __repr__(self) -> str:
        return f"<SQLiteTransport {str(self.path)!r} channel={self.channel!r}>"

    # ------------------------------------------------------------------ publishing

    def publish(self, payload: bytes) -> None:
        with self._lock:
            if self._closed:
                raise OSError(f"{self!r} is closed")
            try:
                conn = self._connection()
                now = time.time()
                conn.execute(
                    "INSERT INTO stratacache_bus (channel, at, payload) VALUES (?, ?, ?)",
                    (self.channel, now, payload),
                )
                self._inserts += 1
                if self.doorbell:
                    if self._ringer is None:
                        self._ringer = Ringer(self.channel)
                    bell = self._bell
                    self._ringer.ring(conn, skip=bell.name if bell is not None else None)
                mono = time.monotonic()
                if (
                    self._inserts >= _TRIM_EVERY_INSERTS
                    or mono - self._trimmed_at >= _TRIM_EVERY_SECONDS
                ):
                    self._inserts = 0
                    self._trimmed_at = mono
                    self._trim(conn, now)
            except sqlite3.Error as exc:
                if self._conn is not None and not is_busy(exc):
                    self._conn.close()
                    self._conn = None
                raise OSError(f"bus publish to {self.path} failed: {exc}") from exc

    def trim(self) -> None:
        """Delete the rows older than ``keep_seconds`` now (publish does it every 1,000
        inserts or 10 s)."""
        with self._lock:
            if self._closed:
                return
            self._trimmed_at = time.monotonic()
            self._trim(self._connection(), time.time())

    def _connection(self) -> sqlite3.Connection:
        """The publisher's connection (under the lock), opened again after a fork."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = _open(self.path, self.busy_timeout)
            self._pid = os.getpid()
        return self._conn

    def _trim(self, conn: sqlite3.Connection, now: float) -> None:
        try:
            conn.execute(_TRIM, (now - self.keep_seconds,))
        except sqlite3.Error as exc:  # the insert went through; trimming can wait
            self._warnings.warning("trim", "bus: trimming %s failed: %s", self.path, exc)

    # ------------------------------------------------------------------ receiving

    def run(
        self,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        pause = _BACKOFF[0]
        failed = False
        while not stop.is_set():
            conn: sqlite3.Connection | None = None
            try:
                conn = _open(self.path, self.busy_timeout)
                if failed:
                    reset("reopened the bus file")
                failed = False
                pause = _BACKOFF[0]
                self._poll(conn, deliver, reset, stop)
            except sqlite3.Error as exc:
                failed = True
                self._warnings.warning(
                    "receive", "bus: reading %s failed (retrying): %s", self.path, exc
                )
            finally:
                self.ready.clear()
                if conn is not None:
                    conn.close()
            if stop.wait(pause):
                return
            pause = min(pause * 2, _BACKOFF[1])

    def _poll(
        self,
        conn: sqlite3.Connection,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        # The last id handed out (rows may have been trimmed since): nothing older is news.
        row = conn.execute(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'stratacache_bus'),"
            " (SELECT max(id) FROM stratacache_bus), 0)"
        ).fetchone()
        last_id = int(row[0])
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        bell = Bell(conn, self.channel) if self.doorbell else None
        self._bell = bell
        try:
            self._read_loop(conn, deliver, reset, stop, bell, last_id, version)
        finally:
            self._bell = None
            if bell is not None:
                bell.close(conn)

    def _read_loop(
        self,
        conn: sqlite3.Connection,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
        bell: Bell | None,
        last_id: int,
        version: int,
    ) -> None:
        self.ready.set()
        polled = time.monotonic()
        behind_after = self.keep_seconds / 2
        execute = conn.execute
        interval = self.poll_interval
        while not stop.is_set():
            if bell is not None:
                bell.wait(FALLBACK_POLL)
            elif stop.wait(interval):
                return
            if stop.is_set():
                return
            now = time.monotonic()
            if now - polled > behind_after:
                reset(f"fell behind: not polled for {now - polled:.1f} s")
            polled = now
            current = execute("PRAGMA data_version").fetchone()[0]
            if current == version:
                continue
            version = current
            while True:
                rows = execute(_READ, (self.channel, last_id)).fetchall()
                if not rows:
                    break
                if rows[0][0] != last_id + 1:
                    reset("fell behind: rows were trimmed before this process read them")
                for row_id, payload in rows:
                    last_id = row_id
                    if payload is not None:
                        deliver(bytes(payload))
                if len(rows) < 1000:
                    break

    def after_fork(self) -> None:
        """In a forked child: the parent's lock may be held by a thread that is gone,
        and its sockets and connection are the parent's."""
        self._lock = threading.Lock()
        self._conn = None  # reopened on first use (a connection must not cross a fork)
        self._ringer = None
        self._bell = None
        self.ready = threading.Event()

    def wake(self) -> None:
        """Make the receiver look at its stop event now (a closing bus)."""
        bell = self._bell
        if bell is not None:
            bell.ring_self()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._ringer is not None:
                self._ringer.close()
                self._ringer = None

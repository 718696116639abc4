"""The embedded shared tier: a SQLite file that the processes of one host share.

The file runs in WAL mode, so readers never block the writer and processes can share it
safely; ``busy_timeout`` makes a writer wait its turn instead of failing. Rows hold the
envelope from :mod:`stratacache.serde` (versioned, typed, optionally signed) plus the
expiry and the write time in plain columns, so expired rows can be purged and the oldest
trimmed with indexed queries that never decode a payload.

The size bound is approximate by design: counting rows on every write would cost a scan,
so the tier trims once every ``max(100, max_entries // 100)`` of its writes, removing
expired rows and then the oldest-written ones (FIFO) until the namespace is back under
its bound. FIFO keeps reads read-only (an LRU would turn every hit into a write shared by
every process); recency is the job of the L1 above.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..entry import NEVER, Entry
from ..errors import ConfigurationError, TierUnavailableError
from ..keys import validate_namespace
from ..serde import DEFAULT_MAX_VALUE_SIZE, Codec, PayloadError, Serializer, Signer
from .base import Prepared, Tier, logger

__all__ = ["SQLiteTier"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stratacache_entries (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    expires_at REAL,
    written_at REAL NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stratacache_entries_expiry
    ON stratacache_entries (namespace, expires_at);
CREATE INDEX IF NOT EXISTS stratacache_entries_age
    ON stratacache_entries (namespace, written_at);
"""

_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


class SQLiteTier(Tier):
    """L2 on the host: a SQLite file in WAL mode.

    ``path`` is a file path (``":memory:"`` is refused: it would not be shared).
    ``namespace`` separates caches sharing one file; ``clear()`` removes only its rows.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str = "default",
        max_entries: int = 1_000_000,
        ttl: float | None = None,
        serializer: str | Serializer = "msgpack",
        value_type: Any = Any,
        signing_key: Signer | bytes | str | Mapping[int, bytes] | None = None,
        compress_threshold: int | None = None,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        busy_timeout: float = 5.0,
        name: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=name, ttl=ttl)
        if str(path) in ("", ":memory:"):
            raise ConfigurationError(
                "SQLiteTier needs a file path that every process can open, e.g. "
                "'/var/tmp/app-cache.db'; ':memory:' would not be shared"
            )
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be a positive int, got {max_entries!r}")
        self.path = Path(path)
        self.namespace = validate_namespace(namespace)
        self.max_entries = max_entries
        self.codec = Codec(
            serializer,
            value_type=value_type,
            signer=signing_key,
            compress_threshold=compress_threshold,
            max_value_size=max_value_size,
        )
        self.max_value_size = max_value_size
        self._busy_timeout = busy_timeout
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._writes_since_trim = 0
        self._trim_every = max(100, max_entries // 100)

    # ------------------------------------------------------------------ connection

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened on first use and reopened in a forked child (a SQLite
        connection must never cross a fork)."""
        if self.closed:
            from ..errors import CacheClosedError

            raise CacheClosedError(f"tier {self.name!r} is closed")
        if self._conn is None or self._pid != os.getpid():
            try:
                self._conn = self._open()
            except sqlite3.Error as exc:
                raise TierUnavailableError(self.name, f"cannot open {self.path}: {exc}") from exc
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        """Open the file, switch it to WAL and make sure the table exists.

        Switching the journal mode takes an exclusive lock and SQLite reports "database is
        locked" at once, without its busy handler, when another process holds the file at
        that moment (typically several processes starting together). So the setup is
        retried until ``busy_timeout``, like every later statement waits that long.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit; explicit BEGIN where needed
            check_same_thread=False,
        )
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
                conn.executescript(_SCHEMA)
                return conn
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    conn.close()
                    raise
            time.sleep(pause)  # a real wait for another process, not simulated time
            pause = min(pause * 2, 0.05)

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                # "database is locked" past busy_timeout, disk I/O errors: this level is
                # unusable right now, not the caller's fault.
                raise TierUnavailableError(self.name, str(exc)) from exc

    # ------------------------------------------------------------------ tier protocol

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}

        def query(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            rows: list[tuple[str, bytes]] = []
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                rows.extend(
                    conn.execute(
                        "SELECT key, value FROM stratacache_entries "
                        f"WHERE namespace = ? AND key IN ({marks})",
                        (self.namespace, *chunk),
                    )
                )
            return rows

        rows = self._run(query)
        now = self._wall_clock()
        found: dict[str, Entry] = {}
        bad: list[str] = []
        for key, blob in rows:
            try:
                entry = self.codec.decode(key, blob)
            except PayloadError as exc:
                self.stats.corrupt += 1
                logger.warning(
                    "tier %s: ignoring the stored value of key %r: %s", self.name, key, exc.reason
                )
                bad.append(key)
                continue
            if entry.expires_at > now:
                found[key] = entry
        if bad:
            self.delete_many(bad)
        return found

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        prepared = Prepared()
        codec = self.codec
        for key, entry in entries.items():
            payload = codec.payload(entry)
            if len(payload) > self.max_value_size:
                prepared.rejected[key] = len(payload)
                continue
            prepared.items[key] = (codec.encode(key, entry, payload), entry.expires_at)
        return prepared

    def write(self, prepared: Prepared) -> None:
        if not prepared.items and not prepared.rejected:
            return
        now = self._wall_clock()
        rows = [
            (self.namespace, key, blob, None if expires == NEVER else expires, now)
            for key, (blob, expires) in prepared.items.items()
        ]
        rejected = list(prepared.rejected)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO stratacache_entries "
                    "(namespace, key, value, expires_at, written_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                    "expires_at = excluded.expires_at, written_at = excluded.written_at",
                    rows,
                )
                for chunk in _chunks(rejected):
                    self._delete_chunk(conn, chunk)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._run(upsert)
        self.stats.writes += len(rows)
        self._writes_since_trim += len(rows)
        if self._writes_since_trim >= self._trim_every:
            self._writes_since_trim = 0
            self.trim()

    def _delete_chunk(self, conn: sqlite3.Connection, chunk: Sequence[str]) -> None:
        marks = ",".join("?" * len(chunk))
        conn.execute(
            f"DELETE FROM stratacache_entries WHERE namespace = ? AND key IN ({marks})",
            (self.namespace, *chunk),
        )

    def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(keys):
                self._delete_chunk(conn, chunk)

        self._run(delete)

    def clear(self) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM stratacache_entries WHERE namespace = ?", (self.namespace,)
            )
        )

    def trim(self) -> int:
        """Drop expired rows, then the oldest-written beyond ``max_entries``. Returns the
        number of rows removed."""
        now = self._wall_clock()

        def run(conn: sqlite3.Connection) -> int:
            removed = conn.execute(
                "DELETE FROM stratacache_entries WHERE namespace = ? AND expires_at <= ?",
                (self.namespace, now),
            ).rowcount
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM stratacache_entries WHERE namespace = ?",
                (self.namespace,),
            ).fetchone()
            excess = count - self.max_entries
            if excess > 0:
                removed += conn.execute(
                    "DELETE FROM stratacache_entries WHERE namespace = ? AND key IN ("
                    "SELECT key FROM stratacache_entries WHERE namespace = ? "
                    "ORDER BY written_at LIMIT ?)",
                    (self.namespace, self.namespace, excess),
                ).rowcount
                self.stats.evictions += excess
            return int(removed)

        return int(self._run(run))

    def __len__(self) -> int:
        (count,) = self._run(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM stratacache_entries WHERE namespace = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (self.namespace, self._wall_clock()),
            ).fetchone()
        )
        return int(count)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
        super().close()

    def __repr__(self) -> str:
        return (
            f"<SQLiteTier {self.name!r} path={str(self.path)!r} namespace={self.namespace!r} "
            f"max_entries={self.max_entries} ttl={self.ttl}>"
        )

"""The embedded shared tier: a SQLite file that the processes of one host share.

The file runs in WAL mode, so readers never block the writer and processes can share it
safely; ``busy_timeout`` makes a writer wait its turn instead of failing. Reads go through
one read-only connection per thread and never take the tier's lock, so a writer that
waits for another process's write lock (up to ``busy_timeout``) holds up only the writes
of this process, never its reads.

A write that waited all of ``busy_timeout`` (another process holds the lock: a long
transaction, a stopped process) fails with the level's transient error and opens the
tier's *write* circuit breaker at once, as a network timeout opens a remote tier's (see
:mod:`.breaker`). The writes that follow, and those that queued behind it for the
writer's lock, are skipped without waiting (``stats.skipped``), and the hierarchy owes the
level a delete of what they missed. After ``breaker_reset`` one write probes the file;
its success closes the breaker. Reads never pass this breaker. So a stuck writer elsewhere
costs this process one write's ``busy_timeout`` per ``breaker_reset`` at most. Only such
waits feed the breaker: a failure that comes back at once (a broken file, a full disk)
costs nothing to meet again, keeps its own error, and lets the hierarchy repair the level
on its first call after the file is fine again.

Rows hold the
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

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..config import SQLiteOptions
from ..entry import NEVER, Entry
from ..errors import CacheClosedError, CacheError, ConfigurationError, TierUnavailableError
from ..sqlite_files import open_wal
from .base import FILL, Prepared, Steps
from .breaker import CLOSED, CircuitBreaker
from .shared import FLOOR_SECONDS, LEASE, LOCK, VERSION, Claim, SharedTier

__all__ = ["SQLiteTier"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stratacache_entries (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    expires_at REAL,
    written_at REAL NOT NULL,
    version    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stratacache_entries_expiry
    ON stratacache_entries (namespace, expires_at);
CREATE INDEX IF NOT EXISTS stratacache_entries_age
    ON stratacache_entries (namespace, written_at);
CREATE TABLE IF NOT EXISTS stratacache_claims (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    kind       TEXT NOT NULL,
    token      TEXT NOT NULL,
    until      REAL NOT NULL,
    PRIMARY KEY (namespace, key, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stratacache_counters (
    namespace  TEXT PRIMARY KEY,
    value      INTEGER NOT NULL
);
"""

#: the claims table's kind for a version floor (see _raise_floor)
FLOOR = "floor"

#: Files made before entries carried versions gain the column (0: older than any write).
_ADD_VERSION = "ALTER TABLE stratacache_entries ADD COLUMN version INTEGER NOT NULL DEFAULT 0"

T = TypeVar("T")

#: A command: something to do with the connection.
Command = Callable[[sqlite3.Connection], Any]


class _Read:
    """A command that only reads: run on the calling thread's read connection, without
    the tier's lock (in WAL a reader sees the last commit and waits for no writer)."""

    __slots__ = ("query",)

    def __init__(self, query: Command) -> None:
        self.query = query


_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit


def _make_tables(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(stratacache_entries)")}
    if "version" not in columns:
        conn.execute(_ADD_VERSION)


def _one(command: Command) -> Steps[Any]:
    return (yield command)


def _chunks(keys: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def _lock_timeout(exc: BaseException) -> bool:
    """Whether a failure is SQLite's busy wait running out: another connection held the
    lock for all of ``busy_timeout`` (SQLITE_BUSY, or SQLITE_LOCKED), seen directly or as
    the cause of the tier's error (a connection that could not be set up in time)."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            break
        if isinstance(seen, sqlite3.OperationalError):
            code = getattr(seen, "sqlite_errorcode", None)
            if isinstance(code, int):
                return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            text = str(seen)
            return "locked" in text or "busy" in text
        seen = seen.__cause__
    return False


def _relay(steps: Steps[T], admit: Callable[[Command], Command]) -> Steps[T]:
    """``yield from steps``, each command passed through ``admit`` on its way out (which
    may replace it, or raise instead of letting it go)."""
    try:
        command = next(steps)
        while True:
            try:
                result = yield admit(command)
            except Exception as exc:  # the command failed: the operation decides
                command = steps.throw(exc)
            else:
                command = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        steps.close()


class _WriteTurn:
    """One write's passage through the write breaker (see :meth:`SQLiteTier._writing`).

    The breaker is asked twice: before the write queues for the writer's lock (an open
    breaker refuses it at once) and, for a write let through while the breaker was
    closed, again once it holds the lock: the write it queued behind may have just
    opened it, and waiting another ``busy_timeout`` for the same stuck process is what
    the breaker is there to spare. For the same reason a lock timeout is reported to the
    breaker while the lock is still held: once the lock is let go, the next write in the
    queue must find the breaker open already."""

    __slots__ = ("breaker", "failed", "refused", "reported", "started")

    def __init__(self, breaker: CircuitBreaker, failed: Callable[[BaseException], None]) -> None:
        self.breaker = breaker
        self.failed = failed
        #: the first command was let through: the outcome says something about the file
        self.started = False
        #: the breaker refused the write (a skip, not a failure of the file)
        self.refused = False
        #: its lock timeout was reported to the breaker already
        self.reported = False

    def admit(self, command: Command) -> Command:
        breaker = self.breaker
        recheck = False
        if not self.started:
            recheck = breaker.state is CLOSED  # else, when let through: the probe
            self._check()
            self.started = True

        def holding_the_lock(conn: sqlite3.Connection) -> Any:
            if recheck and breaker.state is not CLOSED:
                self._check()  # refused at once, or this write becomes the probe
            try:
                return command(conn)
            except sqlite3.Error as exc:
                if _lock_timeout(exc):
                    self.reported = True
                    self.failed(exc)
                raise

        return holding_the_lock

    def _check(self) -> None:
        self.refused = True
        self.breaker.check()
        self.refused = False


def _column(key: str) -> str | bytes:
    """What the ``key`` column holds for ``key``: the key itself, as TEXT; or, for a key
    that UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``, which SQLite cannot
    take as TEXT), its ``surrogatepass`` bytes as a BLOB. SQLite never finds a BLOB equal
    to a TEXT, so no other key can share that row, and nothing needs hashing."""
    if key.isascii():
        return key
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass")
    return key


class SQLiteTier(SharedTier):
    """L2 on the host: a SQLite file in WAL mode.

    ``path`` is a file path (``":memory:"`` is refused: it would not be shared).
    ``namespace`` separates caches sharing one file (and is bound into signatures, like
    the network tiers'); ``clear()`` removes only its rows. Envelopes, signing, and what
    happens to rows that do not decode: :mod:`stratacache.tiers.shared`. Options:
    :class:`~stratacache.config.SQLiteOptions`.

    Commands are functions of the connection. Writes run on one connection under the
    tier's lock; reads on a read-only connection of the calling thread, lock-free. The
    async face runs both in a worker thread (SQLite has no asyncio interface: the thread
    hop is the honest way to keep a file's busy wait off the event loop).

    Every operation that changes the file (``write``, ``delete_many``, ``clear``,
    ``trim``) passes :attr:`write_breaker` (None when ``breaker_failures=0``); reads pass
    no breaker (:attr:`breaker` stays None), so they go on while writes are skipped.
    """

    kind = "sqlite"
    Options = SQLiteOptions
    transport_errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        if str(path) in ("", ":memory:"):
            raise ConfigurationError(
                "SQLiteTier needs a file path that every process can open, e.g. "
                "'/var/tmp/app-cache.db'; ':memory:' would not be shared"
            )
        opts = SQLiteOptions.build(options)
        super().__init__(opts, wall_clock=wall_clock)
        self.path = Path(path)
        self.max_entries = opts.max_entries
        self._busy_timeout = opts.busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        # One read connection per thread: (pid, connection), and every one opened, so
        # close() can close them all.
        self._readers = threading.local()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writes_since_trim = 0
        self._trim_every = max(100, opts.max_entries // 100)
        #: the circuit breaker of the operations that change the file (see the module
        #: docstring); None when ``breaker_failures=0``
        self.write_breaker: CircuitBreaker | None = None
        if opts.breaker_failures:
            self.write_breaker = CircuitBreaker(
                self.name,
                self.stats,
                failures=opts.breaker_failures,
                reset_after=opts.breaker_reset,
                clock=clock,
                on_change=self._breaker_moved,
            )

    def rename(self, name: str) -> None:
        super().rename(name)
        if self.write_breaker is not None:
            self.write_breaker.tier = name

    def retry_in(self) -> float:
        return 0.0 if self.write_breaker is None else self.write_breaker.retry_in()

    @classmethod
    def url_arguments(cls, url: str) -> tuple[Any, ...]:
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
        location = url.split("://", 1)[1]
        if not location.startswith("/"):
            raise ConfigurationError(
                "a SQLite tier URL is sqlite:///relative/path.db or "
                f"sqlite:////absolute/path.db; got {url}"
            )
        if not location[1:]:
            raise ConfigurationError(f"{url} names no file")
        return (location[1:],)

    # ------------------------------------------------------------------ connection

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened on first use and reopened in a forked child (a SQLite
        connection must never cross a fork)."""
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")
        if self._conn is None or self._pid != os.getpid():
            try:
                self._conn = self._open()
            except (sqlite3.Error, OSError) as exc:
                # Not a database, a directory that cannot be made, a file that cannot be
                # opened: this level is unusable (and is tried again on the next call).
                raise TierUnavailableError(
                    self.name, f"cannot open {self.path}: {type(exc).__name__}: {exc}"
                ) from exc
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        """Open the file in WAL mode and make sure the tables exist (retried while other
        processes hold the file: see :mod:`stratacache.sqlite_files`)."""
        return open_wal(self.path, self._busy_timeout, _make_tables)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened on first use (after the writer's, which
        makes the file, the WAL mode and the table) and reopened after a fork."""
        held = getattr(self._readers, "held", None)
        if held is not None and held[0] == os.getpid() and not self.closed:
            return held[1]  # type: ignore[no-any-return]
        if self._conn is None or self._pid != os.getpid() or self.closed:
            # The writer's connection makes the file, the WAL mode and the table (or
            # raises). Only then: the writer's lock may be held for busy_timeout by a
            # write waiting on another process, and a reader must not wait for it.
            with self._lock:
                self._connection()
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise TierUnavailableError(
                self.name, f"cannot open {self.path} to read: {type(exc).__name__}: {exc}"
            ) from exc
        with self._readers_lock:
            self._all_readers.append(conn)
        self._readers.held = (os.getpid(), conn)
        return conn

    # ------------------------------------------------------------------ the transport

    def perform(self, command: Command | _Read) -> Any:
        if isinstance(command, _Read):
            return command.query(self._reader())
        with self._lock:
            return command(self._connection())

    async def aperform(self, command: Command) -> Any:
        return await asyncio.to_thread(self.perform, command)

    def unavailable(self, exc: BaseException) -> CacheError:
        # "database is locked" past busy_timeout, disk I/O errors, a file that is corrupt
        # or not a database: this level is unusable right now, and none of it is the
        # caller's fault. (The statements are ours and fixed; a sqlite3.ProgrammingError
        # would be a bug here, and skipping the level while logging it still beats
        # failing the caller's read.)
        return TierUnavailableError(self.name, f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ the write breaker

    def _writing(self, steps: Steps[T]) -> Steps[T]:
        """``steps``, an operation that changes the file, behind the write breaker. In the
        steps themselves, so the sync and the async face share it: each runs them with
        its own driver (see :class:`~stratacache.tiers.base.CommandTier`)."""
        breaker = self.write_breaker
        if breaker is None:
            return (yield from steps)
        turn = _WriteTurn(breaker, self._write_failed)
        try:
            result = yield from _relay(steps, turn.admit)
        except BaseException as exc:
            if turn.refused or not turn.started or turn.reported:
                raise  # skipped (counted), failed before any I/O, or reported already
            if _lock_timeout(exc):  # the connection's setup waited out busy_timeout
                self._write_failed(exc)
            else:
                # Failures that come back at once (a broken file, a full disk; cancelled,
                # closed) cost no wait: the breaker is not there for them, and every call
                # keeps reaching the file, so the hierarchy repairs it as soon as it is
                # back. A probe that ended so frees the turn for the next write.
                breaker.abandoned()
            raise
        if turn.started:
            breaker.succeeded()
        return result

    def _write_failed(self, exc: BaseException) -> None:
        """A write waited out ``busy_timeout``. Like a network timeout, this one failure
        opens the breaker: waiting for the same lock again would cost another one."""
        assert self.write_breaker is not None
        self.write_breaker.failed(
            TimeoutError(
                f"the write lock stayed taken by another connection for busy_timeout "
                f"({self._busy_timeout:g}s): {exc}"
            )
        )

    def _breaker_moved(self, before: str, after: str, why: str) -> None:
        self._log_breaker(
            "write circuit breaker", before, after, why, " (writes only: reads go on)"
        )

    # ------------------------------------------------------------------ operations

    def read_steps(self, keys: Sequence[str], stale: bool = False) -> Steps[dict[str, Entry]]:
        columns = [_column(key) for key in keys]
        namespace = self.namespace

        def query(conn: sqlite3.Connection) -> dict[str | bytes, bytes]:
            stored: dict[str | bytes, bytes] = {}
            for chunk in _chunks(columns):
                marks = ",".join("?" * len(chunk))
                stored.update(
                    conn.execute(
                        "SELECT key, value FROM stratacache_entries "
                        f"WHERE namespace = ? AND key IN ({marks})",
                        (namespace, *chunk),
                    )
                )
            return stored

        stored = yield _Read(query)
        return self._found(keys, [stored.get(column) for column in columns], stale)

    def write_steps(self, prepared: Prepared) -> Steps[list[str]]:
        return self._writing(self._upsert_steps(prepared))

    def _upsert_steps(self, prepared: Prepared) -> Steps[list[str]]:
        """One transaction: each value is stored unless the file holds a newer version
        of it, and a fill also needs its lease (when it has one) and no write's lock."""
        if not prepared.items and not prepared.rejected:
            return []
        now = self._wall_clock()
        versions = prepared.versions
        rows = [
            (
                key,
                (
                    self.namespace,
                    _column(key),
                    blob,
                    None if expires == NEVER else expires,
                    now,
                    versions.get(key, 0),
                ),
            )
            for key, (blob, expires) in prepared.items.items()
        ]
        rejected = [_column(key) for key in prepared.rejected]
        fill = prepared.mode == FILL
        token = prepared.token
        namespace = self.namespace

        def upsert(conn: sqlite3.Connection) -> list[str]:
            refused: list[str] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key, row in rows:
                    column = row[1]
                    if fill and not self._may_fill(conn, column, token, now):
                        refused.append(key)
                        continue
                    if (
                        not fill
                        and token is not None
                        and not self._locked_by(conn, column, token, now)
                    ):
                        # The writer's lock expired before its write got here (it
                        # stalled past lock_ttl): another writer may have gone ahead, and
                        # which reached the origin last is unknown. Drop the key, and
                        # keep older writes of it out for a while (see redis_scripts).
                        self._delete_chunk(conn, [column])
                        self._raise_floor(conn, column, now)
                        refused.append(key)
                        continue
                    if self._below_floor(conn, column, row[5], now):
                        refused.append(key)
                        continue
                    before = conn.total_changes
                    conn.execute(
                        "INSERT INTO stratacache_entries "
                        "(namespace, key, value, expires_at, written_at, version) "
                        "VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                        "expires_at = excluded.expires_at, written_at = excluded.written_at, "
                        "version = excluded.version "
                        "WHERE excluded.version >= stratacache_entries.version",
                        row,
                    )
                    if conn.total_changes == before:
                        refused.append(key)
                    # a fill under an older lease would be older than this write; a
                    # write settles its own lock
                    conn.execute(
                        "DELETE FROM stratacache_claims WHERE namespace = ? AND key = ? "
                        "AND (kind = ? OR (kind = ? AND token = ?))",
                        (namespace, column, LEASE, LOCK, token or ""),
                    )
                for chunk in _chunks(rejected):
                    self._delete_chunk(conn, chunk)
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (an I/O error, SQLITE_FULL): a
                # ROLLBACK then would fail and hide the error that matters.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return refused

        refused: list[str] = yield upsert
        self._writes_since_trim += len(rows)
        if self._writes_since_trim >= self._trim_every:
            self._writes_since_trim = 0
            yield from self._trim_steps()
        return refused

    def _filled(self, conn: sqlite3.Connection, column: str | bytes, now: float) -> bool:
        row = conn.execute(
            "SELECT 1 FROM stratacache_entries WHERE namespace = ? AND key = ? "
            "AND (expires_at IS NULL OR expires_at > ?)",
            (self.namespace, column, now),
        ).fetchone()
        return row is not None

    def _raise_floor(self, conn: sqlite3.Connection, column: str | bytes, now: float) -> None:
        conn.execute(
            "INSERT INTO stratacache_counters (namespace, value) VALUES (?, ?) "
            "ON CONFLICT (namespace) DO UPDATE SET value = value + 1",
            (self.namespace, _counter_seed() + 1),
        )
        (raised,) = conn.execute(
            "SELECT value FROM stratacache_counters WHERE namespace = ?", (self.namespace,)
        ).fetchone()
        conn.execute(
            "INSERT OR REPLACE INTO stratacache_claims (namespace, key, kind, token, until) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.namespace, column, FLOOR, str(raised), now + FLOOR_SECONDS),
        )

    def _below_floor(
        self, conn: sqlite3.Connection, column: str | bytes, version: int, now: float
    ) -> bool:
        row = conn.execute(
            "SELECT token FROM stratacache_claims WHERE namespace = ? AND key = ? "
            "AND kind = ? AND until > ?",
            (self.namespace, column, FLOOR, now),
        ).fetchone()
        return row is not None and int(row[0]) > version

    def _locked_by(
        self, conn: sqlite3.Connection, column: str | bytes, token: str, now: float
    ) -> bool:
        row = conn.execute(
            "SELECT 1 FROM stratacache_claims WHERE namespace = ? AND key = ? AND kind = ? "
            "AND token = ? AND until > ?",
            (self.namespace, column, LOCK, token, now),
        ).fetchone()
        return row is not None

    def _may_fill(
        self, conn: sqlite3.Connection, column: str | bytes, token: str | None, now: float
    ) -> bool:
        """A fill goes in only when no write holds the key and, under a lease, when
        that lease is still its own."""
        claims = dict(
            conn.execute(
                "SELECT kind, token FROM stratacache_claims "
                "WHERE namespace = ? AND key = ? AND until > ?",
                (self.namespace, column, now),
            ).fetchall()
        )
        if LOCK in claims:
            return False
        return token is None or claims.get(LEASE) == token

    def _delete_chunk(self, conn: sqlite3.Connection, chunk: Sequence[str | bytes]) -> None:
        # The lease goes with the value: a fill that was loading the old value is dropped.
        marks = ",".join("?" * len(chunk))
        conn.execute(
            f"DELETE FROM stratacache_entries WHERE namespace = ? AND key IN ({marks})",
            (self.namespace, *chunk),
        )
        conn.execute(
            f"DELETE FROM stratacache_claims WHERE namespace = ? AND kind = ? AND key IN ({marks})",
            (self.namespace, LEASE, *chunk),
        )

    def delete_steps(self, keys: Sequence[str]) -> Steps[None]:
        return self._writing(self._delete_steps(keys))

    def _delete_steps(self, keys: Sequence[str]) -> Steps[None]:
        if not keys:
            return
        columns = [_column(key) for key in keys]

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(columns):
                self._delete_chunk(conn, chunk)

        yield delete

    def clear_steps(self) -> Steps[None]:
        return self._writing(self._clear_steps())

    def _clear_steps(self) -> Steps[None]:
        def clear(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM stratacache_entries WHERE namespace = ?", (self.namespace,))
            conn.execute(
                "DELETE FROM stratacache_claims WHERE namespace = ? AND kind = ?",
                (self.namespace, LEASE),
            )

        yield clear

    # ------------------------------------------------------------------ coordination

    coordinates = True

    def claim_steps(
        self, keys: Sequence[str], token: str, kind: str, ttl: float, *, over: bool = False
    ) -> Steps[Claim]:
        columns = [_column(key) for key in keys]
        namespace = self.namespace

        def claim(conn: sqlite3.Connection) -> Claim:
            now = self._wall_clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                answer = Claim(list(keys) if kind == VERSION else [])
                if kind != VERSION:
                    conn.execute(
                        "DELETE FROM stratacache_claims WHERE namespace = ? AND until <= ?",
                        (namespace, now),
                    )
                    for key, column in zip(keys, columns, strict=True):
                        row = conn.execute(
                            "SELECT MAX(until) FROM stratacache_claims WHERE namespace = ? "
                            "AND key = ? AND (kind = ? OR kind = ?)",
                            (namespace, column, kind, LOCK),
                        ).fetchone()
                        if row[0] is not None:
                            answer.held[key] = max(0.0, row[0] - now)
                        elif kind == LEASE and not over and self._filled(conn, column, now):
                            answer.held[key] = 0.0  # filled since the caller missed it
                        elif kind == LEASE:
                            answer.granted.append(key)
                    if kind == LOCK:
                        answer.granted = [] if answer.held else list(keys)
                    conn.executemany(
                        "INSERT OR REPLACE INTO stratacache_claims "
                        "(namespace, key, kind, token, until) VALUES (?, ?, ?, ?, ?)",
                        [
                            (namespace, _column(key), kind, token, now + ttl)
                            for key in answer.granted
                        ],
                    )
                step = len(keys) if kind != LEASE else 0
                step = step if not (kind == LOCK and answer.held) else 0
                conn.execute(
                    "INSERT INTO stratacache_counters (namespace, value) VALUES (?, ?) "
                    "ON CONFLICT (namespace) DO UPDATE SET value = value + ?",
                    (namespace, _counter_seed() + step, step),
                )
                answer.version = conn.execute(
                    "SELECT value FROM stratacache_counters WHERE namespace = ?", (namespace,)
                ).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return answer

        answer: Claim = yield from self._writing(_one(claim))
        return answer

    def release_steps(self, keys: Sequence[str], token: str, kind: str) -> Steps[None]:
        rows = [(self.namespace, _column(key), kind, token) for key in keys]

        def release(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM stratacache_claims WHERE namespace = ? AND key = ? AND kind = ? "
                "AND token = ?",
                rows,
            )

        if rows:
            yield from self._writing(_one(release))

    def claimed_steps(self, keys: Sequence[str]) -> Steps[set[str]]:
        columns = {_column(key): key for key in keys}
        namespace = self.namespace

        def query(conn: sqlite3.Connection) -> set[str]:
            now = self._wall_clock()
            held: set[str] = set()
            for chunk in _chunks(list(columns)):
                marks = ",".join("?" * len(chunk))
                held.update(
                    columns[row[0]]
                    for row in conn.execute(
                        "SELECT key FROM stratacache_claims WHERE namespace = ? "
                        f"AND kind IN (?, ?) AND until > ? AND key IN ({marks})",
                        (namespace, LEASE, LOCK, now, *chunk),
                    )
                )
            return held

        held: set[str] = yield _Read(query)
        return held

    def trim(self) -> int:
        """Drop expired rows, then the oldest-written beyond ``max_entries``. Returns the
        number of rows removed."""
        return self.drive(self._writing(self._trim_steps()))

    def _trim_steps(self) -> Steps[int]:
        now = self._wall_clock() - self.stale_for  # expired rows stay for the fail-safe

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
                evicted = conn.execute(
                    "DELETE FROM stratacache_entries WHERE namespace = ? AND key IN ("
                    "SELECT key FROM stratacache_entries WHERE namespace = ? "
                    "ORDER BY written_at LIMIT ?)",
                    (self.namespace, self.namespace, excess),
                ).rowcount
                # What was removed, not what was asked for: the file is shared, and rows
                # can go (or stay) under this statement's feet.
                self.stats.evictions += evicted
                removed += evicted
            return int(removed)

        removed = yield run
        return int(removed)

    def __len__(self) -> int:
        # A read: on this thread's read connection, never behind a write that waits.
        (count,) = self.run_one(
            _Read(
                lambda conn: conn.execute(
                    "SELECT COUNT(*) FROM stratacache_entries WHERE namespace = ? "
                    "AND (expires_at IS NULL OR expires_at > ?)",
                    (self.namespace, self._wall_clock()),
                ).fetchone()
            )
        )
        return int(count)

    def close(self) -> None:
        with self._lock:
            mine = self._pid == os.getpid()
            if self._conn is not None and mine:
                self._conn.close()
            self._conn = None
            with self._readers_lock:
                if mine:
                    for reader in self._all_readers:
                        reader.close()
                self._all_readers.clear()
        super().close()

    def __repr__(self) -> str:
        return (
            f"<SQLiteTier {self.name!r} path={str(self.path)!r} namespace={self.namespace!r} "
            f"max_entries={self.max_entries} ttl={self.ttl}>"
        )


def _counter_seed() -> int:
    """Where a namespace's version counter starts: the clock in microseconds, so that a
    file made anew (deleted, or another path) still numbers its writes after those a
    process saw, a journal kept or a flush mark holds (see tiers.redis_scripts)."""
    return time.time_ns() // 1000

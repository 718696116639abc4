"""The write-behind journal: an append-only log of the writes the origin has not stored yet.

Why a journal
-------------
A write-behind queue acknowledges a write before the origin has it. Held only in memory,
every acknowledged write still queued dies with the process. So :class:`Journal` appends
each write to a file *before* the queue acknowledges it, and a later process replays
whatever the dead one left behind. The journal is the only durable copy of a queued write
until the origin stores it.

Layout
------
A journal is a directory (``default_journal_dir(name)``: ``$XDG_STATE_HOME/stratacache/
<name>``, else ``~/.local/state/stratacache/<name>``; mode 0700). Each :class:`Journal`
writes its own *segment* files, named ``<name>.<pid>-<random>.<number>.journal``, and holds
an exclusive ``flock`` on each of them for as long as they exist. Several processes (the
workers of one server) can therefore share a directory: each appends only to files it
holds, and only files nobody holds are ever replayed. ``flock`` locks belong to the open
file, not to the process, so two journals in one process exclude each other too, and the
kernel drops the locks of a process that dies, however it dies.

Every segment starts with 8 bytes, ``b"SCJ\\0"`` and a little-endian u32 format version
(1), followed by records::

    [u32 length][u32 crc32][payload: msgpack of [seq, op, key, value_bytes(, version)]]

``crc32`` covers the length field and the payload, so a damaged length cannot pass for a
valid one. ``op`` is 0 (set: ``value_bytes`` is the value as the queue's serializer wrote
it), 1 (delete: empty bytes) or 2 (mark, see below). ``version``, when present, is the
version the cache gave the write (see :mod:`stratacache.hierarchy.claims`), so that a
replayed write can still be ordered against other processes' writes of its key; records
without it (and those of earlier releases) replay as unversioned. ``seq`` numbers are a
hybrid logical clock: nanoseconds since the epoch, made strictly increasing within a
journal, and started past every seq found at replay. They order one process's writes
exactly, and the writes of different processes to the same key about as well as their
clocks agree.

Journals are POSIX-only (``flock``).

Done marks
----------
Records are never rewritten in place. When the origin has stored writes, the queue calls
:meth:`Journal.mark` with a *watermark*: the lowest seq still waiting (anything below it is
stored, or superseded by a later write of the same key, or dead-lettered). The mark is
appended as an op-2 record whose seq is the watermark, and every new segment starts with
the current one. A segment none of whose records reaches the watermark is deleted (its
lock goes with it). A mark is not fsynced on its own: losing one only means replaying
writes that were already stored (see below), never losing any. While one write waits long
(its origin down, its key refused) the watermark stays behind it, so the queue copies the
writes still waiting in old segments forward (new seqs, same content) once the journal is
much larger than what waits, and the old segments go.

Replay
------
:meth:`Journal.recover` (run once, when a queue starts) takes every segment of the same
name that no live journal holds: leftovers of a process that crashed, or of one that
closed while its origin was down. It reads each file's valid records in order and stops at
the first record that is torn (the file ends inside it) or corrupt (its CRC does not
match, or the payload does not decode): a crash can tear the last write, and after a
corrupt record the framing of the rest cannot be trusted. The file is truncated there and
a warning says how many bytes were dropped. Then writes are coalesced per key (the highest
version wins when both writes have one, else the highest seq, across all files), a key
whose latest write is below its file's watermark is dropped (already stored), and the
survivors are appended, with their seqs, to this journal's own segment, which is fsynced
before the adopted files are deleted. A crash at any point of this leaves either the old
files or the new copy (or both: the copy has the same seqs, so it coalesces away), so
replay loses nothing either.

Delivery is at least once: a write the origin stored just before a crash, whose mark did
not reach the disk, is stored again after the restart. Stores and deletes are idempotent
for the origins this queue is for (upserts), but not for, say, an append-only log table.

What each fsync policy survives
-------------------------------
("fsync" here is ``fdatasync`` where the system has it, which skips timestamps but not
the file size an append changes, and ``F_FULLFSYNC`` on macOS, whose plain fsync leaves
data in the drive's cache.)

``"always"``
    ``submit`` returns once its records are on stable storage (``fsync`` of the segment;
    the segment's directory entry was fsynced when the file was created). Survives the
    process dying (``kill -9``, OOM killer), a kernel crash, and power loss, provided the
    disk honours flushes. Concurrent writers share fsyncs (group commit): one of them
    fsyncs everything written so far while the others wait for it, so a busy queue pays
    far fewer fsyncs than it has writes.
``"interval"``
    A background thread fsyncs every 0.1 s. ``submit`` returns once its records are in the
    kernel's page cache: survives the process dying; a kernel crash or power loss can lose
    the writes of the last ~0.1 s (plus the time one fsync takes).
``"never"``
    Only the kernel decides when pages reach the disk. Survives the process dying; a kernel
    crash or power loss can lose everything not yet written back (on Linux, typically up to
    30 s; ``vm.dirty_expire_centisecs``).

Under every policy a write that tears the end of a segment (a crash in the middle of it)
is one whose ``submit`` never returned: replay drops it and keeps everything before it.
If ``fsync`` itself fails, the waiting writers get :class:`JournalError`: their writes are
queued and will be stored if the process lives, but their durability is unknown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import msgspec

try:
    import fcntl
except ImportError:  # Windows: importing works, a Journal refuses to start
    fcntl = None  # type: ignore[assignment]

from .errors import ConfigurationError, JournalError

__all__ = [
    "FSYNC_INTERVAL",
    "OP_DELETE",
    "OP_MARK",
    "OP_SET",
    "SEGMENT_BYTES",
    "FsyncPolicy",
    "Journal",
    "JournalError",
    "Record",
    "SegmentContents",
    "default_journal_dir",
    "encode_record",
    "read_segment",
    "scan_records",
]

logger = logging.getLogger("stratacache")

OP_SET: Final = 0
OP_DELETE: Final = 1
OP_MARK: Final = 2
_OPS: Final = frozenset((OP_SET, OP_DELETE, OP_MARK))

#: A segment larger than this is closed and a new one started.
SEGMENT_BYTES: Final = 16 * 1024 * 1024
#: How often the "interval" policy fsyncs, in seconds.
FSYNC_INTERVAL: Final = 0.1

FsyncPolicy = Literal["always", "interval", "never"]
_POLICIES: Final = get_args(FsyncPolicy)

MAGIC: Final = b"SCJ\x00"
FORMAT_VERSION: Final = 1
_FILE_HEADER: Final = struct.Struct("<4sI")
FILE_HEADER_SIZE: Final = _FILE_HEADER.size
_LENGTH: Final = struct.Struct("<I")
_RECORD_HEADER: Final = struct.Struct("<II")
RECORD_HEADER_SIZE: Final = _RECORD_HEADER.size

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SEGMENT = re.compile(
    r"(?P<name>.+)\.(?P<instance>[0-9]+-[0-9a-f]{8})\.(?P<number>[0-9]{8})\.journal"
)

_encode_payload = msgspec.msgpack.Encoder().encode
_decode_fields = msgspec.msgpack.Decoder(tuple[int, int, str, bytes, int | None]).decode
_decode_old_fields = msgspec.msgpack.Decoder(tuple[int, int, str, bytes]).decode


def _decode_payload(payload: bytes | memoryview) -> tuple[int, int, str, bytes, int | None]:
    """A record's fields; a record without a version (as written before versions were
    kept, and for writes given none) has None."""
    if payload[:1] == b"\x94":  # a msgpack fixarray of 4
        return (*_decode_old_fields(payload), None)
    return _decode_fields(payload)


def default_journal_dir(name: str) -> Path:
    """Where a queue named ``name`` keeps its journal unless told otherwise:
    ``$XDG_STATE_HOME/stratacache/<name>``, else ``~/.local/state/stratacache/<name>``
    (the XDG base directory spec's place for state that should survive restarts but is
    not worth backing up)."""
    _check_name(name)
    base = os.environ.get("XDG_STATE_HOME")
    # The spec says a relative XDG path is invalid and must be ignored.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "stratacache" / name


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"a write-behind name must be 1-100 characters of letters, digits, '_', '.' or "
            f"'-', starting with a letter or digit; got {name!r}"
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One journal record. ``value`` is the serialized value of a set, empty otherwise;
    for a mark, ``seq`` is the watermark."""

    seq: int
    op: int
    key: str
    value: bytes
    #: the write's version from the cache, None when it gave none
    version: int | None = None


def supersedes(new: Record, old: Record) -> bool:
    """Whether ``new`` replaces ``old``, a write of the same key: the higher version when
    both have one (the order the cache's levels keep; two threads can journal their
    writes in the other order), else the later record."""
    if new.version is not None and old.version is not None and new.version != old.version:
        return new.version > old.version
    return new.seq >= old.seq


def encode_record(seq: int, op: int, key: str, value: bytes, version: int | None = None) -> bytes:
    """``[u32 length][u32 crc32 of length and payload][payload]``."""
    payload = _encode_payload(
        (seq, op, key, value) if version is None else (seq, op, key, value, version)
    )
    length = _LENGTH.pack(len(payload))
    return length + _LENGTH.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


def scan_records(data: bytes, offset: int = FILE_HEADER_SIZE) -> tuple[list[Record], int, str]:
    """The valid records of ``data`` from ``offset``, the offset where they end, and why
    reading stopped there ("" at the end of the data)."""
    records: list[Record] = []
    view = memoryview(data)
    pos, end = offset, len(data)
    while pos < end:
        if end - pos < RECORD_HEADER_SIZE:
            return records, pos, "a torn record header"
        length, crc = _RECORD_HEADER.unpack_from(data, pos)
        stop = pos + RECORD_HEADER_SIZE + length
        if stop > end:
            return records, pos, "a record that runs past the end of the file"
        payload = view[pos + RECORD_HEADER_SIZE : stop]
        if zlib.crc32(payload, zlib.crc32(view[pos : pos + 4])) != crc:
            return records, pos, "a record whose CRC does not match"
        try:
            seq, op, key, value, version = _decode_payload(payload)
        except msgspec.MsgspecError:
            return records, pos, "a record whose payload does not decode"
        if op not in _OPS:
            return records, pos, f"a record with an unknown op {op}"
        records.append(Record(seq, op, key, value, version))
        pos = stop
    return records, pos, ""


@dataclass(frozen=True, slots=True)
class SegmentContents:
    """What :func:`read_segment` found. ``valid_bytes`` is where the valid records end;
    ``problem`` says why reading stopped before ``file_bytes`` ("" if it did not)."""

    records: list[Record]
    valid_bytes: int
    file_bytes: int
    problem: str


def read_segment(path: str | os.PathLike[str]) -> SegmentContents:
    """Read a segment file without changing it (for tools and tests; replay uses the same
    scan). Raises :class:`JournalError` for a file that is not a journal segment."""
    data = Path(path).read_bytes()
    return _contents(data, Path(path))


def _contents(data: bytes, path: Path) -> SegmentContents:
    if len(data) < FILE_HEADER_SIZE:
        # A crash between creating the file and writing its header (power loss can do
        # that even though the header is written before the file gets its name).
        return SegmentContents([], 0, len(data), "a torn file header" if data else "")
    magic, version = _FILE_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise JournalError(f"{path} is not a stratacache journal segment (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{path} is a journal segment of format {version}; this version of stratacache "
            f"reads format {FORMAT_VERSION}"
        )
    records, valid, problem = scan_records(data)
    return SegmentContents(records, valid, len(data), problem)


def _full_fsync(fd: int) -> None:
    # macOS's fsync leaves the data in the drive's cache; F_FULLFSYNC flushes it.
    fcntl.fcntl(fd, fcntl.F_FULLFSYNC)  # type: ignore[attr-defined,unused-ignore]


#: Makes a file's data durable. fdatasync where there is one: it skips the timestamps,
#: but flushes the size, which an append changes (so a record is never lost to it).
sync_file: Callable[[int], None] = (
    _full_fsync if sys.platform == "darwin" else getattr(os, "fdatasync", os.fsync)
)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _claim(path: Path) -> int | None:
    """An fd holding the lock of segment ``path`` if no live journal holds it, else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # another process adopted and deleted it meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # a live journal's segment
    # Between our open and our lock, another adopter may have replayed and deleted the
    # file: our fd then points to an unlinked inode whose writes are already copied.
    held = os.fstat(fd)
    try:
        now: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        now = None
    if now is None or held.st_nlink == 0 or (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev):
        os.close(fd)
        return None
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("fd", "max_seq", "path", "size", "start_seq")

    def __init__(self, path: Path, fd: int, size: int, start_seq: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.max_seq = -1  # highest seq of a set or delete in the file
        # The first seq append() could give in this file: a lower seq here is a replayed
        # copy. Compaction copies forward the live writes below it.
        self.start_seq = start_seq


class Journal:
    """Append-only segment files in ``directory`` for one write-behind queue (see the
    module docstring for the format and the guarantees).

    ``append`` and ``mark`` may be called from any thread. Call ``recover`` once, before
    the first append, to adopt what dead journals of the same ``name`` left behind.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = "cache",
        fsync: FsyncPolicy = "always",
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        _check_name(name)
        if fcntl is None:
            raise ConfigurationError(
                "the write-behind journal needs POSIX file locks (flock), which this "
                "platform does not have"
            )
        if fsync not in _POLICIES:
            raise ConfigurationError(
                f"fsync must be one of {', '.join(map(repr, _POLICIES))}; got {fsync!r}"
            )
        if not isinstance(segment_bytes, int) or segment_bytes < 4096:
            raise ConfigurationError(f"segment_bytes must be an int >= 4096; got {segment_bytes!r}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the write-behind journal directory {self.directory}: {exc}"
            ) from exc
        if not self.directory.is_dir():
            raise ConfigurationError(
                f"the write-behind journal {self.directory} is not a directory"
            )
        self.name = name
        self.policy: FsyncPolicy = fsync
        self.segment_bytes = segment_bytes
        self.instance = f"{os.getpid()}-{secrets.token_hex(4)}"
        #: fsync calls made on segment files
        self.fsyncs = 0
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        # Held around fsync and around closing a segment's fd, so that an fsync outside
        # _lock never hits an fd that was closed (and maybe reused) meanwhile.
        self._fd_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._number = 0
        self._next_seq = time.time_ns()
        self._mark = 0
        # Group commit: positions count appended bytes; _durable is the position every
        # byte before which is known to be fsynced.
        self._appended = 0
        self._durable = 0
        self._syncing = False
        self._sync_failed: tuple[int, OSError] | None = None
        self._closed = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        with self._lock:
            self._segments.append(self._open_segment())
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_periodically, name=f"stratacache-journal-{name}", daemon=True
            )
            self._syncer.start()

    def __repr__(self) -> str:
        return f"<Journal {str(self.directory)!r} name={self.name!r} fsync={self.policy!r}>"

    # -- state

    @property
    def next_seq(self) -> int:
        """The seq the next appended record would get at the earliest."""
        return self._next_seq

    @property
    def total_bytes(self) -> int:
        """Bytes in this journal's segment files."""
        with self._lock:
            return sum(segment.size for segment in self._segments)

    @property
    def segment_count(self) -> int:
        with self._lock:
            return len(self._segments)

    @property
    def current_start_seq(self) -> int:
        """Seqs below this live only in older segments (or are replayed copies)."""
        with self._lock:
            return self._segments[-1].start_seq

    def segment_paths(self) -> list[Path]:
        with self._lock:
            return [segment.path for segment in self._segments]

    # -- writing

    def append(
        self, entries: Sequence[tuple[int, str, bytes] | tuple[int, str, bytes, int | None]]
    ) -> tuple[int, int]:
        """Append one record per ``(op, key, value)`` or ``(op, key, value, version)``
        with consecutive seqs, in one write.

        Returns the first seq and the position to pass to :meth:`sync`. On a failed write
        the file is cut back to where it was: nothing of ``entries`` stays behind, and
        :class:`JournalError` is raised.
        """
        with self._lock:
            self._check_open()
            first = max(self._next_seq, time.time_ns())
            data = b"".join(encode_record(first + i, *entry) for i, entry in enumerate(entries))
            self._write(data, first + len(entries) - 1)
            self._next_seq = first + len(entries)
            return first, self._appended

    def sync(self, position: int) -> None:
        """Return once everything appended up to ``position`` is durable as the policy
        promises: under "always", fsynced (sharing the fsync with concurrent callers);
        under the other policies at once."""
        if self.policy == "always":
            self._sync_to(position)

    def mark(self, watermark: int) -> None:
        """Record that every write with a seq below ``watermark`` is done, and delete the
        segments holding nothing else."""
        with self._lock:
            if self._closed or watermark <= self._mark:
                return
            # Written before _mark moves: if this write rotates, the new segment begins
            # with the previous mark, then this one; no duplicate, nothing missing.
            self._write(encode_record(watermark, OP_MARK, "", b""), -1)
            self._mark = watermark
            done = [s for s in self._segments[:-1] if s.max_seq < watermark]
            for segment in done:
                self._delete(segment)

    def _write(self, data: bytes, max_seq: int) -> None:
        segment = self._segments[-1]
        if segment.size + len(data) > self.segment_bytes and segment.max_seq >= 0:
            segment = self._rotate()
        before = segment.size
        try:
            _write_all(segment.fd, data)
        except OSError as exc:
            # A short write leaves a torn record; every record appended after it would be
            # lost at replay (reading stops at the tear). Cut it off.
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, before)
            raise JournalError(
                f"cannot append to the write-behind journal {segment.path}: {exc}; the "
                "write was not accepted"
            ) from exc
        segment.size += len(data)
        segment.max_seq = max(segment.max_seq, max_seq)
        self._appended += len(data)

    def _open_segment(self) -> _Segment:
        """A new segment, locked before it gets its name (so no one can take it for an
        orphan), starting with the header and the current mark. Called under _lock."""
        self._number += 1
        final = self.directory / f"{self.name}.{self.instance}.{self._number:08d}.journal"
        temporary = self.directory / f".{final.name}.tmp"
        head = _FILE_HEADER.pack(MAGIC, FORMAT_VERSION)
        if self._mark:
            head += encode_record(self._mark, OP_MARK, "", b"")
        fd = -1
        try:
            fd = os.open(
                temporary,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(fd, head)
            if self.policy != "never":
                sync_file(fd)
                self.fsyncs += 1
            os.rename(temporary, final)
            if self.policy != "never":
                _fsync_dir(self.directory)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise JournalError(
                f"cannot create a write-behind journal segment in {self.directory}: {exc}"
            ) from exc
        return _Segment(final, fd, len(head), self._next_seq)

    def _rotate(self) -> _Segment:
        old = self._segments[-1]
        if self.policy != "never":
            # Positions count bytes across segments: once the old file is synced, every
            # position appended so far is durable, whatever a concurrent leader syncs.
            with self._fd_lock:
                try:
                    sync_file(old.fd)
                except OSError as exc:
                    raise JournalError(f"cannot fsync {old.path}: {exc}") from exc
            self.fsyncs += 1
            self._durable = max(self._durable, self._appended)
        segment = self._open_segment()
        self._segments.append(segment)
        return segment

    def _delete(self, segment: _Segment) -> None:
        # Unlink while still holding the lock: nobody can open the name afterwards, so
        # nobody can adopt a file whose writes are already stored.
        try:
            os.unlink(segment.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot delete the stored journal segment %s: %s", segment.path, exc)
            return
        with self._fd_lock:
            os.close(segment.fd)
        self._segments.remove(segment)

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"the write-behind journal in {self.directory} is closed")

    # -- fsync

    def _sync_to(self, position: int) -> None:
        with self._synced:
            while True:
                failed = self._sync_failed
                if failed is not None and position <= failed[0]:
                    raise JournalError(
                        f"fsync of the write-behind journal in {self.directory} failed: "
                        f"{failed[1]}; the write is queued but may not survive a power loss"
                    ) from failed[1]
                if self._durable >= position:
                    return
                if not self._syncing:
                    break
                self._synced.wait()
            # This thread leads: it fsyncs everything appended so far, for itself and for
            # every writer that appended before now; they wait above.
            self._syncing = True
            target = self._appended
            segment = self._segments[-1]
        error: OSError | None = None
        try:
            with self._fd_lock:
                if segment.fd >= 0:
                    sync_file(segment.fd)
        except OSError as exc:
            error = exc
        with self._synced:
            self._syncing = False
            self.fsyncs += 1
            if error is None:
                self._durable = max(self._durable, target)
            else:
                # Linux reports a writeback error to one fsync only; a later fsync may
                # "succeed" without the lost pages. Everyone who waited on this one fails.
                self._sync_failed = (target, error)
            self._synced.notify_all()
        if error is not None:
            raise JournalError(
                f"fsync of the write-behind journal {segment.path} failed: {error}; the "
                "write is queued but may not survive a power loss"
            ) from error

    def _sync_periodically(self) -> None:
        while not self._stop.wait(FSYNC_INTERVAL):
            with self._lock:
                position = self._appended
                idle = self._closed or position <= self._durable
            if idle:
                continue
            try:
                self._sync_to(position)
            except JournalError as exc:
                logger.warning("%s", exc)

    # -- replay

    def recover(self) -> list[Record]:
        """Adopt the segments of this name that no live journal holds, copy the writes
        they still owe into this journal (fsynced), delete them, and return those writes
        (sets and deletes, one per key, in seq order)."""
        claimed: list[tuple[Path, int]] = []
        try:
            for path in sorted(self.directory.iterdir()):
                match = _SEGMENT.fullmatch(path.name)
                if match is None:
                    self._remove_stale_temporary(path)
                    continue
                if match["name"] != self.name or match["instance"] == self.instance:
                    continue
                fd = _claim(path)
                if fd is not None:
                    claimed.append((path, fd))
            live, highest = self._read_claimed(claimed)
            with self._lock:
                self._check_open()
                self._next_seq = max(self._next_seq, highest + 1)
                if live:
                    self._copy(live)
            for path, _ in claimed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if claimed:
                _fsync_dir(self.directory)
            return live
        except OSError as exc:
            raise JournalError(
                f"cannot replay the write-behind journal in {self.directory}: {exc}"
            ) from exc
        finally:
            for _, fd in claimed:
                os.close(fd)

    def _copy(self, records: list[Record]) -> None:
        """Append replayed records with their own seqs, then fsync them. Called under
        _lock."""
        first = len(self._segments) - 1
        chunk: list[bytes] = []
        size = 0
        # About 1 MiB per write: a replay can be far larger than anything one submit
        # carries.
        for i, record in enumerate(records, 1):
            chunk.append(
                encode_record(record.seq, record.op, record.key, record.value, record.version)
            )
            size += len(chunk[-1])
            if size >= 1 << 20 or i == len(records):
                self._write(b"".join(chunk), max(r.seq for r in records[i - len(chunk) : i]))
                chunk, size = [], 0
        # The copies must be on disk before the originals go, whatever the policy: at
        # this moment they are the only copy that will remain.
        for segment in self._segments[first:]:
            with self._fd_lock:
                sync_file(segment.fd)
            self.fsyncs += 1
        self._durable = max(self._durable, self._appended)
        _fsync_dir(self.directory)

    def _read_claimed(self, claimed: list[tuple[Path, int]]) -> tuple[list[Record], int]:
        best: dict[str, tuple[Record, str]] = {}
        marks: dict[str, int] = {}
        highest = 0
        for path, fd in list(claimed):
            with open(fd, "rb", closefd=False) as file:
                data = file.read()
            try:
                contents = _contents(data, path)
            except JournalError as exc:
                # Not ours to delete: a foreign file, or one of a newer format.
                logger.warning("write-behind replay skips %s", exc)
                claimed.remove((path, fd))
                os.close(fd)
                continue
            if contents.problem:
                dropped = contents.file_bytes - contents.valid_bytes
                logger.warning(
                    "write-behind journal %s: %s at byte %d; dropping the %d bytes from there "
                    "(the %d records before it are kept)",
                    path,
                    contents.problem,
                    contents.valid_bytes,
                    dropped,
                    len(contents.records),
                )
                if contents.valid_bytes >= FILE_HEADER_SIZE:
                    os.ftruncate(fd, contents.valid_bytes)
            match = _SEGMENT.fullmatch(path.name)
            assert match is not None
            instance = match["instance"]
            for record in contents.records:
                highest = max(highest, record.seq)
                if record.op == OP_MARK:
                    marks[instance] = max(marks.get(instance, 0), record.seq)
                    continue
                # Coalesce before looking at marks: a key whose latest write is stored
                # must not get an older, unstored write of it replayed instead.
                seen = best.get(record.key)
                if seen is None or supersedes(record, seen[0]):
                    best[record.key] = (record, instance)
        live = [
            record for record, instance in best.values() if record.seq >= marks.get(instance, 0)
        ]
        live.sort(key=lambda record: record.seq)
        return live, highest

    def _remove_stale_temporary(self, path: Path) -> None:
        """A ``.<segment>.tmp`` of this name left by a crash between creating a segment and
        naming it: it never held an acknowledged write."""
        name = path.name
        if not (name.startswith(f".{self.name}.") and name.endswith(".journal.tmp")):
            return
        try:
            # A creator opens the file before it can lock it: only an old one is stale.
            if time.time() - path.stat().st_mtime < 60:
                return
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # still being created
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        finally:
            os.close(fd)

    # -- closing

    def close(self) -> None:
        """Sync what was appended (any policy but "never"), delete the segments the last
        mark says are done, and release the rest for a later replay. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            if self.policy != "never" and self._appended > self._durable:
                with self._fd_lock, contextlib.suppress(OSError):
                    sync_file(self._segments[-1].fd)
                    self.fsyncs += 1
                    self._durable = self._appended
            for segment in list(self._segments):
                if segment.max_seq < self._mark:
                    self._delete(segment)
            for segment in self._segments:
                with self._fd_lock:
                    os.close(segment.fd)
                    segment.fd = -1

"""Write-behind: writes acknowledged once journaled, stored into the origin in batches.

``WriteBehind(origin, journal_dir)`` takes writes with :meth:`~WriteBehind.submit` and
:meth:`~WriteBehind.submit_deletes`. Each call appends its records to the journal (see
:mod:`stratacache.journal` for the format and what each ``fsync`` policy survives), makes
them durable as the policy says, queues them in memory and returns. A flusher thread
stores them with ``origin.store_many`` / ``origin.delete_many``, up to ``batch_size`` keys
per call, every ``flush_interval`` seconds or as soon as a batch is full.

What the queue promises
-----------------------
* **Nothing acknowledged is lost.** When ``submit`` returns, the write is in the journal;
  a process killed at any moment after that (``kill -9`` included) leaves it to the next
  ``WriteBehind`` over the same directory, which replays it at start. Delivery is at least
  once (a write stored just before a crash may be stored again), so the origin's writes
  must be idempotent, as upserts and deletes are.
* **Bounded.** At most ``max_pending`` distinct keys wait. A submit that would go past it
  raises :class:`WriteBehindFullError` before anything is journaled, so a refused call
  leaves no trace; rewriting a key that is already waiting never counts twice. Replayed
  writes count toward the bound but are never refused.
* **Coalescing, in order per key.** Only the latest write of a key waits: ten sets of a
  key before the flusher gets to it are one store. A key is in at most one origin call at
  a time, and a write made while its key is being stored waits for the next batch, so the
  origin never sees a key's writes out of order. Keys go to the origin in the order they
  started waiting.
* **Failures are retried, never dropped.** A failed batch is retried with exponential
  backoff (``retry_base`` doubling up to ``retry_max``, with jitter); while the origin
  keeps failing, at most one call per backoff period reaches it. A batch that fails 10
  times in a row is split in halves, then halves of halves, to isolate a *poison* key
  (one the origin refuses every time). A key that failed 10 times in a batch of its own,
  while the origin stored other writes meanwhile, is moved to the dead-letter file
  ``dead-<name>.<instance>.jsonl`` in the journal directory (fsynced, one JSON object per
  line: key, op, base64 value, serializer, error, failures, time; read it with
  :func:`read_dead_letters`), counted in ``stats.failures`` and logged as an error naming
  the key. Without proof that the origin works for other keys (an outage, or a queue that
  holds nothing else), no key is ever dead-lettered: it waits at ``retry_max``.
* **Read your writes.** :meth:`~WriteBehind.pending` returns the values still waiting, or
  :data:`DELETED`, for a cache to lay over what the origin returns.

The values the origin receives are decoded from the journaled bytes, so they are exactly
what a replay would store (a caller mutating a value after ``submit`` changes nothing), and
the origin's return value of ``store_many`` is not used.

Create a ``WriteBehind`` in the process that uses it, after any ``fork``: a child process
cannot share its parent's journal (its calls raise :class:`ConfigurationError`). Replay
happens when a queue starts; segments left by a worker that dies are adopted by the next
queue that starts on the directory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import heapq
import json
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Final, Literal

from .errors import (
    CacheClosedError,
    ConfigurationError,
    InvalidKeyError,
    JournalError,
    WriteBehindFullError,
)
from .journal import (
    OP_DELETE,
    OP_SET,
    SEGMENT_BYTES,
    FsyncPolicy,
    Journal,
    default_journal_dir,
    sync_file,
)
from .logs import Throttle
from .origin import Origin
from .serde import Serializer, make_serializer

__all__ = [
    "DELETED",
    "POISON_THRESHOLD",
    "DeadLetter",
    "JournalError",
    "WriteBehind",
    "WriteBehindFullError",
    "WriteBehindStats",
    "default_journal_dir",
    "read_dead_letters",
]

logger = logging.getLogger("stratacache")

#: Consecutive failures after which a batch is split, and a batch of one dead-lettered.
POISON_THRESHOLD: Final = 10


class _Deleted(enum.Enum):
    DELETED = "DELETED"

    def __repr__(self) -> str:
        return "DELETED"


#: What :meth:`WriteBehind.pending` returns for a key whose pending write is a delete.
DELETED: Final = _Deleted.DELETED

#: A queue's ``order`` hook: ``order(batch, send) -> keys left out`` (see WriteBehind);
#: ``send(keys)`` returns the keys the origin took
Order = Callable[
    [dict[str, tuple[int | None, Any]], Callable[[Collection[str]], list[str]]],
    Collection[str],
]


class _Op:
    """The latest write of a key not yet stored."""

    __slots__ = ("cover", "data", "key", "kind", "seq", "since", "version")

    def __init__(
        self,
        key: str,
        kind: int,
        data: bytes,
        seq: int,
        cover: int,
        since: float,
        version: int | None = None,
    ):
        self.key = key
        self.kind = kind
        self.data = data  # the serialized value, as journaled
        self.seq = seq  # its record's seq (changes when compaction copies it forward)
        # The oldest seq this write stands for: the seq of the first write of the key it
        # coalesced. flush() waits until no waiting write stands for a seq before the call.
        self.cover = cover
        self.since = since  # monotonic time the key started waiting (for lag)
        # The version the cache gave this write (see ``order``, kept in the journal);
        # None when it gave none.
        self.version = version


class _Unit:
    """Keys the origin failed to take together, retried together."""

    __slots__ = ("failures", "keys", "next_at", "ok_mark", "since", "suspect")

    def __init__(self, keys: list[str], ok_mark: int, since: float, suspect: bool = False):
        self.keys = keys
        self.failures = 0  # consecutive failed attempts
        self.next_at = 0.0
        # The count of successful origin calls when the unit was formed: more since then
        # proves the origin works for other keys (so these keys are the problem).
        self.ok_mark = ok_mark
        self.since = since
        self.suspect = suspect  # made by a split: split again on the first failure


class WriteBehindStats:
    """Counters of one queue. ``depth``, ``lag_seconds``, ``journal_bytes`` and ``fsyncs``
    are read live; the rest are counts since the queue started."""

    def __init__(self, owner: WriteBehind) -> None:
        self._owner = owner
        #: writes accepted (one per key per submit call)
        self.submitted = 0
        #: writes the origin took (one per key per origin call)
        self.stored = 0
        #: writes replaced by a later write of the same key before reaching the origin
        self.coalesced = 0
        #: origin calls that failed and will be retried
        self.retries = 0
        #: writes moved to the dead-letter file
        self.failures = 0
        #: origin calls that succeeded
        self.batches = 0
        #: writes loaded from the journal at start
        self.replayed = 0
        #: writes not stored because a newer write of the key (by version) was waiting
        #: or already stored (another process's, see ``order``)
        self.superseded = 0

    @property
    def depth(self) -> int:
        """Keys waiting for the origin."""
        return len(self._owner._ops)

    @property
    def lag_seconds(self) -> float:
        """How long the oldest waiting key has waited (0 when none)."""
        return self._owner._lag()

    @property
    def journal_bytes(self) -> int:
        return self._owner._journal.total_bytes

    @property
    def fsyncs(self) -> int:
        return self._owner._journal.fsyncs

    def snapshot(self) -> dict[str, int | float]:
        return {
            "depth": self.depth,
            "lag_seconds": self.lag_seconds,
            "submitted": self.submitted,
            "stored": self.stored,
            "coalesced": self.coalesced,
            "retries": self.retries,
            "failures": self.failures,
            "batches": self.batches,
            "replayed": self.replayed,
            "superseded": self.superseded,
            "journal_bytes": self.journal_bytes,
            "fsyncs": self.fsyncs,
        }

    def __repr__(self) -> str:
        return f"WriteBehindStats({self.snapshot()})"


# Queues of this process, so that a forked child can tell it does not own them.
_queues: weakref.WeakSet[WriteBehind] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for queue in list(_queues):
        queue._forked = True


os.register_at_fork(after_in_child=_forget_after_fork)


def _weight(key: str, data: bytes) -> int:
    """Roughly the bytes of a write's record: the frame and seq take about 24."""
    return len(key) + len(data) + 24


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"a write-behind key must be a non-empty str, got {key!r}")
    return key


class WriteBehind:
    """A durable write-behind queue in front of ``origin`` (see the module docstring).

    ``journal`` is the directory of the journal (created with mode 0700 if missing; see
    :func:`default_journal_dir` for the conventional place). Writes waiting there from an
    earlier run (a crash, or a close while the origin was down) are replayed now.
    ``serializer`` encodes values for the journal (default: msgpack, type-faithful).
    ``name`` tells queues sharing a directory apart (only segments of the same name are
    replayed) and names the flusher thread. ``segment_bytes`` is the size at which the
    journal starts a new segment file. With ``start=False`` the flusher waits for
    :meth:`start`.

    ``order``, when given, stores each batch instead of a plain origin call, so that a
    cache can order the writes of several processes: it is called as ``order(batch,
    send)`` with each key's ``(version, value)`` (the version given to :meth:`submit` or
    :meth:`submit_deletes` and kept in the journal, None if none was; the value as the
    origin gets it, :data:`DELETED` for a delete), must call ``send(keys)`` once with the
    keys to store, and returns the keys it left out because the origin already holds a
    newer write of them (they leave the queue, counted in ``stats.superseded``). ``send``
    returns the keys the origin took; when the origin fails it returns those it took
    before failing, and the rest of the batch is retried once ``order`` returns. ``order``
    failing before it sent anything is logged and the batch is stored unordered.
    """

    def __init__(
        self,
        origin: Origin,
        journal: str | os.PathLike[str],
        *,
        serializer: Serializer | None = None,
        fsync: FsyncPolicy = "always",
        max_pending: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        retry_base: float = 0.1,
        retry_max: float = 5.0,
        name: str = "cache",
        start: bool = True,
        segment_bytes: int = SEGMENT_BYTES,
        order: Order | None = None,
    ) -> None:
        if not getattr(origin, "writable", False):
            raise ConfigurationError(
                f"write-behind needs an origin that can store; {origin!r} is not writable "
                "(give CallableOrigin a store function, or set writable = True on an Origin "
                "subclass that implements store_many and delete_many)"
            )
        for label, number, low in (("max_pending", max_pending, 1), ("batch_size", batch_size, 1)):
            if not isinstance(number, int) or isinstance(number, bool) or number < low:
                raise ConfigurationError(f"{label} must be an int >= {low}; got {number!r}")
        for label, seconds in (
            ("flush_interval", flush_interval),
            ("retry_base", retry_base),
            ("retry_max", retry_max),
        ):
            if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
                raise ConfigurationError(f"{label} must be a finite number >= 0; got {seconds!r}")
        if retry_base <= 0 or retry_max < retry_base:
            raise ConfigurationError(
                f"retry_base must be > 0 and retry_max >= retry_base; got retry_base="
                f"{retry_base!r}, retry_max={retry_max!r}"
            )
        self.origin = origin
        self.name = name
        self.order = order
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self.retry_base = float(retry_base)
        self.retry_max = float(retry_max)
        self._serializer = make_serializer(serializer if serializer is not None else "msgpack")
        self._journal = Journal(journal, name=name, fsync=fsync, segment_bytes=segment_bytes)
        self.stats = WriteBehindStats(self)
        self._warnings = Throttle(logger)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # wakes the flusher
        self._progress = threading.Condition(self._lock)  # wakes flush() callers
        # key -> latest waiting write, ordered by the write's seq (a rewrite moves the key
        # to the end), so the first entry holds the journal's watermark.
        self._ops: dict[str, _Op] = {}
        # Keys waiting that no retry unit holds, with the time they started waiting
        # there, in that order: fresh batches are taken from the front.
        self._fresh: dict[str, float] = {}
        self._units: list[_Unit] = []
        # The writes of the origin call under way, by key.
        self._flight: dict[str, _Op] = {}
        # Lazy min-heap of (cover, key) for flush(): an entry is current while the key's
        # cover is still that value.
        self._covers: list[tuple[int, str]] = []
        self._live_bytes = 0  # about what the waiting writes take in the journal
        self._ok_calls = 0  # origin calls that stored something
        self._failing = 0  # consecutive failed origin calls, any unit
        self._gate = 0.0  # while failing, no origin call before this time
        self._flush_waiters = 0
        self._closed = False
        self._stopping = False
        self._forked = False
        self._thread: threading.Thread | None = None
        try:
            replayed = self._journal.recover()
        except BaseException:
            self._journal.close()
            raise
        now = time.monotonic()
        for record in replayed:
            op = _Op(
                record.key, record.op, record.value, record.seq, record.seq, now, record.version
            )
            self._ops[record.key] = op
            self._fresh[record.key] = now
            self._covers.append((record.seq, record.key))
            self._live_bytes += _weight(record.key, record.value)
        heapq.heapify(self._covers)
        self.stats.replayed = len(replayed)
        if replayed:
            logger.info("write-behind %r replays %d writes from %s", name, len(replayed), journal)
        _queues.add(self)
        if start:
            self.start()

    def __repr__(self) -> str:
        return (
            f"<WriteBehind {self.name!r} depth={len(self._ops)} "
            f"journal={str(self._journal.directory)!r}>"
        )

    @property
    def directory(self) -> Path:
        """The journal directory."""
        return self._journal.directory

    @property
    def dead_letter_path(self) -> Path:
        """This queue's dead-letter file (it exists once a key was dead-lettered)."""
        return self.directory / f"dead-{self.name}.{self._journal.instance}.jsonl"

    # -- writing

    def submit(self, items: Mapping[str, Any], versions: Mapping[str, int] | None = None) -> None:
        """Queue a set of every key in ``items``; durable (as ``fsync`` says) on return.
        ``versions`` are journaled with the writes and handed to ``order``.

        Raises :class:`WriteBehindFullError` if the queue cannot take the new keys,
        :class:`~stratacache.errors.SerializationError` for a value the serializer cannot
        encode, :class:`~stratacache.errors.InvalidKeyError` for a key that is not a
        non-empty str (all before anything is written), :class:`JournalError` if the
        journal cannot be written, and :class:`~stratacache.errors.CacheClosedError` after
        :meth:`close`.
        """
        dumps = self._serializer.dumps
        self._append(
            [(OP_SET, _check_key(key), dumps(value)) for key, value in items.items()], versions
        )

    def submit_deletes(
        self, keys: Sequence[str], versions: Mapping[str, int] | None = None
    ) -> None:
        """Queue a delete of every key in ``keys``; as :meth:`submit` otherwise."""
        if isinstance(keys, str):
            raise InvalidKeyError(
                f"submit_deletes takes a sequence of keys, got the str {keys!r}; "
                f"write submit_deletes([{keys!r}])"
            )
        self._append([(OP_DELETE, _check_key(key), b"") for key in dict.fromkeys(keys)], versions)

    async def asubmit(
        self, items: Mapping[str, Any], versions: Mapping[str, int] | None = None
    ) -> None:
        """:meth:`submit` in a worker thread (it may wait for an fsync)."""
        await asyncio.to_thread(self.submit, items, versions)

    async def asubmit_deletes(
        self, keys: Sequence[str], versions: Mapping[str, int] | None = None
    ) -> None:
        await asyncio.to_thread(self.submit_deletes, keys, versions)

    def _append(
        self, entries: list[tuple[int, str, bytes]], versions: Mapping[str, int] | None = None
    ) -> None:
        self._check_owner()
        if not entries:
            return
        ops = self._ops
        with self._lock:
            if self._closed:
                raise CacheClosedError(f"write-behind queue {self.name!r} is closed")
            adding = sum(1 for _, key, _ in entries if key not in ops)
            if adding and len(ops) + adding > self.max_pending:
                raise WriteBehindFullError(self.name, len(ops), self.max_pending, adding)
            # The journal append happens under the queue's lock so that seq order, journal
            # order and queue order are one order; only the fsync is waited for outside.
            first, position = self._journal.append(
                [(*entry, versions.get(entry[1])) for entry in entries] if versions else entries
            )
            now = time.monotonic()
            flight = self._flight
            was_idle = not self._fresh
            for seq, (kind, key, data) in enumerate(entries, first):
                version = versions.get(key) if versions else None
                old = ops.get(key)
                if old is not None and version is not None and (old.version or 0) > version:
                    # Another thread's write of the key, journaled first, took a newer
                    # version: the levels keep that one, and so does the queue (replay
                    # chooses the same way, see journal.supersedes).
                    self.stats.superseded += 1
                    continue
                ops.pop(key, None)
                if old is None:
                    op = _Op(key, kind, data, seq, seq, now, version)
                    self._fresh[key] = now
                    heapq.heappush(self._covers, (seq, key))
                elif flight.get(key) is old:
                    # The origin is being sent ``old`` right now: this write must follow
                    # it, in a later call, so it stands for itself only.
                    op = _Op(key, kind, data, seq, seq, now, version)
                    heapq.heappush(self._covers, (seq, key))
                else:
                    op = _Op(key, kind, data, seq, old.cover, old.since, version)
                    self.stats.coalesced += 1
                self._live_bytes += _weight(key, data) - (
                    _weight(key, old.data) if old is not None else 0
                )
                ops[key] = op
            self.stats.submitted += len(entries)
            if was_idle or len(self._fresh) >= self.batch_size:
                self._work.notify()
        self._journal.sync(position)

    def pending(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of ``keys`` whose latest write is still waiting for the origin
        (:data:`DELETED` for a delete); keys without one are left out.

        For read-your-writes, take this *before* loading the same keys from the origin
        and lay it over the result: a write not listed here was stored before the call,
        so the load that follows sees it (taken after the load, a write stored in between
        would be missed by both).
        """
        with self._lock:
            found = [op for key in keys if (op := self._ops.get(key)) is not None]
        loads = self._serializer.loads
        return {op.key: DELETED if op.kind == OP_DELETE else loads(op.data) for op in found}

    # -- waiting, starting, stopping

    def start(self) -> None:
        """Start the flusher (done by the constructor unless ``start=False``)."""
        self._check_owner()
        with self._lock:
            if self._closed:
                raise CacheClosedError(f"write-behind queue {self.name!r} is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"stratacache-write-behind-{self.name}", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write submitted before this call is stored (or superseded by
        a later write that is, or dead-lettered); False if ``timeout`` seconds passed
        first, or if the flusher is not running."""
        self._check_owner()
        with self._lock:
            target = self._journal.next_seq - 1
            if self._min_cover() > target:
                return True
            if not self._running():
                return False
            self._flush_waiters += 1
            self._work.notify()
            try:
                return self._progress.wait_for(
                    lambda: self._min_cover() > target or not self._running(), timeout
                ) and (self._min_cover() > target)
            finally:
                self._flush_waiters -= 1

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` in a worker thread."""
        return await asyncio.to_thread(self.flush, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush for up to ``timeout`` seconds, stop the flusher and close the journal.
        Writes the origin did not take in time stay in the journal, for the next
        ``WriteBehind`` on the directory to replay (a warning gives their count).
        Idempotent; later submits raise CacheClosedError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            forked = self._forked
        if forked:
            return  # the parent's journal: not this process's to touch
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._work.notify_all()
            self._progress.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.1)
            if thread.is_alive():
                logger.warning(
                    "write-behind %r: the origin call under way did not return within the "
                    "close timeout; leaving it to finish in the background",
                    self.name,
                )
        with self._lock:
            left = len(self._ops)
            watermark = self._watermark()
        with contextlib.suppress(JournalError):
            self._journal.mark(watermark)
        self._journal.close()
        if left:
            logger.warning(
                "write-behind %r closed with %d writes the origin has not stored; they stay "
                "in the journal %s and are replayed by the next WriteBehind named %r there",
                self.name,
                left,
                self._journal.directory,
                self.name,
            )

    async def aclose(self, timeout: float = 30.0) -> None:
        """:meth:`close` in a worker thread."""
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> WriteBehind:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _running(self) -> bool:
        return self._thread is not None and not self._stopping

    def _check_owner(self) -> None:
        if self._forked:
            raise ConfigurationError(
                f"write-behind queue {self.name!r} was created before this process forked; "
                "its journal belongs to the parent. Create a WriteBehind in each process "
                "after the fork (with its own name, or sharing the directory)"
            )

    # -- bookkeeping (under _lock)

    def _cover_of(self, key: str) -> float:
        cover: float = math.inf
        if (op := self._ops.get(key)) is not None:
            cover = op.cover
        if (sent := self._flight.get(key)) is not None and sent.cover < cover:
            cover = sent.cover
        return cover

    def _min_cover(self) -> float:
        """The oldest seq a waiting write stands for (inf when none)."""
        heap = self._covers
        while heap:
            cover, key = heap[0]
            if self._cover_of(key) == cover:
                return cover
            heapq.heappop(heap)
        return math.inf

    def _prune_covers(self) -> None:
        """Drop the heap entries of stored writes, which flush() would otherwise drop only
        when someone calls it. Entries stuck behind an old write still waiting (a key
        being retried) are dropped by rebuilding the heap once it is mostly stale."""
        self._min_cover()
        if len(self._covers) > 2 * len(self._ops) + 1024:
            keys = self._ops.keys() | self._flight.keys()
            self._covers = [(int(self._cover_of(key)), key) for key in keys]
            heapq.heapify(self._covers)

    def _watermark(self) -> int:
        """The lowest seq of a write not done: the journal's mark."""
        mark = self._journal.next_seq
        if self._ops:
            mark = min(mark, next(iter(self._ops.values())).seq)
        for op in self._flight.values():
            mark = min(mark, op.seq)
        return mark

    def _lag(self) -> float:
        with self._lock:
            oldest = math.inf
            if self._fresh:
                oldest = self._ops[next(iter(self._fresh))].since
            for unit in self._units:
                oldest = min(oldest, unit.since)
            for op in self._flight.values():
                oldest = min(oldest, op.since)
        return 0.0 if oldest == math.inf else max(0.0, time.monotonic() - oldest)

    def _backoff(self, failures: int) -> float:
        delay: float = min(self.retry_max, self.retry_base * 2.0 ** min(failures - 1, 62))
        # Jitter, so that many queues failing together do not retry in step.
        return delay * random.uniform(0.5, 1.0)

    # -- the flusher

    def _run(self) -> None:
        while True:
            try:
                if not self._flush_once():
                    return
            except Exception:  # a bug: keep the queue alive, it holds acknowledged writes
                logger.exception("write-behind %r: flusher error", self.name)
                time.sleep(min(1.0, self.retry_max))

    def _flush_once(self) -> bool:
        with self._lock:
            unit = self._next_unit()
            if unit is None:
                return False
            ops = [self._ops[key] for key in unit.keys]
            self._flight = {op.key: op for op in ops}
        if self.order is None:
            done, error = self._store(ops)
            superseded = 0
        else:
            done, error, superseded = self._store_in_order(ops)
        dead: _Op | None = None
        with self._lock:
            self._flight = {}
            dead = self._settle(unit, ops, done, error, superseded)
            watermark = self._watermark()
            self._progress.notify_all()
        if dead is not None:
            assert error is not None
            self._dead_letter(unit, dead, error)
        try:
            self._journal.mark(watermark)
            self._compact_if_needed()
        except JournalError as exc:
            # Not fatal: a missing mark only means more replay after a crash.
            self._warnings.warning("journal", "write-behind %r: %s", self.name, exc)
        return True

    def _next_unit(self) -> _Unit | None:
        """Wait for the next origin call to make (under _lock); None to stop."""
        while True:
            if self._stopping:
                return None
            now = time.monotonic()
            wake = math.inf
            if now < self._gate:
                wake = self._gate
            else:
                if self._units:
                    unit = min(self._units, key=lambda unit: unit.next_at)
                    if unit.next_at <= now:
                        self._units.remove(unit)
                        return unit
                    wake = unit.next_at
                if self._fresh:
                    due = next(iter(self._fresh.values())) + self.flush_interval
                    if len(self._fresh) >= self.batch_size or self._flush_waiters or now >= due:
                        keys = list(islice(self._fresh, self.batch_size))
                        for key in keys:
                            del self._fresh[key]
                        return _Unit(keys, self._ok_calls, self._ops[keys[0]].since)
                    wake = min(wake, due)
            self._work.wait(None if wake == math.inf else wake - now)

    def _store(
        self, ops: list[_Op], values: Mapping[str, Any] | None = None
    ) -> tuple[list[_Op], Exception | None]:
        """Send ``ops`` to the origin (outside the lock): the writes it took, and the
        error that stopped it. ``values``: the sets' values, when already decoded."""
        done: list[_Op] = []
        sets = [op for op in ops if op.kind == OP_SET]
        deletes = [op for op in ops if op.kind == OP_DELETE]
        try:
            if sets:
                if values is None:
                    loads = self._serializer.loads
                    values = {op.key: loads(op.data) for op in sets}
                self.origin.store_many({op.key: values[op.key] for op in sets})
                done.extend(sets)
            if deletes:
                self.origin.delete_many([op.key for op in deletes])
                done.extend(deletes)
        except Exception as exc:
            return done, exc
        return done, None

    def _store_in_order(self, ops: list[_Op]) -> tuple[list[_Op], Exception | None, int]:
        """:meth:`_store` through ``order`` (see the class docstring); also returns how
        many of the writes done were left out as superseded."""
        assert self.order is not None
        loads = self._serializer.loads
        values = {op.key: loads(op.data) for op in ops if op.kind == OP_SET}
        batch = {op.key: (op.version, values.get(op.key, DELETED)) for op in ops}
        sent: list[_Op] = []
        failures: list[Exception] = []
        called = False

        def send(keys: Collection[str]) -> list[str]:
            nonlocal called
            if called:
                raise RuntimeError("write-behind order: send() is called once per batch")
            called = True
            chosen = set(keys)
            done, error = self._store([op for op in ops if op.key in chosen], values)
            sent.extend(done)
            if error is not None:
                failures.append(error)  # handed to the retry once order() is done
            return [op.key for op in done]

        try:
            left_out = set(self.order(batch, send))
        except Exception as exc:
            if called:
                return sent, (failures[0] if failures else exc), 0
            self._warnings.warning(
                "order",
                "write-behind %r: ordering a batch against other processes failed (%r); "
                "storing it unordered",
                self.name,
                exc,
            )
            done, error = self._store(ops, values)
            return done, error, 0
        sent_ids = {id(op) for op in sent}
        superseded = [op for op in ops if op.key in left_out and id(op) not in sent_ids]
        if not called:  # nothing sent: whatever it did not leave out is stored now
            rest = [op for op in ops if op.key not in left_out]
            done, error = self._store(rest, values) if rest else ([], None)
            return superseded + done, error, len(superseded)
        return [*sent, *superseded], (failures[0] if failures else None), len(superseded)

    def _settle(
        self,
        unit: _Unit,
        ops: list[_Op],
        done: list[_Op],
        error: Exception | None,
        superseded: int = 0,
    ) -> _Op | None:
        """Account for an origin call (under _lock); returns a write to dead-letter.
        ``done`` holds the writes that leave the queue, ``superseded`` of them left out
        rather than stored."""
        now = time.monotonic()
        for op in done:
            key = op.key
            if self._ops.get(key) is op:
                del self._ops[key]
                self._live_bytes -= _weight(op.key, op.data)
            else:
                self._fresh[key] = now  # rewritten meanwhile: the new write goes next
        self.stats.superseded += superseded
        if done:
            self.stats.stored += len(done) - superseded
            self._ok_calls += 1
            self._failing = 0
            self._gate = 0.0
        if error is None:
            self.stats.batches += 1
            self._prune_covers()
            return None
        stored = {id(op) for op in done}
        unit.keys = []
        for op in ops:
            if id(op) in stored:
                continue
            unit.keys.append(op.key)
            current = self._ops[op.key]
            if current is not op:
                # Rewritten during the call, which failed: the new write now stands for
                # the old one too (the retry sends it instead), as if coalesced.
                current.cover = op.cover
                current.since = op.since
                self.stats.coalesced += 1
        unit.failures += 1
        self.stats.retries += 1
        if not done:
            self._failing += 1
            self._gate = now + self._backoff(self._failing)
        proven = self._ok_calls > unit.ok_mark  # the origin took other writes meanwhile
        self._warnings.warning(
            "store",
            "write-behind %r: the origin failed to store %d keys (attempt %d of this batch; "
            "retrying with backoff): %r",
            self.name,
            len(unit.keys),
            unit.failures,
            error,
        )
        if len(unit.keys) > 1 and (unit.failures >= POISON_THRESHOLD or (unit.suspect and proven)):
            # Halves, retried at once: the half that works gets through, the one holding
            # the poison key is split again.
            middle = len(unit.keys) // 2
            for half in (unit.keys[:middle], unit.keys[middle:]):
                part = _Unit(half, self._ok_calls, unit.since, suspect=True)
                part.next_at = now
                self._units.append(part)
            return None
        if len(unit.keys) == 1 and unit.failures >= POISON_THRESHOLD and proven:
            return self._ops[unit.keys[0]]
        unit.next_at = now + self._backoff(unit.failures)
        self._units.append(unit)
        return None

    def _dead_letter(self, unit: _Unit, op: _Op, error: Exception) -> None:
        """Move a poison write to the dead-letter file, durably, then off the queue."""
        path = self.dead_letter_path
        line = json.dumps(
            {
                "key": op.key,
                "op": "set" if op.kind == OP_SET else "delete",
                "value": base64.b64encode(op.data).decode() if op.kind == OP_SET else None,
                "serializer": self._serializer.name,
                "error": f"{type(error).__qualname__}: {error}",
                "failures": unit.failures,
                "at": time.time(),
                "seq": op.seq,
            },
            ensure_ascii=False,
        )
        try:
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                data = (line + "\n").encode()
                while data:
                    data = data[os.write(fd, data) :]
                sync_file(fd)
            finally:
                os.close(fd)
            if created:
                fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            # Keep it queued: dropping it is worse than retrying it.
            logger.error(
                "write-behind %r: cannot write the dead-letter file %s (%s); key %r stays queued",
                self.name,
                path,
                exc,
                op.key,
            )
            with self._lock:
                unit.next_at = time.monotonic() + self.retry_max
                self._units.append(unit)
                self._work.notify()
            return
        logger.error(
            "write-behind %r: key %r failed %d times in a batch of its own while the origin "
            "stored other writes; moved it to the dead-letter file %s. Last error: %r",
            self.name,
            op.key,
            unit.failures,
            path,
            error,
        )
        with self._lock:
            current = self._ops.get(op.key)
            if current is op:
                del self._ops[op.key]
                self._live_bytes -= _weight(op.key, op.data)
            elif current is not None:
                self._fresh[op.key] = time.monotonic()  # a newer write: give it its chance
            self.stats.failures += 1
            self._progress.notify_all()

    def _compact_if_needed(self) -> None:
        """Copy the live writes of old segments forward, so those segments can go.

        A segment is deleted only once every write in it is done. While the origin is
        down, or one key keeps failing, that never happens, and rewrites of hot keys would
        grow the journal without bound although the queue holds one write per key. When
        the journal is several segments and more than twice what the queue holds, the
        writes still waiting in old segments are appended again (with new seqs), and the
        next mark lets the old segments go.
        """
        journal = self._journal
        if journal.segment_count < 3:
            return
        if journal.total_bytes <= max(4 * journal.segment_bytes, 2 * self._live_bytes):
            return
        cutoff = journal.current_start_seq
        position = 0
        while True:
            with self._lock:
                if self._closed:
                    return
                chunk: list[_Op] = []
                for op in self._ops.values():  # in seq order: old writes come first
                    if op.seq >= cutoff or len(chunk) >= 1000:
                        break
                    chunk.append(op)
                if not chunk:
                    break
                first, position = journal.append(
                    [(op.kind, op.key, op.data, op.version) for op in chunk]
                )
                for seq, op in enumerate(chunk, first):
                    op.seq = seq
                    del self._ops[op.key]  # back to seq order
                    self._ops[op.key] = op
        if position:
            journal.sync(position)
            with self._lock:
                watermark = self._watermark()
            journal.mark(watermark)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One line of a dead-letter file."""

    key: str
    op: Literal["set", "delete"]
    data: bytes  # the serialized value (empty for a delete)
    serializer: str
    error: str
    failures: int
    at: float  # wall-clock time it was dead-lettered
    path: Path

    def load(self, serializer: Serializer | None = None) -> Any:
        """The value (or :data:`DELETED`), decoded with ``serializer`` (default: the one
        named in the file, with the classes registered in this process)."""
        if self.op == "delete":
            return DELETED
        return make_serializer(serializer if serializer is not None else self.serializer).loads(
            self.data
        )


def read_dead_letters(
    directory: str | os.PathLike[str], name: str | None = None
) -> list[DeadLetter]:
    """Every dead-lettered write in a journal directory (of the queues named ``name``, or
    of all), oldest first per file. To retry them:
    ``queue.submit({d.key: d.load() for d in letters if d.op == "set"})``."""
    letters: list[DeadLetter] = []
    pattern = f"dead-{name}.*.jsonl" if name is not None else "dead-*.jsonl"
    for path in sorted(Path(directory).glob(pattern)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            letters.append(
                DeadLetter(
                    key=entry["key"],
                    op=entry["op"],
                    data=base64.b64decode(entry["value"]) if entry["value"] is not None else b"",
                    serializer=entry["serializer"],
                    error=entry["error"],
                    failures=entry["failures"],
                    at=entry["at"],
                    path=path,
                )
            )
    return letters

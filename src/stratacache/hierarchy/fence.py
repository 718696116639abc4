"""Fencing fills against writes that happen while they are in flight.

A read that misses loads from the origin (or reads a lower level) and then writes what it
got into the levels above. If a ``set``, ``delete`` or ``invalidate`` of the same key runs
in between, the fill would put the value from *before* the write back into the cache,
where it stays until it expires: the classic stale-set race (the problem memcache leases
solve at Facebook). Within one process the fix is cheap: every write takes a number from a
counter and records it against its keys before touching anything; a fill remembers the
counter when its read began, skips the keys written since, and checks once more after
writing, dropping again any key a write raced with.

The record of which key was written when is bounded. Once a key's entry has been pushed
out, the fence cannot tell whether it changed, so for reads older than the oldest entry it
still knows it answers "changed" for every key: a fill is skipped, never wrong. Writes from
other processes are the coherence layer's business.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["SeenVersions", "WriteFence"]


class WriteFence:
    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.epoch = 0
        self._written: OrderedDict[str, int] = OrderedDict()  # key -> epoch of its last write
        self._forgotten = 0  # every write at or before this epoch is no longer recorded

    def now(self) -> int:
        """The epoch a read starts at (pass it to ``changed_since`` before filling)."""
        return self.epoch

    def mark(self, keys: Iterable[str]) -> int:
        """Record a write of ``keys`` (call before the write touches anything)."""
        with self._lock:
            self.epoch += 1
            epoch = self.epoch
            written = self._written
            for key in keys:
                written[key] = epoch
                written.move_to_end(key)
            while len(written) > self.limit:
                _, oldest = written.popitem(last=False)
                self._forgotten = max(self._forgotten, oldest)
            return epoch

    def mark_all(self) -> None:
        """A write of every key (``clear``): every read in flight is stale."""
        with self._lock:
            self.epoch += 1
            self._written.clear()
            self._forgotten = self.epoch

    def changed_since(self, keys: Iterable[str], epoch: int) -> set[str]:
        """The keys among ``keys`` that may have been written after ``epoch``."""
        with self._lock:
            if self._forgotten > epoch:
                return set(keys)
            written = self._written
            return {key for key in keys if written.get(key, 0) > epoch}


class SeenVersions:
    """The highest write version this process has seen per key (its own writes, and
    other processes' announced on the bus), bounded like the fence. A shared level that
    answers an older version than that (an envelope copied back, or a level a write could
    not reach) is not believed: the read goes on as a miss and reloads."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, int] = OrderedDict()

    def saw(self, keys: Iterable[str], versions: Iterable[int]) -> None:
        with self._lock:
            seen = self._seen
            for key, version in zip(keys, versions, strict=False):
                if version > seen.get(key, 0):
                    seen[key] = version
                    seen.move_to_end(key)
            while len(seen) > self.limit:
                seen.popitem(last=False)

    def latest(self, key: str) -> int:
        """The highest write version seen for ``key`` (0: none)."""
        return self._seen.get(key, 0)

    def older(self, key: str, version: int) -> bool:
        known = self._seen.get(key)
        return known is not None and version < known

    def forget(self, keys: Iterable[str]) -> None:
        """The keys were invalidated or deleted: a row made again may start its versions
        anew (an origin's own row versions do), so what was seen no longer applies."""
        with self._lock:
            for key in keys:
                self._seen.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

"""Tags: invalidate a group of entries at once, without scanning any level.

FusionCache's idea, on our levels: invalidating a tag writes one thing, the time it was
invalidated, as an ordinary entry of the shared levels (under a reserved key), and tells
the other processes on the bus. Entries carry their tags and the time they were written
(:class:`~stratacache.entry.Entry`); an entry read from a shared level that is older than
one of its tags' invalidation reads as a miss. Nothing is deleted: the stale entries
expire on their own or are overwritten by the next load.

The in-process level is the exception: its hits take no detour (they are the product),
so it is kept right by dropping keys instead. This process indexes the L1 keys of each
tag as they are written or copied up, and drops them when the tag is invalidated here or
on the bus; a bus reset drops all of L1 anyway.

This process remembers the invalidation times it has seen. With a bus they stay valid
until a reset (the bus announces every new one); without one they are read again from
the shared level after ``recheck`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from ..entry import Entry

__all__ = ["TAG_PREFIX", "TagIndex", "tag_key"]

#: the reserved key prefix under which a tag's invalidation time is stored
TAG_PREFIX = "__stratacache_tag__:"


def tag_key(tag: str) -> str:
    return TAG_PREFIX + tag


class TagIndex:
    def __init__(self, recheck: float = 1.0, limit: int = 100_000) -> None:
        self.recheck = recheck
        self.limit = limit
        self._lock = threading.Lock()
        #: tag -> (invalidated at, when we learnt it on the monotonic clock)
        self._times: dict[str, tuple[float, float]] = {}
        #: tag -> keys of the in-process level that carry it
        self._local: dict[str, set[str]] = {}
        #: a bus keeps the known times current: they need no recheck
        self.announced = False
        #: True once any entry with tags was written or read here: until then, reads
        #: skip the check entirely
        self.used = False

    def unknown(self, tags: Iterable[str]) -> list[str]:
        """The tags whose invalidation time must be read from the shared level."""
        now = time.monotonic()
        with self._lock:
            times = self._times
            return [
                tag
                for tag in tags
                if tag not in times or (not self.announced and now - times[tag][1] > self.recheck)
            ]

    def learn(self, times: Mapping[str, float]) -> None:
        now = time.monotonic()
        with self._lock:
            for tag, at in times.items():
                self._times[tag] = (at, now)
            if len(self._times) > self.limit:  # forget the oldest learnt
                for tag in sorted(self._times, key=lambda t: self._times[t][1])[: self.limit // 10]:
                    del self._times[tag]

    def invalidated(self, tags: Iterable[str], at: float) -> None:
        now = time.monotonic()
        with self._lock:
            for tag in tags:
                known = self._times.get(tag)
                if known is None or known[0] < at:
                    self._times[tag] = (at, now)

    def stale(self, entry: Entry) -> bool:
        """The entry was written before one of its tags was invalidated."""
        with self._lock:
            times = self._times
            for tag in entry.tags:
                known = times.get(tag)
                if known is not None and known[0] >= entry.written_at:
                    return True
        return False

    def index_local(self, entries: Mapping[str, Entry]) -> None:
        """Remember which in-process keys carry which tags."""
        with self._lock:
            for key, entry in entries.items():
                for tag in entry.tags:
                    self._local.setdefault(tag, set()).add(key)

    def local_keys(self, tags: Sequence[str]) -> list[str]:
        """The in-process keys carrying one of ``tags`` (forgotten: they are dropped)."""
        with self._lock:
            keys: set[str] = set()
            for tag in tags:
                keys |= self._local.pop(tag, set())
            return sorted(keys)

    def reset(self) -> None:
        with self._lock:
            self._times.clear()
            self._local.clear()

"""Repairs owed to a level that missed a write or a delete while it was down.

When a shared level is unreachable during ``set``, ``delete`` or ``invalidate``, the
hierarchy skips it and carries on. But the level may still hold the *old* value, and once
it answers again that value would be read, promoted, and served until it expires (forever
with no TTL): a deleted row would come back. FusionCache calls the cure auto-recovery;
here it is a short list per level of the keys it may hold stale. Before the level is used
again, those keys are deleted from it; until that succeeds the level is not read.

The list is bounded. When it overflows (a long outage under heavy writes), the keys are
forgotten and the whole level is marked for clearing instead: this cache's namespace in
that level is emptied before the level is used again. That costs hit ratio, never
correctness.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PendingRepairs"]


class PendingRepairs:
    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.clear_all = False
        #: anything owed: a plain attribute, since every read of every level checks it
        self.owed = False

    def __bool__(self) -> bool:
        return self.owed

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: Iterable[str]) -> None:
        if self.clear_all:
            return
        self.keys.update(dict.fromkeys(keys))
        self.owed = bool(self.keys)
        if len(self.keys) > self.limit:
            self.overflow()

    def overflow(self) -> None:
        """Too much to track (or a failed clear): empty the whole level before reuse."""
        self.clear_all = True
        self.owed = True
        self.keys.clear()

    def done(self, keys: Iterable[str], cleared: bool) -> None:
        """The repair of ``keys`` (or a clear) succeeded. Keys noted meanwhile stay owed."""
        if cleared:
            self.clear_all = False
        for key in keys:
            self.keys.pop(key, None)
        self.owed = self.clear_all or bool(self.keys)

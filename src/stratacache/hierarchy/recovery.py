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

Paying only at the next use is not enough for a level that other processes share. The
level holds the old values for every process, and the other processes have nothing to
repair: the deletes are owed by this one. If it stops using the level (its writers are
done, its breaker is still open after a pause of the server), the other processes read
the old values until they expire. So a shared level that owes anything is also watched
in the background: as soon as its breaker lets a call through again (asking wakes the
breaker's probe, see :meth:`.CircuitBreaker.retry_in`), the deletes are paid and
announced, without waiting for this process to need the level. One watcher per level, on
a daemon thread of its own (a task on an async cache's loop), so that it never keeps a
process from exiting; it ends when nothing is owed or the cache closes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import TransientError
from ..tiers.base import Tier
from .background import Background
from .ops import LevelClear, LevelDelete, Op, Pause, Spawn

if TYPE_CHECKING:
    from .agreement import Announcer

__all__ = ["PendingRepairs", "Recovery"]

logger = logging.getLogger("stratacache")

Flow = Generator[Op, Any, Any]

#: the watcher's first wait, after the failure that owed the deletes, and after each
#: failed repair, doubling up to ``REPAIR_BACKOFF_MAX`` while the store keeps failing
REPAIR_BACKOFF = 0.25
REPAIR_BACKOFF_MAX = 5.0
#: the longest single wait while the breaker is open, so that a cache closed meanwhile
#: stops its watcher promptly
REPAIR_WAIT_MAX = 1.0


class PendingRepairs:
    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.keys: dict[str, None] = {}  # insertion-ordered set
        self.clear_all = False
        #: anything owed: a plain attribute, since every read of every level checks it
        self.owed = False
        #: a background watcher pays this level as soon as it answers (see the module)
        self.watched = False
        #: overflows so far: a clear pays only those it started after
        self.clears = 0
        # The watcher and foreground calls change these from several threads: without
        # the lock, a watcher's done() could compute "nothing owed" just before another
        # thread's add() and then store it, losing the keys added.
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return self.owed

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: Iterable[str]) -> None:
        with self._lock:
            if self.clear_all:
                return
            self.keys.update(dict.fromkeys(keys))
            self.owed = bool(self.keys)
            if len(self.keys) > self.limit:
                self._overflow()

    def overflow(self) -> None:
        """Too much to track (or a failed clear): empty the whole level before reuse."""
        with self._lock:
            self._overflow()

    def _overflow(self) -> None:
        self.clear_all = True
        self.clears += 1
        self.owed = True
        self.keys.clear()

    def done(self, keys: Iterable[str], cleared: int | None = None) -> None:
        """The repair of ``keys`` succeeded, or a clear that began when ``clears`` was
        ``cleared``. Keys noted meanwhile stay owed, and so does a clear owed since."""
        with self._lock:
            if cleared is not None and cleared == self.clears:
                self.clear_all = False
            for key in keys:
                self.keys.pop(key, None)
            self.owed = self.clear_all or bool(self.keys)

    def watch(self) -> bool:
        """Take the watch of this level: True for the one caller that should start a
        watcher, False when one runs already."""
        with self._lock:
            if self.watched:
                return False
            self.watched = True
            return True

    def unwatch(self) -> bool:
        """The watcher stops: True when something was owed meanwhile and it must go on
        (it keeps the watch), False when it has let the watch go."""
        with self._lock:
            if self.owed:
                return True
            self.watched = False
            return False


class Recovery:
    """The hierarchy's repair of levels that missed writes (a mixin of
    :class:`~.flow.Hierarchy`, which sets up the attributes declared here)."""

    levels: list[Tier]
    repairs: list[PendingRepairs]
    background: Background
    announce: Announcer | None
    _level_failed: Callable[[Tier, str, BaseException], None]

    def _owe(self, index: int, keys: Iterable[str] | None) -> Flow:
        """Level ``index`` missed a change of ``keys`` (None: of anything, it must be
        cleared). It is repaired before this process uses it again, and a shared level
        also as soon as it answers (see the module)."""
        pending = self.repairs[index]
        if keys is None:
            pending.overflow()
        else:
            pending.add(keys)
        shared = not self.levels[index].local
        if pending.owed and shared and not self.background.closed and pending.watch():
            try:
                yield Spawn(self._repair_when_back(index), self.background, "repair", True)
            except RuntimeError as exc:  # no thread to be had (the interpreter is exiting)
                pending.watched = False
                logger.debug("level %s: no background repair: %s", self.levels[index].name, exc)

    def _repair_when_back(self, index: int) -> Flow:
        """The watcher of level ``index``: pay its repairs once its breaker lets a call
        through, retrying with a backoff while the store still fails."""
        pending = self.repairs[index]
        level = self.levels[index]
        backoff = REPAIR_BACKOFF
        try:
            yield Pause(backoff)  # a call has just failed: no use asking at once
            while True:
                while pending.owed and not self.background.closed:
                    wait = level.retry_in()
                    if wait > 0:
                        yield Pause(min(wait, REPAIR_WAIT_MAX))
                    elif (yield from self._repair(index)):
                        backoff = REPAIR_BACKOFF
                    else:
                        yield Pause(backoff)
                        backoff = min(2 * backoff, REPAIR_BACKOFF_MAX)
                if self.background.closed or not pending.unwatch():
                    return
        finally:
            # Whatever ended it (done, the cache closed, an error, a cancelled task):
            # the next miss may start a watcher again.
            pending.watched = False

    def _repair(self, index: int) -> Flow:
        """Pay what level ``index`` is owed before using it. Returns False when the
        level is still unreachable: it must not be used yet."""
        pending = self.repairs[index]
        level = self.levels[index]
        with pending._lock:
            keys = list(pending.keys)
            clearing = pending.clear_all
            generation = pending.clears
        try:
            if clearing:
                yield LevelClear(level)
            elif keys:
                yield LevelDelete(level, keys)
        except TransientError as exc:
            self._level_failed(level, "repair", exc)
            return False
        pending.done(keys, cleared=generation if clearing else None)
        if not level.local and self.announce is not None and (clearing or keys):
            # Other processes may have copied into their L1 what this level held instead
            # of the writes it missed: they drop those keys too.
            if clearing:
                self.announce.publish_clear()
            else:
                self.announce.publish_keys(keys)
        if clearing or keys:
            logger.info(
                "level %s (%s) is back: %s",
                level.name,
                level.kind,
                "cleared its namespace" if clearing else f"dropped {len(keys)} stale key(s)",
            )
        return True

"""How many calls a network tier has in flight at once, and a bounded wait for a turn.

A client's connection pool is bounded (``max_connections``); redis-py's default pool
raises ``MaxConnectionsError`` the moment one more caller arrives, so a burst of 65
concurrent misses used to skip the level for the 65th and send it to the origin. A
burst is normal traffic, not an outage: here a caller beyond the bound waits its turn, in
arrival order, for at most ``timeout`` seconds. Each call of a tier uses at most one
connection of each pool at a time (a pipeline is one connection; a cluster call uses
one per node), so ``size`` permits never let a pool run dry.

A wait that runs out raises :class:`~stratacache.errors.PoolTimeoutError`, a transient
error (the level is skipped for that call) taken outside the circuit breaker: every
connection busy says the store is slow or the process is overloaded, and the calls that
hold the connections report the store's health themselves.

The sync face shares one set of permits between threads; the async face has one
semaphore per event loop, as each loop has its own client and pool (see :mod:`.loops`).

When the tier's circuit breaker opens, every caller still waiting for a turn is let go at
once (:meth:`Permits.abandon`): the level is skipped for it, as for a caller arriving
after the breaker opened, instead of waiting out ``pool_timeout`` for a store known to
be down (under CPU contention, that wait was most of a burst's p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from types import TracebackType

from ..errors import PoolTimeoutError, TierUnavailableError
from ..metrics import LevelStats

__all__ = ["Permits"]


class _Turn:
    """A waiting thread's place in line: its lock is released when the turn is handed
    over, or when the wait is abandoned (``skipped``)."""

    __slots__ = ("lock", "skipped")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.skipped = False


class Permits:
    """``with permits:`` around a sync call, ``sem = await permits.acquire()`` then
    ``sem.release()`` around an async one."""

    def __init__(self, tier: str, stats: LevelStats, size: int, timeout: float) -> None:
        self.tier = tier
        self.stats = stats
        self.size = size
        self.timeout = timeout
        self._lock = threading.Lock()
        self._free = size
        self._queue: deque[_Turn] = deque()  # threads waiting, oldest first
        #: per event loop, set when the waits of that loop are abandoned (and replaced)
        self._abandoned: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = (
            weakref.WeakKeyDictionary()
        )
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        #: ``(loop, semaphore)`` of the latest async call: the hot path reads one tuple
        self._last: tuple[asyncio.AbstractEventLoop | None, asyncio.Semaphore | None] = (
            None,
            None,
        )

    # -- sync

    def __enter__(self) -> None:
        with self._lock:  # a C lock: the uncontended path costs two lock operations
            if self._free > 0:
                self._free -= 1
                return
            # In line, first come first served: a freed turn is handed to the oldest
            # waiter, never left for whichever thread runs next to grab (with 200
            # threads on 64 connections, barging starved some callers past the timeout).
            turn = _Turn()
            self._queue.append(turn)
        self.stats.pool_waits += 1
        if not turn.lock.acquire(timeout=self.timeout):
            with self._lock:
                try:
                    self._queue.remove(turn)
                except ValueError:
                    pass  # handed over (or abandoned) just as the wait ran out
                else:
                    raise self._timed_out()
        if turn.skipped:
            raise self._skipped()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._queue:
                self._queue.popleft().lock.release()
            else:
                self._free += 1

    def abandon(self) -> None:
        """Let every caller waiting for a turn go without one (the breaker opened): each
        raises the level's transient error at once. Callable from any thread."""
        with self._lock:
            waiting, self._queue = self._queue, deque()
            loops = list(self._abandoned.items())
            for loop, _ in loops:
                self._abandoned[loop] = asyncio.Event()
        for turn in waiting:
            turn.skipped = True
            turn.lock.release()
        for loop, event in loops:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits on it
                loop.call_soon_threadsafe(event.set)

    # -- async

    async def acquire(self) -> asyncio.Semaphore:
        """A turn on the running loop's semaphore; the caller releases it."""
        loop = asyncio.get_running_loop()
        last_loop, semaphore = self._last
        if last_loop is not loop or semaphore is None:
            semaphore = self._semaphore(loop)
        if not semaphore.locked():
            await semaphore.acquire()  # free: returns without suspending
            return semaphore
        self.stats.pool_waits += 1
        with self._lock:
            abandoned = self._abandoned.get(loop)
            if abandoned is None:
                abandoned = self._abandoned[loop] = asyncio.Event()
        turn = asyncio.ensure_future(semaphore.acquire())
        given_up = asyncio.ensure_future(abandoned.wait())
        try:
            await asyncio.wait(
                (turn, given_up), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            given_up.cancel()
            if not turn.done():
                turn.cancel()
        if turn.done() and not turn.cancelled():
            return semaphore  # ours, even if the wait was abandoned at the same moment
        if abandoned.is_set():
            raise self._skipped()
        raise self._timed_out()

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        with self._lock:
            semaphore = self._loops.get(loop)
            if semaphore is None:
                semaphore = self._loops[loop] = asyncio.Semaphore(self.size)
        self._last = (loop, semaphore)
        return semaphore

    def _skipped(self) -> TierUnavailableError:
        self.stats.skipped += 1
        return TierUnavailableError(
            self.tier,
            "circuit breaker open: skipped while it waited for a connection, without "
            "calling the store",
        )

    def _timed_out(self) -> PoolTimeoutError:
        self.stats.pool_timeouts += 1
        return PoolTimeoutError(
            self.tier,
            f"all {self.size} connections stayed busy for {self.timeout:g}s (pool_timeout); "
            "raise max_connections, or pool_timeout for longer waits",
        )

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
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from types import TracebackType

from ..errors import PoolTimeoutError
from ..metrics import LevelStats

__all__ = ["Permits"]


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
        self._queue: deque[threading.Lock] = deque()  # threads waiting, oldest first
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
            turn = threading.Lock()
            turn.acquire()
            self._queue.append(turn)
        self.stats.pool_waits += 1
        if turn.acquire(timeout=self.timeout):
            return
        with self._lock:
            try:
                self._queue.remove(turn)
            except ValueError:
                return  # handed over just as the wait ran out: the turn is ours
        raise self._timed_out()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            if self._queue:
                self._queue.popleft().release()
            else:
                self._free += 1

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
        try:
            async with asyncio.timeout(self.timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise self._timed_out() from None
        return semaphore

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        with self._lock:
            semaphore = self._loops.get(loop)
            if semaphore is None:
                semaphore = self._loops[loop] = asyncio.Semaphore(self.size)
        self._last = (loop, semaphore)
        return semaphore

    def _timed_out(self) -> PoolTimeoutError:
        self.stats.pool_timeouts += 1
        return PoolTimeoutError(
            self.tier,
            f"all {self.size} connections stayed busy for {self.timeout:g}s (pool_timeout); "
            "raise max_connections, or pool_timeout for longer waits",
        )

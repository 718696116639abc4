"""Stampede control: when many callers miss the same key at once, one loads it.

Single-flight (Go's ``singleflight``, dogpile's lock, Caffeine's per-key compute): the
first caller to miss a key becomes its *leader* and loads it; every caller that misses the
same key while that load is in flight becomes a *waiter* and receives the leader's result
(or the leader's exception) instead of asking the origin again. A burst of N concurrent
misses costs the origin one query, not N.

The bookkeeping is plain data under one lock, so it is testable with threads and no
backend. A caller claims a batch of keys and gets back the keys it leads and the flights
it must wait for; it loads its own keys *before* waiting for anyone else's, so no two
callers can wait on each other. Waiting is the only I/O-like step: a thread waits on a
``threading.Event``; a coroutine awaits an ``asyncio`` future that the leader resolves
through the waiter's own event loop, whichever thread the leader runs on.

The map holds one entry per key being loaded right now and is emptied as loads settle, so
it is bounded by the number of concurrent loads. A leader always settles what it claimed:
with the values, with its error (waiters raise it too), or, when it is cancelled or
interrupted, by abandoning the flights (waiters then load the keys themselves). A waiter
that waits longer than ``wait_timeout`` takes the keys over and loads them itself, so one
stuck load cannot hold every later caller.

A flight that lands leaves a *stamp* behind (a counter per slot of a small table the key
hashes into): a caller that missed a key, then claims it after another caller's load of it
landed, learns from :meth:`SingleFlight.settled_since` that the levels may hold the key now
and reads them again before loading (see the hierarchy's ``_lead``). A slot shared by two
keys only costs a needless second look, never a missed one.

:class:`ReadFlights` does the same for the reads of one shared level: one read of a key at
a time, the callers that want that key meanwhile take its answer. Those are many and short,
so a read in flight is one object for all the keys it asks, which makes no event and no
future until somebody actually waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

__all__ = ["Flight", "Read", "ReadFlights", "SingleFlight"]

_NOT_FOUND = object()

#: slots of the table of stamps a landed flight leaves (a power of two)
_STAMP_SLOTS = 4096
_STAMP_MASK = _STAMP_SLOTS - 1


@dataclass(eq=False)
class Flight:
    """One key's load in progress."""

    key: str
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = _NOT_FOUND
    error: BaseException | None = None
    #: the leader went away without an answer (cancelled, interrupted): waiters load it
    abandoned: bool = False
    #: the answer is a stale value the fail-safe served (the load failed or was slow)
    stale: bool = False
    _futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list
    )

    @property
    def found(self) -> bool:
        return self.value is not _NOT_FOUND

    def _finish(self, lock: threading.Lock) -> None:
        with lock:
            self.done.set()
            futures, self._futures = self._futures, []
        _wake(futures)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake(futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Resolve waiters' futures: at once on this thread's running loop, through its own
    loop (thread-safely) for a waiter elsewhere."""
    if not futures:
        return
    running = asyncio._get_running_loop()
    for loop, future in futures:
        if loop is running:
            _resolve(future)
            continue
        # A closed loop means nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)


class SingleFlight:
    def __init__(self, wait_timeout: float = 30.0) -> None:
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self.joined = 0  # times a caller found a key already in flight and waited for it
        self.coalesced = 0  # keys answered by another caller's load
        #: flights landed so far (with an answer); a read notes it before asking any level
        self.settled = 0
        self._stamps = [0] * _STAMP_SLOTS  # slot -> value of ``settled`` when it landed

    def __len__(self) -> int:
        return len(self._flights)

    def loading(self, key: str) -> bool:
        """Whether a load of ``key`` is in flight right now (a hint: no lock taken)."""
        return key in self._flights

    def claim(self, keys: Sequence[str]) -> tuple[list[Flight], list[Flight]]:
        """Split ``keys`` into flights this caller now leads (it must settle each one:
        ``complete``, ``fail`` or ``abandon``) and flights already loading the others."""
        lead: list[Flight] = []
        wait: list[Flight] = []
        with self._lock:
            flights = self._flights
            for key in keys:
                flight = flights.get(key)
                if flight is None:
                    flight = flights[key] = Flight(key)
                    lead.append(flight)
                else:
                    wait.append(flight)
            self.joined += len(wait)
        return lead, wait

    def take_over(self, stale: Sequence[Flight]) -> list[Flight]:
        """Lead new flights for keys whose leader did not answer in time or went away:
        later callers then wait for this caller instead of the stuck one."""
        fresh = [Flight(flight.key) for flight in stale]
        with self._lock:
            for flight in fresh:
                self._flights[flight.key] = flight
        return fresh

    def settled_since(self, keys: Iterable[str], since: int) -> set[str]:
        """The keys among ``keys`` whose flight may have landed with a value after
        ``settled`` was ``since`` (0: ever): the levels may hold them now."""
        if self.settled == since:
            return set()
        stamps = self._stamps
        return {key for key in keys if stamps[hash(key) & _STAMP_MASK] > since}

    def complete(
        self,
        flights: Iterable[Flight],
        values: Mapping[str, Any],
        stale: Collection[str] = (),
    ) -> None:
        """The leader's load finished (and filled the levels): keys in ``values`` were
        found, the others not. Keys in ``stale`` were answered with a stale value by the
        fail-safe: nothing new is in the levels for them."""
        fresh = {k: v for k, v in values.items() if k not in stale} if stale else values
        for flight in self._settle(flights, found=fresh):
            flight.value = values.get(flight.key, _NOT_FOUND)
            flight.stale = flight.key in stale
            flight._finish(self._lock)

    def fail(self, flights: Iterable[Flight], error: BaseException) -> None:
        for flight in self._settle(flights):
            flight.error = error
            flight._finish(self._lock)

    def abandon(self, flights: Iterable[Flight]) -> None:
        for flight in self._settle(flights):
            flight.abandoned = True
            flight._finish(self._lock)

    def _settle(
        self, flights: Iterable[Flight], *, found: Mapping[str, Any] | None = None
    ) -> list[Flight]:
        """Forget the flights (unless a newer one has taken their key over). ``found``:
        they landed with these values (now in the levels), so a caller that claims one
        of those keys from now on reads the levels again first; stamped under the same
        lock that forgets the flights, so no claim can see the key free and its stamp not
        yet written."""
        settled = list(flights)
        with self._lock:
            if found:
                self.settled += 1
                now = self.settled
                stamps = self._stamps
                for flight in settled:
                    if flight.key in found:
                        stamps[hash(flight.key) & _STAMP_MASK] = now
            for flight in settled:
                if self._flights.get(flight.key) is flight:
                    del self._flights[flight.key]
        return settled

    # -- waiting

    def wait(self, flights: Sequence[Flight], timeout: float | None = None) -> list[Flight]:
        """Block until every flight lands or ``timeout`` (default ``wait_timeout``) has
        passed, measured once for the whole batch; returns the flights that did not land
        in time."""
        deadline = time.monotonic() + (self.wait_timeout if timeout is None else timeout)
        for flight in flights:
            if not flight.done.wait(max(0.0, deadline - time.monotonic())):
                break
        return [flight for flight in flights if not flight.done.is_set()]

    async def await_(self, flights: Sequence[Flight], timeout: float | None = None) -> list[Flight]:
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        for flight in flights:
            with self._lock:
                if flight.done.is_set():
                    continue
                future: asyncio.Future[None] = loop.create_future()
                flight._futures.append((loop, future))
            pending.append(future)
        if pending:
            await asyncio.wait(pending, timeout=self.wait_timeout if timeout is None else timeout)
        return [flight for flight in flights if not flight.done.is_set()]


# ---------------------------------------------------------------------------- level reads


class Read:
    """One read of a shared level in flight, for ``keys``: a caller that wants one of
    them meanwhile waits for its ``entries`` instead of asking the level again.

    ``since`` and ``epoch`` are what the leader noted before sending the read (its
    :attr:`SingleFlight.settled` and its write-fence epoch): an answer taken from this
    read is as old as that, so a waiter counts its own read as begun no later.

    Every read of a shared level makes one, so it is kept cheap: the attributes that
    only matter when somebody waits (or something goes wrong) are class defaults until
    set."""

    __slots__ = ("__dict__", "done", "entries", "epoch", "keys", "since")

    #: the level could not answer
    error: BaseException | None = None
    #: the leader went away without an answer (cancelled, interrupted, a bug)
    abandoned: bool = False
    #: a waiter took some of its keys over (see ReadFlights.take_over)
    replaced: bool = False
    _event: threading.Event | None = None  # made by the first thread to wait
    _futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] | None = None

    def __init__(self, keys: Sequence[str], since: int, epoch: int) -> None:
        self.keys = keys
        self.since = since
        self.epoch = epoch
        self.entries: Mapping[str, Any] | None = None
        self.done = False

    def __repr__(self) -> str:
        state = "done" if self.done else "in flight"
        return f"<Read {list(self.keys)!r} {state}>"


_NO_WAITS: list[tuple[str, Read]] = []  # never appended to


class ReadFlights:
    """The reads of one shared level in flight in this process, by key: at most one read
    of a key at a time; callers that want a key meanwhile wait for that read's answer.

    A caller claims the keys it is about to read: it gets the :class:`Read` it leads (for
    the keys nobody is reading; None when there are none), which it settles right after
    the level answers (``complete``, ``fail``, ``abandon``), and ``(key, read)`` pairs for
    the others, to wait for *after* its own read, so no two callers wait on each other. A
    waiter whose read did not land within ``wait_timeout``, or whose leader went away,
    takes those keys over and reads them itself."""

    def __init__(self, wait_timeout: float = 10.0) -> None:
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._reading: dict[str, Read] = {}
        self.joined = 0  # keys a caller found being read already and waited for

    def __len__(self) -> int:
        return len(self._reading)

    def claim(
        self, keys: Sequence[str], since: int, epoch: int
    ) -> tuple[Read | None, list[tuple[str, Read]]]:
        # No lock: every change of the map is one atomic dict operation (under the GIL,
        # as the L1 front door's reads are). Only waiters lock, among themselves.
        read = Read(keys, since, epoch)
        reading = self._reading
        if len(keys) == 1:  # the common case, kept short
            key = keys[0]
            other = reading.setdefault(key, read)
            if other is read:
                return read, _NO_WAITS
            self.joined += 1
            return None, [(key, other)]
        if not reading:  # nothing in flight at all (a race here costs one extra read)
            reading.update(dict.fromkeys(keys, read))
            return read, _NO_WAITS
        mine: list[str] = []
        waits: list[tuple[str, Read]] = []
        claim = reading.setdefault
        for key in keys:
            other = claim(key, read)
            if other is read:
                mine.append(key)
            else:
                waits.append((key, other))
        if not waits:
            return read, _NO_WAITS
        self.joined += len(waits)
        if not mine:
            return None, waits
        read.keys = mine
        return read, waits

    def take_over(self, keys: Sequence[str], since: int, epoch: int) -> Read:
        """Lead a new read of ``keys``, whose read in flight did not answer in time or
        went away: later callers wait for this one instead."""
        read = Read(keys, since, epoch)
        reading = self._reading
        for key in keys:
            old = reading.get(key)
            if old is not None:
                old.replaced = True
            reading[key] = read
        return read

    def complete(self, read: Read, entries: Mapping[str, Any]) -> None:
        """The level answered: ``entries`` for the keys it holds, the others missed."""
        read.entries = entries
        self._settle(read)

    def fail(self, read: Read, error: BaseException) -> None:
        """The level could not answer (waiters skip it for these keys, as the leader
        does)."""
        read.error = error
        self._settle(read)

    def abandon(self, read: Read) -> None:
        read.abandoned = True
        self._settle(read)

    def _settle(self, read: Read) -> None:
        """Forget the read (where no other has taken its keys over), then wake whoever
        waits. Lock-free, as ``claim``: ``done`` is set before the waiters are looked
        at, and a waiter registers before it looks at ``done``, so either this sees the
        waiter or the waiter sees ``done``."""
        reading = self._reading
        keys = read.keys
        if len(keys) == 1:
            key = keys[0]
            if reading.get(key) is read:
                reading.pop(key, None)
        elif not read.replaced:
            deque(map(reading.pop, keys, repeat(None)), maxlen=0)
        else:
            for key in keys:
                if reading.get(key) is read:
                    reading.pop(key, None)
        read.done = True
        event, futures = read._event, read._futures
        if event is not None:
            event.set()
        if futures:
            _wake(list(futures))

    # -- waiting

    def wait(self, reads: Sequence[Read]) -> list[Read]:
        """Block until every read lands or ``wait_timeout`` has passed (once for the whole
        batch); returns the reads that did not land in time."""
        deadline = time.monotonic() + self.wait_timeout
        for read in reads:
            with self._lock:  # one event per read, shared by its waiting threads
                event = read._event
                if event is None:
                    event = read._event = threading.Event()
            if read.done:  # landed (maybe before the event was there to be set)
                continue
            if not event.wait(max(0.0, deadline - time.monotonic())):
                break
        return [read for read in reads if not read.done]

    async def await_(self, reads: Sequence[Read]) -> list[Read]:
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        for read in reads:
            future: asyncio.Future[None] = loop.create_future()
            with self._lock:
                if read._futures is None:
                    read._futures = []
                read._futures.append((loop, future))
            if read.done:  # landed (maybe before its leader could see this future)
                continue
            pending.append(future)
        if pending:
            await asyncio.wait(pending, timeout=self.wait_timeout)
        return [read for read in reads if not read.done]

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
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Flight", "SingleFlight"]

_NOT_FOUND = object()


@dataclass(eq=False)
class Flight:
    """One key's load in progress."""

    key: str
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = _NOT_FOUND
    error: BaseException | None = None
    #: the leader went away without an answer (cancelled, interrupted): waiters load it
    abandoned: bool = False
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
        for loop, future in futures:
            # A closed loop means nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SingleFlight:
    def __init__(self, wait_timeout: float = 30.0) -> None:
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}
        self.joined = 0  # times a caller found a key already in flight and waited for it
        self.coalesced = 0  # keys answered by another caller's load

    def __len__(self) -> int:
        return len(self._flights)

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

    def complete(self, flights: Iterable[Flight], values: Mapping[str, Any]) -> None:
        """The leader's load finished: keys in ``values`` were found, the others not."""
        for flight in self._settle(flights):
            flight.value = values.get(flight.key, _NOT_FOUND)
            flight._finish(self._lock)

    def fail(self, flights: Iterable[Flight], error: BaseException) -> None:
        for flight in self._settle(flights):
            flight.error = error
            flight._finish(self._lock)

    def abandon(self, flights: Iterable[Flight]) -> None:
        for flight in self._settle(flights):
            flight.abandoned = True
            flight._finish(self._lock)

    def _settle(self, flights: Iterable[Flight]) -> list[Flight]:
        """Forget the flights (unless a newer one has taken their key over)."""
        settled = list(flights)
        with self._lock:
            for flight in settled:
                if self._flights.get(flight.key) is flight:
                    del self._flights[flight.key]
        return settled

    # -- waiting

    def wait(self, flights: Sequence[Flight]) -> list[Flight]:
        """Block until every flight lands or ``wait_timeout`` has passed, measured once
        for the whole batch; returns the flights that did not land in time."""
        deadline = time.monotonic() + self.wait_timeout
        for flight in flights:
            if not flight.done.wait(max(0.0, deadline - time.monotonic())):
                break
        return [flight for flight in flights if not flight.done.is_set()]

    async def await_(self, flights: Sequence[Flight]) -> list[Flight]:
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
            await asyncio.wait(pending, timeout=self.wait_timeout)
        return [flight for flight in flights if not flight.done.is_set()]

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

The map holds one entry per key being loaded right now and is emptied as loads finish, so
it is bounded by the number of concurrent loads; a waiter that waits longer than
``wait_timeout`` stops waiting and loads the key itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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

    def claim(self, keys: Sequence[str]) -> tuple[list[str], list[Flight]]:
        """Split ``keys`` into those this caller must load (now registered as in flight)
        and the flights already loading the others."""
        lead: list[str] = []
        wait: list[Flight] = []
        with self._lock:
            flights = self._flights
            for key in keys:
                flight = flights.get(key)
                if flight is None:
                    flights[key] = Flight(key)
                    lead.append(key)
                else:
                    wait.append(flight)
            self.joined += len(wait)
        return lead, wait

    def complete(self, keys: Iterable[str], values: Mapping[str, Any]) -> None:
        """The leader's load finished: keys in ``values`` were found, the others not."""
        for flight in self._pop(keys):
            flight.value = values.get(flight.key, _NOT_FOUND)
            flight._finish(self._lock)

    def fail(self, keys: Iterable[str], error: BaseException) -> None:
        for flight in self._pop(keys):
            flight.error = error
            flight._finish(self._lock)

    def _pop(self, keys: Iterable[str]) -> list[Flight]:
        with self._lock:
            return [f for key in keys if (f := self._flights.pop(key, None)) is not None]

    # -- waiting

    def wait(self, flights: Sequence[Flight]) -> list[Flight]:
        """Block until every flight lands or the timeout passes; returns the flights
        that did not land in time (their keys are the caller's to load)."""
        late: list[Flight] = []
        for flight in flights:
            if not flight.done.wait(self.wait_timeout):
                late.append(flight)
        return late

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

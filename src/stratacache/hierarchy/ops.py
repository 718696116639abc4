"""The I/O requests the hierarchy's flows yield, and how each is carried out.

A flow (see :mod:`.flow`) is a generator that decides *what* to do and yields one of these
operations whenever it needs I/O; a driver (:mod:`.sync` or :mod:`.aio`) performs it and
sends the result back. Each operation knows how to run itself both ways, which is the only
place where sync and async differ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from ..metrics import LatencyHistogram
from ..origin import Origin, call_async, call_sync
from ..stampede import Flight, Read, ReadFlights, SingleFlight
from ..tiers.base import Prepared, Tier

__all__ = [
    "LevelClear",
    "LevelClose",
    "LevelDelete",
    "LevelGet",
    "LevelWrite",
    "LoadCall",
    "Op",
    "OriginClose",
    "OriginDelete",
    "OriginStore",
    "WaitFlights",
    "WaitReads",
]


class Op:
    #: where the operation records its duration (None: not timed)
    histogram: LatencyHistogram | None = None

    def run(self) -> Any:
        raise NotImplementedError

    async def arun(self) -> Any:
        raise NotImplementedError


class LevelGet(Op):
    """Read ``keys`` from a level, timing remote levels. A plain class rather than a
    dataclass: every read makes one, and this one is built in half the time."""

    def __init__(self, tier: Tier, keys: Sequence[str]) -> None:
        self.tier = tier
        self.keys = keys
        self.histogram = None if tier.local else tier.stats.latency

    def __repr__(self) -> str:
        return f"LevelGet(tier={self.tier!r}, keys={self.keys!r})"

    def run(self) -> Any:
        histogram = self.histogram
        if histogram is None:
            return self.tier.get_many(self.keys)
        start = perf_counter_ns()  # timed here, not through histogram.timed: a hot path
        try:
            return self.tier.get_many(self.keys)
        finally:
            histogram.record(perf_counter_ns() - start)

    async def arun(self) -> Any:
        histogram = self.histogram
        if histogram is None:  # in-process: answered inline, nothing awaited
            return self.tier.get_many(self.keys)
        start = perf_counter_ns()
        try:
            return await self.tier.aget_many(self.keys)
        finally:
            histogram.record(perf_counter_ns() - start)


@dataclass
class LevelWrite(Op):
    tier: Tier
    prepared: Prepared

    def run(self) -> Any:
        return self.tier.write(self.prepared)

    async def arun(self) -> Any:
        return await self.tier.awrite(self.prepared)


@dataclass
class LevelDelete(Op):
    tier: Tier
    keys: Sequence[str]

    def run(self) -> Any:
        return self.tier.delete_many(self.keys)

    async def arun(self) -> Any:
        return await self.tier.adelete_many(self.keys)


@dataclass
class LevelClear(Op):
    tier: Tier

    def run(self) -> Any:
        return self.tier.clear()

    async def arun(self) -> Any:
        return await self.tier.aclear()


@dataclass
class LoadCall(Op):
    """Ask a loader (a callable, or an origin's ``load_many``) for ``keys``."""

    loader: Callable[[list[str]], Any]
    keys: list[str]
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: a native coroutine version (an origin's aload_many); None: await what loader returns
    aloader: Callable[[list[str]], Any] | None = None

    def run(self) -> Any:
        return self.histogram.timed(call_sync, self.loader, self.keys)

    async def arun(self) -> Any:
        return await self.histogram.atimed(call_async(self.aloader or self.loader, self.keys))


@dataclass
class OriginStore(Op):
    origin: Origin
    items: Mapping[str, Any]

    def run(self) -> Any:
        return self.origin.store_many(self.items)

    async def arun(self) -> Any:
        return await self.origin.astore_many(self.items)


@dataclass
class OriginDelete(Op):
    origin: Origin
    keys: Sequence[str]

    def run(self) -> Any:
        return self.origin.delete_many(self.keys)

    async def arun(self) -> Any:
        return await self.origin.adelete_many(self.keys)


@dataclass
class WaitFlights(Op):
    """Wait for loads another caller has in flight; returns the flights still unfinished
    when the wait timed out."""

    single_flight: SingleFlight
    flights: list[Flight]

    def run(self) -> Any:
        return self.single_flight.wait(self.flights)

    async def arun(self) -> Any:
        return await self.single_flight.await_(self.flights)


class WaitReads(Op):
    """Wait for reads of a shared level that other callers have in flight (for keys this
    caller wants too); returns the reads still unanswered when the wait timed out."""

    def __init__(
        self, tier: Tier, reads: ReadFlights, pending: list[Read], keys: list[str]
    ) -> None:
        self.tier = tier
        self.reads = reads
        self.pending = pending
        self.keys = keys  # what this caller wants from them

    def __repr__(self) -> str:
        return f"WaitReads(tier={self.tier!r}, pending={self.pending!r})"

    def run(self) -> Any:
        return self.reads.wait(self.pending)

    async def arun(self) -> Any:
        return await self.reads.await_(self.pending)


@dataclass
class LevelClose(Op):
    tier: Tier

    def run(self) -> Any:
        return self.tier.close()

    async def arun(self) -> Any:
        return await self.tier.aclose()


@dataclass
class OriginClose(Op):
    origin: Origin

    def run(self) -> Any:
        return self.origin.close()

    async def arun(self) -> Any:
        return await self.origin.aclose()

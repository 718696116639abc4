"""The I/O requests the hierarchy's flows yield, and how each is carried out.

A flow (see :mod:`.flow`) is a generator that decides *what* to do and yields one of these
operations whenever it needs I/O; a driver (:mod:`.sync` or :mod:`.aio`) performs it and
sends the result back. Each operation knows how to run itself both ways, which is the only
place where sync and async differ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from ..metrics import LatencyHistogram
from ..origin import Origin, call_async, call_sync
from ..stampede import Flight, Read, ReadFlights, SingleFlight
from ..steps import adrive, drive
from ..tiers.base import CommandTier, Prepared, Tier
from ..tracing import span_for
from .background import Background, log_failure

__all__ = [
    "AwaitLoad",
    "Detach",
    "JournalWrite",
    "LevelClear",
    "LevelClose",
    "LevelDelete",
    "LevelGet",
    "LevelGetStale",
    "LevelRun",
    "LevelWrite",
    "LoadCall",
    "LoadPending",
    "Op",
    "OriginClose",
    "OriginDelete",
    "OriginStore",
    "Pause",
    "Spawn",
    "WaitFlights",
    "WaitReads",
    "aperform",
    "perform",
]


class Op:
    #: where the operation records its duration (None: not timed)
    histogram: LatencyHistogram | None = None

    def run(self) -> Any:
        raise NotImplementedError

    async def arun(self) -> Any:
        raise NotImplementedError

    def span(self) -> str | None:
        """The name of the OpenTelemetry span it runs in (None: none; see
        stratacache.tracing)."""
        return None

    def span_attributes(self) -> dict[str, Any]:
        return {}


def perform(op: Op) -> Any:
    """Run ``op`` in this thread, in a span when it leaves the process and tracing is on."""
    name = op.span()
    if name is not None:
        span = span_for(name, op.span_attributes())
        if span is not None:
            with span:
                return op.run()
    return op.run()


async def aperform(op: Op) -> Any:
    """Await ``op``, in a span when it leaves the process and tracing is on."""
    name = op.span()
    if name is not None:
        span = span_for(name, op.span_attributes())
        if span is not None:
            with span:
                return await op.arun()
    return await op.arun()


class _OnTier(Op):
    """An operation on a level: spanned when the level is not in-process."""

    tier: Tier
    keys: Sequence[str]
    verb = ""

    def span(self) -> str | None:
        return None if self.tier.local else f"stratacache.level.{self.verb}"

    def span_attributes(self) -> dict[str, Any]:
        return {
            "stratacache.level": self.tier.name,
            "stratacache.level.kind": self.tier.kind,
            "stratacache.keys": len(self.keys),
        }


class LevelGet(_OnTier):
    """Read ``keys`` from a level, timing remote levels. A plain class rather than a
    dataclass: every read makes one, and this one is built in half the time."""

    verb = "get"

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
class LevelWrite(_OnTier):
    tier: Tier
    prepared: Prepared
    verb = "write"

    @property
    def keys(self) -> Sequence[str]:  # type: ignore[override]
        return list(self.prepared.items)

    def run(self) -> Any:
        return self.tier.write(self.prepared)

    async def arun(self) -> Any:
        return await self.tier.awrite(self.prepared)


@dataclass
class LevelDelete(_OnTier):
    tier: Tier
    keys: Sequence[str]
    verb = "delete"

    def run(self) -> Any:
        return self.tier.delete_many(self.keys)

    async def arun(self) -> Any:
        return await self.tier.adelete_many(self.keys)


@dataclass
class LevelRun(Op):
    """Run one of a tier's own operations (a generator of its commands, like a claim on
    a shared level) through the tier's sync or async transport."""

    tier: CommandTier
    steps: Generator[Any, Any, Any]

    def run(self) -> Any:
        return self.tier.drive(self.steps)

    async def arun(self) -> Any:
        return await self.tier.adrive(self.steps)


@dataclass
class JournalWrite(Op):
    """Hand ``items`` (and ``deletes``) to the write-behind queue: a durable journal,
    so disk I/O and, under the default policy, an fsync; the async face runs it on a
    thread."""

    behind: Any
    items: Mapping[str, Any]
    deletes: Sequence[str] = ()
    #: the versions the writes took (handed back when the origin has them)
    versions: Mapping[str, int] | None = None

    def run(self) -> Any:
        if self.items:
            self.behind.submit(self.items, self.versions)
        if self.deletes:
            self.behind.submit_deletes(self.deletes, self.versions)

    async def arun(self) -> Any:
        await asyncio.to_thread(self.run)


@dataclass
class Blocking(Op):
    """A call that may block for a while (closing the bus or the write-behind queue):
    inline in sync code, on a thread in async code."""

    call: Callable[[], Any]

    def run(self) -> Any:
        return self.call()

    async def arun(self) -> Any:
        return await asyncio.to_thread(self.call)


@dataclass
class Pause(Op):
    """Wait ``seconds`` (a claim someone else holds: look again shortly)."""

    seconds: float

    def run(self) -> Any:
        time.sleep(self.seconds)

    async def arun(self) -> Any:
        await asyncio.sleep(self.seconds)


@dataclass
class LevelClear(Op):
    tier: Tier

    def run(self) -> Any:
        return self.tier.clear()

    async def arun(self) -> Any:
        return await self.tier.aclear()


@dataclass
class LoadCall(Op):
    """Ask a loader (a callable, or an origin's ``load_many``) for ``keys``.

    With a ``timeout``, the load runs in the ``background`` and the caller waits for it
    at most that long; past it, :class:`LoadPending` is raised with the load still
    running (the flow decides: serve a stale value, wait on, or give up). An async
    cache then runs a plain function on a worker thread, since a call that blocks the
    event loop could not be timed out."""

    loader: Callable[[list[str]], Any]
    keys: list[str]
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: a native coroutine version (an origin's aload_many); None: await what loader returns
    aloader: Callable[[list[str]], Any] | None = None
    timeout: float | None = None
    background: Background | None = None
    #: ``aloader`` would run a plain function on the event loop (see Origin.blocking_aload)
    blocking: bool = False

    def span(self) -> str | None:
        return "stratacache.origin.load"

    def span_attributes(self) -> dict[str, Any]:
        return {"stratacache.keys": len(self.keys)}

    def run(self) -> Any:
        if self.timeout is None or self.background is None:
            return self.histogram.timed(call_sync, self.loader, self.keys)
        future = self.background.submit(self.histogram.timed, call_sync, self.loader, self.keys)
        return _outcome(future, self.timeout)

    async def arun(self) -> Any:
        if self.timeout is None or self.background is None:
            return await self.histogram.atimed(call_async(self.aloader or self.loader, self.keys))
        task = self.background.task(self.histogram.atimed(self._off_loop()))
        return await _aoutcome(task, self.timeout)

    async def _off_loop(self) -> Any:
        if self.blocking or (self.aloader is None and not inspect.iscoroutinefunction(self.loader)):
            result = await asyncio.to_thread(self.loader, self.keys)
        else:
            result = (self.aloader or self.loader)(self.keys)
        if inspect.isawaitable(result):
            result = await result
        return result


class LoadPending(Exception):
    """A load outlived its caller's wait; ``pending`` is the future or task running it."""

    def __init__(self, pending: Any) -> None:
        super().__init__("the load is still running")
        self.pending = pending


def _outcome(future: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise LoadPending(future) from None


async def _aoutcome(task: asyncio.Future[Any], timeout: float | None) -> Any:
    # asyncio.wait, not wait_for: a caller that stops waiting (or is cancelled) must not
    # cancel the load, which the single flight and the background landing count on.
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        raise LoadPending(task)
    return task.result()


@dataclass
class AwaitLoad(Op):
    """Wait longer (at most ``timeout``) for a load that raised :class:`LoadPending`."""

    pending: Any
    timeout: float | None  # None: as long as it takes

    def run(self) -> Any:
        return _outcome(self.pending, self.timeout)

    async def arun(self) -> Any:
        return await _aoutcome(self.pending, self.timeout)


Landing = Callable[[Any], Generator[Any, Any, Any]]


@dataclass
class Detach(Op):
    """Leave a pending load behind: when it finishes, ``land(done)`` (a flow, given the
    finished future or task) runs in the background, filling the levels and settling
    the flights."""

    pending: Any
    land: Landing
    background: Background

    def run(self) -> Any:
        def landed(done: concurrent.futures.Future[Any]) -> None:
            try:
                drive(self.land(done), perform)
            except Exception as exc:
                log_failure("load")(_Failed(exc))

        self.pending.add_done_callback(landed)

    async def arun(self) -> Any:
        background = self.background

        def landed(done: asyncio.Future[Any]) -> None:
            if background.closed:
                return
            task = background.task(adrive(self.land(done), aperform))
            task.add_done_callback(log_failure("load"))

        self.pending.add_done_callback(landed)


class _Failed:
    """A finished future-alike holding ``exc``, for :func:`log_failure`."""

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException:
        return self._exc


@dataclass
class Spawn(Op):
    """Run ``flow`` in the background (a refresh-ahead reload, a level's repair once it is
    back); returns at once. ``daemon``: a sync cache runs it on a daemon thread of its
    own, not the pool, for work that may wait for long and must not keep the process
    from exiting (the pool's threads are joined at exit)."""

    flow: Generator[Any, Any, Any]
    background: Background
    what: str = "refresh"
    daemon: bool = False

    def run(self) -> Any:
        if self.daemon:
            flow, failed = self.flow, log_failure(self.what)

            def body() -> None:
                try:
                    drive(flow, perform)
                except Exception as exc:
                    failed(_Failed(exc))

            threading.Thread(target=body, name=f"stratacache-{self.what}", daemon=True).start()
            return
        future = self.background.submit(drive, self.flow, perform)
        future.add_done_callback(log_failure(self.what))

    async def arun(self) -> Any:
        task = self.background.task(adrive(self.flow, aperform))
        task.add_done_callback(log_failure(self.what))


class LevelGetStale(Op):
    """Read ``keys`` from a level including values expired within its ``stale_for``."""

    def __init__(self, tier: Tier, keys: Sequence[str]) -> None:
        self.tier = tier
        self.keys = keys

    def run(self) -> Any:
        return self.tier.get_stale_many(self.keys)

    async def arun(self) -> Any:
        if self.tier.local:
            return self.tier.get_stale_many(self.keys)
        return await self.tier.aget_stale_many(self.keys)


@dataclass
class OriginStore(Op):
    origin: Origin
    items: Mapping[str, Any]

    def span(self) -> str | None:
        return "stratacache.origin.store"

    def span_attributes(self) -> dict[str, Any]:
        return {"stratacache.keys": len(self.items)}

    def run(self) -> Any:
        return self.origin.store_many(self.items)

    async def arun(self) -> Any:
        return await self.origin.astore_many(self.items)


@dataclass
class OriginDelete(Op):
    origin: Origin
    keys: Sequence[str]

    def span(self) -> str | None:
        return "stratacache.origin.delete"

    def span_attributes(self) -> dict[str, Any]:
        return {"stratacache.keys": len(self.keys)}

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
    timeout: float | None = None  # None: the single flight's wait_timeout

    def run(self) -> Any:
        return self.single_flight.wait(self.flights, self.timeout)

    async def arun(self) -> Any:
        return await self.single_flight.await_(self.flights, self.timeout)


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

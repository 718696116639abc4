"""Single-flight: concurrent misses of one key cost the origin one load."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier, OriginError, SQLiteTier
from stratacache.stampede import SingleFlight

pytestmark = pytest.mark.usefixtures("both_implementations")


def test_claim_splits_leaders_and_waiters() -> None:
    flights = SingleFlight()
    lead, wait = flights.claim(["a", "b"])
    assert [f.key for f in lead] == ["a", "b"] and wait == []
    lead2, wait2 = flights.claim(["b", "c"])
    assert [f.key for f in lead2] == ["c"] and [f.key for f in wait2] == ["b"]
    flights.complete(lead, {"b": 2})
    assert wait2[0].done.is_set() and wait2[0].found and wait2[0].value == 2
    flights.fail(lead2, RuntimeError("x"))
    assert len(flights) == 0
    lead3, _ = flights.claim(["a"])  # settled flights are forgotten: a new load may start
    assert [f.key for f in lead3] == ["a"]


def test_a_key_not_found_by_the_leader_is_not_found_for_waiters() -> None:
    flights = SingleFlight()
    lead, _ = flights.claim(["k"])
    _, (flight,) = flights.claim(["k"])
    flights.complete(lead, {})
    assert flight.done.is_set() and not flight.found and not flight.abandoned


def test_abandoned_flight_tells_waiters_to_load_themselves() -> None:
    flights = SingleFlight()
    lead, _ = flights.claim(["k"])
    _, (flight,) = flights.claim(["k"])
    flights.abandon(lead)
    assert flight.done.is_set() and flight.abandoned and len(flights) == 0


def test_take_over_replaces_a_stuck_flight_and_the_stuck_leader_cannot_evict_it() -> None:
    flights = SingleFlight()
    stuck, _ = flights.claim(["k"])
    _, waits = flights.claim(["k"])
    (mine,) = flights.take_over(waits)
    _, (joined,) = flights.claim(["k"])
    assert joined is mine  # later callers wait for the new leader
    flights.complete(stuck, {"k": "old"})  # the stuck leader finally answers
    assert len(flights) == 1  # ... without removing the new flight
    flights.complete([mine], {"k": "new"})
    assert joined.value == "new" and len(flights) == 0


def test_wait_returns_the_flights_that_did_not_land() -> None:
    flights = SingleFlight(wait_timeout=0.01)
    lead, _ = flights.claim(["a", "b", "c"])
    _, waits = flights.claim(["a", "b", "c"])
    flights.complete(lead[1:2], {"b": 1})
    assert [f.key for f in flights.wait(waits)] == ["a", "c"]


class SlowOrigin:
    """Blocks every load until released, counting calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.fail = False

    def __call__(self, keys: list[str]) -> dict[str, Any]:
        self.calls.append(list(keys))
        assert self.release.wait(10), "test never released the origin"
        if self.fail:
            raise RuntimeError("origin exploded")
        return {k: f"value-of-{k}" for k in keys if k != "ghost"}


def _wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


@pytest.mark.parametrize("levels", ["memory", "memory+sqlite"])
def test_threads_missing_the_same_key_share_one_load(tmp_path: Path, levels: str) -> None:
    origin = SlowOrigin()
    tiers: list[Any] = [MemoryTier(100)]
    if levels == "memory+sqlite":
        tiers.append(SQLiteTier(tmp_path / "l2.db"))
    cache = Cache(tiers, origin)
    results: list[Any] = []

    def reader() -> None:
        results.append(cache.get("hot"))

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    # every other thread ends up waiting on the leader's flight, not calling the origin
    _wait_until(lambda: cache._hierarchy.single_flight.joined == 15)
    origin.release.set()
    for t in threads:
        t.join(10)
    assert origin.calls == [["hot"]]
    assert results == ["value-of-hot"] * 16
    cache.close()


def test_waiters_get_the_leaders_error(tmp_path: Path) -> None:
    origin = SlowOrigin()
    origin.fail = True
    cache = Cache([MemoryTier(100)], origin)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            cache.get("k")
        except OriginError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    _wait_until(lambda: cache._hierarchy.single_flight.joined == 7)
    origin.release.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 8
    assert len(origin.calls) == 1
    assert all(isinstance(e.__cause__, RuntimeError) for e in errors)
    cache.close()


def test_tasks_missing_the_same_key_share_one_load() -> None:
    calls: list[list[str]] = []
    gate = asyncio.Event

    async def scenario() -> None:
        release = gate()

        async def load(keys: list[str]) -> dict[str, Any]:
            calls.append(list(keys))
            await release.wait()
            return {k: k.upper() for k in keys}

        cache = AsyncCache([MemoryTier(100)], load)
        tasks = [asyncio.create_task(cache.get("key")) for _ in range(50)]
        batch = asyncio.create_task(cache.get_many(["key", "other"]))
        for _ in range(5):
            await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*tasks) == ["KEY"] * 50
        assert await batch == {"key": "KEY", "other": "OTHER"}
        await cache.close()

    asyncio.run(scenario())
    # one load for "key"; the batch led only "other" and waited for "key"
    assert sorted(calls) == [["key"], ["other"]]


def test_a_cancelled_leader_does_not_leave_waiters_or_later_callers_stuck() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        calls: list[list[str]] = []

        async def load(keys: list[str]) -> dict[str, Any]:
            calls.append(list(keys))
            if len(calls) == 1:
                await release.wait()  # the first load hangs until cancelled
            return {k: "loaded" for k in keys}

        cache = AsyncCache([MemoryTier(100)], load)
        cache._hierarchy.single_flight.wait_timeout = 30
        leader = asyncio.create_task(cache.get("k"))
        while not calls:
            await asyncio.sleep(0)
        waiter = asyncio.create_task(cache.get("k"))
        while cache._hierarchy.single_flight.joined == 0:
            await asyncio.sleep(0)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        # the waiter loads it itself at once, instead of waiting 30 s for the dead leader
        assert await asyncio.wait_for(waiter, timeout=5) == "loaded"
        assert len(cache._hierarchy.single_flight) == 0
        assert await asyncio.wait_for(cache.get("k"), timeout=5) == "loaded"
        await cache.close()

    asyncio.run(scenario())


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt or a library's timeout exception."""


def test_a_base_exception_in_a_loader_releases_the_flight() -> None:
    cache = Cache([MemoryTier(100)], lambda keys: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(Interrupt):
        cache.get("k")
    assert len(cache._hierarchy.single_flight) == 0
    cache.register_loader("k", lambda keys: {k: 1 for k in keys})
    assert cache.get("k") == 1

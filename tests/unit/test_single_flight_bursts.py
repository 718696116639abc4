"""Bursts of concurrent misses of one key: exactly one load, one value for every caller.

Each round, many threads (or asyncio tasks) miss one fresh key; they start together and
then each waits a random moment of up to a few load-times, so that callers keep arriving
before, during and right after the one load: a caller that misses just before the leader
finishes and claims the key just after must find the value in the levels, not load it
again. The loader is slow (the race window is real) and answers every call with a value of
its own, so a second load shows as a second value, not only in a counter.

The harness (:func:`thread_rounds`, :func:`task_rounds`, :class:`CountingLoader`) serves
the remote levels' version of these bursts too (tests/integration/
test_single_flight_remote.py).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier, SQLiteTier
from stratacache.entry import MISSING, Entry
from stratacache.hierarchy.ops import LevelGet, LevelRun, LoadCall

ROUNDS = 10
LOAD_SECONDS = 0.02
#: callers arrive over this many seconds after the start of a round
SPREAD = 3 * LOAD_SECONDS


class CountingLoader:
    """A slow loader that counts its calls per key and answers each call with a value of
    its own (``key#n`` for the n-th load of the key)."""

    def __init__(self, delay: float = LOAD_SECONDS) -> None:
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, keys: list[str]) -> dict[str, Any]:
        with self._lock:
            values = {}
            for key in keys:
                self.calls[key] += 1
                values[key] = f"{key}#{self.calls[key]}"
            return values

    def __call__(self, keys: list[str]) -> dict[str, Any]:
        values = self._count(keys)
        time.sleep(self.delay)
        return values

    async def aload(self, keys: list[str]) -> dict[str, Any]:
        values = self._count(keys)
        await asyncio.sleep(self.delay)
        return values


def round_key(round_no: int) -> str:
    return f"burst:hot-{round_no}"


def _delays(callers: int, rounds: int, spread: float, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.uniform(0, spread) for _ in range(callers)] for _ in range(rounds)]


def thread_rounds(
    get: Callable[[str], Any],
    threads: int,
    rounds: int = ROUNDS,
    spread: float = SPREAD,
    seed: int = 1,
) -> list[list[Any]]:
    """``rounds`` rounds of ``threads`` threads calling ``get(round_key(r))`` (the same
    threads every round, released together by a barrier); what each call returned, per
    round. A call that raises fails the test."""
    results: list[list[Any]] = [[MISSING] * threads for _ in range(rounds)]
    errors: list[BaseException] = []
    delays = _delays(threads, rounds, spread, seed)
    barrier = threading.Barrier(threads)

    def worker(index: int) -> None:
        for round_no in range(rounds):
            try:
                barrier.wait(30)
            except threading.BrokenBarrierError:
                return
            time.sleep(delays[round_no][index])
            try:
                results[round_no][index] = get(round_key(round_no))
            except BaseException as exc:
                errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    assert not any(thread.is_alive() for thread in pool), "a burst never finished"
    assert not errors, f"{len(errors)} call(s) failed, first: {errors[0]!r}"
    return results


async def task_rounds(
    get: Callable[[str], Any],
    tasks: int,
    rounds: int = ROUNDS,
    spread: float = SPREAD,
    seed: int = 1,
) -> list[list[Any]]:
    """The asyncio twin of :func:`thread_rounds`: ``tasks`` tasks a round, each awaiting
    ``get(round_key(r))`` after its random delay."""
    delays = _delays(tasks, rounds, spread, seed)
    results: list[list[Any]] = []

    async def one(round_no: int, index: int) -> Any:
        await asyncio.sleep(delays[round_no][index])
        return await get(round_key(round_no))

    for round_no in range(rounds):
        outcome = await asyncio.gather(
            *(one(round_no, i) for i in range(tasks)), return_exceptions=True
        )
        errors = [item for item in outcome if isinstance(item, BaseException)]
        assert not errors, f"{len(errors)} call(s) failed, first: {errors[0]!r}"
        results.append(list(outcome))
    return results


def assert_one_load_one_value(loader: CountingLoader, results: list[list[Any]]) -> None:
    """Every round: the loader was called once for its key, every caller got that
    load's value."""
    report = []
    for round_no, got in enumerate(results):
        key = round_key(round_no)
        loads = loader.calls[key]
        values = Counter(got)
        if loads != 1 or len(values) != 1 or MISSING in values:
            report.append(f"round {round_no}: {loads} load(s), values {dict(values)}")
    assert not report, "\n".join(report)
    assert all(got[0] == f"{round_key(r)}#1" for r, got in enumerate(results))


# ---------------------------------------------------------------------------- the levels

#: how long a caller may be held up between its miss and its claim (see below)
LAG = 0.001


class LaggingSQLiteTier(SQLiteTier):
    """SQLite whose answers reach the caller a moment late, as a network level's do: a
    caller that missed goes on to claim the key up to ``LAG`` later, long enough for
    another caller's load to land in between."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = super().get_many(keys)
        time.sleep(random.uniform(0, LAG))
        return entries

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        entries = await super().aget_many(keys)
        await asyncio.sleep(random.uniform(0, LAG))
        return entries


def lag_after_l1_miss(cache: Any) -> None:
    """Hold a thread up for a moment right after the L1 front door found nothing, before
    its read claims anything: the thread descheduled at the worst moment, made likely."""
    front = cache._front
    absent = front.absent

    def late_absent(key: str) -> bool:
        answer: bool = absent(key)
        if answer:
            time.sleep(random.uniform(0, LAG))
        return answer

    front.absent = late_absent


def levels(kind: str, tmp_path: Path) -> list[Any]:
    made: list[Any] = [MemoryTier(10_000)]
    if kind == "memory+sqlite":
        made.append(LaggingSQLiteTier(tmp_path / "l2.db"))
    return made


KINDS = ["memory", "memory+sqlite"]


def assert_nothing_left_in_flight(cache: Any) -> None:
    hierarchy = cache._hierarchy
    assert len(hierarchy.single_flight) == 0
    for reads in getattr(hierarchy, "read_flights", ()):
        assert reads is None or len(reads) == 0
    stats = cache.stats()
    assert stats.origin_errors == 0
    assert all(level.errors == 0 for level in stats.levels)


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_threads_missing_one_key_load_it_once_every_round(
    kind: str, tmp_path: Path
) -> None:
    loader = CountingLoader()
    cache = Cache(levels(kind, tmp_path), loader)
    lag_after_l1_miss(cache)
    try:
        results = thread_rounds(cache.get, threads=1000)
        assert_one_load_one_value(loader, results)
        assert_nothing_left_in_flight(cache)
    finally:
        cache.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_threads_through_get_or_load_load_once_every_round(
    kind: str, tmp_path: Path
) -> None:
    # The per-call loader path: the L1 probe, then the flow.
    loader = CountingLoader()
    cache = Cache(levels(kind, tmp_path))
    lag_after_l1_miss(cache)
    try:
        results = thread_rounds(lambda key: cache.get_or_load(key, loader), threads=1000)
        assert_one_load_one_value(loader, results)
        assert_nothing_left_in_flight(cache)
    finally:
        cache.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_tasks_missing_one_key_load_it_once_every_round(
    kind: str, tmp_path: Path
) -> None:
    # (L1 alone, a task cannot be interrupted between its miss and its claim; with a
    # level below L1 it awaits that level in between.)
    loader = CountingLoader()

    async def scenario() -> None:
        cache = AsyncCache(levels(kind, tmp_path), loader.aload)
        try:
            assert_one_load_one_value(loader, await task_rounds(cache.get, tasks=1000))
            assert_nothing_left_in_flight(cache)
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_tasks_on_several_event_loops_share_one_load(tmp_path: Path) -> None:
    # One AsyncCache used from four threads, each with its own event loop: a waiter is
    # woken through its own loop, whichever loop the leader runs on.
    loader = CountingLoader(delay=0.05)
    cache = AsyncCache(levels("memory+sqlite", tmp_path), loader.aload)
    got: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def in_a_loop() -> None:
        async def many() -> list[Any]:
            start.wait(10)
            return list(await asyncio.gather(*(cache.get("mixed") for _ in range(50))))

        values = asyncio.run(many())
        with lock:
            got.extend(values)

    threads = [threading.Thread(target=in_a_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert loader.calls["mixed"] == 1
    assert got == ["mixed#1"] * 200
    asyncio.run(cache.close())


def test_a_leader_that_finds_the_key_filled_after_its_claim_does_not_load() -> None:
    # The hole itself, made deterministic: a caller misses L1, another caller's load
    # lands (fills L1, settles), then the first claims the key: it reads L1 again.
    loader = CountingLoader(delay=0)
    cache = Cache([MemoryTier(100)], loader)
    hierarchy = cache._hierarchy
    late = hierarchy.read(["k"], top_missed=True)  # its L1 miss happened already
    assert cache.get("k") == "k#1"  # another caller loads and fills meanwhile
    assert drive(late, perform) == {"k": "k#1"}
    assert loader.calls["k"] == 1
    assert hierarchy.single_flight.coalesced == 1
    cache.close()


def _miss_while_another_load_lands(
    tmp_path: Path, other: str
) -> tuple[Cache, CountingLoader, Any, Any]:
    """Caller A misses ``other`` in the only level (SQLite) and starts loading it; caller
    B then misses "k" there; A's load then lands (fills SQLite, settles). Returns the
    cache, the loader, and B's flow paused with its miss in hand (and that miss)."""
    loader = CountingLoader(delay=0)
    cache = Cache([SQLiteTier(tmp_path / "only.db")], loader)
    first = cache._hierarchy.read([other])
    load_op = first.send(perform(next(first)))
    while isinstance(load_op, LevelRun):  # A's lease on the shared level
        load_op = first.send(perform(load_op))
    assert isinstance(load_op, LoadCall)  # A: missed, claimed, now loading
    late = cache._hierarchy.read(["k"])
    read_op = next(late)
    assert isinstance(read_op, LevelGet)
    missed = perform(read_op)  # B misses: A has not filled anything yet
    assert missed == {}
    assert drive(first, perform, first=load_op) == {other: f"{other}#1"}  # A lands
    return cache, loader, late, missed


def test_a_shared_level_is_read_again_when_a_load_landed_after_the_miss(tmp_path: Path) -> None:
    # No L1 to look at: B missed SQLite, A's load of the same key then filled it and
    # landed; claiming the key, B reads SQLite again instead of loading it twice.
    cache, loader, late, missed = _miss_while_another_load_lands(tmp_path, "k")
    op = late.send(missed)
    assert isinstance(op, LevelGet)  # the second look, not a LoadCall
    assert drive(late, perform, first=op) == {"k": "k#1"}
    assert loader.calls["k"] == 1
    cache.close()


def test_an_unrelated_landing_does_not_make_a_shared_level_be_read_twice(
    tmp_path: Path,
) -> None:
    cache, loader, late, missed = _miss_while_another_load_lands(tmp_path, "other")
    assert loader.calls["other"] == 1
    op = late.send(missed)
    assert isinstance(op, LevelRun)  # its lease on the shared level...
    op = late.send(perform(op))
    assert isinstance(op, LoadCall)  # ...then straight to the load: no second read
    assert drive(late, perform, first=op) == {"k": "k#1"}
    cache.close()


def perform(op: Any) -> Any:
    return op.run()


def drive(flow: Any, run: Callable[[Any], Any], first: Any = None) -> Any:
    """Run a flow to its end in this thread (optionally from an op already taken)."""
    try:
        op = next(flow) if first is None else first
        while True:
            op = flow.send(run(op))
    except StopIteration as stop:
        return stop.value

"""The compiled L1 Reader and Writer (stratacache._speedups) against the Python closures of
hierarchy/front.py: the same calls, step by step, must leave the same answers, the same
store, the same read buffer and the same counters."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from stratacache import MISSING, MemoryTier, _accel
from stratacache.entry import Entry
from stratacache.errors import ConfigurationError, InvalidKeyError
from stratacache.hierarchy.front import Front
from stratacache.hierarchy.rules import LevelRule

from ..conftest import FakeClock

pytestmark = pytest.mark.skipif(
    _accel.speedups is None, reason="the C speedups are not built here (pure-Python install)"
)


KEYS = [f"k{i}" for i in range(14)]


class Side:
    """One implementation: a store, its front, and the bound reader and writer."""

    def __init__(self, clock: FakeClock, *, compiled: bool, local: bool, ttl: float | None) -> None:
        self.store = MemoryTier(
            8, ttl=ttl, policy="lru", clock=clock.monotonic, wall_clock=clock.time
        )
        self.front = Front(self.store, LevelRule("L1", ttl), random.Random(0), compiled=compiled)
        self.slow_calls: list[tuple[Any, Any]] = []
        slow: Callable[[Any, Any], Any] = self.front.local_miss if local else self._slow
        self.get = self.front.reader(slow, local_misses=local)
        self.set = self.front.writer()

    def _slow(self, key: Any, default: Any) -> Any:
        self.slow_calls.append((key, default))
        return ("slow", default)

    def state(self) -> tuple[Any, ...]:
        stats = self.store.stats
        return (
            dict(self.store.data),
            dict(self.store.negative),
            list(self.store.buffer),
            (stats.hits, stats.misses, stats.writes, stats.evictions),
            [key in self.store.policy for key in KEYS],
            self.slow_calls,
        )


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raised", type(exc))


@pytest.mark.parametrize("local", [True, False], ids=["l1-only", "with-slow-path"])
@pytest.mark.parametrize("ttl", [None, 5.0])
@pytest.mark.parametrize("seed", range(6))
def test_compiled_reader_and_writer_match_the_python_closures(
    local: bool, ttl: float | None, seed: int, clock: FakeClock
) -> None:
    compiled = Side(clock, compiled=True, local=local, ttl=ttl)
    python = Side(clock, compiled=False, local=local, ttl=ttl)
    assert type(compiled.get).__module__ == "stratacache._speedups"
    assert type(compiled.set).__module__ == "stratacache._speedups"
    assert type(python.get).__name__ == "function"
    rng = random.Random(seed)
    keys = KEYS
    for step in range(600):
        choice = rng.random()
        key = rng.choice(keys)
        if choice < 0.45:
            calls = [(side.get, (key,)) for side in (compiled, python)]
        elif choice < 0.5:
            calls = [(side.get, (key, "dflt")) for side in (compiled, python)]
        elif choice < 0.8:
            value_ttl = rng.choice([None, None, 0.5, 2, 3.0, 60])
            calls = [(side.set, (key, step, value_ttl)) for side in (compiled, python)]
        elif choice < 0.85:
            # a remembered "not found", as a fill of the flow would leave it
            entry = {key: Entry(None, clock.time() + rng.choice([0.5, 4.0]), negative=True)}
            calls = [(side.store.set_many, (entry,)) for side in (compiled, python)]
        elif choice < 0.9:
            calls = [(side.store.delete_many, ([key],)) for side in (compiled, python)]
        else:
            clock.advance(rng.choice([0.3, 1.0, 2.5]))
            continue
        results = [outcome(fn, *args) for fn, args in calls]
        assert results[0] == results[1], f"step {step}: {calls[0][1]}"
        assert compiled.state() == python.state(), f"step {step}: {calls[0][1]}"


@pytest.mark.parametrize("local", [True, False])
def test_unusual_calls_are_refused_alike(local: bool, clock: FakeClock) -> None:
    compiled = Side(clock, compiled=True, local=local, ttl=10.0)
    python = Side(clock, compiled=False, local=local, ttl=10.0)
    for side in (compiled, python):
        side.set("k", 1)
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("get", (5,), {}),
        ("get", ("",), {}),
        ("get", (["unhashable"],), {}),
        ("get", (), {"key": "k"}),
        ("get", ("k",), {"default": 3}),
        ("get", ("k",), {"nope": 1}),
        ("get", ("a", "b", "c"), {}),
        ("set", (5, 1), {}),
        ("set", ("", 1), {}),
        ("set", ("k", 1, -1), {}),
        ("set", ("k", 1, "soon"), {}),
        ("set", ("k", 1, 0), {}),
        ("set", ("k",), {}),
        ("set", ("k", 2), {"ttl": 3}),
    ]
    for name, args, kwargs in cases:
        got = []
        for side in (compiled, python):
            try:
                got.append(("ok", getattr(side, name)(*args, **kwargs)))
            except (InvalidKeyError, ConfigurationError, TypeError) as exc:
                got.append(("raised", type(exc)))
        assert got[0] == got[1], (name, args, kwargs)
        assert compiled.state() == python.state(), (name, args, kwargs)


def test_a_reader_left_behind_counts_into_the_same_stats(clock: FakeClock) -> None:
    """Readers keep no counts of their own: any number of them share the level's one
    stats object, so re-binding ``get`` (a new loader) loses and keeps nothing."""
    side = Side(clock, compiled=True, local=True, ttl=None)
    side.set("k", 1)
    readers = [side.front.reader(side.front.local_miss, local_misses=True) for _ in range(5)]
    for reader in readers:
        assert reader("k") == 1
        assert reader("absent") is MISSING
    stats = side.store.stats
    assert (stats.hits, stats.misses) == (5, 5)

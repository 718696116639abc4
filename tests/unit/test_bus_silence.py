"""While the bus is silent (its transport disconnected or not answering), other
processes' writes may not reach this one: in-process copies live at most
``bus_silence_ttl`` seconds; 0 keeps none."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from stratacache import Cache, ConfigurationError, MemoryTier

from ..conftest import FakeClock


class Transport:
    """A bus transport that delivers nothing, healthy or not as the test says."""

    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy
        self.published: list[bytes] = []

    def publish(self, payload: bytes) -> None:
        self.published.append(payload)

    def run(
        self, deliver: Callable[[bytes], None], reset: Callable[[str], None], stop: threading.Event
    ) -> None:
        stop.wait()

    def close(self) -> None:
        pass


def counting_loader() -> tuple[list[str], Callable[[list[str]], dict[str, Any]]]:
    loads: list[str] = []

    def load(keys: list[str]) -> dict[str, Any]:
        loads.extend(keys)
        return {key: len(loads) for key in keys}

    return loads, load


def test_a_silent_bus_keeps_in_process_copies_briefly(clock: FakeClock) -> None:
    transport = Transport(healthy=False)
    loads, load = counting_loader()
    cache = Cache(
        [memory(clock)], load, bus=transport, clock=clock.monotonic, wall_clock=clock.time
    )
    assert cache.get("a") == 1
    clock.advance(0.4)
    assert cache.get("a") == 1 and loads == ["a"]  # still within bus_silence_ttl (0.5 s)
    clock.advance(0.2)
    assert cache.get("a") == 2  # expired: loaded again
    transport.healthy = True  # the bus is back: copies live their normal lifetime
    clock.advance(1.0)
    assert cache.get("a") == 3
    clock.advance(3600)
    assert cache.get("a") == 3 and loads == ["a", "a", "a"]
    assert cache.stats().bus["healthy"] is True
    cache.close()


def test_bus_silence_ttl_zero_keeps_nothing_in_process(clock: FakeClock) -> None:
    _, load = counting_loader()
    cache = Cache(
        [memory(clock)],
        load,
        bus=Transport(healthy=False),
        bus_silence_ttl=0,
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    assert [cache.get("a") for _ in range(3)] == [1, 2, 3]
    cache.close()


def test_bus_silence_ttl_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="bus_silence_ttl"):
        Cache([MemoryTier(10)], lambda keys: {}, bus=None, bus_silence_ttl=-1)


def memory(clock: FakeClock) -> MemoryTier:
    return MemoryTier(100, clock=clock.monotonic, wall_clock=clock.time)

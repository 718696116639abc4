"""Shared fixtures: an injectable clock and a way to run sync and async caches alike."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

# Real servers (Redis, Redis Cluster, memcached, PostgreSQL) for any test that asks.
pytest_plugins = ["tests.server_fixtures"]


class FakeClock:
    """Both clocks a cache uses, moved by hand: ``monotonic()`` for L1, ``time()`` for
    shared levels. Tests advance time instead of sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._mono = 1000.0
        self._wall = start

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Driver:
    """Calls a Cache or an AsyncCache the same way: coroutines are run to completion on
    one event loop, so a hierarchy test is written once and runs against both."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.loop = asyncio.new_event_loop() if mode == "async" else None

    def __call__(self, result: Any) -> Any:
        if inspect.isawaitable(result):
            assert self.loop is not None, "a sync cache returned an awaitable"
            return self.loop.run_until_complete(result)
        return result

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    d = Driver(request.param)
    yield d
    d.close()


@pytest.fixture(params=["c", "python"])
def both_implementations(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C speedups and compiled policies (when built), and again with
    the pure-Python paths and policies."""
    from stratacache import _accel

    if request.param == "python":
        monkeypatch.setattr(_accel, "speedups", None)
        monkeypatch.setattr(_accel, "cpolicies", None)
    elif _accel.speedups is None:
        pytest.skip("the C speedups are not built here (pure-Python install)")
    return str(request.param)


def wait_rejoined(tier: Any, within: float = 5.0) -> None:
    """Let a tier's circuit breaker probe its store (in the background) and close. A
    call after ``breaker_reset`` starts the probe but skips the store itself, so tests
    that need the store back wait for the probe here instead of sleeping."""
    import time

    from stratacache.errors import TierUnavailableError

    breaker = tier.breaker
    if breaker is None:
        return
    deadline = time.monotonic() + within
    while breaker.state != "closed":
        try:
            breaker.check()
        except TierUnavailableError:
            pass
        else:
            breaker.abandoned()  # a probe slot taken by this check: give it back
        if time.monotonic() > deadline:
            raise AssertionError(f"tier {tier.name} did not rejoin within {within}s")
        time.sleep(0.005)

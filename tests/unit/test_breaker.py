"""The circuit breaker's state machine (issue 10, point 2), on a fake clock."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from stratacache.errors import TierUnavailableError
from stratacache.metrics import LevelStats
from stratacache.tiers.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE_POLL,
    CircuitBreaker,
    is_timeout,
)

from ..conftest import FakeClock


def refused() -> TierUnavailableError:
    error = TierUnavailableError("L2", "ConnectionError: Connection refused")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return error


def timed_out() -> TierUnavailableError:
    error = TierUnavailableError("L2", "TimeoutError: Timeout reading from host")
    error.__cause__ = TimeoutError("timed out")
    return error


def make(clock: FakeClock, **options: object) -> tuple[CircuitBreaker, LevelStats, list[str]]:
    stats = LevelStats("L2", "redis")
    moves: list[str] = []
    breaker = CircuitBreaker(
        "L2",
        stats,
        clock=clock.monotonic,
        on_change=lambda before, after, why: moves.append(f"{before}->{after}"),
        **options,  # type: ignore[arg-type]
    )
    return breaker, stats, moves


def test_consecutive_failures_open_it_and_an_open_breaker_refuses_without_io(
    clock: FakeClock,
) -> None:
    breaker, stats, moves = make(clock, failures=3)
    for _ in range(2):
        breaker.check()
        breaker.failed(refused())
    breaker.check()
    breaker.succeeded()  # a success in between starts the count again
    for _ in range(2):
        breaker.check()
        breaker.failed(refused())
    assert breaker.state is CLOSED
    breaker.check()
    breaker.failed(refused())
    assert breaker.state is OPEN and stats.breaker == "open" and stats.breaker_opens == 1
    with pytest.raises(TierUnavailableError, match="circuit breaker open"):
        breaker.check()
    assert stats.skipped == 1
    assert moves == ["closed->open"]


def test_one_timeout_opens_it_at_once(clock: FakeClock) -> None:
    breaker, _, _ = make(clock, failures=5)
    breaker.check()
    breaker.failed(timed_out())
    assert breaker.state is OPEN


def test_half_open_lets_one_probe_through_and_its_answer_decides(clock: FakeClock) -> None:
    breaker, stats, moves = make(clock, failures=1, reset_after=1.0)
    breaker.failed(refused())
    clock.advance(0.9)
    with pytest.raises(TierUnavailableError):
        breaker.check()
    clock.advance(0.2)
    breaker.check()  # the probe
    assert breaker.state is HALF_OPEN
    with pytest.raises(TierUnavailableError, match="half-open"):
        breaker.check()  # others are still refused while it runs
    breaker.failed(refused())
    assert breaker.state is OPEN and stats.breaker_opens == 2
    clock.advance(1.0)
    breaker.check()
    breaker.succeeded()
    assert breaker.state is CLOSED and stats.breaker == "closed"
    breaker.check()
    assert moves == [
        "closed->open",
        "open->half-open",
        "half-open->open",
        "open->half-open",
        "half-open->closed",
    ]


def test_a_probe_that_ends_without_an_answer_frees_the_next_one(clock: FakeClock) -> None:
    breaker, _, _ = make(clock, failures=1, reset_after=1.0)
    breaker.failed(refused())
    clock.advance(1.0)
    breaker.check()  # the probe is cancelled
    breaker.abandoned()
    breaker.check()  # another caller may probe
    assert breaker.state is HALF_OPEN


def test_retry_in_tells_the_wait_without_counting_a_skip(clock: FakeClock) -> None:
    breaker, stats, _ = make(clock, failures=1, reset_after=2.0)
    assert breaker.retry_in() == 0.0
    breaker.failed(refused())
    clock.advance(0.5)
    assert breaker.retry_in() == pytest.approx(1.5)
    assert stats.skipped == 0 and breaker.state is OPEN
    clock.advance(1.5)
    assert breaker.retry_in() == 0.0  # due, no probe of its own: the next call probes
    assert breaker.state is HALF_OPEN
    breaker.check()
    assert breaker.retry_in() == PROBE_POLL  # that call is under way
    breaker.succeeded()
    assert breaker.retry_in() == 0.0 and stats.skipped == 0


def test_retry_in_wakes_the_background_probe_when_due(clock: FakeClock) -> None:
    store_answers = threading.Event()
    asked = threading.Event()

    def probe() -> None:
        asked.set()
        if not store_answers.wait(5):
            raise ConnectionRefusedError(111, "still down")

    breaker, stats, moves = make(clock, failures=1, reset_after=1.0, probe=probe)
    breaker.failed(timed_out())
    assert breaker.retry_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert breaker.retry_in() == PROBE_POLL  # started the probe; look again shortly
    assert asked.wait(5)
    assert breaker.retry_in() == PROBE_POLL  # one probe at a time
    store_answers.set()
    deadline = time.monotonic() + 5
    while breaker.state is not CLOSED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert breaker.retry_in() == 0.0
    assert moves == ["closed->open", "open->half-open", "half-open->closed"]
    assert stats.skipped == 0


def test_timeouts_are_told_from_other_failures() -> None:
    assert is_timeout(timed_out())
    assert not is_timeout(refused())


def test_transitions_are_logged_and_rate_limited(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from stratacache import RedisTier

    tier = RedisTier("redis://127.0.0.1:1", clock=clock.monotonic, breaker_reset=0.5)
    breaker = tier.breaker
    assert breaker is not None
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        breaker.failed(timed_out())
        for _ in range(20):  # probe in the background, fail, open again: 40 transitions
            clock.advance(0.6)
            with pytest.raises(TierUnavailableError, match="skipped"):
                breaker.check()  # the caller never waits for the probe
            deadline = time.monotonic() + 5
            while breaker.state is not OPEN and time.monotonic() < deadline:
                time.sleep(0.001)  # the probe (a refused connection) runs on its thread
    lines = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert 1 <= len(lines) <= 3, lines
    assert "closed -> open" in lines[0]
    assert tier.stats.snapshot().breaker_opens == 21


def test_breaker_options_are_checked() -> None:
    from stratacache import ConfigurationError, RedisTier

    assert RedisTier("redis://127.0.0.1:1", breaker_failures=0).breaker is None
    with pytest.raises(ConfigurationError, match="breaker_failures must be an int >= 0"):
        RedisTier("redis://127.0.0.1:1", breaker_failures=-1)
    with pytest.raises(ConfigurationError, match="breaker_reset"):
        RedisTier("redis://127.0.0.1:1", breaker_reset=0)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "memcached://127.0.0.1:1"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_dead_level_writes_one_line_per_interval_whatever_its_shape(
    url: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: 100 misses against a dead level still wrote 2-3 lines (a skipped
    call, a breaker opening, a memcached server marked down: one subject each). Now they
    share the level's "down" subject, and the half-open probe cycle is debug only."""
    import asyncio

    from stratacache import AsyncCache, Cache, MemoryTier

    loads: list[str] = []

    def origin(keys: list[str]) -> dict[str, int]:
        loads.extend(keys)
        return {k: 1 for k in keys}

    levels = [MemoryTier(1000), url]
    with caplog.at_level(logging.DEBUG, logger="stratacache"):
        if mode == "sync":
            with Cache(levels, origin) as cache:
                for i in range(100):
                    assert cache.get(f"k{i}") == 1
        else:

            async def run() -> None:
                async with AsyncCache(levels, origin) as cache:
                    for i in range(100):
                        assert await cache.get(f"k{i}") == 1

            asyncio.run(run())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loads) == 100
    assert len(warnings) == 1, warnings
    assert "127.0.0.1:1" in warnings[0] or "refused" in warnings[0].lower(), warnings

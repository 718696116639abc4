"""Connection turns (tiers/permits.py): a caller beyond the bound waits its turn, and
every waiter is let go at once when the level's circuit breaker opens."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stratacache import PoolTimeoutError, TierUnavailableError
from stratacache.metrics import LevelStats
from stratacache.tiers.permits import Permits


def permits(size: int = 1, timeout: float = 5.0) -> Permits:
    return Permits("L2", LevelStats("L2", "redis"), size, timeout)


def test_a_waiting_thread_is_let_go_when_the_wait_is_abandoned() -> None:
    turns = permits()
    outcome: list[BaseException | str] = []

    def wait_for_a_turn() -> None:
        try:
            with turns:
                outcome.append("got a turn")
        except BaseException as exc:
            outcome.append(exc)

    with turns:  # the only connection is busy
        waiter = threading.Thread(target=wait_for_a_turn)
        waiter.start()
        time.sleep(0.1)
        began = time.monotonic()
        turns.abandon()  # the breaker opened
        waiter.join(timeout=2)
        assert time.monotonic() - began < 0.5  # not the 5 s pool_timeout
    assert len(outcome) == 1 and isinstance(outcome[0], TierUnavailableError)
    assert not isinstance(outcome[0], PoolTimeoutError)
    assert turns.stats.skipped == 1 and turns.stats.pool_waits == 1
    with turns:  # the turn that was held came back: the next caller gets it at once
        pass


def test_an_unabandoned_wait_still_times_out_or_gets_its_turn() -> None:
    turns = permits(timeout=0.2)
    with turns, pytest.raises(PoolTimeoutError), turns:
        pass
    got: list[str] = []
    turns = permits(timeout=5.0)
    with turns:
        waiter = threading.Thread(target=lambda: turns.__enter__() or got.append("turn"))
        waiter.start()
        time.sleep(0.05)
    waiter.join(timeout=2)
    assert got == ["turn"]


def test_a_waiting_task_is_let_go_when_the_wait_is_abandoned() -> None:
    turns = permits(timeout=5.0)

    async def main() -> tuple[float, BaseException | None]:
        held = await turns.acquire()
        waiter = asyncio.ensure_future(turns.acquire())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        # the breaker opens on another thread (a probe, a failing call elsewhere)
        threading.Thread(target=turns.abandon).start()
        error: BaseException | None = None
        try:
            await waiter
        except TierUnavailableError as exc:
            error = exc
        held.release()
        again = await turns.acquire()  # the semaphore is whole: nothing leaked
        again.release()
        return time.monotonic() - began, error

    waited, error = asyncio.run(main())
    assert waited < 0.5 and isinstance(error, TierUnavailableError)
    assert not isinstance(error, PoolTimeoutError)

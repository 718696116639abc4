"""A circuit breaker per remote tier: a sick store is skipped at once, not waited on.

A store that is down fails fast (connection refused) and one that is hung or paused fails
slowly (every call waits its socket timeout). Either way, calling it on every request
costs each caller that wait and achieves nothing. The breaker watches a tier's calls:

* **closed** (normal): every call goes through. ``failures`` consecutive failures, or a
  single *timeout* (a hung store: waiting for it again would cost another full timeout),
  open it.
* **open**: every call fails at once with :class:`~stratacache.errors.TierUnavailableError`,
  without I/O. The hierarchy skips the level as for any outage, and owes it the deletes
  of what it missed (``hierarchy/recovery.py``), a bounded set, paid before the level
  is used again. After ``reset_after`` seconds it lets one call through:
* **half-open**: that one probe decides: success closes the breaker, failure opens it for
  another ``reset_after``. Other calls keep failing fast while the probe runs.

So a caller waits at most one timeout, and only while the breaker is still closed; the
tier rejoins within about ``reset_after`` of its store recovering. State, transitions and
calls refused are kept in the tier's stats; each transition is logged (rate-limited).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from ..errors import PoolTimeoutError, TierUnavailableError
from ..metrics import LevelStats

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "is_timeout"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"

#: how often :meth:`CircuitBreaker.retry_in` suggests looking again while a probe runs
PROBE_POLL: Final = 0.05


def is_timeout(exc: BaseException) -> bool:
    """Whether a tier's failure was a timeout (the store did not answer in time), from the
    transport's exception that caused it."""
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return True
        exc = exc.__cause__  # type: ignore[assignment]
        seen += 1
    return False


class CircuitBreaker:
    def __init__(
        self,
        tier: str,
        stats: LevelStats,
        *,
        failures: int = 3,
        reset_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
        probe: Callable[[], object] | None = None,
    ) -> None:
        self.tier = tier
        #: asks the store once, raising when it cannot answer. Given, the half-open probe
        #: runs on a background thread and every caller keeps skipping the store until
        #: it answers: no caller ever waits out a timeout on a store still down. Without
        #: one, the first caller after ``reset_after`` is the probe.
        self.probe = probe
        self.stats = stats
        self.failures = failures
        self.reset_after = reset_after
        self.clock = clock
        self.on_change = on_change
        self.state: str = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()
        stats.breaker = CLOSED

    def check(self) -> None:
        """Before a call: return if it may go to the store, else raise at once."""
        if self.state is CLOSED:
            return
        with self._lock:
            if self.state is OPEN and self.clock() - self._opened_at >= self.reset_after:
                self._half_open()
            if self.state is HALF_OPEN and not self._probing:
                self._probing = True
                return
            if self.state is CLOSED:
                return
        self.stats.skipped += 1
        raise TierUnavailableError(
            self.tier, f"circuit breaker {self.state}: skipped without calling the store"
        )

    def retry_in(self) -> float:
        """Seconds before a call would reach the store (0: now), for work that can wait
        for it, such as the deletes a level is owed after an outage. Unlike
        :meth:`check` it never counts a skip. When the breaker is due and has a probe,
        asking starts the probe (a caller would have) and answers a short wait: look
        again once it has decided."""
        if self.state is CLOSED:
            return 0.0
        with self._lock:
            if self.state is OPEN:
                left = self._opened_at + self.reset_after - self.clock()
                if left > 0:
                    return left
                self._half_open()
            if self.state is HALF_OPEN:
                # without a probe of its own the breaker lets the next call be the probe
                return PROBE_POLL if self._probing or self.probe is not None else 0.0
        return 0.0

    def _half_open(self) -> None:
        """``reset_after`` has passed since the breaker opened (the lock is held)."""
        if self.probe is not None:
            self._probing = True
            self._move(HALF_OPEN, "probing the store in the background")
            threading.Thread(
                target=self._run_probe, name=f"stratacache-probe-{self.tier}", daemon=True
            ).start()
        else:
            self._move(HALF_OPEN, "probing the store with one call")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Around one call to the store, sync or async: refused at once when open; its
        outcome (an answer, an outage, neither) moves the breaker."""
        self.check()
        try:
            yield
        except PoolTimeoutError:  # no connection came free: the store was never asked
            self.abandoned()
            raise
        except TierUnavailableError as exc:
            self.failed(exc)
            raise
        except BaseException:  # cancelled, or a permanent error: the probe is free again
            self.abandoned()
            raise
        self.succeeded()

    def _run_probe(self) -> None:
        assert self.probe is not None
        try:
            self.probe()
        except Exception as exc:  # whatever the probe raised, the store did not answer
            self.failed(exc)
        else:
            self.succeeded()

    def succeeded(self) -> None:
        if self.state is CLOSED:
            self._consecutive = 0
            return
        with self._lock:
            self._probing = False
            self._consecutive = 0
            if self.state is not CLOSED:
                self._move(CLOSED, "the store answers again")

    def abandoned(self) -> None:
        """A call ended without an answer either way (cancelled, or a permanent error such
        as refused credentials): it proves nothing, but a probe must not stay taken."""
        if self.state is not CLOSED:
            with self._lock:
                self._probing = False

    def failed(self, exc: BaseException) -> None:
        timeout = is_timeout(exc)
        with self._lock:
            self._consecutive += 1
            if self.state is HALF_OPEN:
                self._probing = False
                self._open(f"the probe failed: {exc}")
            elif self.state is CLOSED and (timeout or self._consecutive >= self.failures):
                why = "a timeout" if timeout else f"{self._consecutive} failures in a row"
                self._open(f"{why}: {exc}")

    def _open(self, why: str) -> None:
        self._opened_at = self.clock()
        self.stats.breaker_opens += 1
        self._move(OPEN, f"{why}; calls skip it for {self.reset_after:g}s")

    def _move(self, state: str, why: str) -> None:
        before, self.state = self.state, state
        self.stats.breaker = state
        if self.on_change is not None:
            self.on_change(before, state, why)

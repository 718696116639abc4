"""Early refresh: reload a hot key before it expires, off the caller's path.

Two triggers, both on an L1 hit, both serving the value at hand while one background
reload (single-flight: never two for a key) replaces it:

* ``refresh_ahead=F``: an entry stored with lifetime T gets a refresh point F*T after it
  was stored; the first hit past that point starts the reload. Later hits before the
  reload lands start nothing (the point is consumed). Stale-while-revalidate in
  Caffeine's sense: between F*T and T readers get the current value at once, and the
  reload, if it lands in time, means the key never misses.
* ``xfetch_beta=B``: probabilistic early expiration (Vattani et al., "Optimal
  Probabilistic Cache Stampede Prevention"): a hit at time t reloads when
  ``t - delta * B * ln(U) >= expiry``, U uniform in (0, 1], delta the origin's mean load
  time. Reloads cluster just before expiry, earlier for slow loads, with no per-key state.

A reload uses each level's own TTL rule (the ``ttl`` of the call that first loaded the
key is not remembered). Refresh needs an in-process first level: the refresh points live
there, and the hit that notices them is an L1 hit. With either option on, L1 hits go
through a Python reader (the compiled one knows nothing of refresh points).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..entry import MISSING
from ..errors import ConfigurationError
from ..tiers.memory import MemoryTier

__all__ = ["Refresh", "refreshing_reader"]


@dataclass(frozen=True, slots=True)
class Refresh:
    ahead: float | None = None
    xfetch_beta: float | None = None

    @classmethod
    def checked(cls, ahead: float | None, xfetch_beta: float | None) -> Refresh:
        if ahead is not None and (
            isinstance(ahead, bool) or not isinstance(ahead, int | float) or not 0 < ahead < 1
        ):
            raise ConfigurationError(
                f"refresh_ahead is a fraction of the TTL in (0, 1), e.g. 0.8 reloads a key "
                f"once 80% of its lifetime has passed; got {ahead!r}"
            )
        if xfetch_beta is not None and (
            isinstance(xfetch_beta, bool)
            or not isinstance(xfetch_beta, int | float)
            or not 0 < xfetch_beta < math.inf
        ):
            raise ConfigurationError(
                f"xfetch_beta must be a number > 0 (1.0 is the usual choice; larger "
                f"refreshes earlier); got {xfetch_beta!r}"
            )
        return cls(ahead, xfetch_beta)

    @property
    def active(self) -> bool:
        return self.ahead is not None or self.xfetch_beta is not None


def refreshing_reader(
    store: MemoryTier,
    refresh: Refresh,
    slow: Callable[[str, Any], Any],
    start: Callable[[str], None],
    load_seconds: Callable[[], float],
    rng: random.Random,
) -> Callable[..., Any]:
    """A ``get(key, default=MISSING)`` over ``store`` that answers hits like the plain
    reader and calls ``start(key)`` when a hit finds the key due for an early reload."""
    data_get = store.data.get
    now = store.clock
    stats = store.stats
    buffer = store.buffer
    record = buffer.append
    limit = store.buffer_limit
    drain = store.drain_from_reader
    refresh_at = store.refresh_at
    beta = refresh.xfetch_beta
    uniform = rng.random
    log = math.log

    def get(key: str, default: Any = MISSING) -> Any:
        try:
            entry = data_get(key)
        except TypeError:  # unhashable: let the slow path name the problem
            entry = None
        if entry is None:
            return slow(key, default)
        t = now()
        expires = entry[1]
        if expires <= t:
            return slow(key, default)
        stats.hits += 1
        record(key)
        if len(buffer) >= limit:
            drain()
        due = refresh_at.get(key)
        if due is not None and t >= due:
            if refresh_at.pop(key, None) is not None:  # one reader wins the point
                start(key)
        elif beta is not None and t - load_seconds() * beta * log(1.0 - uniform()) >= expires:
            start(key)
        return entry[0]

    return get

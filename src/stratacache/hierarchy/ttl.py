"""TTL rules for a hierarchy: per-level lifetimes that never contradict each other.

The rule: an upper level never keeps an entry longer than the level below it. It holds
in two places:

* configuration: a level's ``ttl`` may not exceed the ``ttl`` of any level below it
  (``None`` means "no limit of its own": the level keeps an entry as long as the levels
  below do); :func:`check_ttls` rejects a contradiction, naming both levels;
* every fill: expiries are computed from the bottom level up, and each level's expiry is
  capped by the one below it, so jitter or a per-call TTL can only shorten a copy.

Jitter spreads expiries of entries filled together (a warm-up, a batch load) so they do
not all expire, and all reload, in the same instant. It only ever shortens a lifetime.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..entry import NEVER
from ..errors import ConfigurationError

__all__ = ["check_ttls", "expiries"]


def _fmt(ttl: float) -> str:
    return f"{ttl:g}s"


def check_ttls(names: Sequence[str], ttls: Sequence[float | None]) -> None:
    lowest_below: tuple[float, str] | None = None
    for name, ttl in zip(reversed(names), reversed(ttls), strict=True):
        if ttl is not None:
            if lowest_below is not None and ttl > lowest_below[0]:
                below_ttl, below_name = lowest_below
                raise ConfigurationError(
                    f"level {name} has ttl={_fmt(ttl)} but level {below_name} below it has "
                    f"ttl={_fmt(below_ttl)}: an upper level must never keep an entry longer "
                    f"than a level below it; set {name}'s ttl to at most {_fmt(below_ttl)} "
                    f"(or None to follow the levels below)"
                )
            if lowest_below is None or ttl < lowest_below[0]:
                lowest_below = (ttl, name)


def expiries(
    ttls: Sequence[float | None],
    now: float,
    *,
    ttl: float | None = None,
    cap: float = NEVER,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> list[float]:
    """Wall-clock expiry for each level, computed bottom-up.

    ``ttl`` is a per-call lifetime that every level honours (each keeps the shorter of it
    and its own); ``cap`` is an absolute bound, such as the expiry of the copy being
    promoted from a lower level.
    """
    out = [NEVER] * len(ttls)
    bound = cap
    for index in range(len(ttls) - 1, -1, -1):
        level_ttl = ttls[index]
        lifetime = level_ttl if ttl is None else (ttl if level_ttl is None else min(ttl, level_ttl))
        if lifetime is not None:
            if jitter and rng is not None:
                lifetime *= 1.0 - jitter * rng.random()
            expiry = now + lifetime
            if expiry < bound:
                bound = expiry
        out[index] = bound
    return out

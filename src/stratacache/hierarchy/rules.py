"""Per-level rules: how long each level keeps an entry, and what a value weighs there.

One :class:`LevelRule` per level holds everything that decides what a write stores at
that level: its own TTL bound, the cache's jitter, and (for an in-process level bounded
by weight or value size) its :class:`~stratacache.tiers.base.Sizing`. The hierarchy's
flow computes every fill and write from these objects, and the L1 fast paths
(:mod:`.front`) are built from the same object, so no rule is written twice.

Lifetimes never contradict each other: an upper level never keeps an entry longer than
the level below it. That holds in two places:

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
from dataclasses import dataclass

from ..entry import NEVER
from ..errors import ConfigurationError
from ..tiers.base import Sizing

__all__ = ["LevelRule", "check_ttl", "check_ttls", "expiries"]


@dataclass(frozen=True, slots=True)
class LevelRule:
    name: str
    #: the level's own bound on a lifetime (None: as long as the levels below keep it)
    ttl: float | None
    #: a fraction in [0, 1): each lifetime is shortened by up to this share, at random
    jitter: float = 0.0
    #: how an in-process level weighs values (None: every entry weighs 1, any size fits)
    sizing: Sizing | None = None

    def lifetime(self, ttl: float | None, rng: random.Random | None) -> float | None:
        """Seconds this level keeps an entry written with a per-call ``ttl`` (the shorter
        of the two; None: no expiry), shortened by jitter when ``rng`` is given."""
        own = self.ttl
        lifetime = own if ttl is None else (ttl if own is None or ttl < own else own)
        if lifetime is not None and self.jitter and rng is not None:
            lifetime *= 1.0 - self.jitter * rng.random()
        return lifetime


def check_ttl(ttl: object) -> None:
    """A per-call ``ttl``: a positive number of seconds, or None."""
    if ttl is not None and not (isinstance(ttl, int | float) and ttl > 0):
        raise ConfigurationError(f"ttl must be a positive number of seconds or None, got {ttl!r}")


def check_tags(tags: object) -> tuple[str, ...]:
    """A call's ``tags``: an iterable of non-empty strings (not one string), or None."""
    if tags is None:
        return ()
    if isinstance(tags, str | bytes) or not hasattr(tags, "__iter__"):
        raise ConfigurationError(f"tags is a list of strings, e.g. tags=['user:1'], got {tags!r}")
    checked = tuple(dict.fromkeys(tags))
    for tag in checked:
        if not isinstance(tag, str) or not tag:
            raise ConfigurationError(f"each tag is a non-empty str, got {tag!r}")
    return checked


def _fmt(ttl: float) -> str:
    return f"{ttl:g}s"


def check_ttls(rules: Sequence[LevelRule]) -> None:
    lowest_below: tuple[float, str] | None = None
    for rule in reversed(rules):
        ttl = rule.ttl
        if ttl is None:
            continue
        if lowest_below is not None and ttl > lowest_below[0]:
            below_ttl, below_name = lowest_below
            raise ConfigurationError(
                f"level {rule.name} has ttl={_fmt(ttl)} but level {below_name} below it has "
                f"ttl={_fmt(below_ttl)}: an upper level must never keep an entry longer "
                f"than a level below it; set {rule.name}'s ttl to at most {_fmt(below_ttl)} "
                f"(or None to follow the levels below)"
            )
        if lowest_below is None or ttl < lowest_below[0]:
            lowest_below = (ttl, rule.name)


def expiries(
    rules: Sequence[LevelRule],
    now: float,
    *,
    ttl: float | None = None,
    cap: float = NEVER,
    rng: random.Random | None = None,
) -> list[float]:
    """Wall-clock expiry for each level, computed bottom-up.

    ``ttl`` is a per-call lifetime that every level honours (each keeps the shorter of it
    and its own); ``cap`` is an absolute bound, such as the expiry of the copy being
    promoted from a lower level; ``rng`` turns on each level's jitter.
    """
    out = [NEVER] * len(rules)
    bound = cap
    for index in range(len(rules) - 1, -1, -1):
        lifetime = rules[index].lifetime(ttl, rng)
        if lifetime is not None:
            expiry = now + lifetime
            if expiry < bound:
                bound = expiry
        out[index] = bound
    return out

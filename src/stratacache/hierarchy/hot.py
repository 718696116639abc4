"""Hot keys: which keys the cache is asked for most, and keeping the hottest in L1.

Counting (:class:`~stratacache.hotkeys.HotKeys`) is fed from two places: the hits L1's
read buffer drains (sampled), and, here, the reads that get past L1 (all of them). A
cache with no in-process first level counts every read here instead.

Protection is EVCache's hot-key idea: a key asked for faster than ``threshold`` times a
second is held in L1 for ``ttl`` seconds after a read fetched it from below, outside the
eviction policy (a frequency policy can refuse a key that became hot a moment ago; a
small or scan-churned LRU evicts it between two of its requests). Without it, every
request for such a key between evictions goes to L2 or the origin; with it, at most one
read per ``ttl`` does. A pinned copy can be up to ``ttl`` old when another process writes
the key and the bus is down, which is why ``ttl`` should stay short (the default is 1 s).
Pinned keys are outside the policy's bound: L1 may hold that many entries beyond it (at
most one per ``threshold`` requests/second of traffic).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError
from ..hotkeys import HotKeys
from ..tiers.memory import MemoryTier
from .fence import WriteFence

__all__ = ["HotKeyGuard", "make_hot_keys"]


def make_hot_keys(track: bool | HotKeys, clock: Any) -> HotKeys | None:
    """The cache's counter from its ``hot_keys=`` argument."""
    if isinstance(track, HotKeys):
        return track
    if track is True:
        return HotKeys(clock=clock)
    if track is False:
        return None
    raise ConfigurationError(
        f"hot_keys is True (count), False (do not) or a HotKeys counter, got {track!r}"
    )


class HotKeyGuard:
    """Pins keys hotter than ``threshold`` requests/second in ``store`` for ``ttl`` s."""

    def __init__(
        self, store: MemoryTier, hot: HotKeys, threshold: float, ttl: float, fence: WriteFence
    ) -> None:
        if not threshold > 0:
            raise ConfigurationError(
                f"hot_key_threshold is a rate in requests/second, > 0; got {threshold!r}"
            )
        if not ttl > 0:
            raise ConfigurationError(f"hot_key_ttl must be > 0 seconds, got {ttl!r}")
        self.store = store
        self.hot = hot
        self.threshold = float(threshold)
        self.ttl = float(ttl)
        self.fence = fence
        self.pins = 0  # keys pinned so far

    def hot_among(self, keys: Iterable[str]) -> list[str]:
        rate, threshold = self.hot.rate, self.threshold
        return [key for key in keys if rate(key) >= threshold]

    def keep(self, values: Mapping[str, Any], epoch: int) -> None:
        """After a read that went below L1: pin the hot keys among ``values``.
        ``epoch``: the fence epoch the read began at; a key written since may have a
        newer value than ours, so it is left alone."""
        hot = self.hot_among(values)
        if not hot:
            return
        store = self.store
        with store.lock:
            # Checked under the store's lock: a write marks the fence before it drops L1's
            # copy under this lock, so a pin either sees the mark or is dropped after it.
            written = self.fence.changed_since(hot, epoch)
            expires = store.clock() + self.ttl
            for key in hot:
                if key not in written and store.pin(key, values[key], expires):
                    self.pins += 1

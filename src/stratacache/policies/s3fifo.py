"""S3-FIFO: three static FIFO queues that filter out one-hit wonders quickly.

Follows Yang, Zhang, Qiu, Yue and Vinayak, "FIFO queues are all you need for cache eviction"
(SOSP 2023). Most keys in real workloads are requested once and never again; an LRU lets each
of them travel the whole queue before it goes. S3-FIFO gives newcomers a short probation:

* **small** (10% of the capacity): every new key enters here. When it reaches the end of this
  FIFO, a key that was hit while inside (at least ``move_threshold`` times) moves on to main;
  the others leave, and their keys are remembered in the ghost queue.
* **main** (the rest): a FIFO with CLOCK-like reinsertion. Each key carries a small counter of
  hits (capped at 3); at the end of the queue a key with a non-zero counter is reinserted at the
  front with the counter decremented, a key at zero is evicted.
* **ghost**: keys recently dropped from small, without values, in FIFO order, as many (in
  weight) as main holds. A miss on a ghost key goes straight to main: it was evicted too early.

Hits only bump a counter, never move a key, which is why the algorithm is cheap and scales.
Weighted entries use the same rules with every bound in weight units.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["S3FIFOPolicy"]

SMALL_RATIO = 0.10
MAX_FREQ = 3


class S3FIFOPolicy(PolicyBase):
    name = "s3fifo"

    def __init__(
        self, capacity: int, *, small_ratio: float = SMALL_RATIO, move_threshold: int = 2
    ) -> None:
        super().__init__(capacity)
        if not 0.0 < small_ratio < 1.0:
            raise ValueError(f"S3FIFOPolicy: small_ratio must be in (0, 1), got {small_ratio!r}")
        self._small_max = max(1, int(capacity * small_ratio))
        self._move_threshold = move_threshold
        # Resident keys map to their weight; the hit counters live in one shared dict.
        self._small: OrderedDict[Key, int] = OrderedDict()
        self._main: OrderedDict[Key, int] = OrderedDict()
        self._ghost: OrderedDict[Key, int] = OrderedDict()
        self._freq: dict[Key, int] = {}
        self._small_weight = self._main_weight = self._ghost_weight = 0
        self._evicted = False

    @property
    def weight(self) -> int:
        return self._small_weight + self._main_weight

    def __len__(self) -> int:
        return len(self._freq)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def on_hit(self, key: Key) -> None:
        freq = self._freq
        count = freq.get(key)
        if count is not None and count < MAX_FREQ:
            freq[key] = count + 1

    def on_hits(self, keys: Iterable[Key]) -> None:
        freq = self._freq
        get = freq.get
        for key in keys:
            count = get(key)
            if count is not None and count < MAX_FREQ:
                freq[key] = count + 1

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        freq = self._freq
        count = freq.get(key)
        if count is None:
            self.on_insert(key, weight, cost)
            return False
        if count < MAX_FREQ:
            freq[key] = count + 1
        return True

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._freq:
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        victims: list[Key] = []
        limit = self._capacity - weight
        while self._small_weight + self._main_weight > limit:
            self._evict_one(victims)
        ghost_weight = self._ghost.pop(key, None)
        if ghost_weight is not None:
            self._ghost_weight -= ghost_weight
        self._freq[key] = 0
        if ghost_weight is not None or (
            # Until the first eviction there is no one-hit wonder to filter: once small is
            # full, newcomers fill main directly instead of churning through small.
            not self._evicted and self._small_weight + weight > self._small_max
        ):
            self._main[key] = weight
            self._main_weight += weight
        else:
            self._small[key] = weight
            self._small_weight += weight
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        if key not in self._freq:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        if key in self._small:
            self._small_weight += weight - self._small[key]
            self._small[key] = weight
        else:
            self._main_weight += weight - self._main[key]
            self._main[key] = weight
        victims: list[Key] = []
        while self._small_weight + self._main_weight > self._capacity:
            self._evict_one(victims)
        return victims

    def on_remove(self, key: Key) -> None:
        if self._freq.pop(key, None) is None:
            return
        weight = self._small.pop(key, None)
        if weight is not None:
            self._small_weight -= weight
        else:
            self._main_weight -= self._main.pop(key)

    def clear(self) -> None:
        self._small.clear()
        self._main.clear()
        self._ghost.clear()
        self._freq.clear()
        self._small_weight = self._main_weight = self._ghost_weight = 0
        self._evicted = False

    # -- internals ----------------------------------------------------------------------------

    def _evict_one(self, victims: list[Key]) -> None:
        """Evict one key: from main while it is over its share (or small is empty), else from
        small."""
        self._evicted = True
        if not self._small or self._main_weight > self._capacity - self._small_max:
            self._evict_main(victims)
        else:
            self._evict_small(victims)

    def _evict_small(self, victims: list[Key]) -> None:
        """Walk small from its oldest key until one key leaves the cache."""
        small, main, freq = self._small, self._main, self._freq
        threshold = self._move_threshold
        main_max = self._capacity - self._small_max
        while small:
            key, weight = small.popitem(last=False)
            self._small_weight -= weight
            if freq[key] >= threshold:
                # Proved itself on probation: on to main, with its hits spent.
                freq[key] = 0
                main[key] = weight
                self._main_weight += weight
                if self._main_weight > main_max:
                    self._evict_main(victims)
                    return
            else:
                del freq[key]
                victims.append(key)
                self._remember(key, weight)
                return

    def _evict_main(self, victims: list[Key]) -> None:
        main, freq = self._main, self._freq
        while main:
            key, weight = main.popitem(last=False)
            count = freq[key]
            if count > 0:
                # CLOCK-like second chance: back to the front, one hit spent.
                freq[key] = count - 1
                main[key] = weight
            else:
                del freq[key]
                self._main_weight -= weight
                victims.append(key)
                return

    def _remember(self, key: Key, weight: int) -> None:
        ghost = self._ghost
        ghost[key] = weight
        self._ghost_weight += weight
        # The ghost remembers about as much as main can hold.
        limit = self._capacity - self._small_max
        while self._ghost_weight > limit and ghost:
            self._ghost_weight -= ghost.popitem(last=False)[1]

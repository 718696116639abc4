"""ARC, the Adaptive Replacement Cache, extended to weighted entries.

This follows Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache"
(FAST 2003). The cache is split into two LRU lists: ``T1`` holds keys seen once recently
(recency), ``T2`` keys seen at least twice (frequency). Each has a *ghost* list, ``B1`` and
``B2``, remembering keys recently evicted from it, without their values. The split between T1
and T2 is a moving target ``p``:

* a miss that hits the ghost ``B1`` means "had T1 been a little larger, this would have been a
  hit", so ``p`` grows (recency is paying off);
* a miss that hits ``B2`` means the same for T2, so ``p`` shrinks (frequency is paying off).

The step is larger when the other ghost list is the bigger one (``|B2| / |B1|`` resp.
``|B1| / |B2|``), which is what lets ARC move quickly after a workload shift. When room is
needed, ARC evicts from T1 if it is above its target ``p`` and from T2 otherwise, moving the
victim to the matching ghost list. The directory (T1 + B1, and all four lists together) is
bounded by c and 2c, so ghosts cost no more than one key per cached entry.

**Weights.** The paper counts pages. Here every size and bound is in weight units (entries,
or bytes for a weighted cache): ``p`` is a weight, the ghost lists keep each key's weight, a
ghost hit moves ``p`` by the paper's ratio times the weight of the returning key (the extra
room it would have needed), and evictions repeat until the newcomer fits. With every weight
1 this is exactly the paper's algorithm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["ARCPolicy"]

_List = OrderedDict[Key, int]


class ARCPolicy(PolicyBase):
    name = "arc"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._t1: _List = OrderedDict()
        self._t2: _List = OrderedDict()
        self._b1: _List = OrderedDict()
        self._b2: _List = OrderedDict()
        self._t1_weight = self._t2_weight = self._b1_weight = self._b2_weight = 0
        self._p = 0.0

    @property
    def weight(self) -> int:
        return self._t1_weight + self._t2_weight

    @property
    def target_recency(self) -> float:
        """ARC's ``p``: the weight T1 (keys seen once) should hold."""
        return self._p

    @property
    def ghost_weight(self) -> int:
        return self._b1_weight + self._b2_weight

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    def on_hit(self, key: Key) -> None:
        t1 = self._t1
        if key in t1:
            # A second request: the key moves from the recency list to the frequency list.
            weight = t1.pop(key)
            self._t1_weight -= weight
            self._t2[key] = weight
            self._t2_weight += weight
        elif key in self._t2:
            self._t2.move_to_end(key)

    def on_hits(self, keys: Iterable[Key]) -> None:
        on_hit = self.on_hit
        for key in keys:
            on_hit(key)

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        t2 = self._t2
        if key in t2:
            t2.move_to_end(key)
            return True
        t1 = self._t1
        if key in t1:
            w = t1.pop(key)
            self._t1_weight -= w
            t2[key] = w
            self._t2_weight += w
            return True
        self.on_insert(key, weight, cost)
        return False

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._t1 or key in self._t2:
            return self.on_update(key, weight)
        capacity = self._capacity
        if weight > capacity:
            self._forget(key)
            return [key]
        b1, b2 = self._b1, self._b2
        if key in b1:
            ratio = self._b2_weight / self._b1_weight if self._b2_weight > self._b1_weight else 1.0
            self._p = min(float(capacity), self._p + ratio * weight)
            self._b1_weight -= b1.pop(key)
            victims = self._replace(weight, from_b2=False)
            self._t2[key] = weight
            self._t2_weight += weight
        elif key in b2:
            ratio = self._b1_weight / self._b2_weight if self._b1_weight > self._b2_weight else 1.0
            self._p = max(0.0, self._p - ratio * weight)
            self._b2_weight -= b2.pop(key)
            victims = self._replace(weight, from_b2=True)
            self._t2[key] = weight
            self._t2_weight += weight
        else:
            victims = self._replace(weight, from_b2=False)
            self._t1[key] = weight
            self._t1_weight += weight
        self._trim_ghosts()
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        for resident in (self._t1, self._t2):
            old = resident.get(key)
            if old is None:
                continue
            if weight > self._capacity:
                self.on_remove(key)
                return [key]
            resident[key] = weight
            if resident is self._t1:
                self._t1_weight += weight - old
            else:
                self._t2_weight += weight - old
            victims = self._replace(0, from_b2=False)
            self._trim_ghosts()
            return victims
        return []

    def on_remove(self, key: Key) -> None:
        weight = self._t1.pop(key, None)
        if weight is not None:
            self._t1_weight -= weight
            return
        weight = self._t2.pop(key, None)
        if weight is not None:
            self._t2_weight -= weight

    def clear(self) -> None:
        for lst in (self._t1, self._t2, self._b1, self._b2):
            lst.clear()
        self._t1_weight = self._t2_weight = self._b1_weight = self._b2_weight = 0
        self._p = 0.0

    # -- internals ----------------------------------------------------------------------------

    def _forget(self, key: Key) -> None:
        weight = self._b1.pop(key, None)
        if weight is not None:
            self._b1_weight -= weight
        weight = self._b2.pop(key, None)
        if weight is not None:
            self._b2_weight -= weight

    def _replace(self, incoming: int, *, from_b2: bool) -> list[Key]:
        """The paper's REPLACE, repeated until ``incoming`` more weight fits."""
        victims: list[Key] = []
        limit = self._capacity - incoming
        t1, t2 = self._t1, self._t2
        while self._t1_weight + self._t2_weight > limit:
            if t1 and (
                self._t1_weight > self._p or (from_b2 and self._t1_weight >= self._p) or not t2
            ):
                key, weight = t1.popitem(last=False)
                self._t1_weight -= weight
                self._b1[key] = weight
                self._b1_weight += weight
            else:
                key, weight = t2.popitem(last=False)
                self._t2_weight -= weight
                self._b2[key] = weight
                self._b2_weight += weight
            victims.append(key)
        return victims

    def _trim_ghosts(self) -> None:
        """Keep T1 + B1 within c and the whole directory within 2c."""
        capacity = self._capacity
        b1, b2 = self._b1, self._b2
        while b1 and self._t1_weight + self._b1_weight > capacity:
            self._b1_weight -= b1.popitem(last=False)[1]
        while self.weight + self._b1_weight + self._b2_weight > 2 * capacity:
            if b2:
                self._b2_weight -= b2.popitem(last=False)[1]
            elif b1:
                self._b1_weight -= b1.popitem(last=False)[1]
            else:
                break

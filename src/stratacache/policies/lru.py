"""Least recently used: evict the key whose last access is oldest.

An ``OrderedDict`` keeps keys in recency order (oldest first) with O(1) moves, and maps
each key to its weight.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["LRUPolicy"]


class LRUPolicy(PolicyBase):
    name = "lru"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._order: OrderedDict[Key, int] = OrderedDict()
        self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def on_hit(self, key: Key) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_hits(self, keys: Iterable[Key]) -> None:
        order = self._order
        move = order.move_to_end
        for key in keys:
            if key in order:
                move(key)

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._order:
            # Not a new key: treat it as a weight change, so the weight stays the sum.
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        self._order[key] = weight
        self._weight += weight
        return self._evict()

    def on_update(self, key: Key, weight: int) -> list[Key]:
        old = self._order.get(key)
        if old is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        self._order[key] = weight
        self._order.move_to_end(key)
        self._weight += weight - old
        return self._evict()

    def on_remove(self, key: Key) -> None:
        weight = self._order.pop(key, None)
        if weight is not None:
            self._weight -= weight

    def clear(self) -> None:
        self._order.clear()
        self._weight = 0

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        order = self._order
        if key in order:
            order.move_to_end(key)
            return True
        self.on_insert(key, weight, cost)
        return False

    def _evict(self) -> list[Key]:
        victims: list[Key] = []
        order = self._order
        while self._weight > self._capacity:
            victim, weight = order.popitem(last=False)
            self._weight -= weight
            victims.append(victim)
        return victims

"""GreedyDual-Size-Frequency: keep what is popular, costly to recompute, and small.

Follows Cherkasova, "Improving WWW Proxies Performance with Greedy-Dual-Size-Frequency
Caching Policy" (HP Labs, 1998), itself built on Young's GreedyDual and Cao and Irani's
GreedyDual-Size. Each resident key has a priority

    H = L + frequency * cost / weight

and the key with the lowest H is evicted. ``cost`` is what a miss would cost (the ``cost``
argument of ``on_insert``: load time, CPU, a price), ``weight`` what the entry occupies, and
``frequency`` the number of requests since it was inserted. So an entry expensive to recompute,
or requested often, stays longer; a bulky one pays for its room.

``L`` is the *inflation* value: it starts at 0 and becomes the priority of each victim. A new
or re-requested key is priced relative to the current L, so keys that stop being requested
are overtaken by the rising floor and age out, without any periodic sweep (this is what lets
GreedyDual approximate LRU within each cost class).

Priorities are floats that move arbitrarily, so the keys are kept in a binary heap with lazy
deletion: an update pushes a fresh entry and the stale one is skipped when it surfaces, and the
heap is rebuilt when stale entries outnumber live ones. Requests are O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["GDSFPolicy"]


class GDSFPolicy(PolicyBase):
    name = "gdsf"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        # key -> [priority, frequency, cost, weight, version]
        self._entries: dict[Key, list[float]] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._inflation = 0.0
        self._weight = 0
        self._version = 0

    @property
    def weight(self) -> int:
        return self._weight

    @property
    def inflation(self) -> float:
        """GDSF's ``L``: the priority of the last victim."""
        return self._inflation

    def priority(self, key: Key) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def on_hit(self, key: Key) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            self._reprice(key, entry)

    def on_hits(self, keys: Iterable[Key]) -> None:
        get = self._entries.get
        reprice = self._reprice
        for key in keys:
            entry = get(key)
            if entry is not None:
                reprice(key, entry)

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        entry = self._entries.get(key)
        if entry is None:
            self.on_insert(key, weight, cost)
            return False
        self._reprice(key, entry)
        return True

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._entries:
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        cost = max(float(cost), 0.0)
        victims = self._evict(self._capacity - weight)
        entry = [0.0, 0.0, cost, float(weight), 0.0]
        self._entries[key] = entry
        self._weight += weight
        self._reprice(key, entry)
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        entry = self._entries.get(key)
        if entry is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        self._weight += weight - int(entry[3])
        entry[3] = float(weight)
        # Re-price at the current floor without counting a request.
        entry[1] -= 1
        self._reprice(key, entry)
        return self._evict(self._capacity)

    def on_remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._weight -= int(entry[3])

    def clear(self) -> None:
        self._entries.clear()
        self._heap.clear()
        self._inflation = 0.0
        self._weight = 0

    # -- internals ----------------------------------------------------------------------------

    def _reprice(self, key: Key, entry: list[float]) -> None:
        entry[1] += 1
        # A zero-weight entry is priced as one unit rather than infinitely valuable.
        priority = self._inflation + entry[1] * entry[2] / max(entry[3], 1.0)
        entry[0] = priority
        self._version += 1
        entry[4] = self._version
        heapq.heappush(self._heap, (priority, self._version, key))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._compact()

    def _compact(self) -> None:
        self._heap = [(e[0], int(e[4]), k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)

    def _evict(self, limit: int) -> list[Key]:
        victims: list[Key] = []
        heap, entries = self._heap, self._entries
        while self._weight > limit:
            priority, version, key = heapq.heappop(heap)
            entry = entries.get(key)
            if entry is None or entry[4] != version:
                continue  # stale: the key was re-priced or removed since
            del entries[key]
            self._weight -= int(entry[3])
            self._inflation = priority
            victims.append(key)
        return victims

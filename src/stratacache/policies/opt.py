"""Belady's OPT: the offline optimum, for the simulator only.

Belady, "A study of replacement algorithms for a virtual-storage computer" (IBM Systems
Journal, 1966): when room is needed, evict the resident key whose next request lies farthest
in the future (never requested again counts as infinitely far). For entries of equal weight,
under demand paging (the requested key is always brought in), no policy has fewer misses. It
is the yardstick every online policy is measured against, and it cannot run online: it needs
the future.

So ``OPTPolicy`` is built with the whole trace, precomputes each request's next use in one
backward pass, and must then be **driven request by request in trace order**: every call to
``access``, ``on_hit`` or ``on_insert`` consumes the next request of the trace, and a call
with a different key raises ``ValueError``. ``on_hits`` consumes one request per key.
``on_remove``, ``on_update`` and ``clear`` consume nothing. It is not in the online registry
(``policies.POLICIES``); the simulator builds it directly.

With unequal weights, evicting the farthest key first is no longer optimal (the weighted
problem is NP-hard); the policy still runs, as a strong heuristic, but is then not a bound.
Resident keys sit in a max-heap on next use with lazy deletion, so each request is O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from .base import Key, PolicyBase

__all__ = ["OPTPolicy"]


class OPTPolicy(PolicyBase):
    name = "opt"

    def __init__(self, capacity: int, keys: Sequence[Key]) -> None:
        super().__init__(capacity)
        self._trace = list(keys)
        never = len(self._trace)
        next_use = [never] * never
        seen: dict[Key, int] = {}
        for index in range(never - 1, -1, -1):
            key = self._trace[index]
            next_use[index] = seen.get(key, never)
            seen[key] = index
        self._next_use = next_use
        self._position = 0
        # Resident key -> (its next use, its weight); the heap holds (-next use, seq, key).
        self._resident: dict[Key, tuple[int, int]] = {}
        self._heap: list[tuple[int, int, Key]] = []
        self._weight = 0
        self._seq = 0

    @property
    def weight(self) -> int:
        return self._weight

    @property
    def position(self) -> int:
        """How many requests of the trace have been consumed."""
        return self._position

    def __len__(self) -> int:
        return len(self._resident)

    def __contains__(self, key: object) -> bool:
        return key in self._resident

    def _consume(self, key: Key) -> int:
        """Advance past the next request, which must be for ``key``; return its next use."""
        position = self._position
        if position >= len(self._trace):
            raise ValueError(f"OPTPolicy: the trace has only {len(self._trace)} requests")
        expected = self._trace[position]
        if expected != key:
            raise ValueError(
                f"OPTPolicy must be driven in trace order: request {position} is for "
                f"{expected!r}, got {key!r}"
            )
        self._position = position + 1
        return self._next_use[position]

    def _push(self, key: Key, next_use: int, weight: int) -> None:
        self._resident[key] = (next_use, weight)
        self._seq += 1
        heapq.heappush(self._heap, (-next_use, self._seq, key))
        if len(self._heap) > 2 * len(self._resident) + 64:
            self._heap = [(-n, i, k) for i, (k, (n, _)) in enumerate(self._resident.items())]
            heapq.heapify(self._heap)

    def on_hit(self, key: Key) -> None:
        next_use = self._consume(key)
        entry = self._resident.get(key)
        if entry is not None:
            self._push(key, next_use, entry[1])

    def on_hits(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.on_hit(key)

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        if key in self._resident:
            self.on_hit(key)
            return True
        self.on_insert(key, weight, cost)
        return False

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        next_use = self._consume(key)
        if key in self._resident:
            self._push(key, next_use, self._resident[key][1])
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        # Demand paging: the requested key always comes in; the victims are chosen among the
        # keys already resident.
        victims = self._evict(self._capacity - weight)
        self._push(key, next_use, weight)
        self._weight += weight
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        entry = self._resident.get(key)
        if entry is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        self._resident[key] = (entry[0], weight)
        self._weight += weight - entry[1]
        return self._evict(self._capacity)

    def on_remove(self, key: Key) -> None:
        entry = self._resident.pop(key, None)
        if entry is not None:
            self._weight -= entry[1]

    def clear(self) -> None:
        self._resident.clear()
        self._heap.clear()
        self._weight = 0

    def _evict(self, limit: int) -> list[Key]:
        victims: list[Key] = []
        heap, resident = self._heap, self._resident
        while self._weight > limit:
            negative_next, _, key = heapq.heappop(heap)
            entry = resident.get(key)
            if entry is None or entry[0] != -negative_next:
                continue  # stale: the key was requested again (or removed) since
            del resident[key]
            self._weight -= entry[1]
            victims.append(key)
        return victims

"""SIEVE: one FIFO queue, one visited bit per key, and a hand that sweeps it.

Follows Zhang, Yang, Yue, Vigfusson and Rashmi, "SIEVE is Simpler than LRU: an Efficient
Turn-Key Eviction Algorithm for Web Caches" (NSDI 2024). New keys enter at the head of a
queue and never move. A hit only sets the key's *visited* bit. To evict, a *hand* walks from
where it last stopped toward the head (from older keys to newer ones, wrapping around from the
head to the tail): a visited key has its bit cleared and is passed over, the first unvisited
key is evicted, and the hand stays there for next time.

Unlike CLOCK, survivors are not moved to the head, so keys that were requested once and never
again (one-hit wonders) collect at the newer end, behind the hand's position, and are swept
out on its next passes, while popular keys settle at the old end. This is "lazy promotion and
quick demotion" with a single queue. A doubly linked list keeps removal at the hand O(1).
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["SievePolicy"]


class _Node:
    __slots__ = ("key", "newer", "older", "visited", "weight")

    def __init__(self, key: Key, weight: int) -> None:
        self.key = key
        self.weight = weight
        self.visited = False
        self.newer: _Node | None = None
        self.older: _Node | None = None


class SievePolicy(PolicyBase):
    name = "sieve"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._nodes: dict[Key, _Node] = {}
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None
        self._weight = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def on_hit(self, key: Key) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def on_hits(self, keys: Iterable[Key]) -> None:
        get = self._nodes.get
        for key in keys:
            node = get(key)
            if node is not None:
                node.visited = True

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        node = self._nodes.get(key)
        if node is None:
            self.on_insert(key, weight, cost)
            return False
        node.visited = True
        return True

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._nodes:
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        victims: list[Key] = []
        limit = self._capacity - weight
        while self._weight > limit:
            victims.append(self._evict_one())
        node = _Node(key, weight)
        head = self._head
        node.older = head
        if head is None:
            self._tail = node
        else:
            head.newer = node
        self._head = node
        self._nodes[key] = node
        self._weight += weight
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        node = self._nodes.get(key)
        if node is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        self._weight += weight - node.weight
        node.weight = weight
        victims: list[Key] = []
        while self._weight > self._capacity:
            victims.append(self._evict_one())
        return victims

    def on_remove(self, key: Key) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._unlink(node)
            self._weight -= node.weight

    def clear(self) -> None:
        self._nodes.clear()
        self._head = self._tail = self._hand = None
        self._weight = 0

    # -- internals ----------------------------------------------------------------------------

    def _unlink(self, node: _Node) -> None:
        if self._hand is node:
            # The hand keeps its place in the sweep: the next key toward the head.
            self._hand = node.newer
        newer, older = node.newer, node.older
        if newer is None:
            self._head = older
        else:
            newer.older = older
        if older is None:
            self._tail = newer
        else:
            older.newer = newer
        node.newer = node.older = None

    def _evict_one(self) -> Key:
        node = self._hand or self._tail
        assert node is not None, "eviction from an empty SIEVE"
        while node.visited:
            node.visited = False
            node = node.newer or self._tail
            assert node is not None
        self._hand = node.newer
        del self._nodes[node.key]
        self._unlink(node)
        self._weight -= node.weight
        return node.key

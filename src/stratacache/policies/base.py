"""The policy interface: eviction and admission over keys and weights.

A policy is a pure algorithm. It sees keys, their weights (1 each when a cache is bounded
by entry count, bytes when bounded by size) and optionally a cost (how expensive the value
is to recompute). It never sees values, never reads a clock, does no I/O and keeps no
reference to the store that owns it. The store tells the policy what happened; the policy
answers with the keys the store must drop. That contract is what lets the very same objects
drive the in-process L1 and the offline simulator, so a hit ratio measured offline is the
hit ratio you get online.

Event order is the store's business: an L1 store buffers hits and hands them over in
batches (``on_hits``) before every insert, so the policy sees exactly the sequence the
simulator feeds it one request at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from typing import Protocol, runtime_checkable

Key = Hashable

__all__ = ["Key", "Policy", "PolicyBase"]


@runtime_checkable
class Policy(Protocol):
    """What a store needs from an eviction policy."""

    @property
    def capacity(self) -> int:
        """The bound, in weight units (entries, or bytes for a weighted cache)."""
        ...

    @property
    def weight(self) -> int:
        """Total weight of the resident keys; never above ``capacity`` after a call returns."""
        ...

    def __len__(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def on_hit(self, key: Key) -> None:
        """One hit on a key. A key that is no longer resident is ignored."""
        ...

    def on_hits(self, keys: Iterable[Key]) -> None:
        """A batch of hits, oldest first (an L1 read buffer being drained). Keys that were
        evicted since they were buffered are ignored."""
        ...

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        """A key that is not resident arrives. Returns the keys the store must evict; the new
        key itself is in the list when admission rejects it or it is heavier than the whole
        capacity. Counts as an access to ``key`` for frequency-based policies."""
        ...

    def on_update(self, key: Key, weight: int) -> list[Key]:
        """A resident key's weight changed. Returns victims if the bound is now exceeded
        (possibly the key itself)."""
        ...

    def on_remove(self, key: Key) -> None:
        """The store dropped a key (deleted or expired). Unknown keys are ignored."""
        ...

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        """One request in a replay: ``on_hit`` if resident (returns True), else ``on_insert``
        (returns False). Exactly equivalent to calling those two; overridden for speed."""
        ...

    def clear(self) -> None:
        """Forget every key."""
        ...


class PolicyBase(ABC):
    """Shared plumbing for the policies in this package.

    Subclasses implement the ``on_*`` events; ``access`` and ``on_hits`` have correct
    defaults in terms of them. ``capacity`` is fixed at construction.
    """

    name: str = "?"

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(
                f"{type(self).__name__}: capacity must be a positive int, got {capacity!r}"
            )
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    @abstractmethod
    def weight(self) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def on_hit(self, key: Key) -> None: ...

    def on_hits(self, keys: Iterable[Key]) -> None:
        on_hit = self.on_hit
        for key in keys:
            on_hit(key)

    @abstractmethod
    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]: ...

    @abstractmethod
    def on_update(self, key: Key, weight: int) -> list[Key]: ...

    @abstractmethod
    def on_remove(self, key: Key) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        if key in self:
            self.on_hit(key)
            return True
        self.on_insert(key, weight, cost)
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self._capacity}, "
            f"weight={self.weight}, entries={len(self)})"
        )

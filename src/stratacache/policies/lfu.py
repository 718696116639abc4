"""Least frequently used, in O(1), with aging by periodic halving.

Keys live in *frequency buckets*: a doubly linked list of buckets in increasing frequency
order, each holding its keys oldest first (a dict keeps insertion order). This is the layout
of Shah, Mitra and Matani, "An O(1) algorithm for implementing the LFU cache eviction scheme"
(2010): a hit moves a key from bucket f to bucket f + 1, which is the next bucket or a new
one linked right after the old; the victim is the oldest key of the first bucket. No step
searches or sorts, whatever the spread of frequencies.

**Aging.** A pure LFU never forgets: a key that was hit a million times yesterday outranks
today's working set until the end of time. Two classic remedies exist:

* LFU with dynamic aging (LFU-DA, Arlitt et al. 2000) gives each key the priority
  ``L + count``, where ``L`` is the priority of the last victim. Priorities then jump by
  arbitrary amounts, so keys no longer move one bucket at a time and the structure needs a
  priority queue: O(log n) per request.
* Periodic halving (as in TinyLFU's sketch): after a number of requests proportional to the
  number of resident keys, every count is halved. Halving maps bucket f onto bucket f // 2, so
  the bucket list is rebuilt in one linear pass, which amortizes to O(1) per request, and the
  buckets stay in order. A key that stops being requested loses half its weight of history
  every period, so after a few periods it ranks like a newcomer and is evictable.

We use halving: it keeps every operation O(1) (amortized), and its half-life is easy to
reason about. The period is ``aging_factor`` requests per resident key (10 by default, the
figure TinyLFU uses for its sample). Counts never drop below 1, so a resident key always
outranks nothing. Ties between equal counts go to the least recently promoted key.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["LFUPolicy"]

# Halving happens after this many requests per resident key (never fewer than _MIN_PERIOD).
AGING_FACTOR = 10
_MIN_PERIOD = 64


class _Bucket:
    """All resident keys with one frequency, oldest first, linked to its neighbours."""

    __slots__ = ("freq", "keys", "next", "prev")

    def __init__(self, freq: int) -> None:
        self.freq = freq
        self.keys: dict[Key, None] = {}
        self.prev: _Bucket = self
        self.next: _Bucket = self


class LFUPolicy(PolicyBase):
    name = "lfu"

    def __init__(self, capacity: int, *, aging_factor: int = AGING_FACTOR) -> None:
        super().__init__(capacity)
        if aging_factor < 1:
            raise ValueError(f"LFUPolicy: aging_factor must be >= 1, got {aging_factor!r}")
        self._aging_factor = aging_factor
        # A sentinel with frequency 0 closes the circular bucket list.
        self._head = _Bucket(0)
        self._bucket: dict[Key, _Bucket] = {}
        self._weights: dict[Key, int] = {}
        self._weight = 0
        self._events = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, key: object) -> bool:
        return key in self._weights

    def frequency(self, key: Key) -> int:
        """The (aged) count of a resident key, 0 if it is not resident."""
        bucket = self._bucket.get(key)
        return 0 if bucket is None else bucket.freq

    def on_hit(self, key: Key) -> None:
        bucket = self._bucket.get(key)
        if bucket is not None:
            self._promote(key, bucket)
            self._tick()

    def on_hits(self, keys: Iterable[Key]) -> None:
        buckets = self._bucket
        promote = self._promote
        tick = self._tick
        for key in keys:
            bucket = buckets.get(key)
            if bucket is not None:
                promote(key, bucket)
                tick()

    def access(self, key: Key, weight: int = 1, cost: float = 1.0) -> bool:
        bucket = self._bucket.get(key)
        if bucket is None:
            self.on_insert(key, weight, cost)
            return False
        self._promote(key, bucket)
        self._tick()
        return True

    def on_insert(self, key: Key, weight: int = 1, cost: float = 1.0) -> list[Key]:
        if key in self._weights:
            return self.on_update(key, weight)
        if weight > self._capacity:
            return [key]
        # Make room first, so that the newcomer (count 1, the lowest) is not its own victim.
        victims = self._evict(self._capacity - weight)
        head = self._head
        first = head.next
        if first.freq != 1:
            first = self._link_after(head, 1)
        first.keys[key] = None
        self._bucket[key] = first
        self._weights[key] = weight
        self._weight += weight
        self._tick()
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        old = self._weights.get(key)
        if old is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        self._weights[key] = weight
        self._weight += weight - old
        return self._evict(self._capacity)

    def on_remove(self, key: Key) -> None:
        bucket = self._bucket.pop(key, None)
        if bucket is None:
            return
        del bucket.keys[key]
        if not bucket.keys:
            self._unlink(bucket)
        self._weight -= self._weights.pop(key)

    def clear(self) -> None:
        self._head = _Bucket(0)
        self._bucket.clear()
        self._weights.clear()
        self._weight = 0
        self._events = 0

    # -- internals ----------------------------------------------------------------------------

    def _link_after(self, bucket: _Bucket, freq: int) -> _Bucket:
        new = _Bucket(freq)
        new.prev = bucket
        new.next = bucket.next
        bucket.next.prev = new
        bucket.next = new
        return new

    @staticmethod
    def _unlink(bucket: _Bucket) -> None:
        bucket.prev.next = bucket.next
        bucket.next.prev = bucket.prev

    def _promote(self, key: Key, bucket: _Bucket) -> None:
        freq = bucket.freq + 1
        target = bucket.next
        if target.freq != freq:
            target = self._link_after(bucket, freq)
        del bucket.keys[key]
        target.keys[key] = None
        self._bucket[key] = target
        if not bucket.keys:
            self._unlink(bucket)

    def _evict(self, limit: int) -> list[Key]:
        """Evict least frequent keys until the total weight is at most ``limit``."""
        victims: list[Key] = []
        head = self._head
        while self._weight > limit:
            bucket = head.next
            victim = next(iter(bucket.keys))
            del bucket.keys[victim]
            if not bucket.keys:
                self._unlink(bucket)
            del self._bucket[victim]
            self._weight -= self._weights.pop(victim)
            victims.append(victim)
        return victims

    def _tick(self) -> None:
        self._events += 1
        if self._events >= self._aging_factor * max(len(self._weights), _MIN_PERIOD):
            self._halve()

    def _halve(self) -> None:
        """Halve every count (never below 1), merging buckets f and f + 1 when f is even."""
        self._events = 0
        head = self._head
        old = head.next
        head.next = head.prev = head
        last = head
        while old is not head:
            following = old.next
            freq = max(1, old.freq >> 1)
            if last.freq == freq:
                # Bucket 2k + 1 merges into bucket 2k: its keys were promoted later, so they
                # stay after (newer than) the keys already there.
                last.keys.update(old.keys)
                for key in old.keys:
                    self._bucket[key] = last
            else:
                old.freq = freq
                old.prev = last
                old.next = head
                last.next = old
                head.prev = old
                last = old
            old = following

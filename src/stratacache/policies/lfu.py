"""Least frequently used, in O(1), with aging by periodic halving.

Keys live in *frequency buckets*: a doubly linked list of buckets in increasing frequency
order, each holding its keys oldest first. This is the layout of Shah, Mitra and Matani, "An
O(1) algorithm for implementing the LFU cache eviction scheme" (2010): a hit moves a key from
bucket f to bucket f + 1, which is the next bucket or a new one linked right after the old;
the victim is the oldest key of the first bucket. No step searches or sorts, whatever the
spread of frequencies.

A bucket is an ``OrderedDict`` of its keys (mapping each to its weight). It must not be a
plain dict: a dict deletes by leaving a hole in its entry array, and finding its first key
walks over every hole left by earlier deletions, so taking the oldest key of a bucket that
keeps losing its oldest keys (the count-1 bucket of a full cache, on every insert) costs time
proportional to the evictions since the dict last resized. ``OrderedDict.popitem(last=False)``
and ``next(iter(...))`` read the head of its own linked list: O(1) however many keys left.

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
outranks nothing. Ties between equal counts go to the least recently promoted key (the one
that reached its count first); halving keeps every key's rank relative to the others.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .base import Key, PolicyBase

__all__ = ["LFUPolicy"]

# Halving happens after this many requests per resident key (never fewer than _MIN_PERIOD).
AGING_FACTOR = 10
_MIN_PERIOD = 64


class _Bucket(OrderedDict[Key, int]):
    """All resident keys with one frequency, oldest first, each mapped to its weight, and
    linked to the neighbouring buckets."""

    __slots__ = ("freq", "next", "prev")

    def __init__(self, freq: int) -> None:
        super().__init__()
        self.freq = freq
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
        # Each resident key's bucket; its weight is the value in that bucket.
        self._bucket: dict[Key, _Bucket] = {}
        self._weight = 0
        self._events = 0

    @property
    def weight(self) -> int:
        return self._weight

    def __len__(self) -> int:
        return len(self._bucket)

    def __contains__(self, key: object) -> bool:
        return key in self._bucket

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
        buckets = self._bucket
        if key in buckets:
            return self.on_update(key, weight)
        capacity = self._capacity
        if weight > capacity:
            return [key]
        head = self._head
        # Make room first, so that the newcomer (count 1, the lowest) is not its own victim.
        # Inlined (see _evict): this is the hot path of a full cache.
        victims: list[Key] = []
        total = self._weight + weight
        while total > capacity:
            first = head.next
            victim, victim_weight = first.popitem(last=False)
            if not first:
                first.prev.next = first.next
                first.next.prev = first.prev
            del buckets[victim]
            total -= victim_weight
            victims.append(victim)
        first = head.next
        if first.freq != 1:
            first = self._link_after(head, 1)
        first[key] = weight
        buckets[key] = first
        self._weight = total
        # _tick, inlined.
        events = self._events + 1
        factor = self._aging_factor
        if events >= factor * len(buckets) and events >= factor * _MIN_PERIOD:
            self._halve()
        else:
            self._events = events
        return victims

    def on_update(self, key: Key, weight: int) -> list[Key]:
        bucket = self._bucket.get(key)
        if bucket is None:
            return []
        if weight > self._capacity:
            self.on_remove(key)
            return [key]
        old = bucket[key]
        bucket[key] = weight  # an existing key keeps its place
        self._weight += weight - old
        return self._evict(self._capacity)

    def on_remove(self, key: Key) -> None:
        bucket = self._bucket.pop(key, None)
        if bucket is None:
            return
        self._weight -= bucket.pop(key)
        if not bucket:
            self._unlink(bucket)

    def clear(self) -> None:
        self._head = _Bucket(0)
        self._bucket.clear()
        self._weight = 0
        self._events = 0

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _link_after(bucket: _Bucket, freq: int) -> _Bucket:
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
        target[key] = bucket.pop(key)
        self._bucket[key] = target
        if not bucket:
            self._unlink(bucket)

    def _evict(self, limit: int) -> list[Key]:
        """Evict least frequent keys until the total weight is at most ``limit``."""
        victims: list[Key] = []
        head = self._head
        buckets = self._bucket
        while self._weight > limit:
            first = head.next
            victim, victim_weight = first.popitem(last=False)
            if not first:
                self._unlink(first)
            del buckets[victim]
            self._weight -= victim_weight
            victims.append(victim)
        return victims

    def _tick(self) -> None:
        self._events += 1
        if self._events >= self._aging_factor * max(len(self._bucket), _MIN_PERIOD):
            self._halve()

    def _halve(self) -> None:
        """Halve every count (never below 1), merging buckets f and f + 1 when f is even."""
        self._events = 0
        buckets = self._bucket
        head = self._head
        old = head.next
        head.next = head.prev = head
        last = head
        while old is not head:
            following = old.next
            freq = max(1, old.freq >> 1)
            if last.freq == freq:
                # Bucket 2k + 1 merges into bucket 2k: its keys reached their count later
                # than every key already there, so they go after (are newer than) them.
                last.update(old)
                for key in old:
                    buckets[key] = last
            else:
                old.freq = freq
                old.prev = last
                old.next = head
                last.next = old
                head.prev = old
                last = old
            old = following

"""LFU: evicts the least frequent key (the least recent among equals), in O(1), and ages.

Besides the examples, LFUPolicy is checked decision for decision against ``ReferenceLFU``, a
model too simple to be wrong: every key carries its count and the moment it reached that
count, and the victim is found by scanning for the smallest pair. Halving renumbers those
moments by rank before halving the counts, so it keeps every key's place relative to the
others, which is what merging bucket 2k + 1 after bucket 2k does.
"""

from __future__ import annotations

import random
from collections.abc import Hashable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stratacache.policies import LFUPolicy, make_policy
from stratacache.policies.lfu import _MIN_PERIOD


class ReferenceLFU:
    """The specification of LFUPolicy, in O(n) per eviction."""

    def __init__(self, capacity: int, aging_factor: int = 10) -> None:
        self.capacity = capacity
        self.aging_factor = aging_factor
        # key -> [count, when it reached that count, weight]
        self.entries: dict[Hashable, list[int]] = {}
        self.clock = 0
        self.events = 0
        self.halvings = 0

    @property
    def weight(self) -> int:
        return sum(entry[2] for entry in self.entries.values())

    def rank(self, key: Hashable) -> tuple[int, int]:
        count, reached, _ = self.entries[key]
        return count, reached

    def eviction_order(self) -> list[Hashable]:
        return sorted(self.entries, key=self.rank)

    def frequency(self, key: Hashable) -> int:
        return self.entries[key][0] if key in self.entries else 0

    def _now(self) -> int:
        self.clock += 1
        return self.clock

    def _evict_down_to(self, limit: int) -> list[Hashable]:
        victims = []
        while self.weight > limit:
            victim = min(self.entries, key=self.rank)
            del self.entries[victim]
            victims.append(victim)
        return victims

    def _request(self) -> None:
        """One request counted towards the aging period (a hit or an accepted insert)."""
        self.events += 1
        if self.events >= self.aging_factor * max(len(self.entries), _MIN_PERIOD):
            self.events = 0
            self.halvings += 1
            for position, key in enumerate(self.eviction_order()):
                entry = self.entries[key]
                entry[0] = max(1, entry[0] // 2)
                entry[1] = position  # below any future clock reading: clock > len(entries)

    def hit(self, key: Hashable) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry[0] += 1
            entry[1] = self._now()
            self._request()

    def insert(self, key: Hashable, weight: int) -> list[Hashable]:
        if key in self.entries:
            return self.update(key, weight)
        if weight > self.capacity:
            return [key]
        victims = self._evict_down_to(self.capacity - weight)
        self.entries[key] = [1, self._now(), weight]
        self._request()
        return victims

    def update(self, key: Hashable, weight: int) -> list[Hashable]:
        if key not in self.entries:
            return []
        if weight > self.capacity:
            del self.entries[key]
            return [key]
        self.entries[key][2] = weight
        return self._evict_down_to(self.capacity)

    def remove(self, key: Hashable) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()
        self.events = 0


def bucket_layout(policy: LFUPolicy) -> list[tuple[int, list[Hashable]]]:
    """The bucket list, first to last, as (frequency, keys oldest first); checks its links."""
    layout = []
    head = policy._head
    bucket = head.next
    assert bucket.prev is head
    while bucket is not head:
        assert bucket.next.prev is bucket
        layout.append((bucket.freq, list(bucket)))
        bucket = bucket.next
    return layout


def assert_same(policy: LFUPolicy, model: ReferenceLFU) -> None:
    assert len(policy) == len(model.entries)
    assert policy.weight == model.weight <= policy.capacity
    layout = bucket_layout(policy)
    frequencies = [freq for freq, _ in layout]
    assert frequencies == sorted(set(frequencies)), "buckets out of order or repeated"
    assert all(freq >= 1 and keys for freq, keys in layout), "an empty or count-0 bucket"
    # The exact order in which the policy would evict, ties included.
    assert [key for _, keys in layout for key in keys] == model.eviction_order()
    for freq, keys in layout:
        for key in keys:
            assert key in policy
            assert policy.frequency(key) == freq == model.frequency(key)
            assert policy._bucket[key].freq == freq


# -- examples ------------------------------------------------------------------------------


def test_evicts_the_least_frequent_key() -> None:
    policy = LFUPolicy(3)
    for key, times in (("a", 5), ("b", 1), ("c", 3)):
        for _ in range(times):
            policy.access(key)
    assert policy.on_insert("d") == ["b"]
    assert policy.frequency("a") == 5
    assert policy.frequency("d") == 1


def test_ties_go_to_the_least_recently_promoted_key() -> None:
    policy = LFUPolicy(3)
    for key in ("a", "b", "c"):
        policy.access(key)
    policy.access("b")
    policy.access("a")  # a and b both at 2; b got there first
    policy.access("c")
    policy.access("c")  # c at 3
    assert policy.on_insert("d") == ["b"]


def test_a_full_cache_of_new_keys_evicts_them_oldest_first() -> None:
    """The workload that used to slow down with size: every insert evicts the oldest key of
    the count-1 bucket, which keeps losing its head. The order must be exactly FIFO."""
    capacity = 5000
    policy = make_policy("lfu", capacity)
    for key in range(capacity):
        assert policy.on_insert(key) == []
    for key in range(capacity, 4 * capacity):
        assert policy.on_insert(key) == [key - capacity]
    assert len(policy) == capacity == policy.weight
    assert all(key in policy for key in range(3 * capacity, 4 * capacity))


def test_hits_taken_out_of_the_middle_of_a_bucket_leave_the_order_intact() -> None:
    policy = LFUPolicy(6)
    for key in "abcdef":
        policy.on_insert(key)
    policy.on_hits(["c", "a", "e"])  # count 2 in the order c, a, e
    assert policy.on_insert("g") == ["b"]
    assert policy.on_insert("h") == ["d"]
    assert policy.on_insert("i") == ["f"]
    assert policy.on_insert("j") == ["g"]
    policy.on_remove("h")
    policy.on_remove("i")
    policy.on_remove("j")
    assert [policy.on_insert(key) for key in "xyz"] == [[], [], []]
    assert policy.on_insert("w") == ["x"]


def test_a_heavy_newcomer_evicts_least_frequent_keys_until_it_fits() -> None:
    policy = LFUPolicy(10)
    policy.on_insert("hot", 4)
    policy.on_hits(["hot", "hot"])
    policy.on_insert("a", 2)
    policy.on_insert("b", 3)
    policy.on_hit("b")
    assert policy.weight == 9
    assert policy.on_insert("c", 5) == ["a", "b"]  # a (count 1), then b (count 2)
    assert policy.weight == 9
    assert policy.on_insert("too big", 11) == ["too big"]
    assert "too big" not in policy
    assert policy.weight == 9


def test_a_weight_change_keeps_the_key_in_place() -> None:
    policy = LFUPolicy(10)
    for key in "abcd":
        policy.on_insert(key, 2)
    assert policy.on_update("a", 3) == []
    assert policy.on_update("c", 7) == ["a", "b"]  # 3 + 2 + 7 + 2 = 14: a, then b, go
    assert policy.weight == 9
    assert policy.on_update("c", 11) == ["c"]
    assert "c" not in policy
    assert policy.on_update("never seen", 1) == []
    assert policy.weight == 2


def test_without_aging_an_old_hot_key_pins_itself() -> None:
    policy = LFUPolicy(10, aging_factor=10**9)
    for _ in range(1000):
        policy.access("yesterday")
    for key in range(100_000):
        policy.access(key % 500)
    assert "yesterday" in policy


def test_aging_lets_old_hot_keys_be_evicted_eventually() -> None:
    policy = LFUPolicy(10)
    for _ in range(1000):
        policy.access("yesterday")
    # Today's working set is bigger than the cache and each key comes back a few times.
    for round_ in range(300):
        for key in range(20):
            policy.access((round_ // 10, key))
    assert "yesterday" not in policy


def test_halving_keeps_order_and_never_drops_below_one() -> None:
    policy = LFUPolicy(4, aging_factor=1)  # halves every max(len, 64) requests
    for key, times in (("a", 100), ("b", 20), ("c", 3)):
        for _ in range(times):
            policy.access(key)
    frequencies = [policy.frequency(key) for key in ("a", "b", "c")]
    assert frequencies == sorted(frequencies, reverse=True)
    assert min(frequencies) >= 1
    assert policy.frequency("a") < 100  # it was halved at least once


def test_halving_merges_buckets_in_their_old_order() -> None:
    """Counts 1, 2 and 3 all become 1; the keys keep the order they had before (by count,
    then by when they got there), not the order they arrived in."""
    policy = LFUPolicy(4, aging_factor=1)
    policy.on_insert("c")
    policy.on_hits(["c", "c"])  # c: 3
    policy.on_insert("b")
    policy.on_hit("b")  # b: 2
    policy.on_insert("a")  # a: 1; six requests so far
    policy.on_insert("z")
    policy.on_hits(["z"] * (_MIN_PERIOD - 8))  # one request short of the period
    assert [policy.frequency(key) for key in "abcz"] == [1, 2, 3, _MIN_PERIOD - 7]
    policy.on_hit("z")  # the 64th request: every count is halved
    assert [policy.frequency(key) for key in "abcz"] == [1, 1, 1, (_MIN_PERIOD - 6) // 2]
    assert [policy.on_insert(key) for key in "defg"] == [["a"], ["b"], ["c"], ["d"]]


def test_clear_forgets_keys_and_the_aging_clock() -> None:
    policy = LFUPolicy(3, aging_factor=1)
    for _ in range(_MIN_PERIOD - 1):
        policy.access("k")
    policy.clear()
    assert len(policy) == 0
    assert policy.weight == 0
    assert "k" not in policy
    for _ in range(_MIN_PERIOD - 1):
        policy.access("k")
    assert policy.frequency("k") == _MIN_PERIOD - 1  # no halving: the clock restarted


def test_aging_factor_must_be_positive() -> None:
    with pytest.raises(ValueError, match="aging_factor"):
        LFUPolicy(4, aging_factor=0)


# -- differential: LFUPolicy against ReferenceLFU ------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["count", "weight"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_the_reference_over_a_long_random_run(seed: int, weighted: bool) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([1, 3, 20, 50])
    aging_factor = rng.choice([1, 2])
    policy = LFUPolicy(capacity, aging_factor=aging_factor)
    model = ReferenceLFU(capacity, aging_factor)
    universe = capacity * 3 + 5
    for step in range(6000):
        key = int(rng.paretovariate(0.8)) % universe
        weight = 1 + int(rng.expovariate(0.5)) % (capacity + 2) if weighted else 1
        roll = rng.random()
        if roll < 0.7:
            hit = policy.access(key, weight)
            assert hit == (key in model.entries)
            if hit:
                model.hit(key)
            else:
                model.insert(key, weight)
        elif roll < 0.8:
            keys = [int(rng.paretovariate(0.8)) % universe for _ in range(rng.randrange(8))]
            policy.on_hits(keys)
            for hit_key in keys:
                model.hit(hit_key)
        elif roll < 0.9:
            assert policy.on_update(key, weight) == model.update(key, weight)
        else:
            policy.on_remove(key)
            model.remove(key)
        if step % 50 == 0:
            assert_same(policy, model)
    assert_same(policy, model)
    assert model.halvings > 0, "the run must exercise halving"


KEYS = st.integers(min_value=0, max_value=15)


class LFUAgainstReference(RuleBasedStateMachine):
    """Random operations; every answer and the whole eviction order must match the model."""

    @initialize(
        capacity=st.integers(min_value=1, max_value=10),
        aging_factor=st.sampled_from([1, 2, 10]),
        weighted=st.booleans(),
    )
    def start(self, capacity: int, aging_factor: int, weighted: bool) -> None:
        self.policy = LFUPolicy(capacity, aging_factor=aging_factor)
        self.model = ReferenceLFU(capacity, aging_factor)
        self.weighted = weighted

    def _weight(self, draw: int) -> int:
        return 1 + draw % (self.policy.capacity + 2) if self.weighted else 1

    @rule(key=KEYS, draw=st.integers(0, 100))
    def insert(self, key: int, draw: int) -> None:
        weight = self._weight(draw)
        assert self.policy.on_insert(key, weight) == self.model.insert(key, weight)

    @rule(key=KEYS, draw=st.integers(0, 100))
    def access(self, key: int, draw: int) -> None:
        weight = self._weight(draw)
        hit = self.policy.access(key, weight)
        assert hit == (key in self.model.entries)
        if hit:
            self.model.hit(key)
        else:
            self.model.insert(key, weight)

    @rule(key=KEYS)
    def hit(self, key: int) -> None:
        self.policy.on_hit(key)
        self.model.hit(key)

    @rule(keys=st.lists(KEYS, max_size=70))
    def hits(self, keys: list[int]) -> None:
        """Long batches reach the aging period (64 requests at least) within a run."""
        self.policy.on_hits(keys)
        for key in keys:
            self.model.hit(key)

    @rule(key=KEYS, draw=st.integers(0, 100))
    def update(self, key: int, draw: int) -> None:
        weight = self._weight(draw)
        assert self.policy.on_update(key, weight) == self.model.update(key, weight)

    @rule(key=KEYS)
    def remove(self, key: int) -> None:
        self.policy.on_remove(key)
        self.model.remove(key)

    @rule()
    def clear(self) -> None:
        self.policy.clear()
        self.model.clear()

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "model"):
            assert_same(self.policy, self.model)


TestLFUAgainstReference = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)(LFUAgainstReference).TestCase

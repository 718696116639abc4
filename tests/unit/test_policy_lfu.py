"""LFU: evicts the least frequent key (the least recent among equals), in O(1), and ages."""

from __future__ import annotations

from stratacache.policies import LFUPolicy


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

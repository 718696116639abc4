"""S3-FIFO: one-hit wonders leave through the small queue without disturbing main; keys
that come back soon after leaving go straight to main."""

from __future__ import annotations

from stratacache.policies import LRUPolicy, S3FIFOPolicy


def test_one_hit_wonders_leave_through_small_and_main_is_untouched() -> None:
    policy = S3FIFOPolicy(100)
    hot = list(range(80))
    for _ in range(5):
        for key in hot:
            policy.access(key)
    before = [key for key in hot if key in policy]
    for key in range(10_000, 30_000):  # one-time keys
        policy.access(key)
    assert all(key in policy for key in before)
    lru = LRUPolicy(100)
    for key in hot * 5 + list(range(10_000, 30_000)):
        lru.access(key)
    assert not any(key in lru for key in hot)


def test_a_key_hit_twice_in_small_moves_to_main() -> None:
    policy = S3FIFOPolicy(20)  # small holds 2
    for key in range(20):
        policy.access(key)
    policy.access("x")
    policy.access("x")
    policy.access("x")
    for key in range(100, 140):
        policy.access(key)
    assert "x" in policy


def test_a_ghost_hit_goes_straight_to_main() -> None:
    policy = S3FIFOPolicy(20)
    for key in range(20):
        policy.access(key)
    policy.access("g")
    for key in range(100, 104):
        policy.access(key)  # "g" is pushed out of small, unrequested: remembered as a ghost
    assert "g" not in policy
    policy.access("g")
    assert "g" in policy
    for key in range(200, 215):  # a burst of newcomers churns small, not main
        policy.access(key)
    assert "g" in policy

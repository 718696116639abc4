"""GDSF: costly, popular and small entries stay; the inflation value ages the rest."""

from __future__ import annotations

from stratacache.policies import GDSFPolicy


def test_a_costly_key_outlives_cheap_ones() -> None:
    policy = GDSFPolicy(10)
    policy.on_insert("report", 1, cost=50.0)
    for key in range(200):
        policy.access(key, 1, 1.0)
    assert "report" in policy


def test_equal_costs_favour_frequency_then_small_size() -> None:
    policy = GDSFPolicy(10)
    policy.on_insert("big", 6, cost=1.0)
    policy.on_insert("small", 2, cost=1.0)
    policy.on_insert("hot", 2, cost=1.0)
    for _ in range(3):
        policy.on_hit("hot")
    victims = policy.on_insert("new", 2, cost=1.0)
    assert victims == ["big"], "per unit of room, the big entry is worth least"
    assert policy.inflation > 0


def test_inflation_lets_a_once_costly_key_age_out() -> None:
    policy = GDSFPolicy(5)
    policy.on_insert("old", 1, cost=20.0)
    for round_ in range(200):
        for key in range(4):
            policy.access((round_, key), 1, 1.0)
            policy.access((round_, key), 1, 1.0)
    assert "old" not in policy, "the floor L rose past its priority"


def test_priorities_follow_the_formula() -> None:
    policy = GDSFPolicy(100)
    policy.on_insert("k", 4, cost=8.0)
    assert policy.priority("k") == 0.0 + 1 * 8.0 / 4
    policy.on_hit("k")
    assert policy.priority("k") == 2 * 8.0 / 4
    assert policy.priority("absent") is None

"""ARC: the paper's algorithm step for step (unit weights), and its target moving the right
way when a workload favours recency or frequency."""

from __future__ import annotations

import random

import pytest

from stratacache.policies import ARCPolicy


class TextbookARC:
    """Figure 4 of Megiddo and Modha (FAST 2003), transcribed with plain lists for clarity."""

    def __init__(self, c: int) -> None:
        self.c = c
        self.p = 0.0
        self.t1: list[int] = []
        self.t2: list[int] = []
        self.b1: list[int] = []
        self.b2: list[int] = []

    def _replace(self, x: int) -> None:
        if self.t1 and (len(self.t1) > self.p or (x in self.b2 and len(self.t1) == self.p)):
            self.b1.append(self.t1.pop(0))
        else:
            self.b2.append(self.t2.pop(0))

    def request(self, x: int) -> bool:
        c = self.c
        if x in self.t1 or x in self.t2:  # case I
            (self.t1 if x in self.t1 else self.t2).remove(x)
            self.t2.append(x)
            return True
        if x in self.b1:  # case II
            self.p = min(c, self.p + max(len(self.b2) / len(self.b1), 1))
            self._replace(x)
            self.b1.remove(x)
            self.t2.append(x)
            return False
        if x in self.b2:  # case III
            self.p = max(0.0, self.p - max(len(self.b1) / len(self.b2), 1))
            self._replace(x)
            self.b2.remove(x)
            self.t2.append(x)
            return False
        l1 = len(self.t1) + len(self.b1)  # case IV
        total = l1 + len(self.t2) + len(self.b2)
        if l1 == c:
            if len(self.t1) < c:
                self.b1.pop(0)
                self._replace(x)
            else:
                self.t1.pop(0)
        elif l1 < c and total >= c:
            if total == 2 * c:
                self.b2.pop(0)
            self._replace(x)
        self.t1.append(x)
        return False


@pytest.mark.parametrize("capacity", [1, 2, 5, 16, 40])
def test_matches_the_papers_pseudocode_request_by_request(capacity: int) -> None:
    rng = random.Random(capacity)
    keys = [int(rng.paretovariate(0.7)) % (capacity * 6) for _ in range(6000)]
    keys += list(range(1000, 1000 + 3 * capacity)) * 3  # a loop, to exercise B2
    reference = TextbookARC(capacity)
    policy = ARCPolicy(capacity)
    for key in keys:
        assert policy.access(key) == reference.request(key)
        assert policy.target_recency == pytest.approx(reference.p)
    assert len(policy) == len(reference.t1) + len(reference.t2)


def test_target_grows_when_recency_pays() -> None:
    """Keys are requested twice at a distance a bit larger than what T1 keeps: each second
    request hits ghost B1, so ARC enlarges T1's target."""
    policy = ARCPolicy(100)
    # Frequency first: a hot set living in T2 pushes p down to 0.
    hot = list(range(80))
    for _ in range(20):
        for key in hot:
            policy.access(key)
    low = policy.target_recency
    stream = []
    for start in range(10_000, 30_000, 40):
        block = list(range(start, start + 40))
        stream += block + block  # reuse distance 40: needs a T1 of about 40
    for key in stream:
        policy.access(key)
    assert policy.target_recency > low + 30


def test_target_shrinks_when_frequency_pays() -> None:
    policy = ARCPolicy(100)
    stream = []
    for start in range(10_000, 20_000, 40):
        block = list(range(start, start + 40))
        stream += block + block  # recency pays first: p grows
    for key in stream:
        policy.access(key)
    high = policy.target_recency
    assert high > 20
    # Now a hot set a bit larger than T2 can hold, its members evicted to B2 and coming back,
    # while one-time keys keep arriving through T1.
    rng = random.Random(2)
    hot = list(range(120))
    for _ in range(20_000):
        policy.access(rng.choice(hot))
        policy.access(200_000 + rng.randrange(10**6))
    assert policy.target_recency < high / 2


def test_weighted_ghost_hits_move_the_target_by_the_returning_weight() -> None:
    policy = ARCPolicy(100)
    policy.on_insert("x", 40)
    policy.on_hit("x")  # x moves to T2
    policy.on_insert("a", 30)
    policy.on_insert("b", 30)
    assert policy.on_insert("c", 30) == ["a"]  # T1 is above its target 0: "a" goes to B1
    assert "a" not in policy and policy.ghost_weight == 30
    policy.on_insert("a", 30)  # a B1 hit worth 30 units
    assert policy.target_recency == pytest.approx(30)
    assert "a" in policy
    assert policy.weight <= 100

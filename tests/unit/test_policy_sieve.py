"""SIEVE: compared with a direct transcription of the paper's pseudocode, and its
one-hit-wonder behaviour."""

from __future__ import annotations

import random

import pytest

from stratacache.policies import LRUPolicy, SievePolicy


class TextbookSieve:
    """Algorithm 1 of Zhang et al. (NSDI 2024) over a Python list, index 0 = tail (oldest)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: list[int] = []
        self.visited: dict[int, bool] = {}
        self.hand: int | None = None  # the key under the hand

    def request(self, key: int) -> bool:
        if key in self.visited:
            self.visited[key] = True
            return True
        if len(self.queue) == self.capacity:
            index = self.queue.index(self.hand) if self.hand is not None else 0
            while self.visited[self.queue[index]]:
                self.visited[self.queue[index]] = False
                index = (index + 1) % len(self.queue)
            victim = self.queue.pop(index)
            del self.visited[victim]
            self.hand = self.queue[index] if index < len(self.queue) else None
        self.queue.append(key)
        self.visited[key] = False
        return False


@pytest.mark.parametrize("capacity", [1, 3, 10, 50])
def test_matches_the_papers_pseudocode(capacity: int) -> None:
    rng = random.Random(capacity)
    reference = TextbookSieve(capacity)
    policy = SievePolicy(capacity)
    for _ in range(8000):
        key = int(rng.paretovariate(0.8)) % (capacity * 5)
        assert policy.access(key) == reference.request(key)


def test_popular_keys_survive_a_stream_of_one_hit_wonders() -> None:
    policy = SievePolicy(50)
    lru = LRUPolicy(50)
    hot = list(range(30))
    rng = random.Random(4)
    for step in range(20_000):
        key = rng.choice(hot) if step % 2 else 10**6 + step
        policy.access(key)
        lru.access(key)
    assert sum(key in policy for key in hot) >= 28
    assert sum(key in policy for key in hot) > sum(key in lru for key in hot)

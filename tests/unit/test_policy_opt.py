"""Belady's OPT equals a brute-force optimum on tiny traces, and insists on trace order."""

from __future__ import annotations

import functools
import itertools
import random

import pytest

from stratacache.policies import LRUPolicy, OPTPolicy


def brute_force_misses(trace: tuple[int, ...], capacity: int) -> int:
    """The fewest misses any demand-paging policy can get: try every eviction choice."""

    @functools.cache
    def best(position: int, resident: frozenset[int]) -> int:
        if position == len(trace):
            return 0
        key = trace[position]
        if key in resident:
            return best(position + 1, resident)
        if len(resident) < capacity:
            return 1 + best(position + 1, resident | {key})
        return 1 + min(best(position + 1, (resident - {out}) | {key}) for out in resident)

    return best(0, frozenset())


def opt_misses(trace: list[int], capacity: int) -> int:
    policy = OPTPolicy(capacity, trace)
    return sum(not policy.access(key) for key in trace)


@pytest.mark.parametrize("capacity", [1, 2, 3])
def test_equals_the_brute_force_optimum_on_tiny_traces(capacity: int) -> None:
    rng = random.Random(capacity)
    for _ in range(150):
        trace = [rng.randrange(5) for _ in range(rng.randrange(1, 11))]
        assert opt_misses(trace, capacity) == brute_force_misses(tuple(trace), capacity)


def test_exhaustively_on_every_short_trace_over_three_keys() -> None:
    for length in range(1, 7):
        for trace in itertools.product(range(3), repeat=length):
            assert opt_misses(list(trace), 2) == brute_force_misses(trace, 2)


def test_never_worse_than_lru() -> None:
    rng = random.Random(8)
    trace = [int(rng.paretovariate(0.6)) % 200 for _ in range(5000)]
    lru = LRUPolicy(20)
    lru_misses = sum(not lru.access(key) for key in trace)
    assert opt_misses(trace, 20) < lru_misses


def test_must_be_driven_in_trace_order() -> None:
    policy = OPTPolicy(2, [1, 2, 3])
    policy.access(1)
    with pytest.raises(ValueError, match="trace order"):
        policy.access(3)
    policy.on_hits([2])  # hits consume requests too (2 is not resident: ignored)
    policy.access(3)
    assert policy.position == 3
    with pytest.raises(ValueError, match="only 3 requests"):
        policy.access(1)


def test_remove_and_update_consume_no_request() -> None:
    trace = [1, 2, 1, 3, 1]
    policy = OPTPolicy(2, trace)
    policy.access(1)
    policy.access(2)
    policy.on_remove(2)
    policy.on_update(1, 1)
    assert policy.position == 2
    assert [policy.access(key) for key in trace[2:]] == [True, False, True]

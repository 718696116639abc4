"""Hierarchy simulation: parsing, accounting identities, and a request-by-request model."""

from __future__ import annotations

import itertools
import random

import pytest

from stratacache.errors import ConfigurationError
from stratacache.policies import POLICIES, Policy, make_policy
from stratacache.sim.engine import SizeSpec, replay
from stratacache.sim.multilevel import (
    HierarchyResult,
    LevelSpec,
    amat,
    format_duration,
    parse_duration,
    parse_levels,
    simulate_hierarchy,
)
from stratacache.sim.traces import Trace, TraceKey


def level(name: str, size: int, latency: float, policy: str = "lru") -> LevelSpec:
    return LevelSpec(name, SizeSpec(str(size), float(size), False), policy, latency)


def skewed_trace(n: int = 5000, seed: int = 3, sizes: bool = False) -> Trace:
    rng = random.Random(seed)
    keys: list[TraceKey] = [int(rng.paretovariate(0.8)) % 900 for _ in range(n)]
    weights = [1 + key % 7 for key in keys] if sizes else None
    return Trace("skewed", keys, weights)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5ms", 5e-3),
        ("300us", 300e-6),
        ("2µs", 2e-6),
        ("0.0005ms", 5e-7),
        ("50ns", 50e-9),
        ("1.5s", 1.5),
        (" 1e-3 s ", 1e-3),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "5 parsecs", "ms", "-1ms", ""])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"bad latency.*ns, us, ms, s"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(0.0) == "0"
    assert format_duration(5e-3) == "5ms"
    assert format_duration(5e-7) == "500ns"
    assert format_duration(3e-4) == "300µs"
    assert format_duration(2.0) == "2s"


def test_parse_levels() -> None:
    levels = parse_levels("L1:1000:LRU:0.0005ms, L2:10%:lru:0.3ms")
    assert [(lv.name, lv.size.text, lv.policy) for lv in levels] == [
        ("L1", "1000", "lru"),
        ("L2", "10%", "lru"),
    ]
    assert levels[1].latency == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("L1:1000:lru", "NAME:SIZE:POLICY:LATENCY"),
        ("L1:1000::1ms", "NAME:SIZE:POLICY:LATENCY"),
        ("L1:big:lru:1ms", "bad cache size 'big'"),
        ("L1:10:nope:1ms", "unknown policy 'nope'; accepted:"),
        ("L1:10:lru:1ms,L1:20:lru:2ms", "used twice"),
        ("L1:10:lru:fast", "bad latency 'fast'"),
        (",", "no cache level"),
    ],
)
def test_parse_levels_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_levels(text)


def test_amat_formula() -> None:
    # T1 + m1 (T2 + m2 T_origin) = 1 + 0.5 (10 + 0.2 * 100) = 16
    assert amat([1.0, 10.0], [0.5, 0.2], 100.0) == pytest.approx(16.0)
    assert amat([], [], 7.0) == 7.0


def test_accounting_identities() -> None:
    trace = skewed_trace()
    result = simulate_hierarchy(
        trace,
        [level("L1", 20, 1e-6), level("L2", 100, 1e-4), level("L3", 400, 1e-3)],
        origin_latency=5e-3,
        origin_price=0.25,
    )
    levels = result.levels
    assert levels[0].lookups == result.requests == len(trace)
    for upper, lower in itertools.pairwise(levels):
        assert lower.lookups == upper.misses  # a level sees exactly the misses above it
    assert result.origin_requests == levels[-1].misses
    assert sum(lv.hits for lv in levels) + result.origin_requests == result.requests
    assert sum(result.served_share(lv) for lv in levels) + result.origin_share == pytest.approx(1)
    assert result.origin_cost == pytest.approx(result.origin_requests * 0.25)
    # The nested AMAT equals the average of what each request paid.
    paid = sum(lv.lookups * lv.latency for lv in levels) + result.origin_requests * 5e-3
    assert result.amat == pytest.approx(paid / result.requests)
    # Everything below the first level only ever sees a cold key once per miss above.
    assert result.origin_requests >= trace.unique_keys()


def reference_hierarchy(trace: Trace, capacities: list[int], name: str) -> list[int]:
    """The hierarchy walked request by request, the way the real Cache does it: look in
    each level in turn; on a hit at level n copy the key up into levels 0..n-1; on a miss
    everywhere fill every level. Returns the hits per level and the origin loads last."""
    policies: list[Policy] = [make_policy(name, capacity) for capacity in capacities]
    hits = [0] * (len(policies) + 1)
    for key in trace.keys:
        for index, policy in enumerate(policies):
            if key in policy:
                policy.on_hit(key)
                hits[index] += 1
                for upper in policies[:index]:
                    upper.on_insert(key)
                break
        else:
            hits[-1] += 1
            for policy in policies:
                policy.on_insert(key)
    return hits


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_matches_request_by_request_model(name: str) -> None:
    trace = skewed_trace(n=4000, seed=5)
    capacities = [15, 60, 250]
    result = simulate_hierarchy(
        trace,
        [level(f"L{i}", c, 0.0, name) for i, c in enumerate(capacities)],
        origin_latency=0.0,
    )
    counted = [lv.hits for lv in result.levels] + [result.origin_requests]
    assert counted == reference_hierarchy(trace, capacities, name)


def test_one_level_equals_a_plain_replay() -> None:
    trace = skewed_trace()
    result = simulate_hierarchy(trace, [level("L1", 50, 1e-6)], origin_latency=1e-3)
    plain = replay(trace, make_policy("lru", 50))
    assert result.origin_requests == plain.misses
    assert result.amat == pytest.approx(1e-6 + plain.miss_ratio * 1e-3)


def test_by_bytes_accounting() -> None:
    trace = skewed_trace(sizes=True)
    assert trace.sizes is not None
    result = simulate_hierarchy(
        trace, [level("L1", 60, 0.0), level("L2", 600, 0.0)], origin_latency=0.0
    )
    l1, l2 = result.levels
    assert l1.bytes_looked_up == result.bytes_requested == sum(trace.sizes)
    assert l1.bytes_hit is not None and l2.bytes_hit is not None
    assert l2.bytes_looked_up == l1.bytes_looked_up - l1.bytes_hit
    assert result.origin_bytes == l2.bytes_looked_up - l2.bytes_hit  # type: ignore[operator]


def test_percent_sizes_and_empty_lower_levels() -> None:
    trace = Trace("tiny", [1, 1, 1, 1])
    levels = parse_levels("L1:50%:lru:1us,L2:100%:lru:1ms")
    result = simulate_hierarchy(trace, levels, origin_latency=1.0)
    assert [lv.size for lv in result.levels] == [1, 1]
    assert [lv.lookups for lv in result.levels] == [4, 1]
    assert result.origin_requests == 1
    assert isinstance(result, HierarchyResult)


def test_rejects_bad_origin() -> None:
    with pytest.raises(ConfigurationError, match="origin latency and price"):
        simulate_hierarchy(Trace("t", [1]), [level("L1", 1, 0.0)], origin_latency=-1.0)

"""The simulator drives the same policy objects as L1: replaying a trace through an
L1-only Cache (get, then set on a miss) and through ``stratacache simulate`` gives the
same miss count, for every online policy."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from stratacache import MISSING, Cache, MemoryTier
from stratacache.cli.simulate import simulate_command
from stratacache.policies import POLICIES, make_policy
from stratacache.sim.engine import replay
from stratacache.sim.traces import Trace

pytestmark = pytest.mark.usefixtures("both_implementations")


def mixed_trace(seed: int, length: int = 20_000) -> list[str]:
    """A Zipf-like hot set, interrupted by scans and a shifting working set: enough
    variety that a policy's every path (admission, adaptation, aging) is exercised."""
    rng = random.Random(seed)
    keys: list[str] = []
    phase_base = 0
    while len(keys) < length:
        kind = rng.random()
        if kind < 0.15:  # a one-time scan
            start = rng.randrange(10**6)
            keys.extend(f"scan:{start + i}" for i in range(rng.randrange(50, 400)))
        elif kind < 0.25:  # the working set moves
            phase_base += rng.randrange(100, 500)
        else:
            for _ in range(rng.randrange(100, 600)):
                rank = int(rng.paretovariate(0.9))
                keys.append(f"obj:{phase_base + rank % 3000}")
    return keys[:length]


def l1_misses(keys: list[str], policy: str, capacity: int) -> int:
    cache = Cache([MemoryTier(capacity, policy=policy, ttl=600)])
    get, set_ = cache.get, cache.set
    misses = 0
    for key in keys:
        if get(key) is MISSING:
            misses += 1
            set_(key, key)
    assert len(cache.levels[0]) <= capacity
    cache.close()
    return misses


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("capacity", [7, 100, 1500])
def test_l1_and_simulator_miss_the_same_requests(policy: str, capacity: int) -> None:
    keys = mixed_trace(seed=capacity)
    simulated = replay(Trace("mixed", keys), make_policy(policy, capacity)).misses
    assert l1_misses(keys, policy, capacity) == simulated
    assert 0 < simulated < len(keys)


def test_simulate_command_reports_the_same_misses_as_the_cache(tmp_path: Path) -> None:
    keys = mixed_trace(seed=3, length=15_000)
    trace = tmp_path / "mixed.keys"
    trace.write_text("\n".join(keys) + "\n")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        simulate_command, [str(trace), "--size", "250,2000", "--csv", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    for row in rows:
        capacity = int(row["size"])
        assert int(row["misses"]) == l1_misses(keys, row["policy"], capacity)

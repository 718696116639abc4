"""The replay engine: size parsing, miss counting against hand-computed traces, the matrix."""

from __future__ import annotations

import random

import pytest

from stratacache.errors import ConfigurationError
from stratacache.policies import DEFAULT_POLICY, POLICIES, make_policy
from stratacache.sim.engine import (
    OPT,
    ReplayResult,
    SizeSpec,
    available_policies,
    build_policy,
    check_policies,
    footprint,
    parse_size,
    parse_sizes,
    replay,
    run_matrix,
)
from stratacache.sim.traces import Trace

# LRU with room for 3, by hand (resident keys oldest first after each request):
#   1 miss [1]   2 miss [1 2]   3 miss [1 2 3]   1 hit [2 3 1]   4 miss [3 1 4]
#   2 miss [1 4 2]   1 hit [4 2 1]   5 miss [2 1 5]   1 hit [2 5 1]      -> 6 misses
# and with room for 2 only the last request hits                        -> 8 misses
HAND = Trace("hand", [1, 2, 3, 1, 4, 2, 1, 5, 1])


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("1000", 1000, False),
        (" 64k ", 64_000, False),
        ("1.5M", 1_500_000, False),
        ("512KiB", 512 * 1024, False),
        ("1GiB", 2**30, False),
        ("2gb", 2 * 10**9, False),
        ("10%", 10, True),
        ("0.1%", 0.1, True),
        (".5%", 0.5, True),
    ],
)
def test_parse_size(text: str, value: float, percent: bool) -> None:
    spec = parse_size(text)
    assert (spec.value, spec.percent) == (value, percent)


@pytest.mark.parametrize("text", ["", "abc", "0", "-5", "1.5", "0%", "150%", "10 %%", "5x"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError, match="bad cache size"):
        parse_size(text)


def test_parse_sizes_splits_commas() -> None:
    specs = parse_sizes(["100,1%", "10%"])
    assert [s.text for s in specs] == ["100", "1%", "10%"]
    with pytest.raises(ConfigurationError, match="no cache size"):
        parse_sizes(" , ")


def test_percent_resolution_rounds_half_up_and_never_below_one() -> None:
    assert SizeSpec("0.1%", 0.1, True).resolve(186_880) == 187  # the OLTP reference size
    assert SizeSpec("10%", 10, True).resolve(25) == 3  # 2.5 rounds up
    assert SizeSpec("0.1%", 0.1, True).resolve(100) == 1
    assert SizeSpec("1000", 1000, False).resolve(5) == 1000


def test_lru_misses_match_hand_computation() -> None:
    for capacity, misses in ((3, 6), (2, 8), (5, 5)):
        result = replay(HAND, make_policy("lru", capacity))
        assert (result.requests, result.misses, result.hits) == (9, misses, 9 - misses)
        assert result.miss_ratio == pytest.approx(misses / 9)
        assert result.byte_miss_ratio is None


def test_lru_by_bytes() -> None:
    # Room for 10 bytes: 1(6) miss; 2(5) miss, evicts 1; 1 miss, evicts 2; 3(4) miss,
    # fits beside 1; 1 hit.
    trace = Trace("bytes", [1, 2, 1, 3, 1], [6, 5, 6, 4, 6])
    result = replay(trace, make_policy("lru", 10), size_text="10")
    assert result.misses == 4
    assert (result.bytes_requested, result.bytes_missed) == (27, 21)
    assert result.byte_miss_ratio == pytest.approx(21 / 27)
    assert footprint(trace) == 15


def test_zero_size_objects_weigh_one_byte() -> None:
    trace = Trace("zeros", [1, 2, 1], [0, 0, 0])
    result = replay(trace, make_policy("lru", 1))
    assert result.misses == 3  # each weighs 1, so only one fits
    assert result.bytes_requested == 3


def test_progress_reports_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import stratacache.sim.engine as engine

    monkeypatch.setattr(engine, "_SLICE", 4)
    seen: list[tuple[int, str]] = []
    result = replay(HAND, make_policy("lru", 3), progress=lambda n, label: seen.append((n, label)))
    assert [n for n, _ in seen] == [4, 4, 1]
    assert seen[0][1] == "hand lru@3"
    assert result.misses == 6  # slicing does not change the count


def test_empty_trace() -> None:
    result = replay(Trace("empty", []), make_policy("lru", 3))
    assert (result.requests, result.misses, result.miss_ratio) == (0, 0, 0.0)


def test_check_policies() -> None:
    assert check_policies([]) == [DEFAULT_POLICY]
    assert check_policies([" LRU", "lru", ""]) == ["lru"]
    with pytest.raises(ConfigurationError, match=r"unknown policy 'nope'; accepted: .*lru"):
        check_policies(["nope"])
    assert set(POLICIES) <= set(available_policies())


def test_run_matrix_order_and_sizes() -> None:
    trace = Trace("t", [1, 2, 3, 4] * 5)
    results = run_matrix([trace, HAND], parse_sizes("2,50%"), ["lru"])
    assert [(r.trace, r.size, r.size_text) for r in results] == [
        ("t", 2, "2"),
        ("t", 2, "50%"),  # 50% of 4 unique keys
        ("hand", 2, "2"),
        ("hand", 3, "50%"),  # 50% of 5 unique keys = 2.5 -> 3
    ]
    assert all(isinstance(r, ReplayResult) for r in results)
    # A fresh policy per run: identical runs give identical counts.
    assert results[0].misses == results[1].misses == 20
    assert results[3].misses == 6


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_counts_at_least_the_cold_misses(name: str) -> None:
    rng = random.Random(7)
    keys: list[int | str] = [int(rng.paretovariate(1.2)) for _ in range(3000)]
    trace = Trace("zipfish", keys)
    result = replay(trace, build_policy(name, 20, trace))
    # No warm-up: every distinct key misses at least once, and nothing misses more than
    # every request.
    assert trace.unique_keys() <= result.misses <= result.requests


def test_opt_is_a_lower_bound() -> None:
    if OPT not in available_policies():
        pytest.skip("policies/opt.py has not landed yet")
    rng = random.Random(11)
    keys: list[int | str] = [rng.randrange(60) for _ in range(2000)]
    trace = Trace("uniform", keys)
    for capacity in (5, 20, 50):
        opt = replay(trace, build_policy(OPT, capacity, trace))
        for name in POLICIES:
            assert opt.misses <= replay(trace, build_policy(name, capacity, trace)).misses

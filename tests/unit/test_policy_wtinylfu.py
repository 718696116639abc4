"""W-TinyLFU's signature behaviours: scan resistance, admission by frequency, the adaptive
window (growing under recency, shrinking under frequency), hash-flooding jitter, weights.

Every test runs against the Python classes and against the compiled ones
(``stratacache._cpolicies``), which must behave identically."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from stratacache import policies

try:
    from stratacache import _cpolicies  # type: ignore[attr-defined]
except ImportError:  # built without a compiler
    _cpolicies = None

_IMPLEMENTATIONS = [pytest.param(policies, id="python")]
if _cpolicies is not None:
    _IMPLEMENTATIONS.append(pytest.param(_cpolicies, id="c"))


@pytest.fixture(params=_IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Any:
    """A module with ``WTinyLFUPolicy`` and ``LRUPolicy``: the Python or compiled ones."""
    return request.param


def hits(policy: Any, keys: list[int]) -> int:
    return sum(map(policy.access, keys))


def test_a_hot_set_survives_a_long_one_time_scan(impl: Any) -> None:
    capacity = 200
    hot = list(range(100))
    rng = random.Random(1)
    warmup = [rng.choice(hot) for _ in range(20_000)]
    scan = list(range(10_000, 60_000))  # 50,000 keys, each requested once

    policy = impl.WTinyLFUPolicy(capacity)
    lru = impl.LRUPolicy(capacity)
    for cache in (policy, lru):
        hits(cache, warmup)
        hits(cache, scan)
    survivors = sum(1 for key in hot if key in policy)
    assert survivors >= 95, f"only {survivors} of 100 hot keys survived the scan"
    assert not any(key in lru for key in hot), "LRU, for contrast, is flushed"
    # And the hot set is served straight away afterwards.
    assert hits(policy, hot) >= 95


def test_a_candidate_is_admitted_only_if_more_popular_than_the_victim(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(10, adaptation="fixed")  # a window of 1, a main area of 9
    for key in range(10):
        for _ in range(3):
            policy.access(key)
    assert len(policy) == 10
    # A key waits in the window; it duels when the next newcomer pushes it out.
    policy.on_insert("new")
    victims = policy.on_insert("next")
    assert victims == ["new"], "seen once, it loses to main's victim (seen three times)"
    for _ in range(6):
        policy.sketch.increment("popular")  # requested often while not resident
    policy.on_insert("popular")
    victims = policy.on_insert("after")
    assert "popular" in policy and victims and victims[0] in range(10)


def recency_trace(length: int, span: int) -> list[int]:
    """Each key is requested a few times within a short stretch, then never again: what an
    LRU of about ``span`` entries catches and a frequency filter with a tiny window misses."""
    rng = random.Random(5)
    keys: list[int] = []
    for start in range(length // 4):
        keys.append(start)
        for _ in range(3):
            keys.append(max(0, start - rng.randrange(span // 4)))
    return keys


def test_the_window_grows_on_a_recency_biased_trace(impl: Any) -> None:
    capacity = 400
    policy = impl.WTinyLFUPolicy(capacity)
    start = policy.window_maximum
    trace = recency_trace(120_000, span=600)
    got = hits(policy, trace)
    assert policy.window_maximum > start + capacity // 5
    # And adapting pays: a fixed 1% window does worse.
    fixed = impl.WTinyLFUPolicy(capacity, adaptation="fixed")
    assert got > hits(fixed, trace)


def stack_trace(length: int, depth: int) -> list[int]:
    """An LRU stack-distance stream: 5% new keys, else the key at a uniform stack depth below
    ``depth``, moved to the top. A cache of ``depth`` entries run as plain LRU hits every
    re-request; a frequency filter only gets in the way (the keys' counts are all alike)."""
    rng = random.Random(7)
    stack: list[int] = []
    keys: list[int] = []
    for _ in range(length):
        d = rng.randrange(depth)
        new = rng.random() < 0.05 or d >= len(stack)
        key = len(keys) + 10**6 if new else stack.pop(-1 - d)
        stack.append(key)
        keys.append(key)
    return keys


def test_the_window_can_take_nearly_the_whole_cache_when_only_recency_pays(impl: Any) -> None:
    capacity = 400
    policy = impl.WTinyLFUPolicy(capacity)
    trace = stack_trace(60_000, int(1.2 * capacity))
    got = hits(policy, trace)
    # Past protected's initial share (80% of main, about 79% of the cache) and into
    # probation's: all of it but the one unit main keeps for the duels.
    assert policy.window_maximum == capacity - 1
    assert policy.protected_maximum == 0
    assert got >= 0.99 * hits(impl.LRUPolicy(capacity), trace)
    # Against a fixed window with the same (fixed) aging: what the window walk alone earns.
    fixed = impl.WTinyLFUPolicy(capacity, adaptation="fixed", aging="fixed")
    assert hits(impl.WTinyLFUPolicy(capacity, aging="fixed"), trace) > 1.2 * hits(fixed, trace)


@pytest.mark.parametrize(("window_percent", "step"), [(0.01, 1), (0.5, 50)])
def test_a_shadow_hit_moves_the_boundary_by_a_share_of_the_smaller_side(
    impl: Any, window_percent: float, step: int
) -> None:
    """One rejected candidate comes back: the window grows by (the smaller of window and
    main) / 128 entries, at least one: 128 / 128 = 1 for a 1% window of 12,800 entries,
    6,400 / 128 = 50 for a half-and-half split."""
    capacity = 12_800
    policy = impl.WTinyLFUPolicy(capacity, window_percent=window_percent)
    window = policy.window_maximum
    for key in range(capacity):
        policy.access(key)
    candidate = capacity - window  # the window's oldest key
    victims = policy.on_insert("newcomer")
    assert victims == [candidate], "seen once like main's victim: the tie keeps the resident"
    assert policy.window_maximum == window
    assert policy.access(candidate) is False  # a miss on the window shadow
    assert policy.window_maximum == window + step


def frequency_trace(length: int, hot: int) -> list[int]:
    """A hot set that fits the cache, requested uniformly, interleaved half and half with a
    stream of keys requested once: a small window and a large main area hold the whole hot
    set, a large window wastes room on the stream."""
    rng = random.Random(9)
    keys: list[int] = []
    for position in range(length):
        keys.append(rng.randrange(hot) if position % 2 else 10**6 + position)
    return keys


def test_the_window_shrinks_on_a_frequency_biased_trace(impl: Any) -> None:
    capacity = 300
    policy = impl.WTinyLFUPolicy(capacity, window_percent=0.5)
    start = policy.window_maximum
    trace = frequency_trace(100_000, hot=250)
    got = hits(policy, trace)
    assert policy.window_maximum < start // 2
    assert got > hits(impl.WTinyLFUPolicy(capacity, window_percent=0.5, adaptation="fixed"), trace)


def test_caffeines_climber_also_moves_the_window_toward_recency(impl: Any) -> None:
    capacity = 400
    policy = impl.WTinyLFUPolicy(capacity, adaptation="climb")
    start = policy.window_maximum
    hits(policy, recency_trace(200_000, span=600))
    assert policy.window_maximum > start


def test_fixed_adaptation_never_moves_the_window(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(300, adaptation="fixed", window_percent=0.2)
    hits(policy, recency_trace(40_000, span=500))
    assert policy.window_maximum == 60


def test_hash_flooding_jitter_admits_a_warm_loser_about_once_in_128(impl: Any) -> None:
    def admissions(seed: int) -> tuple[int, int]:
        policy = impl.WTinyLFUPolicy(4, seed=seed, adaptation="fixed", window_percent=0.25)
        admitted = duels = 0
        for trial in range(6000):
            policy.clear()
            for key in ("a", "b", "c", "d"):
                for _ in range(15):
                    policy.access(key)
            candidate = f"c{trial}"
            for _ in range(6):  # warm (at the threshold) but colder than any victim
                policy.sketch.increment(candidate)
            policy.on_insert(candidate)
            if policy.sketch.frequency(candidate) != 7:
                continue  # a tiny sketch: this name collides with the hot keys' counters
            duels += 1
            policy.on_insert(f"push{trial}")  # forces the candidate's duel
            admitted += candidate in policy
        return admitted, duels

    admitted, duels = admissions(seed=1)
    assert duels > 5000
    assert duels / 128 / 3 < admitted < duels / 128 * 3
    assert admissions(seed=1) == (admitted, duels), "the jitter is reproducible from the seed"


def test_without_warmth_a_losing_candidate_is_never_admitted(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(4, adaptation="fixed", window_percent=0.25)
    for key in ("a", "b", "c", "d"):
        for _ in range(15):
            policy.access(key)
    sketches = [policy.sketch, getattr(policy, "short_sketch", None)]
    duels = 0
    for trial in range(500):
        for key in ("a", "b", "c"):
            policy.access(key)  # they stay hot
        candidate = f"cold{trial}"
        if any(s is not None and s.frequency(candidate) for s in sketches):
            continue  # a tiny sketch: this name shares counters with the hot keys
        duels += 1
        policy.on_insert(candidate)
        assert all(key in policy for key in ("a", "b", "c"))
    assert duels > 300


def test_a_heavy_candidate_must_beat_every_victim_it_displaces(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(10, adaptation="fixed", window_percent=0.1)
    for key in range(9):
        policy.access(key)  # weight 1 each, seen once
    for key in (7, 8):
        for _ in range(10):
            policy.access(key)  # two of them are hot
    for _ in range(4):
        policy.sketch.increment("heavy")
    policy.on_insert("heavy", 4)
    victims = policy.on_insert("light", 1)
    # "heavy" (estimate 5) beats the cold keys but not the hot ones: it may displace cold
    # keys only, so the hot keys stay whatever happens to "heavy".
    assert 7 in policy and 8 in policy
    assert policy.weight <= 10
    assert "heavy" in victims or "heavy" in policy


@pytest.mark.parametrize("adaptation", ["shadow", "climb"])
def test_weighted_adaptation_keeps_the_bounds_consistent(impl: Any, adaptation: str) -> None:
    rng = random.Random(3)
    policy = impl.WTinyLFUPolicy(5000, adaptation=adaptation)
    for key in recency_trace(60_000, span=300):
        policy.access(key, weight=1 + (key * 2654435761) % 97)
        if rng.random() < 0.01:
            assert policy.weight <= policy.capacity
            assert 1 <= policy.window_maximum <= policy.capacity
            assert policy.protected_maximum >= 0
    assert policy.sketch.capacity >= len(policy) // 2


def test_unknown_adaptation_and_bad_window_are_rejected(impl: Any) -> None:
    with pytest.raises(ValueError, match="adaptation"):
        impl.WTinyLFUPolicy(10, adaptation="magic")
    with pytest.raises(ValueError, match="window_percent"):
        impl.WTinyLFUPolicy(10, window_percent=1.5)


def loop_under_hot_set(length: int, loop: int, hot: int) -> list[int]:
    """70% of the requests walk a cyclic loop longer than the cache, 30% are Zipf(1.2) over a
    small hot set: the best a cache can do is keep the hot set and a fixed part of the loop."""
    rng = random.Random(1)
    weights = list(itertools.accumulate(1 / rank**1.2 for rank in range(1, hot + 1)))
    keys: list[int] = []
    position = 0
    for _ in range(length):
        if rng.random() < 0.7:
            keys.append(10**6 + position)
            position = (position + 1) % loop
        else:
            keys.append(rng.choices(range(hot), cum_weights=weights)[0])
    return keys


def test_adaptive_aging_turns_to_the_short_memory_on_a_loop_under_a_hot_set(impl: Any) -> None:
    """With the long memory, every loop key has about the same count, and the candidate,
    counted on this very request, beats the resident requested longest ago by one: main
    churns like LRU on the loop. The duels the two sketches decide differently show it."""
    keys = loop_under_hot_set(150_000, loop=20_000, hot=400)
    adaptive = impl.WTinyLFUPolicy(6100)
    got = hits(adaptive, keys)
    assert adaptive.uses_short_memory
    assert got > 1.15 * hits(impl.WTinyLFUPolicy(6100, aging="fixed"), keys)


def test_adaptive_aging_costs_nothing_on_stationary_popularity(impl: Any) -> None:
    rng = random.Random(5)
    weights = list(itertools.accumulate(1 / rank**0.9 for rank in range(1, 20_001)))
    keys = rng.choices(range(20_000), cum_weights=weights, k=150_000)
    for capacity in (100, 2000):
        adaptive = impl.WTinyLFUPolicy(capacity)
        got = hits(adaptive, keys)
        assert not adaptive.uses_short_memory
        assert got >= 0.995 * hits(impl.WTinyLFUPolicy(capacity, aging="fixed"), keys)


def test_open_disputes_stay_bounded_and_clear_forgets_them(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(40)
    rng = random.Random(8)
    most = 0
    for step in range(60_000):
        policy.access(rng.randrange(400) if step % 3 else rng.randrange(10**6))
        assert policy.pending_disputes <= max(16, policy.sketch.capacity // 4)
        most = max(most, policy.pending_disputes)
    assert most > 0, "this trace should make the sketches disagree"
    policy.clear()
    assert policy.pending_disputes == 0
    assert not policy.uses_short_memory


def test_fixed_aging_keeps_one_sketch(impl: Any) -> None:
    policy = impl.WTinyLFUPolicy(50, aging="fixed")
    assert policy.short_sketch is None
    hits(policy, loop_under_hot_set(20_000, loop=200, hot=20))
    assert policy.pending_disputes == 0
    assert not policy.uses_short_memory
    with pytest.raises(ValueError, match="aging"):
        impl.WTinyLFUPolicy(10, aging="sometimes")

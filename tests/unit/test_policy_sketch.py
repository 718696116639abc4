"""The frequency sketch: estimates, saturation, aging, the two-period doorkeeper.

Every test runs against the Python sketch and the compiled one (``stratacache._cpolicies``,
the sketch the compiled W-TinyLFU uses)."""

from __future__ import annotations

from typing import Any

import pytest

from stratacache.policies import sketch as python_sketch
from stratacache.policies.sketch import MAX_COUNT

try:
    from stratacache import _cpolicies  # type: ignore[attr-defined]
except ImportError:  # built without a compiler
    _cpolicies = None

_IMPLEMENTATIONS = [pytest.param(python_sketch.FrequencySketch, id="python")]
if _cpolicies is not None:
    _IMPLEMENTATIONS.append(pytest.param(_cpolicies.FrequencySketch, id="c"))


@pytest.fixture(params=_IMPLEMENTATIONS)
def sketch_class(request: pytest.FixtureRequest) -> Any:
    """``FrequencySketch``: the Python class or the compiled one."""
    return request.param


def test_unseen_keys_estimate_zero_and_counts_grow_by_one(sketch_class: Any) -> None:
    sketch = sketch_class(100)
    assert sketch.frequency(42) == 0
    for expected in range(1, 8):
        sketch.increment(42)
        assert sketch.frequency(42) == expected
    assert sketch.frequency(43) == 0


@pytest.mark.parametrize("doorkeeper", [True, False])
def test_counters_saturate_at_four_bits(sketch_class: Any, doorkeeper: bool) -> None:
    sketch = sketch_class(1000, doorkeeper=doorkeeper)
    for _ in range(100):
        sketch.increment("hot")
    # The counters stop at 15; the doorkeeper adds its own unit on top.
    assert sketch.frequency("hot") == MAX_COUNT + (1 if doorkeeper else 0)


def test_first_request_of_a_period_only_reaches_the_doorkeeper(sketch_class: Any) -> None:
    sketch = sketch_class(100)
    sketch.increment("once")
    assert sketch.frequency("once") == 1
    assert not any(sketch._table), "a one-hit wonder must not touch the counters"
    sketch.increment("once")
    assert sketch.frequency("once") == 2
    assert sum(sketch._table) > 0


@pytest.mark.parametrize("doorkeeper", [True, False])
def test_counts_are_halved_after_the_sample_period(sketch_class: Any, doorkeeper: bool) -> None:
    sketch = sketch_class(10, sample_factor=10, doorkeeper=doorkeeper)
    assert sketch.sample_size == 100
    for _ in range(12):
        sketch.increment("hot")
    before = sketch.frequency("hot")
    # Fill the rest of the period with distinct keys, which never count more than one.
    for key in range(1000, 1000 + sketch.sample_size - 12):
        sketch.increment(key)
    after = sketch.frequency("hot")
    assert after < before
    assert after in (before // 2, before // 2 + 1)


def test_the_doorkeeper_remembers_a_key_for_two_periods_then_forgets_it(sketch_class: Any) -> None:
    sketch = sketch_class(10, sample_factor=10)
    sketch.increment("k")
    assert sketch.frequency("k") == 1

    def one_period() -> None:
        for _ in range(sketch.sample_size):
            sketch.increment("filler")  # at least one whole period, at most two

    one_period()  # the period in which "k" was seen ends
    assert sketch.frequency("k") == 1, "still counted in the following period"
    one_period()
    assert sketch.frequency("k") == 0, "gone two periods later"


def test_a_key_seen_once_per_period_keeps_its_unit_across_resets(sketch_class: Any) -> None:
    """What the two-period doorkeeper is for: in a loop longer than the cache whose cycle is
    close to the aging period, a key not yet requested this period must not lose to one
    that was (else the cache churns and never hits)."""
    sketch = sketch_class(10, sample_factor=10)
    # After the first reset the sample counter restarts at half (it tracks the halved total),
    # so a period lasts half a sample: a loop of that many keys sees each once per period.
    keys = list(range(sketch.sample_size // 2))
    for _ in range(4):
        for key in keys:
            sketch.increment(key)
    # Halfway through the next cycle: requested-this-period and not-yet-requested keys tie.
    for key in keys[: len(keys) // 2]:
        sketch.increment(key)
    fresh = sketch.frequency(keys[0])
    stale = sketch.frequency(keys[-1])
    assert fresh == stale == 1


def test_integer_keys_are_deterministic_and_seeds_decorrelate(sketch_class: Any) -> None:
    def filled(seed: int) -> Any:
        sketch = sketch_class(64, seed=seed)
        for key in range(500):
            for _ in range(key % 5):
                sketch.increment(key)
        return sketch._table

    assert filled(1) == filled(1)
    assert filled(1) != filled(2)


def test_estimates_are_close_for_a_skewed_stream(sketch_class: Any) -> None:
    sketch = sketch_class(256, sample_factor=1000)  # no aging during the test
    truth: dict[int, int] = {}
    for rank in range(1, 2000):
        count = max(1, 12 // rank)
        truth[rank] = count
        for _ in range(count):
            sketch.increment(rank)
    errors = [sketch.frequency(key) - min(count, MAX_COUNT + 1) for key, count in truth.items()]
    assert min(errors) >= 0, "a count-min sketch never underestimates"
    assert sum(1 for error in errors if error > 0) < 0.05 * len(errors)


def test_conservative_update_inflates_less_than_plain_update(sketch_class: Any) -> None:
    def overestimate(conservative: bool) -> int:
        sketch = sketch_class(
            100,
            counters_per_entry=8,
            sample_factor=1000,
            doorkeeper=False,
            conservative=conservative,
        )
        truth: dict[int, int] = {}
        for key in range(400):
            truth[key] = 1 + key % 3
            for _ in range(truth[key]):
                sketch.increment(key)
        return sum(sketch.frequency(key) - count for key, count in truth.items())

    assert overestimate(conservative=True) < overestimate(conservative=False)


def test_ensure_capacity_grows_only_and_clear_forgets(sketch_class: Any) -> None:
    sketch = sketch_class(10)
    sketch.increment(1)
    sketch.increment(1)
    sketch.ensure_capacity(5)
    assert sketch.capacity == 10
    assert sketch.frequency(1) == 2
    sketch.ensure_capacity(1000)
    assert sketch.capacity == 1000
    assert sketch.sample_size == 10 * 1000
    assert sketch.frequency(1) == 0
    sketch.increment("x")
    sketch.increment("x")
    sketch.clear()
    assert sketch.frequency("x") == 0


def test_period_numbers_wrap_without_aliasing(sketch_class: Any) -> None:
    """The doorkeeper stores period numbers in bytes; after 255 periods it is rebuilt, and a
    key marked long ago must not look recent."""
    sketch = sketch_class(1, sample_factor=1)  # sample size 1: a reset per increment
    sketch.increment("old")
    for _ in range(600):
        sketch.increment("filler")
    assert sketch.frequency("old") == 0
    sketch.increment("new")
    assert sketch.frequency("new") == 1


def test_invalid_sizes_are_rejected(sketch_class: Any) -> None:
    with pytest.raises(ValueError):
        sketch_class(0)
    with pytest.raises(ValueError):
        sketch_class(10, sample_factor=0)

"""Hot keys: the counter finds the heads of a Zipf stream with their rates, the cache
reports them, and protection keeps a hot key in L1 when the policy will not."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stratacache import Cache, MemoryTier, SQLiteTier
from stratacache.errors import ConfigurationError
from stratacache.hotkeys import HotKeys
from stratacache.policies.lru import LRUPolicy
from tests.conftest import FakeClock

STEP = 1e-4  # seconds between requests: 10,000 requests/s in all


def zipf_stream(n: int, keys: int, s: float, seed: int) -> list[str]:
    """Key ``k{i}`` has weight 1 / i**s: ``k1`` is the hottest, then ``k2``..."""
    rng = random.Random(seed)
    names = [f"k{i}" for i in range(1, keys + 1)]
    weights = [1.0 / i**s for i in range(1, keys + 1)]
    return rng.choices(names, weights, k=n)


def feed(counter: HotKeys, stream: list[str], clock: FakeClock, batch: int = 64) -> None:
    for start in range(0, len(stream), batch):
        clock.advance(STEP * batch)
        counter.offer(stream[start : start + batch])


def true_rates(stream: list[str]) -> dict[str, float]:
    seconds = len(stream) * STEP
    return {key: n / seconds for key, n in Counter(stream).items()}


def test_every_hit_counted_finds_the_exact_top_ten() -> None:
    clock = FakeClock()
    counter = HotKeys(32, interval=0, every=1, step=1, half_life=1e9, clock=clock.monotonic)
    stream = zipf_stream(200_000, 50_000, 1.0, seed=1)
    feed(counter, stream, clock)
    expected = [key for key, _ in Counter(stream).most_common(10)]
    found = counter.top(10)
    assert {h.key for h in found} == set(expected)
    rates = true_rates(stream)
    for hot in found:  # Space-Saving's lower bound is exact for keys tracked from the start
        assert hot.rate == pytest.approx(rates[hot.key], rel=0.02)


def test_sampled_hits_still_find_the_heads_with_their_rates() -> None:
    clock = FakeClock()
    counter = HotKeys(clock=clock.monotonic)  # the default sampling: 64 hits every 10 ms
    stream = zipf_stream(400_000, 100_000, 1.1, seed=2)
    feed(counter, stream, clock)
    found = counter.top(5)
    assert [h.key for h in found[:3]] == ["k1", "k2", "k3"]
    assert {h.key for h in found} <= {f"k{i}" for i in range(1, 9)}
    rates = true_rates(stream)
    # A 10 s half-life over a 40 s stream: the estimate leans to the recent past, which is
    # the same stream here.
    assert found[0].rate == pytest.approx(rates["k1"], rel=0.25)
    assert found[1].rate == pytest.approx(rates["k2"], rel=0.35)


def test_a_key_that_stops_being_asked_for_cools_down() -> None:
    clock = FakeClock()
    counter = HotKeys(8, interval=0, every=1, step=1, half_life=2.0, clock=clock.monotonic)
    for _ in range(100):
        clock.advance(0.01)
        counter.offer(["old"] * 10)
    assert counter.top(1)[0].key == "old"
    before = counter.rate("old")
    for _ in range(400):  # 4 s = two half-lives of "new" alone
        clock.advance(0.01)
        counter.offer(["new"] * 10)
    assert counter.top(1)[0].key == "new"
    assert counter.rate("new") == pytest.approx(911, rel=0.05)  # 4 s of a 5 s window
    # "old" had 1,000/s for 1 s, then nothing for two half-lives: its share of the
    # decayed window is ((2**-2 - 2**-2.5) / (1 - 2**-2.5)) of 1,000/s, about 89/s.
    assert counter.rate("old") == pytest.approx(89.1, rel=0.05)
    assert counter.rate("old") < before / 4


def test_uniform_traffic_keeps_the_table_bounded() -> None:
    clock = FakeClock()
    counter = HotKeys(16, interval=0, every=1, step=1, clock=clock.monotonic)
    feed(counter, [f"u{i}" for i in range(100_000)], clock)
    assert len(counter) <= 4 * 16
    assert all(h.rate <= h.error + 1e-9 or h.rate < 50 for h in counter.top(16))


def test_the_cache_reports_its_hot_keys_in_stats(clock: FakeClock) -> None:
    cache = Cache(
        [MemoryTier(2_000, clock=clock.monotonic)],
        origin=lambda keys: {k: k for k in keys},
        clock=clock.monotonic,
    )
    stream = zipf_stream(200_000, 20_000, 1.2, seed=3)
    for key in stream:
        clock.advance(STEP)
        cache.get(key)
    top = cache.hot_keys(3)
    assert [h.key for h in top] == ["k1", "k2", "k3"]
    stats = cache.stats()
    assert [h.key for h in stats.hot_keys[:3]] == ["k1", "k2", "k3"]
    assert stats.as_dict()["hot_keys"][0]["key"] == "k1"
    rate = true_rates(stream)["k1"]
    assert top[0].rate == pytest.approx(rate, rel=0.25)


def test_a_cache_without_l1_counts_every_read(tmp_path: Path, clock: FakeClock) -> None:
    cache = Cache(
        [SQLiteTier(str(tmp_path / "l2.db"), clock=clock.monotonic, wall_clock=clock.time)],
        origin=lambda keys: {k: k for k in keys},
        clock=clock.monotonic,
        wall_clock=clock.time,
    )
    for i in range(3_000):
        clock.advance(STEP)
        cache.get("hot" if i % 3 == 0 else f"cold{i}")
    assert cache.hot_keys(1)[0].key == "hot"
    cache.close()


def test_counting_can_be_turned_off(tmp_path: Path) -> None:
    cache = Cache([MemoryTier(10)], hot_keys=False)
    cache.set("a", 1)
    assert cache.get("a") == 1
    assert cache.hot_keys() == []
    assert cache.stats().hot_keys == []
    with pytest.raises(ConfigurationError, match="hot_keys=True"):
        Cache([MemoryTier(10)], hot_keys=False, hot_key_threshold=10.0)
    with pytest.raises(ConfigurationError, match="MemoryTier first"):
        Cache([SQLiteTier(str(tmp_path / "l2.db"))], hot_key_threshold=10.0)
    with pytest.raises(ConfigurationError, match="requests/second"):
        Cache([MemoryTier(10)], hot_key_threshold=0)


class AdmitsNothing(LRUPolicy):
    """A policy that refuses every new key (what a frequency filter does to a key it has
    not seen often enough): L1 never keeps anything."""

    def on_insert(self, key: Any, weight: int = 1) -> list[Any]:
        super().on_insert(key, weight)
        self.on_remove(key)
        return [key]


def hot_cache(tmp_path: Path, clock: FakeClock, threshold: float | None) -> tuple[Cache, list[int]]:
    loads: list[int] = [0]

    def origin(keys: list[str]) -> dict[str, str]:
        loads[0] += len(keys)
        return {k: f"v-{k}" for k in keys}

    cache = Cache(
        [
            MemoryTier(100, policy=AdmitsNothing, clock=clock.monotonic, wall_clock=clock.time),
            SQLiteTier(str(tmp_path / "l2.db"), clock=clock.monotonic, wall_clock=clock.time),
        ],
        origin=origin,
        clock=clock.monotonic,
        wall_clock=clock.time,
        hot_key_threshold=threshold,
        hot_key_ttl=0.5,
        bus=None,
    )
    return cache, loads


@pytest.mark.parametrize("protected", [False, True])
def test_protection_keeps_a_hot_key_off_l2(
    tmp_path: Path, clock: FakeClock, protected: bool
) -> None:
    cache, loads = hot_cache(tmp_path, clock, 100.0 if protected else None)
    for _ in range(20_000):  # 2 s at 10,000 requests/s, all for one key
        clock.advance(STEP)
        assert cache.get("sale") == "v-sale"
    l2 = cache.stats().levels[1]
    assert loads[0] == 1
    if protected:
        # The key turns hot within its first few reads; from then on L2 sees one read
        # per hot_key_ttl (0.5 s).
        assert l2.lookups <= 20
        assert cache.stats().hot_pins >= 4
    else:
        assert l2.lookups >= 19_999
        assert cache.stats().hot_pins == 0
    cache.close()


def test_a_pinned_key_gives_way_to_writes_and_deletes(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = hot_cache(tmp_path, clock, 100.0)
    for _ in range(2_000):
        clock.advance(STEP)
        cache.get("sale")
    l1 = cache.levels[0]
    assert isinstance(l1, MemoryTier) and "sale" in l1.pinned
    cache.set("sale", "new")
    assert "sale" not in l1.pinned
    assert cache.get("sale") == "new"
    cache.invalidate("sale")
    assert "sale" not in l1.data
    assert cache.get("sale") == "v-sale"  # loaded again from the origin
    cache.close()


def test_a_pin_expires_after_hot_key_ttl(tmp_path: Path, clock: FakeClock) -> None:
    cache, _ = hot_cache(tmp_path, clock, 100.0)
    for _ in range(2_000):
        clock.advance(STEP)
        cache.get("sale")
    l2_before = cache.stats().levels[1].lookups
    clock.advance(0.6)  # past hot_key_ttl=0.5
    cache.get("sale")
    assert cache.stats().levels[1].lookups == l2_before + 1
    cache.close()


def test_short_batches_do_not_make_a_cold_key_look_hot() -> None:
    # Writers drain the read buffer a key or two at a time: a sample of one key must not
    # stand for hundreds of hits.
    clock = FakeClock()
    counter = HotKeys(clock=clock.monotonic)
    rng = random.Random(5)
    for _ in range(40_000):  # 4 s at 10,000 hits/s, drained one key at a time
        clock.advance(STEP)
        counter.offer(["sale" if rng.random() < 0.3 else f"k{rng.randrange(5_000)}"])
    top = counter.top(2)
    assert top[0].key == "sale"
    assert top[0].rate == pytest.approx(3_000, rel=0.25)
    assert top[1].rate < 60  # a cold key's true rate is 1.4/s; one sample is ~40/s

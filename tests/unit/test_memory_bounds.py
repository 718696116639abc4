"""default_weigher: a deep size (never below sys.getsizeof, shared objects once, cycles
end), and a MemoryTier bounded by max_bytes holds, per tracemalloc, within 1.5x the bound."""

from __future__ import annotations

import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from stratacache.entry import NEVER, Entry
from stratacache.policies import POLICIES
from stratacache.tiers.memory import ENTRY_OVERHEAD, MemoryTier, deep_size, default_weigher


class Plain:
    def __init__(self, i: int) -> None:
        self.id = i
        self.name = f"user-{i}"
        self.score = i * 0.5
        self.tags = [f"t{i}", f"u{i}"]


class Slotted:
    __slots__ = ("id", "name", "score")

    def __init__(self, i: int) -> None:
        self.id = i * 1000
        self.name = f"user-{i}"
        self.score = i * 0.5


@dataclass
class Record:
    id: int
    name: str
    values: list[float]


FAMILIES: dict[str, Callable[[int], Any]] = {
    "str100": lambda i: f"{i:08d}" + "x" * 92,
    "bytes100": lambda i: f"{i:08d}".encode() + b"x" * 92,
    "bytes4k": lambda i: f"{i:08d}".encode() * 512,
    "floats200": lambda i: [i + j / 7 for j in range(200)],
    "tuple_mixed": lambda i: tuple((i * 1000 + j, f"s{i}-{j}") for j in range(20)),
    "set_str": lambda i: {f"{i}-{j}" for j in range(30)},
    "dict_of_dicts": lambda i: {
        f"k{j}": {"id": i * 1000 + j, "name": f"n{i}-{j}", "score": j + i / 3} for j in range(50)
    },
    "obj_dict": Plain,
    "obj_slots": lambda i: [Slotted(i * 10 + j) for j in range(10)],
    "dataclass": lambda i: Record(i * 1000, f"rec-{i}", [float(i + j) for j in range(20)]),
}


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 4)
    if kind == 0:
        return rng.randrange(-(10**12), 10**12)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return "".join(rng.choice("abcé€😀") for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.randbytes(rng.randrange(60))
    items = [random_value(rng, depth + 1) for _ in range(rng.randrange(12))]
    if kind == 4:
        return items
    if kind == 5:
        return tuple(items)
    if kind == 6:
        return {str(k): v for k, v in enumerate(items)}
    if kind == 7:
        return Record(rng.randrange(1000), "r", [float(x) for x in range(len(items))])
    return Plain(rng.randrange(1000))


# ------------------------------------------------------------------ the weigher itself


@pytest.mark.parametrize("seed", range(200))
def test_never_below_getsizeof_and_counts_the_key(seed: int) -> None:
    value = random_value(random.Random(seed))
    size = deep_size(value)
    assert size >= sys.getsizeof(value)
    key = f"key-{seed}"
    assert default_weigher(key, value) == size + sys.getsizeof(key) + ENTRY_OVERHEAD


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_never_below_getsizeof(name: str) -> None:
    value = FAMILIES[name](12345)
    assert deep_size(value) >= sys.getsizeof(value)


def test_containers_are_counted_deep() -> None:
    floats = [i + 0.5 for i in range(200)]
    assert deep_size(floats) == sys.getsizeof(floats) + sum(map(sys.getsizeof, floats))
    inner = [f"{i}-xyz" for i in range(10)]
    outer = {"a": inner}
    assert deep_size(outer) == (sys.getsizeof(outer) + sys.getsizeof("a") + deep_size(inner))


def test_instance_attributes_and_slots_are_counted() -> None:
    payload = "p" * 1000
    obj = Plain(1)
    obj.name = payload
    assert deep_size(obj) > sys.getsizeof(obj) + sys.getsizeof(payload)
    slotted = Slotted(1)
    slotted.name = payload
    assert deep_size(slotted) >= sys.getsizeof(slotted) + sys.getsizeof(payload)
    record = Record(1, payload, [])
    assert deep_size(record) > sys.getsizeof(record) + sys.getsizeof(payload)


@pytest.mark.parametrize("seed", range(50))
def test_shared_sub_objects_are_counted_once(seed: int) -> None:
    rng = random.Random(seed)
    shared = [random_value(rng) for _ in range(3)] + ["s" * 500, [1.5] * 50, Plain(7)]
    part = rng.choice(shared)
    once = deep_size([part])
    many = deep_size([part] * 20)
    assert many - sys.getsizeof([part] * 20) == once - sys.getsizeof([part])
    # shared between the branches of a tree, not only within one list
    tree = {"left": {"x": part}, "right": (part, [part])}
    alone = deep_size({"left": {"x": None}, "right": (None, [None])})
    assert deep_size(tree) == alone + once - sys.getsizeof([part])


def test_class_level_objects_are_not_counted() -> None:
    # the class, its methods and modules are shared program structure, not the value's
    assert deep_size(Plain) == sys.getsizeof(Plain)
    assert deep_size([Plain, sys, len]) == sys.getsizeof([Plain, sys, len])


def test_cycles_terminate() -> None:
    a: list[Any] = ["x" * 100]
    a.append(a)
    d: dict[str, Any] = {"self": None}
    d["self"] = d
    obj = Plain(1)
    obj.tags = [obj, {"back": obj}]  # type: ignore[list-item]
    for value in (a, d, obj):
        size = deep_size(value)
        assert sys.getsizeof(value) <= size < 10_000
    assert deep_size(a) == sys.getsizeof(a) + sys.getsizeof(a[0])


def test_a_huge_value_is_extrapolated_quickly_and_closely() -> None:
    value = [{"a": float(i), "b": str(i)} for i in range(200_000)]
    exact = deep_size(value, budget=10**9, sample=10**9)
    started = time.perf_counter()
    estimate = deep_size(value)
    took = time.perf_counter() - started
    assert 0.9 * exact <= estimate <= 1.1 * exact
    assert took < 0.05  # the walk is capped (a few ms at most); the exact walk takes ~100x


# ------------------------------------------------------------------ the bound holds


def entries_footprint(
    make: Callable[[int], Any], bound: int, policy: str = "wtinylfu"
) -> tuple[int, MemoryTier]:
    """Bytes tracemalloc sees allocated while filling a tier bounded at ``bound`` well past
    capacity, counting from before the tier is built (its policy's first sketch too)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tier = MemoryTier(max_bytes=bound, policy=policy)
        i = 0
        while i < 200_000 and not (tier.weight > 0.9 * bound and i > 3 * len(tier)):
            batch = {f"key:{i + j:08d}": Entry(make(i + j), NEVER) for j in range(100)}
            tier.write(tier.prepare(batch))
            i += 100
        del batch
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, tier
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_filled_tier_holds_within_one_and_a_half_times_its_bound(name: str) -> None:
    bound = 2_000_000
    used, tier = entries_footprint(FAMILIES[name], bound)
    assert tier.weight <= bound
    assert len(tier) > 10
    assert used <= 1.5 * bound, f"{name}: {used / bound:.2f}x the bound, {len(tier)} entries"
    # and the weigher does not overcharge: the tier is well used
    assert used >= 0.8 * bound, f"{name}: only {used / bound:.2f}x the bound"


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("name", ["small_int", "bytes100"])
def test_every_policy_s_bookkeeping_is_inside_the_bound(policy: str, name: str) -> None:
    """Small entries are where a policy's per-key nodes (and W-TinyLFU's sketches, which
    grow with the resident count) weigh most: the bound still holds."""
    bound = 2_000_000
    make = FAMILIES.get(name, lambda i: i)
    used, tier = entries_footprint(make, bound, policy)
    assert used <= 1.5 * bound, f"{policy}: {used / bound:.2f}x the bound, {len(tier)} entries"
    assert used >= 0.8 * bound, f"{policy}: only {used / bound:.2f}x the bound"


def test_a_key_the_policy_refuses_is_not_kept() -> None:
    bound = 1_000_000  # W-TinyLFU's window is 1%: 10 kB, smaller than one 19 kB value
    make = FAMILIES["dict_of_dicts"]
    tier = MemoryTier(max_bytes=bound)
    for i in range(0, 300, 100):
        tier.write(tier.prepare({f"k{i + j}": Entry(make(i + j), NEVER) for j in range(100)}))
    assert len(tier) * default_weigher("k0", make(0)) <= bound

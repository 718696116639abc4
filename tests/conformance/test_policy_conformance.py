"""One suite every eviction policy must pass, by entry count and by weight.

A store keeps its own mirror of which keys are resident (it must, to hold the values); the
contract is that this mirror, maintained only from what the policy returns, always equals
the policy's own view: no key lost, none duplicated, the bound never exceeded, every victim a
key that was resident (or the key just inserted). ``access`` must be exactly the pair of
calls an L1 store makes (buffered ``on_hits``, then ``on_insert`` on a miss).

W-TinyLFU and LRU also exist compiled (``stratacache._cpolicies``); every case runs against
both implementations: ``name`` is the Python class, ``name[c]`` the compiled one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from stratacache import _accel
from stratacache.policies import (
    POLICIES,
    ARCPolicy,
    LRUPolicy,
    OPTPolicy,
    Policy,
    PolicyBase,
    WTinyLFUPolicy,
    compiled_policy,
    make_policy,
)

try:
    from stratacache import _cpolicies  # type: ignore[attr-defined]
except ImportError:  # built without a compiler: only the Python classes are tested
    _cpolicies = None

Factory = Callable[[int, Sequence[Any]], Policy]


def _python(name: str) -> Factory:
    return lambda capacity, trace: POLICIES[name](capacity)


# Every online policy under its registry name (the Python class), the W-TinyLFU variants
# whose code paths differ, and OPT, which must be built with the trace it will be driven by.
FACTORIES: dict[str, Factory] = {name: _python(name) for name in sorted(POLICIES)}
FACTORIES["wtinylfu-climb"] = lambda c, t: WTinyLFUPolicy(c, adaptation="climb")
FACTORIES["wtinylfu-fixed"] = lambda c, t: WTinyLFUPolicy(c, adaptation="fixed")
FACTORIES["wtinylfu-nodoorkeeper"] = lambda c, t: WTinyLFUPolicy(c, doorkeeper=False)
FACTORIES["opt"] = lambda c, t: OPTPolicy(c, t)
if _cpolicies is not None:
    CW, CL = _cpolicies.WTinyLFUPolicy, _cpolicies.LRUPolicy
    FACTORIES["lru[c]"] = lambda c, t: CL(c)
    FACTORIES["wtinylfu[c]"] = lambda c, t: CW(c)
    FACTORIES["wtinylfu-climb[c]"] = lambda c, t: CW(c, adaptation="climb")
    FACTORIES["wtinylfu-fixed[c]"] = lambda c, t: CW(c, adaptation="fixed")
    FACTORIES["wtinylfu-nodoorkeeper[c]"] = lambda c, t: CW(c, doorkeeper=False)

ONLINE = [name for name in FACTORIES if name != "opt"]


def make_trace(seed: int, length: int, universe: int) -> list[int | str]:
    """Skewed popularity, a moving working set, scans, and a few str keys."""
    rng = random.Random(seed)
    keys: list[int | str] = []
    base = 0
    while len(keys) < length:
        roll = rng.random()
        if roll < 0.1:
            start = rng.randrange(10**6)
            keys.extend(10**6 + start + i for i in range(rng.randrange(5, 60)))
        elif roll < 0.2:
            base += rng.randrange(5, 50)
        elif roll < 0.25:
            keys.extend(f"s{rng.randrange(universe // 4)}" for _ in range(rng.randrange(1, 10)))
        else:
            for _ in range(rng.randrange(5, 80)):
                keys.append(base + int(rng.paretovariate(1.0)) % universe)
    return keys[:length]


def weight_of(key: int | str, weighted: bool, capacity: int) -> int:
    """A stable weight per key: 1 by count; by weight, mostly small, some heavy, a few
    heavier than the whole capacity."""
    if not weighted:
        return 1
    h = hash(key) if isinstance(key, int) else sum(map(ord, key))
    roll = h % 100
    if roll < 3:
        return capacity + 1 + roll
    if roll < 15:
        return 1 + h % max(1, capacity // 3)
    return 1 + h % 8


class Mirror:
    """What a store knows: the keys it holds and their weights, kept from the policy's
    answers only, and checked against the policy after every step."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.weights: dict[Any, int] = {}

    def insert(self, key: Any, weight: int, cost: float = 1.0) -> list[Any]:
        victims = self.policy.on_insert(key, weight, cost)
        self.weights[key] = weight
        self._apply(victims, key)
        return victims

    def update(self, key: Any, weight: int) -> list[Any]:
        victims = self.policy.on_update(key, weight)
        if key in self.weights:
            self.weights[key] = weight
        self._apply(victims, key)
        return victims

    def remove(self, key: Any) -> None:
        self.policy.on_remove(key)
        self.weights.pop(key, None)

    def _apply(self, victims: list[Any], key: Any) -> None:
        assert len(victims) == len(set(victims)), f"duplicate victims {victims}"
        for victim in victims:
            assert victim in self.weights, f"victim {victim!r} was not resident"
            del self.weights[victim]
        self.check()

    def check(self) -> None:
        policy = self.policy
        assert policy.weight <= policy.capacity
        assert len(policy) == len(self.weights)
        assert policy.weight == sum(self.weights.values())
        for key in self.weights:
            assert key in policy, f"{key!r} lost by the policy"


def drive(
    policy: Policy, trace: Sequence[Any], weighted: bool, *, batch: int = 1
) -> tuple[list[bool], Mirror]:
    """Replay ``trace`` the way an L1 store does: hits go to a buffer drained with
    ``on_hits`` before every insert (and whenever ``batch`` hits are pending)."""
    mirror = Mirror(policy)
    buffer: list[Any] = []
    outcome: list[bool] = []
    capacity = policy.capacity
    for key in trace:
        if key in mirror.weights:
            outcome.append(True)
            buffer.append(key)
            if len(buffer) >= batch:
                policy.on_hits(buffer)
                buffer.clear()
            continue
        outcome.append(False)
        if buffer:
            policy.on_hits(buffer)
            buffer.clear()
        mirror.insert(key, weight_of(key, weighted, capacity))
    if buffer:
        policy.on_hits(buffer)
    mirror.check()
    return outcome, mirror


@pytest.fixture(params=sorted(FACTORIES))
def factory_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("weighted", [False, True], ids=["count", "weight"])
@pytest.mark.parametrize("capacity", [1, 7, 64])
def test_mirror_and_bound_hold_over_a_mixed_trace(
    factory_name: str, weighted: bool, capacity: int
) -> None:
    trace = make_trace(seed=capacity, length=4000, universe=300)
    policy = FACTORIES[factory_name](capacity, trace)
    outcome, _ = drive(policy, trace, weighted, batch=4)
    if not weighted and capacity > 1:
        assert any(outcome), "a skewed trace must produce some hits"
    assert isinstance(policy, Policy)


@pytest.mark.parametrize("weighted", [False, True], ids=["count", "weight"])
def test_access_is_exactly_on_hit_then_on_insert(factory_name: str, weighted: bool) -> None:
    """``access`` (the simulator's call) and the L1 store's buffered pair of calls must make
    the same decisions on the same trace, request by request."""
    trace = make_trace(seed=7, length=5000, universe=500)
    capacity = 50
    by_store = FACTORIES[factory_name](capacity, trace)
    store_outcome, mirror = drive(by_store, trace, weighted, batch=1)

    by_access = FACTORIES[factory_name](capacity, trace)
    access_outcome = [by_access.access(key, weight_of(key, weighted, capacity)) for key in trace]
    assert access_outcome == store_outcome
    assert len(by_access) == len(by_store)
    assert all(key in by_access for key in mirror.weights)
    assert by_access.weight == by_store.weight


@pytest.mark.parametrize("name", ONLINE)
def test_buffered_hits_give_the_same_result_as_immediate_ones(name: str) -> None:
    """Draining hits in batches (before each insert) changes nothing for the policy."""
    trace = make_trace(seed=11, length=4000, universe=400)
    one, _ = drive(FACTORIES[name](40, trace), trace, False, batch=1)
    many, _ = drive(FACTORIES[name](40, trace), trace, False, batch=64)
    assert one == many


@pytest.mark.parametrize("name", ONLINE)
def test_an_entry_heavier_than_the_capacity_is_its_own_victim(name: str) -> None:
    policy = FACTORIES[name](10, [])
    mirror = Mirror(policy)
    for key in range(5):
        mirror.insert(key, 2)
    assert mirror.insert("big", 11) == ["big"]
    assert "big" not in policy
    assert policy.weight == 10
    assert all(key in policy for key in range(5))


@pytest.mark.parametrize("name", ONLINE)
def test_on_remove_forgets_the_key_and_ignores_unknown_ones(name: str) -> None:
    policy = FACTORIES[name](8, [])
    mirror = Mirror(policy)
    for key in range(6):
        mirror.insert(key, 1)
    mirror.remove(3)
    mirror.remove(3)
    mirror.remove("never seen")
    assert 3 not in policy
    mirror.check()
    # The room freed is usable: two more fit without any eviction.
    assert mirror.insert(10, 1) == []
    assert mirror.insert(11, 1) == []
    assert mirror.insert(12, 1) == []


@pytest.mark.parametrize("name", ONLINE)
def test_on_update_keeps_the_bound_and_can_evict_the_key_itself(name: str) -> None:
    policy = FACTORIES[name](10, [])
    mirror = Mirror(policy)
    for key in range(10):
        mirror.insert(key, 1)
    victims = mirror.update(4, 5)  # +4 units: four keys must go (maybe 4 itself)
    assert len(victims) >= 1
    assert policy.weight <= 10
    assert mirror.update("unknown", 3) == []
    survivor = next(iter(mirror.weights))
    assert mirror.update(survivor, 11) == [survivor]
    assert survivor not in policy
    mirror.check()


@pytest.mark.parametrize("name", ONLINE)
def test_on_hits_ignores_keys_evicted_since_they_were_buffered(name: str) -> None:
    policy = FACTORIES[name](3, [])
    mirror = Mirror(policy)
    for key in range(10):
        mirror.insert(key, 1)
    policy.on_hits([0, 1, 2, "ghost", *mirror.weights])
    mirror.check()
    policy.on_hit("also never seen")
    mirror.check()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_clear_forgets_everything(name: str) -> None:
    trace = make_trace(seed=3, length=600, universe=100)
    policy = FACTORIES[name](20, trace + trace)
    drive(policy, trace, False)
    policy.clear()
    assert len(policy) == 0
    assert policy.weight == 0
    assert not any(key in policy for key in trace)
    # Still usable afterwards.
    _, mirror = drive(policy, trace, False)
    assert len(mirror.weights) > 0


@pytest.mark.parametrize("name", ONLINE)
def test_capacity_must_be_a_positive_int(name: str) -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            FACTORIES[name](bad, [])  # type: ignore[arg-type]


def test_every_registered_policy_subclasses_the_base() -> None:
    for name in POLICIES:
        policy = make_policy(name, 4)
        assert isinstance(policy, PolicyBase)
        assert isinstance(policy, Policy)
        assert policy.capacity == 4
        assert repr(policy).startswith(type(policy).__name__)


def test_make_policy_rejects_unknown_names_and_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"accepted: .*lru.*wtinylfu"):
        make_policy("nope", 4)
    assert type(make_policy("WTinyLFU", 4)) is (compiled_policy("wtinylfu") or WTinyLFUPolicy)
    assert isinstance(make_policy("arc", 4), ARCPolicy)


@pytest.mark.skipif(_cpolicies is None, reason="the compiled policies are not built here")
def test_make_policy_prefers_the_compiled_class_unless_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _cpolicies is not None
    monkeypatch.setattr(_accel, "cpolicies", _cpolicies)
    assert type(make_policy("wtinylfu", 4, seed=3)) is _cpolicies.WTinyLFUPolicy
    assert type(make_policy("LRU", 4)) is _cpolicies.LRUPolicy
    assert type(make_policy("arc", 4)) is ARCPolicy  # no compiled version
    # Beyond the compiled arithmetic's range, the Python class serves.
    assert type(make_policy("lru", 2**70)) is LRUPolicy
    # What STRATACACHE_PURE_PYTHON=1 does: no compiled module.
    monkeypatch.setattr(_accel, "cpolicies", None)
    assert compiled_policy("wtinylfu") is None
    assert type(make_policy("wtinylfu", 4)) is WTinyLFUPolicy
    assert type(make_policy("lru", 4)) is LRUPolicy


# -- Hypothesis: random operation sequences against a model --------------------------------

KEYS = st.integers(min_value=0, max_value=40)


class PolicyMachine(RuleBasedStateMachine):
    """Random inserts, hits, updates, removals and clears; the mirror must always match."""

    policy_name = "lru"
    weighted = False

    @initialize(capacity=st.integers(min_value=1, max_value=12))
    def start(self, capacity: int) -> None:
        self.capacity = capacity
        self.mirror = Mirror(FACTORIES[self.policy_name](capacity, []))

    def _weight(self, draw: int) -> int:
        return 1 if not self.weighted else 1 + draw % (self.capacity + 2)

    @rule(key=KEYS, draw=st.integers(0, 100))
    def insert(self, key: int, draw: int) -> None:
        if key in self.mirror.weights:
            return
        self.mirror.insert(key, self._weight(draw))

    @rule(keys=st.lists(KEYS, max_size=6))
    def hits(self, keys: list[int]) -> None:
        self.mirror.policy.on_hits(keys)

    @precondition(lambda self: bool(self.mirror.weights))
    @rule(data=st.data(), draw=st.integers(0, 100))
    def update(self, data: st.DataObject, draw: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.mirror.weights)))
        self.mirror.update(key, self._weight(draw))

    @rule(key=KEYS)
    def remove(self, key: int) -> None:
        self.mirror.remove(key)

    @rule()
    def clear(self) -> None:
        self.mirror.policy.clear()
        self.mirror.weights.clear()

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "mirror"):
            self.mirror.check()


def _machine(name: str, weighted: bool) -> type[RuleBasedStateMachine]:
    return type(
        f"Machine_{name.replace('[c]', '_compiled')}_{'weight' if weighted else 'count'}",
        (PolicyMachine,),
        {"policy_name": name, "weighted": weighted},
    )


_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

for _name in ONLINE:
    for _weighted in (False, True):
        _cls = _machine(_name, _weighted)
        globals()[f"Test{_cls.__name__}"] = _SETTINGS(_cls).TestCase


class ExactLRUMachine(RuleBasedStateMachine):
    """LRU has an exact model: an ordered list, oldest first; the victims are predictable."""

    factory: Callable[[int], Policy] = LRUPolicy

    @initialize(capacity=st.integers(min_value=1, max_value=8))
    def start(self, capacity: int) -> None:
        self.capacity = capacity
        self.policy = type(self).factory(capacity)
        self.model: list[int] = []

    @rule(key=KEYS)
    def request(self, key: int) -> None:
        hit = self.policy.access(key)
        assert hit == (key in self.model)
        if hit:
            self.model.remove(key)
        self.model.append(key)
        del self.model[: max(0, len(self.model) - self.capacity)]

    @rule(key=KEYS)
    def remove(self, key: int) -> None:
        self.policy.on_remove(key)
        if key in self.model:
            self.model.remove(key)

    @invariant()
    def same_keys(self) -> None:
        if hasattr(self, "model"):
            assert len(self.policy) == len(self.model)
            assert all(key in self.policy for key in self.model)


if _cpolicies is not None:
    # Subclassed before the base is decorated: settings apply once per class.
    TestExactLRUCompiled = _SETTINGS(
        type("ExactCompiledLRUMachine", (ExactLRUMachine,), {"factory": _cpolicies.LRUPolicy})
    ).TestCase  # type: ignore[attr-defined]
TestExactLRU = _SETTINGS(ExactLRUMachine).TestCase

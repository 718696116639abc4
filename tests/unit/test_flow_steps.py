"""The hierarchy's flows, stepped by hand: no store, no driver but a script.

Each test feeds a flow of :class:`stratacache.hierarchy.flow.Hierarchy` through
``next``/``send``/``throw`` and checks every operation it yields against a script (its
type, the level or loader it is for, and the keys, in order), answering each with the
scripted result or exception. The levels are stubs, not stores: every I/O method raises
AssertionError, so the flow is proven to do its I/O only by yielding operations.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from stratacache.entry import NEVER, Entry
from stratacache.errors import (
    ConfigurationError,
    OriginError,
    TierUnavailableError,
    ValueTooLargeError,
)
from stratacache.hierarchy.flow import Hierarchy
from stratacache.hierarchy.ops import (
    LevelClear,
    LevelClose,
    LevelDelete,
    LevelGet,
    LevelWrite,
    LoadCall,
    Op,
    OriginClose,
    OriginDelete,
    OriginStore,
    Pause,
    Spawn,
    WaitFlights,
)
from stratacache.logs import Throttle
from stratacache.metrics import LevelStats
from stratacache.tiers.base import Prepared

NOW = 1_800_000_000.0


# ---------------------------------------------------------------------------- stubs


def _forbidden(name: str) -> Callable[..., Any]:
    def io(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the flow called {self.name}.{name}() itself instead of yielding")

    io.__name__ = name
    return io


class StubLevel:
    """What the flow reads from a level synchronously, and nothing that does I/O."""

    kind = "stub"
    local = False
    sizing = None

    def __init__(self, ttl: float | None = None, *, max_size: int | None = None) -> None:
        self.name = self.kind  # unnamed: the hierarchy calls it L1, L2, ...
        self.ttl = ttl
        self.max_size = max_size
        self.stats = LevelStats(self.name, self.kind)
        self.warnings = Throttle(logging.getLogger("stratacache"))
        self.breaker_wait = 0.0

    def rename(self, name: str) -> None:
        self.name = name
        self.stats.name = name

    def retry_in(self) -> float:  # no I/O: what its breaker would answer
        return self.breaker_wait

    def size_limit(self) -> int | None:
        return self.max_size

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        prepared = Prepared()
        for key, entry in entries.items():
            size = len(str(entry.value))
            if self.max_size is not None and size > self.max_size:
                prepared.rejected[key] = size
            else:
                prepared.items[key] = entry
        return prepared

    def __repr__(self) -> str:
        return f"<level {self.name}>"


for _name in (
    "get_many",
    "set_many",
    "write",
    "delete_many",
    "clear",
    "close",
    "aget_many",
    "aset_many",
    "awrite",
    "adelete_many",
    "aclear",
    "aclose",
    "perform",
    "aperform",
):
    setattr(StubLevel, _name, _forbidden(_name))


class StubOrigin:
    """An origin the flow may name in an operation but must never call."""

    name = "origin"

    def __init__(self, writable: bool = True) -> None:
        self.writable = writable

    def __repr__(self) -> str:
        return "<origin>"


for _name in (
    "load_many",
    "store_many",
    "delete_many",
    "close",
    "aload_many",
    "astore_many",
    "adelete_many",
    "aclose",
):
    setattr(StubOrigin, _name, _forbidden(_name))


def forbidden_loader(keys: list[str]) -> Any:
    raise AssertionError(f"the flow called the loader itself with {keys}")


def levels(*ttls: float | None, max_size: int | None = None) -> list[StubLevel]:
    return [StubLevel(ttl, max_size=max_size) for ttl in ttls]


def hierarchy(stubs: Sequence[StubLevel], origin: Any = None, **options: Any) -> Hierarchy:
    return Hierarchy(
        stubs,  # type: ignore[arg-type]
        origin,  # type: ignore[arg-type]
        wall_clock=lambda: NOW,
        rng=random.Random(0),
        **options,
    )


# ---------------------------------------------------------------------------- the script


def describe(op: Op) -> str:
    target = getattr(op, "tier", None) or getattr(op, "origin", None)
    keys: Any = getattr(op, "keys", None)
    if isinstance(op, LevelWrite):
        keys = [*op.prepared.items, *(f"{k}(rejected)" for k in op.prepared.rejected)]
    elif isinstance(op, OriginStore):
        keys = list(op.items)
    elif isinstance(op, LoadCall):
        target = getattr(op.loader, "__name__", op.loader)
    elif isinstance(op, WaitFlights):
        keys = [flight.key for flight in op.flights]
    return f"{type(op).__name__}({target}, {list(keys) if keys is not None else ''})"


@dataclass
class Step:
    """One operation the flow must yield next, and the answer it gets."""

    kind: type[Op]
    target: Any = None  # the level, origin or loader it must be for (None: not checked)
    keys: list[str] | None = None  # exactly these keys, in this order (None: not checked)
    reply: Any = None
    error: BaseException | None = None
    #: runs once the operation is checked, before it is answered (a write racing it)
    meanwhile: Callable[[], Any] | None = None
    #: more checks on the operation itself
    check: Callable[[Any], Any] | None = None
    rejected: list[str] = field(default_factory=list)  # for LevelWrite: keys refused
    #: computes the answer from the operation itself (instead of ``reply``)
    reply_with: Callable[[Any], Any] | None = None

    def verify(self, op: Op, seen: list[Op]) -> None:
        context = f"expected {self.kind.__name__}({self.target}, {self.keys}); ops so far: " + (
            ", ".join(describe(o) for o in seen)
        )
        assert type(op) is self.kind, f"got {describe(op)}, {context}"
        if self.target is not None:
            actual = {
                LoadCall: lambda: op.loader,  # type: ignore[attr-defined]
                OriginStore: lambda: op.origin,  # type: ignore[attr-defined]
                OriginDelete: lambda: op.origin,  # type: ignore[attr-defined]
                OriginClose: lambda: op.origin,  # type: ignore[attr-defined]
                WaitFlights: lambda: op.single_flight,  # type: ignore[attr-defined]
            }.get(self.kind, lambda: op.tier)()  # type: ignore[attr-defined]
            assert actual is self.target, f"got {describe(op)}, {context}"
        if self.keys is not None:
            if isinstance(op, LevelWrite):
                keys = list(op.prepared.items)
                assert list(op.prepared.rejected) == self.rejected, f"{describe(op)}, {context}"
            elif isinstance(op, OriginStore):
                keys = list(op.items)
            elif isinstance(op, WaitFlights):
                keys = [flight.key for flight in op.flights]
            else:
                keys = list(op.keys)  # type: ignore[attr-defined]
            assert keys == self.keys, f"got {describe(op)}, {context}"
        if self.check is not None:
            self.check(op)


def get(
    level: StubLevel, keys: list[str], reply: Mapping[str, Entry] | None = None, **kw: Any
) -> Step:
    return Step(LevelGet, level, keys, dict(reply or {}), **kw)


def write(level: StubLevel, keys: list[str], **kw: Any) -> Step:
    return Step(LevelWrite, level, keys, **kw)


def delete(level: StubLevel, keys: list[str], **kw: Any) -> Step:
    return Step(LevelDelete, level, keys, **kw)


def load(loader: Any, keys: list[str], reply: Any = None, **kw: Any) -> Step:
    return Step(LoadCall, loader, keys, reply, **kw)


def watch(level: StubLevel) -> Step:
    """The background watcher of a shared level that now owes repairs starts."""

    def of_level(op: Spawn) -> None:
        assert op.flow.gi_code.co_name == "_repair_when_back"
        assert op.flow.gi_frame.f_locals["index"] == int(level.name[1:]) - 1

    return Step(Spawn, check=of_level)


def down(level: StubLevel) -> TierUnavailableError:
    return TierUnavailableError(level.name, "down (scripted)")


class Scripted:
    """Steps one flow: each ``expect`` runs it to its next operation and checks it;
    ``finish`` checks it then returns without yielding anything more."""

    def __init__(self, flow: Generator[Op, Any, Any]) -> None:
        self.flow = flow
        self.seen: list[Op] = []
        self.done = False
        self.value: Any = None
        self._started = False
        self._answer: tuple[bool, Any] = (True, None)

    def _advance(self) -> Op | None:
        assert not self.done, "the flow has already returned"
        ok, outcome = self._answer
        try:
            if not self._started:
                self._started = True
                op = next(self.flow)
            elif ok:
                op = self.flow.send(outcome)
            else:
                op = self.flow.throw(outcome)
        except StopIteration as stop:
            self.done = True
            self.value = stop.value
            return None
        self.seen.append(op)
        return op

    def expect(self, *steps: Step) -> Scripted:
        for step in steps:
            op = self._advance()
            assert op is not None, (
                f"the flow returned {self.value!r}, but the script expected "
                f"{step.kind.__name__}({step.target}, {step.keys}); ops: "
                + ", ".join(describe(o) for o in self.seen)
            )
            step.verify(op, self.seen[:-1])
            if step.meanwhile is not None:
                step.meanwhile()
            if step.error is not None:
                self._answer = (False, step.error)
            elif step.reply_with is not None:
                self._answer = (True, step.reply_with(op))
            else:
                self._answer = (True, step.reply)
        return self

    def finish(self) -> Any:
        op = self._advance()
        assert op is None, f"unexpected {describe(op)} after the script ended; ops: " + ", ".join(
            describe(o) for o in self.seen
        )
        return self.value


def drive(flow: Generator[Op, Any, Any], *steps: Step) -> Any:
    """Run ``flow`` through exactly ``steps`` and return its result."""
    return Scripted(flow).expect(*steps).finish()


def entries_of(op: Any) -> dict[str, Entry]:
    return dict(op.prepared.items)


# ---------------------------------------------------------------------------- reads


def test_a_hit_at_l2_is_looked_up_with_the_missing_keys_only_and_promoted():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    promoted: dict[str, Entry] = {}
    values = drive(
        h.read(["a", "b", "c", "a"], forbidden_loader),
        get(l1, ["a", "b", "c"], {"a": Entry("A", NOW + 5)}),
        get(l2, ["b", "c"], {"b": Entry("B", NOW + 50), "c": Entry("C", NOW + 3)}),
        write(l1, ["b", "c"], check=lambda op: promoted.update(entries_of(op))),
    )
    assert values == {"a": "A", "b": "B", "c": "C"}
    # No copy outlives the L2 entry, nor L1's own ttl.
    assert promoted == {"b": Entry("B", NOW + 10), "c": Entry("C", NOW + 3)}
    for key, entry in promoted.items():
        assert entry.expires_at <= NOW + l1.ttl
        assert entry.expires_at <= {"b": NOW + 50, "c": NOW + 3}[key]
    assert (l1.stats.hits, l1.stats.misses, l1.stats.writes) == (1, 2, 2)
    assert (l2.stats.hits, l2.stats.misses, l2.stats.writes) == (2, 0, 0)
    assert h.origin_stats.calls == 0


def test_a_hit_at_l3_is_promoted_into_l2_then_l1():
    l1, l2, l3 = levels(10, 100, None)
    h = hierarchy([l1, l2, l3])
    written: dict[str, dict[str, Entry]] = {}
    values = drive(
        h.read(["k"]),
        get(l1, ["k"]),
        get(l2, ["k"]),
        get(l3, ["k"], {"k": Entry("V", NEVER)}),
        write(l2, ["k"], check=lambda op: written.update(L2=entries_of(op))),
        write(l1, ["k"], check=lambda op: written.update(L1=entries_of(op))),
    )
    assert values == {"k": "V"}
    assert written == {"L2": {"k": Entry("V", NOW + 100)}, "L1": {"k": Entry("V", NOW + 10)}}


def test_a_miss_everywhere_loads_once_and_fills_bottom_up():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    written: dict[str, dict[str, Entry]] = {}
    values = drive(
        h.read(["a", "b"], forbidden_loader),
        get(l1, ["a", "b"]),
        get(l2, ["a", "b"]),
        load(forbidden_loader, ["a", "b"], {"a": 1, "b": 2}),
        write(l2, ["a", "b"], check=lambda op: written.update(L2=entries_of(op))),
        write(l1, ["a", "b"], check=lambda op: written.update(L1=entries_of(op))),
    )
    assert values == {"a": 1, "b": 2}
    assert written["L2"] == {"a": Entry(1, NOW + 100), "b": Entry(2, NOW + 100)}
    assert written["L1"] == {"a": Entry(1, NOW + 10), "b": Entry(2, NOW + 10)}
    assert (h.origin_stats.calls, h.origin_stats.loads, h.origin_stats.found) == (1, 2, 2)
    assert len(h.single_flight) == 0  # the flights are settled


def test_a_per_call_ttl_shortens_every_fill():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    written: dict[str, dict[str, Entry]] = {}
    drive(
        h.read(["a"], forbidden_loader, ttl=4),
        get(l1, ["a"]),
        get(l2, ["a"]),
        load(forbidden_loader, ["a"], {"a": 1}),
        write(l2, ["a"], check=lambda op: written.update(L2=entries_of(op))),
        write(l1, ["a"], check=lambda op: written.update(L1=entries_of(op))),
    )
    assert written == {"L2": {"a": Entry(1, NOW + 4)}, "L1": {"a": Entry(1, NOW + 4)}}


def test_without_a_loader_the_origin_is_asked_through_a_load_call():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)

    def from_the_origin(op: Any) -> None:
        assert op.loader == origin.load_many  # named, never called
        assert op.aloader == origin.aload_many

    values = drive(
        h.read(["a"]),
        get(l1, ["a"]),
        get(l2, ["a"]),
        Step(LoadCall, None, ["a"], {"a": 1}, check=from_the_origin),
        write(l2, ["a"]),
        write(l1, ["a"]),
    )
    assert values == {"a": 1}


def test_load_false_never_loads():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], StubOrigin())
    assert drive(h.read(["a"], load=False), get(l1, ["a"]), get(l2, ["a"])) == {}


@pytest.mark.parametrize("negative_ttl", [None, 5.0])
def test_keys_the_loader_leaves_out_are_remembered_only_with_negative_ttl(negative_ttl):
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], negative_ttl=negative_ttl)
    remembered = ["a", "b"] if negative_ttl else ["a"]
    written: dict[str, dict[str, Entry]] = {}
    values = drive(
        h.read(["a", "b"], forbidden_loader),
        get(l1, ["a", "b"]),
        get(l2, ["a", "b"]),
        load(forbidden_loader, ["a", "b"], {"a": 1}),
        write(l2, remembered, check=lambda op: written.update(L2=entries_of(op))),
        write(l1, remembered, check=lambda op: written.update(L1=entries_of(op))),
    )
    assert values == {"a": 1}
    if negative_ttl:
        assert written["L2"]["b"] == Entry(None, NOW + 5, negative=True)
        assert written["L1"]["b"] == Entry(None, NOW + 5, negative=True)
    assert not written["L2"]["a"].negative


def test_nothing_found_and_no_negative_ttl_writes_nothing():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    values = drive(
        h.read(["x"], forbidden_loader),
        get(l1, ["x"]),
        get(l2, ["x"]),
        load(forbidden_loader, ["x"], None),  # None counts as "nothing found"
    )
    assert values == {}
    assert h.origin_stats.found == 0


def test_a_remembered_miss_answers_without_loading():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], negative_ttl=5)
    values = drive(
        h.read(["gone", "here"], forbidden_loader),
        get(l1, ["gone", "here"], {"gone": Entry(None, NOW + 5, negative=True)}),
        get(l2, ["here"], {"here": Entry("H", NOW + 50)}),
        write(l1, ["here"]),
    )
    assert values == {"here": "H"}
    assert l1.stats.hits == 1  # a remembered miss is a hit of the level


def test_a_level_that_is_down_on_read_is_skipped_and_the_read_goes_on():
    l1, l2, l3 = levels(10, 100, None)
    h = hierarchy([l1, l2, l3])
    values = drive(
        h.read(["a", "b"], forbidden_loader),
        get(l1, ["a", "b"]),
        get(l2, ["a", "b"], error=down(l2)),
        get(l3, ["a", "b"], {"a": Entry("A")}),
        write(l2, ["a"]),  # promoted into the level that was down: it is not owed a repair
        write(l1, ["a"]),
        load(forbidden_loader, ["b"], {"b": "B"}),
        write(l3, ["b"]),
        write(l2, ["b"]),
        write(l1, ["b"]),
    )
    assert values == {"a": "A", "b": "B"}
    assert (l2.stats.errors, l2.stats.hits, l2.stats.misses) == (1, 0, 0)
    assert not h.repairs[1]


def test_a_failed_write_makes_the_next_read_of_that_level_delete_the_owed_keys_first():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], write="cache")
    drive(
        h.write({"a": 1, "b": 2}, None),
        write(l2, ["a", "b"], error=down(l2)),
        watch(l2),
        write(l1, ["a", "b"]),
    )
    assert l2.stats.errors == 1
    assert list(h.repairs[1].keys) == ["a", "b"]

    values = drive(
        h.read(["a", "c"], forbidden_loader, load=False),
        get(l1, ["a", "c"], {"a": Entry(1, NOW + 10)}),
        delete(l2, ["a", "b"]),  # the repair, before anything is read from L2
        get(l2, ["c"], {"c": Entry(3, NOW + 100)}),
        write(l1, ["c"]),
    )
    assert values == {"a": 1, "c": 3}
    assert not h.repairs[1]


def test_a_level_whose_repair_fails_is_not_read_nor_filled():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    h.repairs[1].add(["old"])
    values = drive(
        h.read(["k"], forbidden_loader),
        get(l1, ["k"]),
        delete(l2, ["old"], error=down(l2)),  # still down: no LevelGet(L2)
        load(forbidden_loader, ["k"], {"k": "v"}),
        delete(l2, ["old"], error=down(l2)),  # the fill tries the repair again
        write(l1, ["k"]),
    )
    assert values == {"k": "v"}
    assert l2.stats.errors == 2
    # A skipped fill owes nothing: what L2 holds for "k", if anything, is a cached value
    # like any other (only missed writes leave a level with a value known to be old).
    assert list(h.repairs[1].keys) == ["old"]


def test_a_failed_clear_makes_the_next_read_clear_the_level_first():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    drive(h.clear(), Step(LevelClear, l2, error=down(l2)), watch(l2), Step(LevelClear, l1))
    assert h.repairs[1].clear_all
    drive(
        h.read(["k"], load=False),
        get(l1, ["k"]),
        Step(LevelClear, l2),
        get(l2, ["k"]),
    )
    assert not h.repairs[1]


def test_top_missed_starts_at_l2_and_counts_the_l1_miss():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    values = drive(
        h.read(["a", "b"], forbidden_loader, top_missed=True),
        get(l2, ["a", "b"], {"a": Entry("A", NOW + 50)}),
        write(l1, ["a"]),
        load(forbidden_loader, ["b"], {"b": "B"}),
        write(l2, ["b"]),
        write(l1, ["b"]),
    )
    assert values == {"a": "A", "b": "B"}
    assert (l1.stats.hits, l1.stats.misses) == (0, 2)
    assert (l2.stats.hits, l2.stats.misses) == (1, 1)


def test_a_loader_exception_becomes_an_origin_error_chained_to_it():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    boom = KeyError("row 7")
    script = Scripted(h.read(["a"], forbidden_loader))
    script.expect(get(l1, ["a"]), get(l2, ["a"]), load(forbidden_loader, ["a"], error=boom))
    with pytest.raises(OriginError) as caught:
        script.finish()
    assert caught.value.__cause__ is boom
    assert "'a'" in str(caught.value)
    assert [type(op) for op in script.seen] == [LevelGet, LevelGet, LoadCall]  # no fill
    assert h.origin_stats.errors == 1
    assert len(h.single_flight) == 0  # the flight was failed, not left behind


@pytest.mark.parametrize("reply", [["a", 1], "a=1", 42])
def test_a_loader_returning_no_mapping_is_an_origin_error(reply):
    l1 = StubLevel(10)
    h = hierarchy([l1])
    script = Scripted(h.read(["a"], forbidden_loader))
    script.expect(get(l1, ["a"]), load(forbidden_loader, ["a"], reply))
    with pytest.raises(OriginError, match="must return a mapping"):
        script.finish()


def test_a_configuration_error_from_the_loader_passes_through_unwrapped():
    l1 = StubLevel(10)
    h = hierarchy([l1])
    refused = ConfigurationError("a coroutine function")
    script = Scripted(h.read(["a"], forbidden_loader))
    script.expect(get(l1, ["a"]), load(forbidden_loader, ["a"], error=refused))
    with pytest.raises(ConfigurationError) as caught:
        script.finish()
    assert caught.value is refused


# ---------------------------------------------------------------------------- writes


def test_write_through_stores_in_the_origin_before_any_level_then_bottom_up():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    written: dict[str, dict[str, Entry]] = {}
    drive(
        h.write({"a": 1, "b": 2}, None),
        Step(OriginStore, origin, ["a", "b"], check=lambda op: assert_items(op, {"a": 1, "b": 2})),
        write(l2, ["a", "b"], check=lambda op: written.update(L2=entries_of(op))),
        write(l1, ["a", "b"], check=lambda op: written.update(L1=entries_of(op))),
    )
    assert written["L2"] == {"a": Entry(1, NOW + 100), "b": Entry(2, NOW + 100)}
    assert written["L1"] == {"a": Entry(1, NOW + 10), "b": Entry(2, NOW + 10)}
    assert h.origin_stats.stores == 2
    assert (l1.stats.writes, l2.stats.writes) == (2, 2)


def assert_items(op: Any, expected: dict[str, Any]) -> None:
    assert dict(op.items) == expected


def test_when_the_origin_refuses_a_write_no_level_is_written():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    refused = RuntimeError("constraint violated")
    script = Scripted(h.write({"a": 1}, None))
    script.expect(Step(OriginStore, origin, ["a"], error=refused))
    with pytest.raises(OriginError) as caught:
        script.finish()
    assert caught.value.__cause__ is refused
    assert [type(op) for op in script.seen] == [OriginStore]
    assert (h.origin_stats.errors, h.origin_stats.stores) == (1, 0)


def test_write_policy_cache_never_touches_the_origin():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], StubOrigin(), write="cache")
    drive(h.write({"a": 1}, None), write(l2, ["a"]), write(l1, ["a"]))
    assert h.origin_stats.stores == 0


def test_an_origin_that_cannot_store_is_not_asked_to():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2], StubOrigin(writable=False))
    drive(h.write({"a": 1}, None), write(l2, ["a"]), write(l1, ["a"]))


def test_a_value_too_large_for_every_level_is_refused_before_any_operation():
    l1, l2 = levels(10, 100, max_size=4)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    script = Scripted(h.write({"small": "ok", "big": "x" * 10}, None))
    with pytest.raises(ValueTooLargeError, match="'big'"):
        script.finish()
    assert script.seen == []
    assert h.fence.now() == 0  # not even marked as written


def test_a_value_too_large_for_one_level_only_is_written_where_it_fits():
    l1 = StubLevel(10, max_size=4)
    l2 = StubLevel(100)
    h = hierarchy([l1, l2], write="cache")
    drive(
        h.write({"big": "x" * 10}, None),
        write(l2, ["big"]),
        # L1 still gets the write: it must drop any older copy it holds of that key.
        write(l1, [], rejected=["big"]),
    )
    assert (l1.stats.too_large, l1.stats.writes) == (1, 0)
    assert (l2.stats.too_large, l2.stats.writes) == (0, 1)


def test_a_level_down_on_write_is_skipped_and_owed_the_keys():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    drive(
        h.write({"a": 1}, None),
        Step(OriginStore, origin, ["a"]),
        write(l2, ["a"], error=down(l2)),
        watch(l2),
        write(l1, ["a"]),
    )
    assert (l2.stats.errors, l2.stats.writes) == (1, 0)
    assert list(h.repairs[1].keys) == ["a"]
    # The next write to L2 pays the debt first.
    drive(
        h.write({"b": 2}, None),
        Step(OriginStore, origin, ["b"]),
        delete(l2, ["a"]),
        write(l2, ["b"]),
        write(l1, ["b"]),
    )
    assert not h.repairs[1]


# ---------------------------------------------------------------------------- deletes


def test_invalidate_deletes_bottom_up_and_never_the_origin():
    l1, l2, l3 = levels(10, 100, None)
    h = hierarchy([l1, l2, l3], StubOrigin())
    drive(
        h.invalidate(["a", "b", "a"]),
        delete(l3, ["a", "b"]),
        delete(l2, ["a", "b"]),
        delete(l1, ["a", "b"]),
    )


def test_invalidate_goes_past_a_level_that_is_down_and_owes_it_the_keys():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    drive(h.invalidate(["a"]), delete(l2, ["a"], error=down(l2)), watch(l2), delete(l1, ["a"]))
    assert list(h.repairs[1].keys) == ["a"]
    assert l2.stats.errors == 1


def test_a_second_miss_while_the_watcher_runs_starts_no_other():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    drive(h.invalidate(["a"]), delete(l2, ["a"], error=down(l2)), watch(l2), delete(l1, ["a"]))
    drive(h.invalidate(["b"]), delete(l2, ["b"], error=down(l2)), delete(l1, ["b"]))
    assert list(h.repairs[1].keys) == ["a", "b"]


def test_the_watcher_waits_for_the_breaker_then_pays_and_lets_the_watch_go():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    h.repairs[1].add(["a", "b"])
    assert h.repairs[1].watch()

    def waits(seconds: float) -> Step:
        return Step(Pause, check=lambda op: op.seconds == pytest.approx(seconds))

    def breaker(wait: float) -> Callable[[], None]:
        def set_wait() -> None:
            l2.breaker_wait = wait

        return set_wait

    l2.breaker_wait = 2.5  # open for another 2.5 s
    drive(
        h._repair_when_back(1),
        waits(0.25),  # the call that owed the keys has just failed
        Step(Pause, check=lambda op: op.seconds == 1.0, meanwhile=breaker(1.5)),
        Step(Pause, check=lambda op: op.seconds == 1.0, meanwhile=breaker(0.0)),
        delete(l2, ["a", "b"], error=down(l2)),  # due, yet the store still fails
        waits(0.25),
        delete(l2, ["a", "b"], error=down(l2)),
        waits(0.5),  # backing off
        delete(l2, ["a", "b"], meanwhile=lambda: h.repairs[1].add(["c"])),
        delete(l2, ["c"]),  # owed while the first repair ran: paid too
    )
    assert not h.repairs[1]
    assert not h.repairs[1].watched  # a later miss starts a watcher again
    assert l2.stats.errors == 2


def test_the_watcher_stops_when_the_cache_closes():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    h.repairs[1].add(["a"])
    assert h.repairs[1].watch()
    l2.breaker_wait = 5.0
    drive(
        h._repair_when_back(1),
        Step(Pause),
        Step(Pause, meanwhile=h.background.close),
    )
    assert h.repairs[1].owed and not h.repairs[1].watched


def test_delete_removes_from_the_origin_then_every_level():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    drive(
        h.delete(["a"]),
        Step(OriginDelete, origin, ["a"]),
        delete(l2, ["a"]),
        delete(l1, ["a"]),
    )
    assert h.origin_stats.deletes == 1


def test_close_closes_every_level_then_the_origin_and_raises_the_first_failure():
    l1, l2 = levels(10, 100)
    origin = StubOrigin()
    h = hierarchy([l1, l2], origin)
    first = RuntimeError("L1 close failed")
    script = Scripted(h.close())
    script.expect(
        Step(LevelClose, l1, error=first),
        Step(LevelClose, l2, error=RuntimeError("L2 too")),
        Step(OriginClose, origin),
    )
    with pytest.raises(RuntimeError) as caught:
        script.finish()
    assert caught.value is first


# ---------------------------------------------------------------------------- the fence


def test_a_write_between_the_lookup_and_the_fill_prevents_that_keys_fill():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    values = drive(
        h.read(["a", "b"], forbidden_loader),
        get(l1, ["a", "b"]),
        get(l2, ["a", "b"]),
        load(
            forbidden_loader,
            ["a", "b"],
            {"a": "old", "b": "B"},
            meanwhile=lambda: h.fence.mark(["a"]),
        ),
        write(l2, ["b"]),
        write(l1, ["b"]),
    )
    assert values == {"a": "old", "b": "B"}  # the caller gets what it read ...


def test_a_write_during_the_lower_lookup_prevents_the_promotion():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    values = drive(
        h.read(["a", "b"]),
        get(l1, ["a", "b"]),
        get(
            l2,
            ["a", "b"],
            {"a": Entry("old", NOW + 50), "b": Entry("B", NOW + 50)},
            meanwhile=lambda: h.fence.mark(["a"]),
        ),
        write(l1, ["b"]),
    )
    assert values == {"a": "old", "b": "B"}


def test_a_write_racing_the_fill_itself_is_undone_by_invalidating_bottom_up():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    drive(
        h.read(["a"], forbidden_loader),
        get(l1, ["a"]),
        get(l2, ["a"]),
        load(forbidden_loader, ["a"], {"a": "old"}),
        write(l2, ["a"]),
        write(l1, ["a"], meanwhile=lambda: h.fence.mark(["a"])),
        delete(l2, ["a"]),
        delete(l1, ["a"]),
    )


def test_a_clear_during_a_read_prevents_every_fill():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    values = drive(
        h.read(["a"], forbidden_loader),
        get(l1, ["a"]),
        get(l2, ["a"], meanwhile=h.fence.mark_all),
        load(forbidden_loader, ["a"], {"a": 1}),
    )
    assert values == {"a": 1}


# ---------------------------------------------------------------------------- single flight


def test_a_second_reader_of_a_key_in_flight_waits_and_gets_the_leaders_value():
    l1, l2 = levels(10, 100)
    h = hierarchy([l1, l2])
    first = Scripted(h.read(["k"], forbidden_loader))
    second = Scripted(h.read(["k"], forbidden_loader))

    first.expect(get(l1, ["k"]), get(l2, ["k"]), load(forbidden_loader, ["k"], {"k": "V"}))
    # The first now waits for its loader; the second misses the same key meanwhile.
    second.expect(
        get(l1, ["k"]),
        get(l2, ["k"]),
        Step(WaitFlights, h.single_flight, ["k"], reply=[]),  # instead of a LoadCall
    )
    flight = second.seen[-1].flights[0]  # type: ignore[attr-defined]
    assert not flight.done.is_set()

    first.expect(write(l2, ["k"]), write(l1, ["k"]))
    assert first.finish() == {"k": "V"}
    assert flight.done.is_set() and flight.value == "V"

    assert second.finish() == {"k": "V"}  # from the flight, no load of its own
    assert not any(isinstance(op, LoadCall) for op in second.seen)
    assert (h.single_flight.joined, h.single_flight.coalesced) == (1, 1)
    assert h.origin_stats.calls == 1
    assert len(h.single_flight) == 0


def test_a_waiter_for_a_failed_flight_raises_an_origin_error_chained_to_the_root_cause():
    l1 = StubLevel(10)
    h = hierarchy([l1])
    first = Scripted(h.read(["k"], forbidden_loader))
    second = Scripted(h.read(["k"], forbidden_loader))
    boom = ValueError("db gone")
    first.expect(get(l1, ["k"]), load(forbidden_loader, ["k"], error=boom))
    second.expect(get(l1, ["k"]), Step(WaitFlights, h.single_flight, ["k"], reply=[]))
    with pytest.raises(OriginError):
        first.finish()
    with pytest.raises(OriginError) as caught:
        second.finish()
    assert caught.value.__cause__ is boom
    assert h.origin_stats.calls == 1


def test_a_waiter_whose_wait_times_out_takes_the_key_over_and_loads_it():
    l1 = StubLevel(10)
    h = hierarchy([l1])
    first = Scripted(h.read(["k"], forbidden_loader))
    second = Scripted(h.read(["k"], forbidden_loader))
    first.expect(get(l1, ["k"]), load(forbidden_loader, ["k"], {"k": "late"}))
    second.expect(
        get(l1, ["k"]),
        # The wait timed out: the flight comes back as still unfinished.
        Step(WaitFlights, h.single_flight, ["k"], reply_with=lambda op: list(op.flights)),
        load(forbidden_loader, ["k"], {"k": "mine"}),
        write(l1, ["k"]),
    )
    assert second.finish() == {"k": "mine"}
    assert h.single_flight.coalesced == 0
    # The late leader still settles and fills: no write has happened since its read began.
    first.expect(write(l1, ["k"]))
    assert first.finish() == {"k": "late"}


def test_a_leader_closed_mid_load_abandons_its_flight_and_the_waiter_loads_itself():
    l1 = StubLevel(10)
    h = hierarchy([l1])
    first = Scripted(h.read(["k"], forbidden_loader))
    second = Scripted(h.read(["k"], forbidden_loader))
    first.expect(get(l1, ["k"]), load(forbidden_loader, ["k"]))
    second.expect(get(l1, ["k"]), Step(WaitFlights, h.single_flight, ["k"], reply=[]))
    first.flow.close()  # the leader's caller was cancelled while its loader ran
    second.expect(load(forbidden_loader, ["k"], {"k": "v"}), write(l1, ["k"]))
    assert second.finish() == {"k": "v"}

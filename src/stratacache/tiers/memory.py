"""The in-process tier: a dict, an eviction policy, expiry and weights.

The hit path is the product. A hit does one dict lookup, one clock read to check the
entry's expiry and one append of the key to a read buffer; nothing else, and no lock.
Policy bookkeeping (moving a key in an LRU list, bumping a frequency sketch) happens
later, in batches, when a writer drains the buffer under the lock or when the buffer fills.
This is the design Caffeine's ``BoundedLocalCache`` argues for: reads vastly outnumber
writes, so reads record what happened cheaply and writers, who must take the lock anyway,
replay it to the policy.

The buffer is drained before every insert, so the policy sees exactly the sequence of
events the simulator feeds it one request at a time (hits in order, then the insert), and
an L1-only cache replaying a trace has the simulator's miss count. A reader that finds
the buffer full drains it if the lock is free; if another thread holds the lock the reader
goes on and the buffer is drained by that thread's write. As a last bound, a reader that
finds the buffer at ``16 x read_buffer_size`` keys waits for the lock and drains it.

Entries are tuples ``(value, expires_at_monotonic)``; a remembered "not found" lives in a
separate dict so the hit path never has to test for it. Expiry uses the
monotonic clock (immune to wall-clock steps); entries arrive and leave with wall-clock
expiries, converted on the way.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from .. import _accel
from ..config import MemoryOptions
from ..entry import NEVER, Entry
from ..errors import ConfigurationError
from ..hotkeys import HotKeys
from ..policies import entry_bytes, make_policy
from . import snapshot as _snapshot
from .base import LocalTier, Prepared, Sizing

__all__ = ["MemoryTier", "default_weigher"]


# Per-entry overhead of the store, beyond the key and the value: the ``(value, expiry)``
# tuple (56 bytes) and the entry's share of ``MemoryTier.data`` (a 16-byte slot of a
# str-keyed dict plus its index and spare room, 22-44 bytes, ~33 on average) and of the
# expiry float (24 bytes when the entry has a TTL; entries without one share ``NEVER``).
ENTRY_OVERHEAD = 96
#: the most objects one weigh sizes before it extrapolates the rest (see default_weigher)
WEIGH_BUDGET = 4096
#: the most children of one container sized one by one; past it, an even sample is
#: sized and scaled up
WEIGH_SAMPLE = 512

NoneType = type(None)
# Objects without references worth following: sys.getsizeof is all they hold.
_LEAVES: frozenset[type] = frozenset(
    {str, bytes, bytearray, int, float, bool, complex, NoneType, range, type(Ellipsis)}
)
# Program structure a value may point at but does not own: neither counted nor followed.
_SHARED_TYPES: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
)
# Objects the interpreter keeps once for everyone (small ints, one-character strings
# and bytes, None, True, False, the empty str/bytes/tuple): a value holding them holds
# a pointer, not a copy.
_SHARED_IDS: frozenset[int] = frozenset(
    map(
        id,
        [
            *(None, True, False, Ellipsis, NotImplemented, "", b"", ()),
            *range(-5, 257),
            *map(chr, range(256)),
            *(bytes((i,)) for i in range(256)),
        ],
    )
)


def _children(obj: Any) -> tuple[Any, ...]:
    """What ``obj`` refers to and might own, in batches of (mostly) one type: a plain
    container's items (a dict's keys, then its values), else ``gc.get_referents`` with
    classes, modules and functions left out."""
    cls = type(obj)
    if cls is list or cls is tuple:
        return (obj,)
    if cls is dict:
        return (list(obj), list(obj.values()))
    if cls is set or cls is frozenset:
        return (list(obj),)
    if cls is memoryview:
        return ([obj.obj],)
    return ([ref for ref in gc.get_referents(obj) if not isinstance(ref, _SHARED_TYPES)],)


_GC_HEADER = sys.getsizeof([]) - [].__sizeof__()
_HAVE_GC = 1 << 14  # Py_TPFLAGS_HAVE_GC
# Batches up to this long are sized in a plain loop, longer ones with set operations.
_SMALL = 16
# Types whose instances may be interpreter-wide singletons (see _SHARED_IDS).
_MAYBE_SHARED: frozenset[type] = frozenset({int, bool, str, bytes, tuple, NoneType})


def _sizeof_all(objs: Sequence[Any]) -> int:
    """``sum(map(sys.getsizeof, objs))``, 5x faster when the objects share one type."""
    kinds = set(map(type, objs))
    if len(kinds) == 1:
        (cls,) = kinds
        header = _GC_HEADER if cls.__flags__ & _HAVE_GC else 0
        sizeof: Any = cls.__sizeof__  # unbound: takes the object
        return int(sum(map(sizeof, objs))) + header * len(objs)
    return sum(map(sys.getsizeof, objs))


def deep_size(value: Any, budget: int = WEIGH_BUDGET, sample: int = WEIGH_SAMPLE) -> int:
    """Bytes ``value`` holds: ``sys.getsizeof`` of it and of everything reachable from it
    (container items, dict keys and values, instance attributes and slots), each object
    once however often it is shared, cycles included. Interpreter-wide singletons and
    program structure (classes, modules, functions) are not counted.

    The walk is bounded: it sizes at most ``budget`` objects, and at most ``sample``
    children of any one container (an even sample, scaled up to the container's length).
    Containers still unopened when the budget runs out are estimated from the average
    bytes per child of the containers of their type opened so far."""
    getsizeof = sys.getsizeof
    total: float = getsizeof(value)
    if type(value) in _LEAVES or isinstance(value, _SHARED_TYPES):
        return int(total)
    seen = {id(value)}
    stack: list[tuple[Any, float]] = [(value, 1.0)]
    sized = 1
    # container type -> [bytes of children sized, children sized]
    per_type: dict[type, list[int]] = {}
    leaves = _LEAVES
    while stack:
        room = budget - sized
        if room <= 0:
            break
        obj, scale = stack.pop()
        batches = _children(obj)
        n = sum(map(len, batches))
        if n > sample or n > room:
            step = -(-n // min(sample, room))
            batches = tuple(batch[::step] for batch in batches)
            scale *= n / sum(map(len, batches))
        got = 0
        slots = 0
        for kids in batches:
            slots += len(kids)
            if len(kids) <= _SMALL:  # a plain loop costs less than the set work below
                for child in kids:
                    i = id(child)
                    if i in seen or i in _SHARED_IDS:
                        continue
                    seen.add(i)
                    sized += 1
                    if type(child) in leaves:
                        got += getsizeof(child)
                    elif not isinstance(child, _SHARED_TYPES):
                        got += getsizeof(child)
                        stack.append((child, scale))
                continue
            kinds = set(map(type, kids))
            new = set(map(id, kids)).difference(seen)
            if not kinds.isdisjoint(_MAYBE_SHARED):
                new = new.difference(_SHARED_IDS)
            if not new:
                continue
            seen |= new
            if len(new) == len(kids):
                objs = kids
            else:  # repeats, or objects met before: size each new one once
                fresh = dict(zip(map(id, kids), kids, strict=True))
                objs = list(map(fresh.__getitem__, new))
            sized += len(objs)
            if kinds <= leaves:
                got += _sizeof_all(objs)
                continue
            for child in objs:
                if type(child) in leaves:
                    got += getsizeof(child)
                elif not isinstance(child, _SHARED_TYPES):
                    got += getsizeof(child)
                    stack.append((child, scale))
        total += got * scale
        stats = per_type.setdefault(type(obj), [0, 0])
        stats[0] += got
        stats[1] += slots
    if stack:  # out of budget: estimate what the unopened containers hold
        all_bytes = sum(s[0] for s in per_type.values())
        all_kids = sum(s[1] for s in per_type.values())
        for obj, scale in stack:
            try:
                n = len(obj)
            except TypeError:
                n = 1
            got, count = per_type.get(type(obj), (all_bytes, all_kids))
            total += n * scale * got / (count or 1)
    return int(total)


def default_weigher(key: str, value: Any) -> int:
    """What an entry holds, in bytes: :func:`deep_size` of the value (``sys.getsizeof``
    over everything it reaches, shared objects once) plus ``sys.getsizeof(key)`` plus
    ``ENTRY_OVERHEAD`` for the store's tuple, dict slot and expiry.

    It runs once per write (never on a hit). Cost per weigh, CPython 3.11, x86-64:
    ~250 ns for a 100-char str or any bytes (one ``sys.getsizeof``), ~18 us for a list of
    200 floats, ~90 us for a dict of 50 three-field dicts (about 0.1-0.2 us per object
    reached; a plain container of one item type takes the fast path).

    A value reaching more than ``WEIGH_BUDGET`` (4096) objects is not walked to the end:
    a container longer than ``WEIGH_SAMPLE`` (512) is sized from an even sample, and
    containers still unopened when the budget runs out are extrapolated from those
    opened, so no value makes a weigh take more than about 1-2 ms (a list of a million
    small dicts: ~1.3 ms, within 0.1% of the full walk, which takes ~5 s).

    Not counted here: the eviction policy's own bookkeeping per key, which depends on the
    policy (LRU ~110 bytes, W-TinyLFU ~360 with its sketches); this number is what
    ``max_value_bytes`` compares. A ``max_bytes`` tier with this weigher charges each
    entry the policy's figure on top (:func:`stratacache.policies.entry_bytes`), so the
    bound covers what the process holds; a ``weigher=`` of the user's counts in its own
    units, charged as they are."""
    return deep_size(value) + sys.getsizeof(key) + ENTRY_OVERHEAD


class MemoryTier(LocalTier):
    """L1: process memory, bounded by ``max_entries`` (default 10,000) or by ``max_bytes``
    (entries weighed by ``weigher``, default :func:`default_weigher`), with a pluggable
    eviction policy.

    Values are kept as they are (no copy, no serialization): a hit hands back the stored
    object itself, so callers must not mutate what they get.

    This class is the store: the dicts, the policy, the read buffer and the lock. The
    fast paths a cache binds over it (its ``get`` and, for an L1-only cache, ``set``)
    live in :mod:`stratacache.hierarchy.front`.
    """

    kind = "memory"

    Options = MemoryOptions

    def __init__(
        self,
        max_entries: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        """Options: :class:`~stratacache.config.MemoryOptions`."""
        self.options = opts = MemoryOptions.build({"max_entries": max_entries, **options})
        super().__init__(name=opts.name, ttl=opts.ttl)
        max_bytes, weigher, max_value_bytes = opts.max_bytes, opts.weigher, opts.max_value_bytes
        policy, read_buffer_size = opts.policy, opts.read_buffer_size
        if max_bytes is not None:
            if max_entries is not None:
                raise ConfigurationError(
                    "MemoryTier is bounded either by max_entries or by max_bytes, not both; "
                    f"got max_entries={max_entries} and max_bytes={max_bytes}"
                )
            capacity = max_bytes
            weighted = True
        else:
            capacity = 10_000 if max_entries is None else max_entries
            weighted = False
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(f"MemoryTier bound must be a positive int, got {capacity!r}")
        if read_buffer_size < 1:
            raise ConfigurationError(f"read_buffer_size must be >= 1, got {read_buffer_size!r}")
        self.capacity = capacity
        self.weighted = weighted
        self.max_value_bytes = max_value_bytes
        limits = [n for n in (max_value_bytes, capacity if weighted else None) if n is not None]
        if isinstance(policy, str):
            self.policy_name = policy
            try:
                self.policy = make_policy(policy, capacity, weighted=weighted)
            except ValueError as exc:
                raise ConfigurationError(f"MemoryTier: {exc}") from None
        else:
            self.policy = policy(capacity)
            self.policy_name = getattr(self.policy, "name", type(self.policy).__name__)
        # The default weigher measures bytes, so the bound also pays for the policy's own
        # bookkeeping per entry; a user's weigher counts in its own units, charged as is.
        overhead = entry_bytes(self.policy_name) if weighted and weigher is None else 0
        self.sizing: Sizing | None = (
            Sizing(weigher or default_weigher, weighted, min(limits) if limits else None, overhead)
            if weighted or weigher is not None or max_value_bytes is not None
            else None
        )
        self.clock = clock
        self.wall_clock = wall_clock
        #: live entries: key -> (value, monotonic expiry)
        self.data: dict[str, tuple[Any, float]] = {}
        #: remembered "not found": key -> monotonic expiry (kept apart so that the hit path
        #: never has to test for it)
        self.negative: dict[str, float] = {}
        #: refresh-ahead (set by the cache): each entry's refresh point, a fraction of its
        #: lifetime after it was stored; the cache's reader starts a reload past it
        self.refresh_fraction: float | None = None
        self.refresh_at: dict[str, float] = {}
        # The C writer takes the speedups' own lock directly; it works as threading.Lock.
        self.lock: Any = _accel.speedups.Lock() if _accel.speedups is not None else threading.Lock()
        #: keys hit since the policy last heard of them (see the module docstring)
        self.buffer: list[Hashable] = []
        self.buffer_limit = read_buffer_size
        #: the cache's hot-key counter, fed from the drained hits (set by the cache)
        self.hot: HotKeys | None = None
        #: keys held for hot-key protection outside the policy (see :meth:`pin`)
        self.pinned: set[str] = set()
        if opts.snapshot is not None:  # last: the store must be whole to take entries
            _snapshot.load(self, opts.snapshot, opts.snapshot_entries)

    @classmethod
    def url_arguments(cls, url: str) -> tuple[Any, ...]:
        if url.split("://", 1)[1] not in ("", "/"):
            raise ConfigurationError(f"memory:// takes no host or path, got {url}")
        return ()

    # ------------------------------------------------------------------ the read buffer

    def record(self, key: str) -> None:
        """Note a hit outside the compiled reader, with the same bound."""
        buffer = self.buffer
        buffer.append(key)
        if len(buffer) >= self.buffer_limit:
            self.drain_from_reader()

    def drain_from_reader(self) -> None:
        """A reader found the buffer full. Drain it if the lock is free; if a writer holds
        the lock, that writer drains it. Only a buffer grown far past its size (the lock
        held for a long time while hits pour in) makes the reader wait for the lock: the
        buffer stays bounded, and it is only ever cut under the lock, so no drain can lose
        hits recorded after its copy."""
        lock = self.lock
        if not lock.acquire(blocking=False):
            if len(self.buffer) < 16 * self.buffer_limit:
                return
            lock.acquire()
        try:
            self.drain()
        finally:
            lock.release()

    def drain(self) -> None:
        """Replay buffered hits to the policy. Call with the lock held."""
        buffer = self.buffer
        if buffer:
            batch = buffer[:]
            # Only the keys copied: readers may have appended more meanwhile.
            del buffer[: len(batch)]
            self.replay_hits(batch)

    def replay_hits(self, batch: list[Hashable]) -> None:
        """Hand a drained batch of hits to the policy, and to the hot-key counter."""
        self.policy.on_hits(batch)
        if self.hot is not None:
            self.hot.offer(batch)

    @property
    def hits_sink(self) -> Callable[[list[Hashable]], None]:
        """What the compiled reader calls with each batch it drains itself: the policy's
        own ``on_hits`` (no Python frame between) unless hot keys are counted."""
        return self.policy.on_hits if self.hot is None else self.hot.feeder(self.policy.on_hits)

    # ------------------------------------------------------------------ the store

    def put(self, key: str, value: Any, mono_expires: float, weight: int) -> None:
        """Store a live entry (weight already charged); call with the lock held."""
        # Stored before the policy answers, so that a key the policy refuses (its own
        # victim) is dropped again with the other victims, as the C writer does.
        resident = key in self.data or self.negative.pop(key, None) is not None
        self.data[key] = (value, mono_expires)
        fraction = self.refresh_fraction
        if fraction is not None and mono_expires != NEVER:
            now = self.clock()
            self.refresh_at[key] = now + fraction * (mono_expires - now)
        self._admit(key, weight, resident)

    def _admit(self, key: str, weight: int, resident: bool | None = None) -> None:
        """Tell the policy about ``key`` (``resident``: whether it was already there; by
        default, whether the store holds it now) and drop the victims it names."""
        data, negative = self.data, self.negative
        if resident is None:
            resident = key in data or key in negative
        if self.pinned and key in self.pinned:
            self.pinned.discard(key)
            resident = False  # held outside the policy: new to it
        if resident:
            victims = self.policy.on_update(key, weight)
        else:
            victims = self.policy.on_insert(key, weight)
        refresh_at = self.refresh_at
        for victim in victims:
            if data.pop(victim, None) is None:  # type: ignore[call-overload]
                negative.pop(victim, None)  # type: ignore[call-overload]
            if refresh_at:
                refresh_at.pop(victim, None)  # type: ignore[call-overload]
            if victim != key:
                self.stats.evictions += 1
                if self.events is not None:
                    self.events.emit_keys("eviction", (victim,), self.name)  # type: ignore[arg-type]

    def pin(self, key: str, value: Any, mono_expires: float) -> bool:
        """Hold ``key`` until ``mono_expires`` (or its own earlier expiry) whether or not
        the policy would keep it: hot-key protection; call with the lock held. The policy
        lets go of a pinned key, so it neither evicts it nor counts it in its bound; the
        pin ends at its expiry, or when the key is written, deleted or invalidated, and
        the key goes back to the policy when it is next stored. False: already pinned, or
        remembered as missing."""
        if key in self.pinned or key in self.negative:
            return False
        held = self.data.get(key)
        if held is not None:
            mono_expires = min(mono_expires, held[1])
            self.policy.on_remove(key)
        self.data[key] = (value, mono_expires)
        self.pinned.add(key)
        return True

    def remove_if_expired(self, key: str, now: float) -> None:
        item = self.data.get(key)
        if item is not None and item[1] <= now:
            del self.data[key]
            if self.pinned:
                self.pinned.discard(key)
            self.policy.on_remove(key)
        else:
            expires = self.negative.get(key)
            if expires is None or expires > now:
                return
            del self.negative[key]
            self.policy.on_remove(key)
        if self.events is not None:
            self.events.emit_keys("expiry", (key,), self.name)

    def _remove(self, key: str) -> None:
        if self.refresh_at:
            self.refresh_at.pop(key, None)
        if self.pinned:
            self.pinned.discard(key)
        if self.data.pop(key, None) is not None or self.negative.pop(key, None) is not None:
            self.policy.on_remove(key)

    # ------------------------------------------------------------------ tier protocol

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        now = self.clock()
        wall_now = self.wall_clock()
        data, negative = self.data, self.negative
        expired: list[str] = []
        for key in keys:
            item = data.get(key)
            if item is not None:
                if item[1] > now:
                    self.record(key)
                    found[key] = Entry(item[0], _to_wall(item[1], now, wall_now))
                    continue
                expired.append(key)
            else:
                expires = negative.get(key)
                if expires is not None:
                    if expires > now:
                        self.record(key)
                        found[key] = Entry(None, _to_wall(expires, now, wall_now), True)
                        continue
                    expired.append(key)
        if expired:
            with self.lock:
                self.drain()
                # An expired value is kept for the fail-safe's window (stale_for).
                for key in expired:
                    self.remove_if_expired(key, now - self.stale_for)
        return found

    def get_stale_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not self.stale_for:
            return {}
        now = self.clock()
        wall_now = self.wall_clock()
        oldest = now - self.stale_for
        found: dict[str, Entry] = {}
        data = self.data
        for key in keys:
            item = data.get(key)
            if item is not None and item[1] > oldest:
                found[key] = Entry(item[0], _to_wall(item[1], now, wall_now))
        return found

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        prepared = Prepared()
        sizing = self.sizing
        for key, entry in entries.items():
            weight = 1
            if sizing is not None and not entry.negative:
                weight = sizing.weigh(key, entry.value)
                if not sizing.fits(weight):
                    prepared.rejected[key] = weight
                    continue
                weight = sizing.charge(weight)
            prepared.items[key] = (entry, weight)
        return prepared

    def write(self, prepared: Prepared) -> None:
        now = self.clock()
        wall_now = self.wall_clock()
        with self.lock:
            self.drain()
            for key in prepared.rejected:
                self._remove(key)
            for key, (entry, weight) in prepared.items.items():
                expires = entry.expires_at
                mono_expires = NEVER if expires == NEVER else now + (expires - wall_now)
                if mono_expires <= now:
                    self._remove(key)
                elif entry.negative:
                    self._admit(key, weight)
                    self.data.pop(key, None)
                    self.negative[key] = mono_expires
                else:
                    self.put(key, entry.value, mono_expires, weight)

    def delete_many(self, keys: Sequence[str]) -> None:
        with self.lock:
            self.drain()
            for key in keys:
                self._remove(key)

    def clear(self) -> None:
        with self.lock:
            del self.buffer[:]
            self.data.clear()
            self.negative.clear()
            self.refresh_at.clear()
            self.pinned.clear()
            self.policy.clear()

    def close(self) -> None:
        snapshot = self.options.snapshot
        if snapshot is not None:  # before clear: the hottest entries outlive the process
            _snapshot.save(self, snapshot, self.options.snapshot_entries)
        self.clear()
        super().close()

    def size_limit(self) -> int | None:
        return None if self.sizing is None else self.sizing.max_weight

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self.data) + len(self.negative)

    def __contains__(self, key: object) -> bool:
        item = self.data.get(key)  # type: ignore[call-overload]
        return item is not None and item[1] > self.clock()

    @property
    def weight(self) -> int:
        return self.policy.weight

    def keys(self) -> list[str]:
        return list(self.data)

    def __repr__(self) -> str:
        bound = f"max_bytes={self.capacity}" if self.weighted else f"max_entries={self.capacity}"
        return f"<MemoryTier {self.name!r} {bound} policy={self.policy_name} ttl={self.ttl}>"


def _to_wall(mono_expires: float, mono_now: float, wall_now: float) -> float:
    return NEVER if mono_expires == NEVER else wall_now + (mono_expires - mono_now)

"""The L1 front door: the fast paths a cache binds over its in-process top level.

An L1 hit is the product, so it does not go through the hierarchy's flow: ``get`` is a
reader bound once over the store's dict (a dict lookup, a clock read, a buffer append,
a counter), compiled when ``stratacache._speedups`` is built. Everything the reader does
not answer goes to a slow path: the flow, or, for a cache whose only source is L1,
:meth:`Front.local_miss`. A cache that is nothing but one in-process level also binds a
writer for ``set``.

Every decision here comes from the level's :class:`~.rules.LevelRule`, the same object
the flow computes its writes from: the TTL bound, the jitter, the weight and size
checks. The compiled Reader and Writer are built from that rule's fields; where a rule
needs Python (a weigher, jitter's random draw) the Python closure serves. Both count into
the level's one :class:`~stratacache.metrics.LevelStats`, so a reader or a writer can
be dropped at any time (a new loader re-binds ``get``) without losing or keeping
anything.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from .. import _accel
from ..entry import MISSING, NEVER
from ..errors import ValueTooLargeError
from ..events import Listeners
from ..keys import validate_key
from ..tiers.memory import MemoryTier
from .rules import LevelRule, check_tags, check_ttl

__all__ = ["Front", "Reader", "Writer"]

Reader = Callable[..., Any]  # get(key, default=MISSING)
Writer = Callable[..., None]  # put(key, value, ttl=None, *, tags=None)
Slow = Callable[[str, Any], Any]


class Front:
    """The fast paths over ``store``, following ``rule``. ``timed`` records every read's
    duration in the level's latency histogram (two clock reads a call); ``compiled=False``
    uses the Python closures even when the C module is built (the parity tests do)."""

    def __init__(
        self,
        store: MemoryTier,
        rule: LevelRule,
        rng: random.Random,
        *,
        timed: bool = False,
        compiled: bool = True,
    ) -> None:
        self.store = store
        self.rule = rule
        self.rng = rng
        self.timed = timed
        self.speedups = _accel.speedups if compiled else None

    def absent(self, key: str) -> bool:
        """True when L1 holds nothing at all for ``key`` (neither a live, an expired nor a
        remembered-missing entry): the flow can then start below L1."""
        return key not in self.store.data and key not in self.store.negative

    # ------------------------------------------------------------------ reads

    def reader(self, slow: Slow, *, local_misses: bool = False) -> Reader:
        """A ``get(key, default=MISSING)`` that answers L1 hits itself and calls
        ``slow(key, default)`` for everything else (absent, expired, remembered missing,
        bad key). ``local_misses``: this level is the cache's only source (``slow`` is
        :meth:`local_miss`), so the compiled reader answers plain misses too."""
        store = self.store
        stats = store.stats
        if self.speedups is not None and not self.timed:
            return self.speedups.Reader(  # type: ignore[no-any-return]
                data=store.data,
                clock=store.clock,
                buffer=store.buffer,
                limit=store.buffer_limit,
                drain=store.drain_from_reader,
                slow=slow,
                missing=MISSING,
                counters=stats,
                negative=store.negative if local_misses else None,
                lock=store.lock,
                on_hits=store.hits_sink,
            )
        data_get = store.data.get
        now = store.clock
        buffer = store.buffer
        record = buffer.append
        limit = store.buffer_limit
        drain = store.drain_from_reader
        histogram = stats.latency if self.timed else None
        tick = time.perf_counter_ns

        def get(key: str, default: Any = MISSING) -> Any:
            start = tick() if histogram is not None else 0
            try:
                entry = data_get(key)
            except TypeError:  # unhashable: let the slow path name the problem
                entry = None
            if entry is not None and entry[1] > now():
                stats.hits += 1
                record(key)
                if len(buffer) >= limit:
                    drain()
                if histogram is not None:
                    histogram.record(tick() - start)
                return entry[0]
            if histogram is not None:
                histogram.record(tick() - start)
            return slow(key, default)

        return get

    def reporting(self, reader: Reader, events: Listeners, *, local_misses: bool) -> Reader:
        """``reader``, also telling ``events`` of each L1 hit (and, when ``local_misses``,
        of each miss: a cache whose only source is L1 has no flow to report them). Bound
        only while someone listens for hits or misses: the check before the read costs a
        dict lookup and a clock read per get."""
        store = self.store
        data_get = store.data.get
        now = store.clock
        level = self.rule.name

        def get(key: str, default: Any = MISSING) -> Any:
            try:
                entry = data_get(key)
            except TypeError:
                entry = None
            hit = entry is not None and entry[1] > now()
            value = reader(key, default)
            if hit:
                events.emit_keys("hit", (key,), level)
            elif local_misses and type(key) is str:
                events.emit_keys("miss", (key,), level)
            return value

        return get

    def local_miss(self, key: str, default: Any) -> Any:
        """The whole read, after the reader missed, for a cache whose only source is L1: a
        hit after all (a remembered "not found" answers ``default``) or a counted miss.
        What the flow's read would do, without building a flow: the store's own lookup,
        which also drops an expired entry."""
        if type(key) is not str or not key:
            validate_key(key)
        stats = self.store.stats
        entry = self.store.get_many((key,)).get(key)
        if entry is None:
            stats.misses += 1
            return default
        stats.hits += 1
        return default if entry.negative else entry.value

    # ------------------------------------------------------------------ writes

    def writer(
        self,
        tagged: Callable[[str, tuple[str, ...]], None] | None = None,
        *,
        compiled: bool = True,
    ) -> Writer:
        """A ``put(key, value, ttl=None, *, tags=None)`` for a cache whose only level is
        this one: the rule's lifetime, weight and size checks, and the policy's events,
        bound once. ``tagged(key, tags)`` hears of the tags of each tagged put (a call
        with keywords takes the Python path). ``compiled=False``: the Python writer even
        when the C one could serve (it evicts in C, where no eviction listener hears)."""
        store = self.store
        stats = store.stats
        rule = self.rule
        rng = self.rng
        sizing = rule.sizing
        lock = store.lock
        buffer = store.buffer
        drain = store.drain
        put_entry = store.put
        now = store.clock

        def put(key: str, value: Any, ttl: float | None = None, *, tags: Any = None) -> None:
            if type(key) is not str or not key:
                validate_key(key)
            check_ttl(ttl)
            if tags is not None:
                checked = check_tags(tags)
                if checked and tagged is not None:
                    tagged(key, checked)
            lifetime = rule.lifetime(ttl, rng)
            expires = NEVER if lifetime is None else now() + lifetime
            weight = 1
            if sizing is not None:
                weight = sizing.weigh(key, value)
                if not sizing.fits(weight):
                    # Refused before anything is written: the value stored before (if
                    # any) stays, as the flow's write would leave it.
                    stats.too_large += 1
                    raise ValueTooLargeError(
                        f"the value for key {key!r} weighs {weight} bytes, more than level "
                        f"{rule.name}'s limit of {sizing.max_weight}; raise "
                        "max_bytes/max_value_bytes or store a smaller value"
                    )
                weight = sizing.charge(weight)
            with lock:
                if buffer:
                    drain()
                put_entry(key, value, expires, weight)
            stats.writes += 1

        speedups = self.speedups
        if speedups is None or sizing is not None or rule.jitter or not compiled:
            return put
        if not isinstance(lock, speedups.Lock):  # a store made while the C module was off
            return put
        # The same closure in C; it hands unusual calls (bad key, odd ttl) back to
        # ``put``, which raises or handles them.
        policy = store.policy
        return speedups.Writer(  # type: ignore[no-any-return]
            data=store.data,
            negative=store.negative,
            lock=lock,
            buffer=buffer,
            drain=drain,
            on_insert=policy.on_insert,
            on_update=policy.on_update,
            clock=now,
            level_ttl=rule.ttl,
            fallback=put,
            counters=stats,
        )

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

Entries are tuples ``(value, expires_at_monotonic, version)``; a remembered "not found"
lives in a separate dict so the hit path never has to test for it. Expiry uses the
monotonic clock (immune to wall-clock steps); entries arrive and leave with wall-clock
expiries, converted on the way.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from .. import _accel
from ..entry import MISSING, NEVER, Entry
from ..errors import ConfigurationError, ValueTooLargeError
from ..keys import validate_key
from ..metrics import LevelStats
from ..policies import DEFAULT_POLICY, Policy, make_policy
from .base import Prepared, Tier

__all__ = ["MemoryTier", "default_weigher"]

Weigher = Callable[[str, Any], int]


def default_weigher(key: str, value: Any) -> int:
    """A rough size in bytes: exact for str/bytes, msgpack length for plain data,
    ``sys.getsizeof`` otherwise. Pass ``weigher=`` for anything better."""
    if isinstance(value, bytes | bytearray | memoryview):
        size = len(value)
    elif isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
    else:
        try:
            import msgspec

            size = len(msgspec.msgpack.encode(value))
        except Exception:
            size = sys.getsizeof(value)
    return len(key) + size + 64  # per-entry overhead of the dict slot and tuple


class _MemoryStats(LevelStats):
    """Hits are not counted on the hit path (that would cost a counter update per hit);
    they are the keys that went through the read buffer."""

    def __init__(self, name: str, kind: str, tier: MemoryTier) -> None:
        self._tier = tier
        self._hits_offset = 0
        self._writes = 0
        self._evictions = 0
        self._misses = 0
        self._c_misses = 0
        self._c_offsets = (0, 0)
        super().__init__(name, kind)

    # Misses, writes and evictions: what Python code counted plus what C code counted.

    def _c_reader_misses(self) -> int:
        return sum(int(r.misses) for r in self._tier._c_readers)

    @property
    def misses(self) -> int:
        return self._misses + self._c_reader_misses() - self._c_misses

    @misses.setter
    def misses(self, value: int) -> None:
        self._misses = value - (self._c_reader_misses() - self._c_misses)

    def _c_counts(self) -> tuple[int, int]:
        writers = self._tier._c_writers
        return (sum(w.writes for w in writers), sum(w.evictions for w in writers))

    @property
    def writes(self) -> int:
        return self._writes + self._c_counts()[0] - self._c_offsets[0]

    @writes.setter
    def writes(self, value: int) -> None:
        self._writes = value - (self._c_counts()[0] - self._c_offsets[0])

    @property
    def evictions(self) -> int:
        return self._evictions + self._c_counts()[1] - self._c_offsets[1]

    @evictions.setter
    def evictions(self, value: int) -> None:
        self._evictions = value - (self._c_counts()[1] - self._c_offsets[1])

    def reset(self) -> None:
        super().reset()
        self._writes = self._evictions = self._misses = 0
        self._c_offsets = self._c_counts()
        self._c_misses = self._c_reader_misses()

    @property
    def hits(self) -> int:
        tier = self._tier
        return tier._hits_drained + len(tier._buffer) - self._hits_offset

    @hits.setter
    def hits(self, value: int) -> None:  # reset() sets 0: remember where we stand
        self._hits_offset = 0
        self._hits_offset = self.hits - value


class MemoryTier(Tier):
    """L1: process memory, bounded by ``max_entries`` (default 10,000) or by ``max_bytes``
    (entries weighed by ``weigher``, default :func:`default_weigher`), with a pluggable
    eviction policy.

    Values are kept as they are (no copy, no serialization): a hit hands back the stored
    object itself, so callers must not mutate what they get.
    """

    kind = "memory"
    local = True

    def __init__(
        self,
        max_entries: int | None = None,
        *,
        max_bytes: int | None = None,
        weigher: Weigher | None = None,
        max_value_bytes: int | None = None,
        ttl: float | None = None,
        policy: str | Callable[[int], Policy] = DEFAULT_POLICY,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        read_buffer_size: int = 64,
    ) -> None:
        super().__init__(name=name, ttl=ttl)
        if max_bytes is not None:
            if max_entries is not None:
                raise ConfigurationError(
                    "MemoryTier is bounded either by max_entries or by max_bytes, not both; "
                    f"got max_entries={max_entries} and max_bytes={max_bytes}"
                )
            capacity = max_bytes
            self._weighted = True
        else:
            capacity = 10_000 if max_entries is None else max_entries
            self._weighted = False
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(f"MemoryTier bound must be a positive int, got {capacity!r}")
        if read_buffer_size < 1:
            raise ConfigurationError(f"read_buffer_size must be >= 1, got {read_buffer_size!r}")
        self.capacity = capacity
        self.max_value_bytes = max_value_bytes
        self._weigher: Weigher | None = weigher or (
            default_weigher if (self._weighted or max_value_bytes is not None) else None
        )
        if isinstance(policy, str):
            self.policy_name = policy
            try:
                self._policy = make_policy(policy, capacity)
            except ValueError as exc:
                raise ConfigurationError(f"MemoryTier: {exc}") from None
        else:
            self._policy = policy(capacity)
            self.policy_name = getattr(self._policy, "name", type(self._policy).__name__)
        self._clock = clock
        self._wall_clock = wall_clock
        self._data: dict[str, tuple[Any, float, int]] = {}
        self._negative: dict[str, tuple[float, int]] = {}
        # The C writer takes the speedups' own lock directly; it works as threading.Lock.
        self._lock: Any = (
            _accel.speedups.Lock() if _accel.speedups is not None else threading.Lock()
        )
        self._buffer: list[Hashable] = []
        self._buffer_limit = read_buffer_size
        self._hits_drained = 0
        self._c_writers: list[Any] = []  # C writers count their own writes and evictions
        self._c_readers: list[Any] = []  # C readers count the plain misses they answer
        self.stats = _MemoryStats(self.name, self.kind, self)

    # ------------------------------------------------------------------ the hit path

    def make_reader(
        self,
        slow: Callable[[str, Any], Any],
        *,
        timed: bool = False,
        local_misses: bool = False,
    ) -> Callable[..., Any]:
        """A ``get(key, default=MISSING)`` closure: answers L1 hits itself and calls
        ``slow(key, default)`` for everything else (miss, expired, negative, bad key).
        With ``timed``, every call is timed into ``stats.latency`` (costs two clock reads).
        ``local_misses`` says this tier is the cache's only source (``slow`` is then
        :meth:`lookup_or_default`): the C reader answers plain misses itself."""
        data_get = self._data.get
        now = self._clock
        buffer = self._buffer
        record = buffer.append
        limit = self._buffer_limit
        drain = self._drain_from_reader

        if not timed:
            if _accel.speedups is not None:
                reader: Any = _accel.speedups.Reader(
                    data=self._data,
                    clock=now,
                    buffer=buffer,
                    limit=limit,
                    drain=drain,
                    slow=slow,
                    missing=MISSING,
                    negative=self._negative if local_misses else None,
                )
                self._c_readers.append(reader)
                return reader  # type: ignore[no-any-return]

            def get(key: str, default: Any = MISSING) -> Any:
                try:
                    entry = data_get(key)
                except TypeError:  # unhashable: let the slow path name the problem
                    return slow(key, default)
                if entry is not None and entry[1] > now():
                    record(key)
                    if len(buffer) >= limit:
                        drain()
                    return entry[0]
                return slow(key, default)

            return get

        histogram = self.stats.latency
        tick = time.perf_counter_ns

        def timed_get(key: str, default: Any = MISSING) -> Any:
            start = tick()
            try:
                entry = data_get(key)
            except TypeError:
                return slow(key, default)
            if entry is not None and entry[1] > now():
                record(key)
                if len(buffer) >= limit:
                    drain()
                histogram.record(tick() - start)
                return entry[0]
            histogram.record(tick() - start)
            return slow(key, default)

        return timed_get

    def lookup_or_default(self, key: str, default: Any) -> Any:
        """The whole read for a cache whose only source is this tier: a hit (found after
        all, or a remembered "not found" answering ``default``) or a counted miss. What the
        hierarchy's generic read would do, without building a flow."""
        if type(key) is not str or not key:
            validate_key(key)
        now = self._clock()
        item = self._data.get(key)
        if item is not None:
            if item[1] > now:
                self._record(key)
                return item[0]
        else:
            neg = self._negative.get(key)
            if neg is None:
                self.stats.misses += 1
                return default
            if neg[0] > now:
                self._record(key)
                return default
        with self._lock:
            self._drain()
            self._remove_if_expired(key, now)
        self.stats.misses += 1
        return default

    def make_writer(
        self, *, jitter: float = 0.0, rng: random.Random | None = None
    ) -> Callable[[str, Any, float | None], None]:
        """A ``put(key, value, ttl)`` closure for a cache whose only level is this tier:
        the same TTL rules, size checks and policy events as the hierarchy's write, bound
        once instead of built per call."""
        data, negative = self._data, self._negative
        lock = self._lock
        drain = self._drain
        buffer = self._buffer
        policy = self._policy
        on_insert = policy.on_insert
        now = self._clock
        level_ttl = self.ttl
        weigher = self._weigher
        weighted = self._weighted
        stats = self.stats
        random_fraction = rng.random if (rng is not None and jitter) else None

        def put(key: str, value: Any, ttl: float | None = None) -> None:
            if type(key) is not str or not key:
                validate_key(key)
            lifetime = level_ttl
            if ttl is not None:
                if not (isinstance(ttl, int | float) and ttl > 0):
                    raise ConfigurationError(
                        f"ttl must be a positive number of seconds or None, got {ttl!r}"
                    )
                if lifetime is None or ttl < lifetime:
                    lifetime = ttl
            if lifetime is None:
                expires = NEVER
            else:
                if random_fraction is not None:
                    lifetime *= 1.0 - jitter * random_fraction()
                expires = now() + lifetime
            weight = 1
            if weigher is not None:
                weight = self._checked_weight(key, value)
                if not weighted:
                    weight = 1
            with lock:
                if buffer:
                    drain()
                if key in data or key in negative:
                    victims = policy.on_update(key, weight)
                    negative.pop(key, None)
                else:
                    victims = on_insert(key, weight)
                data[key] = (value, expires, 0)
                if victims:
                    for victim in victims:
                        if data.pop(victim, None) is None:  # type: ignore[call-overload]
                            negative.pop(victim, None)  # type: ignore[call-overload]
                    stats.evictions += len(victims) - (key in victims)
            stats.writes += 1

        if _accel.speedups is not None and weigher is None and random_fraction is None:
            # The same closure in C; it hands unusual calls (bad key, odd ttl) back to
            # ``put``, which raises or handles them.
            writer = _accel.speedups.Writer(
                data=data,
                negative=negative,
                lock=lock,
                buffer=buffer,
                drain=drain,
                on_insert=on_insert,
                on_update=policy.on_update,
                clock=now,
                level_ttl=level_ttl,
                fallback=put,
            )
            self._c_writers.append(writer)
            return writer  # type: ignore[no-any-return]
        return put

    def _checked_weight(self, key: str, value: Any) -> int:
        """The entry's weight; a value that can never fit raises ValueTooLargeError (the
        caller has no other level to put it in)."""
        assert self._weigher is not None
        weight = max(1, int(self._weigher(key, value)))
        limit = self.capacity if self._weighted else None
        if self.max_value_bytes is not None and (limit is None or self.max_value_bytes < limit):
            limit = self.max_value_bytes
        if limit is not None and weight > limit:
            # Refused before anything is written, as the hierarchy does: the value stored
            # before (if any) stays.
            self.stats.too_large += 1
            raise ValueTooLargeError(
                f"the value for key {key!r} weighs {weight} bytes, more than level "
                f"{self.name}'s limit of {limit}; raise max_bytes/max_value_bytes or store "
                "a smaller value"
            )
        return weight

    def _record(self, key: str) -> None:
        """Note a hit outside the hot closure (slow paths, batch reads), with the same bound."""
        buffer = self._buffer
        buffer.append(key)
        if len(buffer) >= self._buffer_limit:
            self._drain_from_reader()

    def _drain_from_reader(self) -> None:
        """A reader found the buffer full. Drain it if the lock is free; if a writer holds
        the lock, that writer drains it. Only a buffer grown far past its size (the lock
        held for a long time while hits pour in) makes the reader wait for the lock: the
        buffer stays bounded, and it is only ever cut under the lock, so no drain can lose
        hits recorded after its copy."""
        lock = self._lock
        if not lock.acquire(blocking=False):
            if len(self._buffer) < 16 * self._buffer_limit:
                return
            lock.acquire()
        try:
            self._drain()
        finally:
            lock.release()

    def _drain(self) -> None:
        """Replay buffered hits to the policy. Call with the lock held."""
        buffer = self._buffer
        if buffer:
            batch = buffer[:]
            # Only the keys copied: readers may have appended more meanwhile.
            del buffer[: len(batch)]
            self._hits_drained += len(batch)
            self._policy.on_hits(batch)

    # ------------------------------------------------------------------ tier protocol

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        now = self._clock()
        wall_now = self._wall_clock()
        data, negative = self._data, self._negative
        expired: list[str] = []
        misses = 0
        for key in keys:
            item = data.get(key)
            if item is not None:
                if item[1] > now:
                    self._record(key)
                    found[key] = Entry(item[0], _to_wall(item[1], now, wall_now), item[2])
                    continue
                expired.append(key)
            else:
                neg = negative.get(key)
                if neg is not None:
                    if neg[0] > now:
                        self._record(key)
                        found[key] = Entry(None, _to_wall(neg[0], now, wall_now), neg[1], True)
                        continue
                    expired.append(key)
            misses += 1
        self.stats.misses += misses
        if expired:
            with self._lock:
                self._drain()
                for key in expired:
                    self._remove_if_expired(key, now)
        elif len(self._buffer) >= self._buffer_limit:
            self._drain_from_reader()
        return found

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        prepared = Prepared()
        weigher = self._weigher
        for key, entry in entries.items():
            if weigher is None:
                weight = 1
            else:
                weight = 1 if entry.negative else max(1, int(weigher(key, entry.value)))
                if self._weighted and weight > self.capacity:
                    prepared.rejected[key] = weight
                    continue
                if (
                    self.max_value_bytes is not None
                    and not entry.negative
                    and weight > self.max_value_bytes
                ):
                    prepared.rejected[key] = weight
                    continue
            prepared.items[key] = (entry, weight if self._weighted else 1)
        return prepared

    def write(self, prepared: Prepared) -> None:
        now = self._clock()
        wall_now = self._wall_clock()
        evicted = 0
        with self._lock:
            self._drain()
            for key in prepared.rejected:
                self._remove(key)
            for key, (entry, weight) in prepared.items.items():
                expires = entry.expires_at
                mono_expires = NEVER if expires == NEVER else now + (expires - wall_now)
                if mono_expires <= now:
                    self._remove(key)
                    continue
                evicted += self._store(key, entry, mono_expires, weight)
        self.stats.writes += len(prepared.items)
        self.stats.evictions += evicted

    def _store(self, key: str, entry: Entry, mono_expires: float, weight: int) -> int:
        data, negative = self._data, self._negative
        if key in data or key in negative:
            victims = self._policy.on_update(key, weight)
            if entry.negative:
                data.pop(key, None)
            else:
                negative.pop(key, None)
        else:
            victims = self._policy.on_insert(key, weight)
        if entry.negative:
            negative[key] = (mono_expires, entry.version)
        else:
            data[key] = (entry.value, mono_expires, entry.version)
        for victim in victims:
            if data.pop(victim, None) is None:  # type: ignore[call-overload]
                negative.pop(victim, None)  # type: ignore[call-overload]
        return sum(1 for v in victims if v != key)

    def _remove(self, key: str) -> None:
        if self._data.pop(key, None) is not None or self._negative.pop(key, None) is not None:
            self._policy.on_remove(key)

    def _remove_if_expired(self, key: str, now: float) -> None:
        item = self._data.get(key)
        if item is not None and item[1] <= now:
            del self._data[key]
            self._policy.on_remove(key)
            return
        neg = self._negative.get(key)
        if neg is not None and neg[0] <= now:
            del self._negative[key]
            self._policy.on_remove(key)

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._drain()
            for key in keys:
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            del self._buffer[:]
            self._data.clear()
            self._negative.clear()
            self._policy.clear()

    def close(self) -> None:
        self.clear()
        super().close()

    def size_limit(self) -> int | None:
        limits = [
            limit
            for limit in (self.max_value_bytes, self.capacity if self._weighted else None)
            if limit is not None
        ]
        return min(limits) if limits else None

    # async: in-process, never awaited by the hierarchy; these exist for direct callers.

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self.get_many(keys)

    async def awrite(self, prepared: Prepared) -> None:
        self.write(prepared)

    async def adelete_many(self, keys: Sequence[str]) -> None:
        self.delete_many(keys)

    async def aclear(self) -> None:
        self.clear()

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._data) + len(self._negative)

    def __contains__(self, key: object) -> bool:
        item = self._data.get(key)  # type: ignore[call-overload]
        return item is not None and item[1] > self._clock()

    @property
    def weight(self) -> int:
        return self._policy.weight

    def keys(self) -> list[str]:
        return list(self._data)

    def __repr__(self) -> str:
        bound = f"max_bytes={self.capacity}" if self._weighted else f"max_entries={self.capacity}"
        return f"<MemoryTier {self.name!r} {bound} policy={self.policy_name} ttl={self.ttl}>"


def _to_wall(mono_expires: float, mono_now: float, wall_now: float) -> float:
    return NEVER if mono_expires == NEVER else wall_now + (mono_expires - mono_now)

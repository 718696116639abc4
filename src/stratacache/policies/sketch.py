"""A frequency sketch: approximate, aging popularity counts for any number of keys.

Admission policies such as TinyLFU need to answer one question fast: "has this key been asked
for more often, lately, than that one?" Keeping an exact counter per key ever seen would grow
without bound, so we follow Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache
Admission Policy" (ACM ToS 2017), which combines these ideas:

* **A count-min sketch** (Cormode and Muthukrishnan, 2005). Each key is hashed to one counter
  in each of ``DEPTH`` rows; an estimate is the smallest of its counters. Collisions can only
  inflate a count, and the minimum over independent rows keeps the inflation small. The table
  is sized from the cache capacity (16 counters per cached entry by default, as Caffeine
  does), not from the number of distinct keys in the stream. An increment can bump all the
  key's counters, or only those equal to the minimum (*conservative update*, Estan and
  Varghese 2002), which never makes an estimate worse and makes colliding keys inflate each
  other less; we use conservative update by default.
* **Small saturating counters.** Admission compares popularity among keys that matter, so a
  counter stops at 15 (4 bits of information). One byte holds one counter here: CPython
  reads and writes a ``bytearray`` element far faster than it can unpack nibbles, and the
  table stays a few bytes per cached entry.
* **Aging by reset.** After ``sample_size`` increments (ten per cached entry by default, the
  figure the paper and Caffeine use), every counter is halved, so popularity decays
  geometrically: yesterday's hot keys fade unless they stay hot. The increment count is
  halved too (it stands for the total of the counts), so later periods last half a sample.
  Halving the whole table is one ``bytes.translate`` call, done in C.
* **A doorkeeper.** Most keys in real traces are requested once. A Bloom filter sits in front
  of the counters: the first request for a key in a period only marks the doorkeeper, and
  only later ones reach the counters; an estimate adds one for a doorkeeper hit. One-hit
  wonders thus never touch the counters, which keeps collisions (overestimates) rare for the
  keys that matter.

**The doorkeeper spans two periods.** The paper clears the doorkeeper at every reset. Right
after a reset, every key requested since then scores one more than every key not yet
requested, however popular both are over time. For a workload that cycles through more keys
than the cache holds (a loop, a periodic batch job) with a cycle close to the aging period,
that makes each newly requested key beat the resident one, so the cache churns and hits
nothing. Here each doorkeeper slot stores the *number of the period* that last marked it (a
byte; the array is rebuilt once every 254 periods so numbers never alias). A key's doorkeeper
unit counts if it was marked in the current period or the previous one, and only a mark from
the current period lets a request through to the counters. So a key requested once per period
keeps its unit across resets, much as a key requested twice per period keeps a count of one
after halving; the asymmetry disappears, and a reset costs the doorkeeper nothing.

Hashing: ``hash(key)`` is xored with a per-sketch seed and multiplied by an odd 64-bit constant
(one call to ``hash``, three integer operations). The product's top bits, which depend on
every bit of the input, pick the first column; its middle bits an odd stride that picks the
others (double hashing, Kirsch and Mitzenmacher 2006). The doorkeeper's two probes come from
the top bits and from bits 5 and up of the same word. Indexes are then small ints, which
CPython adds and masks much faster than 64-bit ones. ``hash`` of an int is
deterministic, so results for integer keys are reproducible; ``str`` hashes are randomized per
process (PYTHONHASHSEED), which only moves which keys happen to collide.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["MAX_COUNT", "FrequencySketch"]

_MASK64 = (1 << 64) - 1
_MIX = 0xBF58476D1CE4E5B9
_GOLDEN = 0x9E3779B97F4A7C15

# Counters saturate here: four bits of information per counter.
MAX_COUNT = 15
# Maps every byte value to its half; ``translate`` with it ages the whole table in C.
_HALVE = bytes(value >> 1 for value in range(256))
# Period numbers stored in the doorkeeper run from 1 to this, then the array is rebuilt.
_LAST_PERIOD = 255


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class FrequencySketch:
    """A 4-row count-min sketch of 4-bit counters with periodic halving and a doorkeeper.

    ``capacity`` is the number of entries the cache holds (not bytes): the table gets
    ``counters_per_entry`` counters per entry over all rows, and counts are halved every
    ``sample_factor * capacity`` increments.
    """

    DEPTH = 4

    __slots__ = (
        "_capacity",
        "_conservative",
        "_counters_per_entry",
        "_dk_mask",
        "_dk_shift",
        "_doorkeeper",
        "_mask",
        "_period",
        "_sample_factor",
        "_seed",
        "_shift",
        "_size",
        "_table",
        "_use_doorkeeper",
        "_width",
        "sample_size",
    )

    def __init__(
        self,
        capacity: int,
        *,
        counters_per_entry: int = 16,
        sample_factor: int = 10,
        doorkeeper: bool = True,
        conservative: bool = True,
        seed: int = 0,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"FrequencySketch: capacity must be >= 1, got {capacity!r}")
        if counters_per_entry < 1 or sample_factor < 1:
            raise ValueError("FrequencySketch: counters_per_entry and sample_factor must be >= 1")
        self._counters_per_entry = counters_per_entry
        self._sample_factor = sample_factor
        self._use_doorkeeper = doorkeeper
        self._conservative = conservative
        # The seed only has to decorrelate sketches; spread it so that 0, 1, 2... differ widely.
        self._seed = (seed * _GOLDEN + _GOLDEN) & _MASK64
        self._capacity = 0
        self._table = bytearray()
        self._doorkeeper = bytearray()
        self._width = self._mask = self._shift = self._dk_mask = self._dk_shift = 0
        self._size = 0
        self._period = 1
        self.sample_size = 0
        self.ensure_capacity(capacity)

    @property
    def capacity(self) -> int:
        """The number of cache entries the table is sized for."""
        return self._capacity

    def ensure_capacity(self, capacity: int) -> None:
        """Resize for a cache of ``capacity`` entries, if that is more than the current sizing.

        Resizing forgets all counts, so callers grow in large steps (doubling)."""
        if capacity <= self._capacity:
            return
        self._capacity = capacity
        # At least 16 counters per row, so that tiny caches still get distinct columns.
        width = max(16, _ceil_pow2(capacity * self._counters_per_entry // self.DEPTH))
        self._width = width
        self._mask = width - 1
        # The first column comes from the hash's top bits (they depend on every input bit).
        self._shift = 64 - (width.bit_length() - 1)
        self._table = bytearray(width * self.DEPTH)
        self.sample_size = self._sample_factor * capacity
        # Two periods (one sample) hold at most ``sample_size`` distinct keys; with two slots
        # per request of a sample and two probes, false positives stay under 40% even for a
        # scan of distinct keys, and are rare for real traces, where most requests repeat a
        # key. (Measured: 1, 2, 4 and 8 slots per request give the same hit ratios; a false
        # positive only lets a key's second request reach the counters early.)
        slots = _ceil_pow2(max(64, 2 * self.sample_size)) if self._use_doorkeeper else 1
        self._doorkeeper = bytearray(slots)
        self._dk_mask = slots - 1
        # The second probe comes from the word's top bits.
        self._dk_shift = 64 - (slots.bit_length() - 1)
        self._size = 0
        self._period = 1

    def clear(self) -> None:
        """Forget every count."""
        self._table[:] = bytes(len(self._table))
        self._doorkeeper[:] = bytes(len(self._doorkeeper))
        self._size = 0
        self._period = 1

    def frequency(self, key: Hashable) -> int:
        """The estimated number of recent requests for ``key`` (0 to ``MAX_COUNT + 1``)."""
        h = ((hash(key) ^ self._seed) * _MIX) & _MASK64
        mask = self._mask
        width = self._width
        table = self._table
        index = h >> self._shift
        step = ((h >> 20) & mask) | 1
        count = table[index]
        index = (index + step) & mask
        value = table[width + index]
        if value < count:
            count = value
        index = (index + step) & mask
        value = table[2 * width + index]
        if value < count:
            count = value
        index = (index + step) & mask
        value = table[3 * width + index]
        if value < count:
            count = value
        if self._use_doorkeeper:
            dk = self._doorkeeper
            dk_mask = self._dk_mask
            # Marked in this period or the previous one (0 means never marked).
            lowest = self._period - 1 or 1
            if dk[(h >> 5) & dk_mask] >= lowest and dk[h >> self._dk_shift] >= lowest:
                count += 1
        return count

    def increment(self, key: Hashable) -> None:
        """Record one request for ``key``."""
        h = ((hash(key) ^ self._seed) * _MIX) & _MASK64
        self._size += 1
        if self._use_doorkeeper:
            dk = self._doorkeeper
            period = self._period
            first = (h >> 5) & self._dk_mask
            second = h >> self._dk_shift
            if dk[first] != period or dk[second] != period:
                # The key's first request this period: it only marks the doorkeeper.
                dk[first] = period
                dk[second] = period
                if self._size >= self.sample_size:
                    self._reset()
                return
        mask = self._mask
        width = self._width
        table = self._table
        i0 = h >> self._shift
        step = ((h >> 20) & mask) | 1
        i1 = (i0 + step) & mask
        i2 = (i1 + step) & mask
        i3 = 3 * width + ((i2 + step) & mask)
        i1 += width
        i2 += 2 * width
        c0 = table[i0]
        c1 = table[i1]
        c2 = table[i2]
        c3 = table[i3]
        if self._conservative:
            # Raise only the counters at the minimum: the estimate grows by one, and keys
            # sharing the other counters are not inflated.
            low = c0
            if c1 < low:
                low = c1
            if c2 < low:
                low = c2
            if c3 < low:
                low = c3
            if low < MAX_COUNT:
                low += 1
                if c0 < low:
                    table[i0] = low
                if c1 < low:
                    table[i1] = low
                if c2 < low:
                    table[i2] = low
                if c3 < low:
                    table[i3] = low
        else:
            if c0 < MAX_COUNT:
                table[i0] = c0 + 1
            if c1 < MAX_COUNT:
                table[i1] = c1 + 1
            if c2 < MAX_COUNT:
                table[i2] = c2 + 1
            if c3 < MAX_COUNT:
                table[i3] = c3 + 1
        if self._size >= self.sample_size:
            self._reset()

    def _reset(self) -> None:
        """Age every count: halve the counters, start a new doorkeeper period."""
        table = self._table
        # In place, so that anything holding the table keeps a valid reference.
        table[:] = table.translate(_HALVE)
        self._size //= 2
        if not self._use_doorkeeper:
            return
        if self._period < _LAST_PERIOD:
            self._period += 1
            return
        # Period numbers are about to wrap: keep the current period's marks as period 1,
        # drop the older ones, and continue from period 2.
        dk = self._doorkeeper
        dk[:] = dk.translate(bytes(1 if value == _LAST_PERIOD else 0 for value in range(256)))
        self._period = 2

"""Which keys are hot right now: a heavy-hitter counter with exponential decay.

The counter is Space-Saving (Metwally, Agrawal and El Abbadi, 2005) with its eviction
done in batches: it tracks up to ``4 * capacity`` keys, and when it is full it keeps the
``capacity`` largest and remembers the largest count it dropped as the floor. A key seen
for the first time starts from that floor (what it may have had while untracked), so a
count is an upper bound and ``count - error`` a lower one; a key whose true count is
above the floor is always tracked. Trimming in batches costs O(capacity log capacity)
once per ``capacity`` new keys instead of a scan for the minimum on every new key.

"Recent" is forward decay (Cormode et al., 2009): a request at time t adds
``2 ** ((t - base) / half_life)`` instead of 1, so every count decays with the same
half-life without touching the others; ``base`` moves forward now and then to keep the
weights small. A steady rate r gives a decayed count of ``r * half_life / ln 2`` (of
``r`` times the integral of the decay since counting began, while that is younger than a
few half-lives), which is how counts turn back into rates.

Cost: the L1 hit path does not see this class. Hits reach it in the batches the read
buffer already hands the eviction policy (see tiers/memory.py), sampled (:meth:`HotKeys.offer`);
misses come one at a time from the slow path.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HotKey", "HotKeys"]

_LN2 = math.log(2.0)
_SAMPLE = 64  # the fewest hits a sample of hits is taken from (a full read buffer)
_REBASE_AFTER = 32.0  # half-lives; 2**32 keeps the weights well inside a float's precision


@dataclass(frozen=True, slots=True)
class HotKey:
    """One hot key: its estimated request rate (requests per second, over the last few
    half-lives) and the error bound of that estimate (the rate may be up to ``error``
    lower than ``rate + error``; ``rate`` is the lower bound)."""

    key: str
    rate: float
    error: float = 0.0


class HotKeys:
    """The ``capacity`` keys with the highest recent request rate.

    ``half_life``: seconds after which a request counts half (default 10 s: a key that
    stops being asked for drops out within a minute). Hits are sampled (see :meth:`offer`):
    by default every 10 ms, the batch of hits at hand (64), which keeps the cost per hit to
    a few ns (see BENCHMARKS.md). A sampled key stands for every hit since the last
    sample, so the rates of keys with less than about 1% of the hits are noisy (one
    sample of a cold key can read as tens of requests a second on a busy cache); the
    heads are estimated within some percent, and misses are all counted.
    """

    def __init__(
        self,
        capacity: int = 256,
        *,
        half_life: float = 10.0,
        interval: float = 0.01,
        every: int = 256,
        step: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 seconds, got {half_life!r}")
        if not isinstance(every, int) or every < 1 or not isinstance(step, int) or step < 1:
            raise ValueError(
                f"every and step must be positive ints (with interval=0, 1 and 1 count "
                f"every hit), got every={every!r}, step={step!r}"
            )
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval!r}")
        self.capacity = capacity
        self.half_life = float(half_life)
        self.every = every
        self.step = step
        self._pending = 0
        self._due = every
        self._recent: list[object] = []
        self.interval = float(interval)
        self._sampled_at = clock()
        # Trim at four times the capacity: a trim costs O(n log n) once per 3n new keys.
        self._limit = 4 * capacity
        self.clock = clock
        self._lock = threading.Lock()
        self._base = self._started = clock()
        self._counts: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._floor = 0.0

    # ------------------------------------------------------------------ counting

    def _weight(self, now: float) -> float:
        exponent = (now - self._base) / self.half_life
        if exponent > _REBASE_AFTER:
            self._rebase(now)
            exponent = 0.0
        return float(2.0**exponent)

    def _rebase(self, now: float) -> None:
        scale = 2.0 ** (-(now - self._base) / self.half_life)
        self._counts = {key: count * scale for key, count in self._counts.items() if count * scale}
        self._errors = {key: self._errors[key] * scale for key in self._counts}
        self._floor *= scale
        self._base = now

    def feeder(
        self, on_hits: Callable[[list[Hashable]], object]
    ) -> Callable[[list[Hashable]], None]:
        """``on_hits`` (an eviction policy's), followed by :meth:`offer`, as one function
        for the compiled L1 reader to call with each batch it drains: the common case (a
        full batch, no sample due) costs no second Python call."""
        offer = self.offer

        def feed(batch: list[Hashable]) -> None:
            on_hits(batch)
            size = len(batch)
            if size >= _SAMPLE and self._pending + size < self._due:
                self._pending += size
            else:
                offer(batch)

        return feed

    def offer(self, batch: Sequence[object]) -> None:
        """Hear of a batch of hits (the read buffer's drain). Most batches are only
        counted: at most once per ``interval`` seconds (the clock is read once per
        ``every`` hits), one key in ``step`` of the batch at hand is counted, scaled to
        stand for every hit since the last sample. The cost is then bounded per second,
        not per hit: a busy cache counts about 100 batches a second (some 3 ms of CPU)
        however many hits it serves.

        A writer drains the buffer with whatever it holds, often a key or two; a sample
        of one key standing for hundreds of hits would make any key look hot. So the
        keys of short batches are kept (the last ``SAMPLE`` of them), and a sample is
        always taken from at least that many hits."""
        size = len(batch)
        self._pending += size
        if size < _SAMPLE:
            recent = self._recent
            recent += batch
            if len(recent) > 2 * _SAMPLE:
                del recent[:-_SAMPLE]
        if self._pending < self._due:
            return
        now = self.clock()
        if now - self._sampled_at < self.interval:
            self._due = self._pending + self.every  # the clock again in ``every`` hits
            return
        self._sampled_at = now
        taken = batch if size >= _SAMPLE else self._recent[-_SAMPLE:]
        sample = taken[:: self.step]
        if sample:
            self.observe(sample, self._pending / len(sample))
            self._pending = 0
            self._due = self.every

    def observe(self, keys: Iterable[object], scale: float = 1.0) -> None:
        """Count ``keys`` as requests, each standing for ``scale`` requests."""
        with self._lock:
            weight = self._weight(self.clock()) * scale
            counts, errors = self._counts, self._errors
            floor = self._floor
            for key in keys:
                count = counts.get(key)  # type: ignore[call-overload]
                if count is not None:
                    counts[key] = count + weight  # type: ignore[index]
                elif type(key) is str:
                    counts[key] = floor + weight
                    errors[key] = floor
            if len(counts) > self._limit:
                self._trim()

    def observe_one(self, key: str) -> None:
        """Count one request (a miss: misses are not sampled)."""
        self.observe((key,))

    def _trim(self) -> None:
        counts = self._counts
        kept = heapq.nlargest(self.capacity, counts.items(), key=lambda item: item[1])
        kept_keys = {key for key, _ in kept}
        dropped = max(count for key, count in counts.items() if key not in kept_keys)
        self._floor = max(self._floor, dropped)
        self._counts = dict(kept)
        self._errors = {key: self._errors[key] for key in kept_keys}

    # ------------------------------------------------------------------ reading

    def _to_rate(self, count: float, now: float) -> float:
        decay: float = 2.0 ** (-(now - self._base) / self.half_life)
        # The decayed weight a steady one request per second adds up to: half_life / ln 2
        # in the long run, less while the counter is younger than a few half-lives.
        window = (1.0 - 2.0 ** (-(now - self._started) / self.half_life)) * self.half_life / _LN2
        return count * decay / window if window > 0 else 0.0

    def rate(self, key: str) -> float:
        """The estimated recent request rate of ``key`` (requests/second; a lower bound,
        0.0 for a key not tracked)."""
        with self._lock:
            count = self._counts.get(key)
            if count is None:
                return 0.0
            return self._to_rate(count - self._errors[key], self.clock())

    def top(self, n: int = 10) -> list[HotKey]:
        """The ``n`` keys with the highest estimated rate, hottest first."""
        if n <= 0:
            return []
        with self._lock:
            now = self.clock()
            errors = self._errors
            best = heapq.nlargest(
                n, self._counts.items(), key=lambda item: item[1] - errors[item[0]]
            )
            return [
                HotKey(
                    key, self._to_rate(count - errors[key], now), self._to_rate(errors[key], now)
                )
                for key, count in best
                if count - errors[key] > 0
            ]

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._errors.clear()
            self._floor = 0.0
            self._base = self._started = self.clock()

    def __len__(self) -> int:
        return len(self._counts)

    def __repr__(self) -> str:
        return (
            f"<HotKeys capacity={self.capacity} half_life={self.half_life} "
            f"tracked={len(self._counts)}>"
        )

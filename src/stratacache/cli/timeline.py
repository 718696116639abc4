"""The demo's run over time: per-level hit rate and latency, interval by interval.

A :class:`Timeline` takes a snapshot of the cache's counters every ``total / points``
requests and turns consecutive snapshots into intervals: the hit rate of each level in
that interval (hits / lookups made in it) and the mean latency of each level and of the
origin (time recorded / calls made in it). Cumulative figures would flatten the warm-up
into the rest of the run; the intervals show L1 and L2 filling, then settling.

``plot(path)`` draws the intervals to a PNG with matplotlib (the ``[sim]`` extra),
imported only then: the demo without ``--plot`` does not need it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hierarchy.sync import Cache
from ..metrics import LatencyHistogram

__all__ = ["Interval", "Snapshot", "Timeline", "require_matplotlib"]

_INSTALL = "pip install 'stratacache[sim]'"


def require_matplotlib() -> None:
    """Fail with what to install when matplotlib is missing: checked before a run, not
    after it when the plot is due."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(f"--plot needs matplotlib: {_INSTALL}") from None


@dataclass(frozen=True)
class Snapshot:
    """The cumulative counters after ``requests`` requests, ``seconds`` into the run.
    Per level, top first; ``calls``/``busy_ns`` have one more entry, the origin's."""

    requests: int
    seconds: float
    hits: tuple[int, ...]
    lookups: tuple[int, ...]
    calls: tuple[int, ...]
    busy_ns: tuple[int, ...]


@dataclass(frozen=True)
class Interval:
    """What happened between two snapshots: per level the hit rate (None: no lookups)
    and per level then the origin the mean latency in µs (None: no calls)."""

    requests: int  # done at the end of the interval
    seconds: float
    hit_rates: tuple[float | None, ...]
    mean_us: tuple[float | None, ...]


def _per_interval(
    parts0: Sequence[int],
    parts1: Sequence[int],
    wholes0: Sequence[int],
    wholes1: Sequence[int],
    scale: float = 1.0,
) -> tuple[float | None, ...]:
    """Per entry, (part gained / whole gained) * scale between two snapshots; None where
    the whole did not grow (nothing happened at that level in the interval)."""
    return tuple(
        (p1 - p0) / (w1 - w0) * scale if w1 > w0 else None
        for p0, p1, w0, w1 in zip(parts0, parts1, wholes0, wholes1, strict=True)
    )


class Timeline:
    """Snapshots of a cache over a run of ``total`` requests, about ``points`` of them
    (one at the start, then every ``ceil(total / points)`` requests and at the end).

    ``on_sample(requests_done)`` runs after each snapshot: a hook to look at the cache
    from outside at known points of the run (the tests scrape ``/metrics`` there)."""

    def __init__(
        self,
        total: int,
        points: int = 100,
        *,
        on_sample: Callable[[int], None] | None = None,
    ) -> None:
        if total < 1 or points < 1:
            raise ValueError(f"total and points must be >= 1, got {total!r}, {points!r}")
        self.total = total
        self.every = max(1, math.ceil(total / points))
        self.on_sample = on_sample
        self.names: list[str] = []
        self.snapshots: list[Snapshot] = []
        self._started = 0.0

    def start(self, cache: Cache) -> None:
        """The first snapshot (statistics just reset); time counts from here."""
        self.names = [level.name for level in cache.levels]
        self.snapshots = []
        self._started = time.perf_counter()
        self._record(cache, 0)

    def after(self, cache: Cache, done: int) -> None:
        """Called after each request (``done`` so far): snapshots when one is due."""
        if done % self.every == 0 or done == self.total:
            self._record(cache, done)

    def _record(self, cache: Cache, done: int) -> None:
        if self.snapshots and self.snapshots[-1].requests == done:
            return
        stats = cache.stats()
        # stats() has each level's and the origin's mean since the start only; the
        # histograms' count and total give the time spent in each interval.
        histograms: list[LatencyHistogram] = [tier.stats.latency for tier in cache.levels]
        histograms.append(cache._hierarchy.origin_stats.latency)
        self.snapshots.append(
            Snapshot(
                requests=done,
                seconds=time.perf_counter() - self._started,
                hits=tuple(level.hits for level in stats.levels),
                lookups=tuple(level.lookups for level in stats.levels),
                calls=tuple(h.count for h in histograms),
                busy_ns=tuple(h.total_ns for h in histograms),
            )
        )
        if self.on_sample is not None:
            self.on_sample(done)

    def intervals(self) -> list[Interval]:
        """One per pair of consecutive snapshots."""
        return [
            Interval(
                requests=after.requests,
                seconds=after.seconds,
                hit_rates=_per_interval(before.hits, after.hits, before.lookups, after.lookups),
                mean_us=_per_interval(
                    before.busy_ns, after.busy_ns, before.calls, after.calls, scale=1e-3
                ),
            )
            for before, after in itertools.pairwise(self.snapshots)
        ]

    def as_json(self) -> list[dict[str, Any]]:
        """The intervals for the JSON report: a few numbers per level, rounded."""

        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return [
            {
                "requests": interval.requests,
                "seconds": round(interval.seconds, 3),
                "levels": [
                    {"name": name, "hit_rate": rounded(rate, 4), "mean_us": rounded(us, 2)}
                    for name, rate, us in zip(
                        self.names, interval.hit_rates, interval.mean_us, strict=False
                    )
                ],
                "origin_mean_us": rounded(interval.mean_us[-1], 2),
            }
            for interval in self.intervals()
        ]

    def plot(self, path: Path, title: str = "stratacache demo") -> None:
        """Two panels over the requests done: hit rate per level, and latency per level
        and of the origin (µs, log scale: an L1 hit and an origin query are 1,000x apart)."""
        intervals = self.intervals()
        if not intervals:
            raise ValueError("nothing to plot: the timeline has fewer than two snapshots")
        import matplotlib

        # Agg renders to files without a display: servers, CI, a terminal over ssh.
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [interval.requests for interval in intervals]
        fig, (rates, latency) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
        for index, name in enumerate(self.names):
            rates.plot(xs, _gaps([i.hit_rates[index] for i in intervals]), label=name)
        for index, name in enumerate([*self.names, "origin"]):
            latency.plot(xs, _gaps([i.mean_us[index] for i in intervals]), label=name)
        rates.set_title(f"{title}: per level, every {self.every:,} requests")
        rates.set_ylabel("hit rate")
        rates.set_ylim(0, 1)
        latency.set_ylabel("mean latency (µs)")
        latency.set_yscale("log")
        latency.set_xlabel("requests")
        for ax in (rates, latency):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _gaps(values: Sequence[float | None]) -> list[float]:
    """None (nothing measured in an interval) as NaN: matplotlib leaves a gap there."""
    return [math.nan if value is None else value for value in values]

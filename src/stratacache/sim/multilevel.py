"""Replay a trace through a hierarchy of cache levels in front of an origin.

The hierarchy is inclusive, like the real ``Cache``: a request looks in L1, then L2, and
so on; a hit at level n is copied up into every level above it, and a miss everywhere is
loaded from the origin and fills every level. In policy terms, every level that was looked
up and missed receives an insert for the key, and the level that hit receives a hit. So
level n+1 sees exactly the stream of level n's misses, in order, and each level is a plain
``policy.access`` replay of the stream below the one above it. The simulator uses that to
replay one level at a time over large slices, with the loop in C, instead of walking the
levels request by request; the counts are identical because levels share no state.

What a team sizing a hierarchy wants to know, and how it is counted:

* per level: lookups (requests that reached it), hits, the local hit ratio
  ``hits / lookups``, and the share of all requests it served ``hits / requests``;
* the origin's load: requests that missed everywhere, and their share of all requests;
* the average response time from measured local miss ratios ``m_i`` and latencies
  ``T_i``:  ``AMAT = T1 + m1 (T2 + m2 (... + mn T_origin))``;
* the origin's cost: origin requests times a price per origin query.

OPT is allowed only as the first level: it needs the exact sequence of requests its level
will see, and only L1 sees the trace unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import not_

from ..errors import ConfigurationError
from ..metrics import amat
from .engine import OPT, Progress, SizeSpec, build_policy, check_policies, footprint, weights_of
from .engine import parse_size as _parse_size
from .traces import Trace, TraceKey

__all__ = [
    "HierarchyResult",
    "LevelResult",
    "LevelSpec",
    "amat",
    "format_duration",
    "parse_duration",
    "parse_levels",
    "simulate_hierarchy",
]

_SLICE = 1 << 16

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+)\s*([a-zµμ]+)\s*$", re.I)


def parse_duration(text: str) -> float:
    """Seconds from ``5ms``, ``300us``, ``0.0005ms``, ``50ns`` or ``1s`` (a unit is required,
    since a bare number is ambiguous across levels that span six orders of magnitude)."""
    match = _DURATION_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _TIME_UNITS:
        raise ConfigurationError(
            f"bad latency {text!r}; accepted: a number with a unit, one of "
            f"{', '.join(u for u in _TIME_UNITS if u not in ('µs', 'μs'))} (e.g. 0.3ms, 50us)"
        )
    return float(match.group(1)) * _TIME_UNITS[unit]


def format_duration(seconds: float) -> str:
    """A latency in the unit that keeps it readable."""
    if seconds == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.4g}{unit}"
    return f"{seconds / 1e-9:.4g}ns"


@dataclass(frozen=True, slots=True)
class LevelSpec:
    """One level as configured: its name, size, policy and lookup latency in seconds."""

    name: str
    size: SizeSpec
    policy: str
    latency: float


def parse_levels(text: str) -> list[LevelSpec]:
    """Parse ``NAME:SIZE:POLICY:LATENCY`` items separated by commas, top level first,
    e.g. ``L1:1000:wtinylfu:0.0005ms,L2:100000:lru:0.3ms``. SIZE takes the same forms as
    ``--size`` (``10%`` of the unique keys included)."""
    levels: list[LevelSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fields = [field.strip() for field in item.split(":")]
        if len(fields) != 4 or not all(fields):
            raise ConfigurationError(
                f"bad level {item!r}; each level is NAME:SIZE:POLICY:LATENCY, "
                f"e.g. L1:1000:lru:0.0005ms, levels separated by commas, top level first"
            )
        name, size, policy, latency = fields
        if any(level.name == name for level in levels):
            raise ConfigurationError(f"level name {name!r} is used twice in {text!r}")
        (policy,) = check_policies([policy])
        if policy == OPT and levels:
            raise ConfigurationError(
                f"level {name!r}: opt can only be the first level (it needs the exact "
                f"request sequence, which only the first level sees)"
            )
        levels.append(LevelSpec(name, _parse_size(size), policy, parse_duration(latency)))
    if not levels:
        raise ConfigurationError("no cache level given; e.g. L1:1000:lru:0.001ms")
    return levels


@dataclass(frozen=True, slots=True)
class LevelResult:
    """What one level did during a replay."""

    name: str
    policy: str
    size: int
    latency: float
    lookups: int
    hits: int
    bytes_looked_up: int | None = None
    bytes_hit: int | None = None

    @property
    def misses(self) -> int:
        return self.lookups - self.hits

    @property
    def hit_ratio(self) -> float:
        """Local hit ratio: hits over the lookups that reached this level."""
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def miss_ratio(self) -> float:
        return 1.0 - self.hit_ratio if self.lookups else 0.0


@dataclass(frozen=True, slots=True)
class HierarchyResult:
    """One trace replayed through a whole hierarchy."""

    trace: str
    requests: int
    levels: tuple[LevelResult, ...]
    origin_latency: float
    origin_price: float = 0.0
    bytes_requested: int | None = None

    @property
    def origin_requests(self) -> int:
        """Requests that missed in every level and were loaded from the origin."""
        return self.levels[-1].misses if self.levels else self.requests

    @property
    def origin_share(self) -> float:
        return self.origin_requests / self.requests if self.requests else 0.0

    @property
    def origin_bytes(self) -> int | None:
        last = self.levels[-1] if self.levels else None
        if last is None or last.bytes_looked_up is None or last.bytes_hit is None:
            return self.bytes_requested
        return last.bytes_looked_up - last.bytes_hit

    @property
    def origin_cost(self) -> float:
        return self.origin_requests * self.origin_price

    @property
    def hit_ratio(self) -> float:
        """Share of requests answered by some level."""
        return 1.0 - self.origin_share if self.requests else 0.0

    def served_share(self, level: LevelResult) -> float:
        """Share of all requests answered by ``level``."""
        return level.hits / self.requests if self.requests else 0.0

    @property
    def amat(self) -> float:
        """Average response time in seconds, from the measured local miss ratios."""
        return amat(
            [level.latency for level in self.levels],
            [level.miss_ratio for level in self.levels],
            self.origin_latency,
        )


def simulate_hierarchy(
    trace: Trace,
    levels: Sequence[LevelSpec],
    *,
    origin_latency: float,
    origin_price: float = 0.0,
    progress: Progress | None = None,
) -> HierarchyResult:
    """Replay ``trace`` through ``levels`` (top first) in front of an origin."""
    if not levels:
        raise ConfigurationError("a hierarchy needs at least one level")
    if origin_latency < 0 or origin_price < 0 or math.isnan(origin_latency + origin_price):
        raise ConfigurationError("origin latency and price must be >= 0")
    base = footprint(trace) if any(level.size.percent for level in levels) else 0
    capacities = [level.size.resolve(base) for level in levels]
    policies = [
        build_policy(level.policy, capacity, trace)
        for level, capacity in zip(levels, capacities, strict=True)
    ]
    accessors = [policy.access for policy in policies]
    depth = len(levels)
    lookups = [0] * depth
    hits = [0] * depth
    weights = weights_of(trace)
    bytes_looked_up = [0] * depth
    bytes_hit = [0] * depth
    keys = trace.keys
    label = f"{trace.name} " + "/".join(level.name for level in levels)

    for start in range(0, len(keys), _SLICE):
        stream: list[TraceKey] = keys[start : start + _SLICE]
        stream_weights = weights[start : start + _SLICE] if weights is not None else None
        size = len(stream)
        for index, access in enumerate(accessors):
            if not stream:
                break
            lookups[index] += len(stream)
            if stream_weights is None:
                flags = list(map(access, stream))
            else:
                flags = list(map(access, stream, stream_weights))
                bytes_looked_up[index] += sum(stream_weights)
                bytes_hit[index] += sum(compress(stream_weights, flags))
                stream_weights = list(compress(stream_weights, map(not_, flags)))
            hits[index] += sum(flags)
            # The next level sees this level's misses, in order.
            stream = list(compress(stream, map(not_, flags)))
        if progress is not None:
            progress(size, label)

    with_bytes = weights is not None
    results = tuple(
        LevelResult(
            level.name,
            level.policy,
            capacity,
            level.latency,
            lookups[index],
            hits[index],
            bytes_looked_up[index] if with_bytes else None,
            bytes_hit[index] if with_bytes else None,
        )
        for index, (level, capacity) in enumerate(zip(levels, capacities, strict=True))
    )
    return HierarchyResult(
        trace.name,
        len(keys),
        results,
        origin_latency,
        origin_price,
        sum(weights) if weights is not None else None,
    )

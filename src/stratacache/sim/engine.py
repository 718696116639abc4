"""Replay traces through eviction policies and count misses.

Every request counts (there is no warm-up period): a cache starts empty and its cold
misses are part of the miss ratio, as in libCacheSim and the published tables we compare
against. Each request is one ``policy.access(key, weight)``; the same policy objects drive
the in-process L1, so the miss ratio measured here is the one L1 gets online.

The replay loop is ``sum(map(policy.access, keys))`` over large slices of the trace: the
iteration and the call dispatch stay in C, so the cost per request is little more than
the policy's own work. Slicing also gives a natural point to report progress.

Cache sizes are absolute (``1000``, ``64k``, ``1MiB``) or a percentage of the trace's
footprint (``10%``, ``0.1%``): the number of distinct keys, or with object sizes the
total bytes of the distinct keys. A percentage rounds half up and never goes below 1.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from ..errors import ConfigurationError
from ..policies import DEFAULT_POLICY, POLICIES, Policy, make_policy
from .traces import Trace

__all__ = [
    "OPT",
    "Progress",
    "ReplayResult",
    "SizeSpec",
    "available_policies",
    "build_policy",
    "check_policies",
    "footprint",
    "parse_size",
    "parse_sizes",
    "replay",
    "run_matrix",
    "weights_of",
]

OPT = "opt"

# Called with the number of requests replayed since the last call and a label for the
# run in progress ("OLTP lru@1869").
Progress = Callable[[int, str], None]

# Requests per slice: big enough that the per-slice Python work is noise, small enough
# that a progress bar moves several times a second.
_SLICE = 1 << 16

_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt]i?)?\s*b?\s*$", re.IGNORECASE)


# -- sizes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeSpec:
    """A cache size as the user wrote it: absolute, or a percentage of the footprint."""

    text: str
    value: float
    percent: bool

    def resolve(self, footprint: int) -> int:
        """The capacity in weight units for a trace whose footprint is ``footprint``."""
        if not self.percent:
            return int(self.value)
        return max(1, math.floor(footprint * self.value / 100 + 0.5))


def parse_size(text: str) -> SizeSpec:
    """Parse ``1000``, ``64k``, ``1.5M``, ``256MiB`` or ``10%`` / ``0.1%``."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigurationError(
            f"bad cache size {text!r}; accepted: a positive count (1000, 64k, 2M), bytes "
            f"(512KiB, 1GiB) or a percentage of the trace's unique keys (10%, 0.1%)"
        )
    number, unit = match.group(1), (match.group(2) or "").lower()
    value = float(number)
    if unit == "%":
        if not 0 < value <= 100:
            raise ConfigurationError(f"bad cache size {text!r}: a percentage must be in (0, 100]")
        return SizeSpec(text.strip(), value, True)
    scaled = value * _UNITS[unit]
    if scaled < 1 or scaled != int(scaled):
        raise ConfigurationError(
            f"bad cache size {text!r}: an absolute size must be a whole number >= 1"
        )
    return SizeSpec(text.strip(), float(int(scaled)), False)


def parse_sizes(texts: str | Iterable[str]) -> list[SizeSpec]:
    """Parse comma-separated sizes (``"100,1%,10%"``), from one string or several."""
    if isinstance(texts, str):
        texts = [texts]
    specs = [parse_size(part) for text in texts for part in text.split(",") if part.strip()]
    if not specs:
        raise ConfigurationError("no cache size given; e.g. 1000 or 1%,10%")
    return specs


def footprint(trace: Trace) -> int:
    """What a percentage size is a percentage of: unique keys, or their bytes."""
    return trace.unique_bytes() if trace.sizes is not None else trace.unique_keys()


# -- policies -------------------------------------------------------------------------


def _opt_class() -> Any:
    # Imported by name: OPT is optional (it lives beside the online policies but is not in
    # their registry), so a build without it still simulates everything else.
    try:
        module = importlib.import_module("stratacache.policies.opt")
    except ImportError:
        return None
    return getattr(module, "OPTPolicy", None)


def available_policies() -> list[str]:
    """Every policy name the simulator accepts: the registry's, plus ``opt`` if built."""
    names = sorted(POLICIES)
    if _opt_class() is not None:
        names.append(OPT)
    return names


def check_policies(names: Iterable[str]) -> list[str]:
    """Normalise policy names, rejecting unknown ones with the accepted list."""
    accepted = available_policies()
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in accepted:
            raise ConfigurationError(
                f"unknown policy {raw.strip()!r}; accepted: {', '.join(accepted)}"
            )
        if name not in out:
            out.append(name)
    return out or [DEFAULT_POLICY]


def build_policy(name: str, capacity: int, trace: Trace) -> Policy:
    """A fresh policy; OPT is built from this trace since it needs every future request."""
    if name == OPT:
        opt = _opt_class()
        if opt is None:
            raise ConfigurationError("the opt policy is not available in this build")
        policy: Policy = opt(capacity, trace.keys)
        return policy
    return make_policy(name, capacity)


# -- replay ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """One trace replayed through one policy at one size."""

    trace: str
    policy: str
    size: int
    requests: int
    misses: int
    size_text: str = ""
    bytes_requested: int | None = None
    bytes_missed: int | None = None

    @property
    def hits(self) -> int:
        return self.requests - self.misses

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.requests if self.requests else 0.0

    @property
    def hit_ratio(self) -> float:
        return 1.0 - self.miss_ratio if self.requests else 0.0

    @property
    def byte_miss_ratio(self) -> float | None:
        if self.bytes_requested is None or self.bytes_missed is None:
            return None
        return self.bytes_missed / self.bytes_requested if self.bytes_requested else 0.0


def weights_of(trace: Trace) -> list[int] | None:
    """Per-request weights for a trace read by bytes.

    A zero-byte object would weigh nothing and could never be evicted, so it is counted
    as one byte.
    """
    sizes = trace.sizes
    if sizes is None:
        return None
    if sizes and min(sizes) < 1:
        return [size if size > 0 else 1 for size in sizes]
    return sizes


def replay(
    trace: Trace,
    policy: Policy,
    *,
    policy_name: str | None = None,
    size_text: str = "",
    progress: Progress | None = None,
) -> ReplayResult:
    """Feed every request of ``trace`` to ``policy`` and count the misses.

    With object sizes (``trace.sizes``) each request weighs its size and the byte miss
    ratio is counted too.
    """
    name = policy_name or str(getattr(policy, "name", type(policy).__name__))
    label = f"{trace.name} {name}@{policy.capacity}"
    access = policy.access
    keys = trace.keys
    total = len(keys)
    weights = weights_of(trace)
    hits = 0
    if weights is None:
        for start in range(0, total, _SLICE):
            hits += sum(map(access, keys[start : start + _SLICE]))
            if progress is not None:
                progress(min(_SLICE, total - start), label)
        return ReplayResult(trace.name, name, policy.capacity, total, total - hits, size_text)

    byte_hits = 0
    for start in range(0, total, _SLICE):
        chunk_weights = weights[start : start + _SLICE]
        flags = list(map(access, keys[start : start + _SLICE], chunk_weights))
        hits += sum(flags)
        byte_hits += sum(compress(chunk_weights, flags))
        if progress is not None:
            progress(len(flags), label)
    requested = sum(weights)
    return ReplayResult(
        trace.name,
        name,
        policy.capacity,
        total,
        total - hits,
        size_text,
        bytes_requested=requested,
        bytes_missed=requested - byte_hits,
    )


def run_matrix(
    traces: Iterable[Trace],
    sizes: Sequence[SizeSpec],
    policies: Sequence[str],
    *,
    progress: Progress | None = None,
) -> list[ReplayResult]:
    """Replay every trace at every size through every policy, in that nesting order.

    A fresh policy is built for each run, so runs never share state.
    """
    names = check_policies(policies)
    results: list[ReplayResult] = []
    for trace in traces:
        base = footprint(trace) if any(spec.percent for spec in sizes) else 0
        for spec in sizes:
            capacity = spec.resolve(base)
            for name in names:
                policy = build_policy(name, capacity, trace)
                results.append(
                    replay(trace, policy, policy_name=name, size_text=spec.text, progress=progress)
                )
    return results

"""The trace-driven simulator: the same policy objects as L1, replayed offline.

``traces`` reads request traces, ``engine`` replays them through one policy at a time,
``multilevel`` through a hierarchy of levels in front of an origin, and ``report`` turns
the results into tables, CSV and plots (the ``stratacache simulate`` command uses all four).
"""

from __future__ import annotations

from .engine import ReplayResult, SizeSpec, parse_size, parse_sizes, replay, run_matrix
from .multilevel import HierarchyResult, LevelSpec, parse_levels, simulate_hierarchy
from .traces import Trace, TraceError, iter_chunks, iter_trace, read_trace

__all__ = [
    "HierarchyResult",
    "LevelSpec",
    "ReplayResult",
    "SizeSpec",
    "Trace",
    "TraceError",
    "iter_chunks",
    "iter_trace",
    "parse_levels",
    "parse_size",
    "parse_sizes",
    "read_trace",
    "replay",
    "run_matrix",
    "simulate_hierarchy",
]

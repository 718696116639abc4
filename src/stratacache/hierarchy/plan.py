"""What a read carries down to its load: the plan of :class:`_Load`, and the fail-safe's
answer for a load that outlived its wait (:class:`_Stale`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .claims import Lease
from .safety import Safety

__all__ = ["NO_SAFETY", "Loader", "_Load", "_Stale"]

Loader = Callable[[list[str]], Any]

NO_SAFETY = Safety()


@dataclass(frozen=True, slots=True)
class _Load:
    """How a read loads what no level has: from ``loader`` (None: the registered
    loaders, else the origin), filling with ``ttl``, fenced from ``epoch``; ``since``: the
    single flight's ``settled`` when the read began (loads landed after it may have
    filled the levels); ``top_missed``: the top level was looked at before that, by the
    caller's L1 fast path."""

    loader: Loader | None
    ttl: float | None
    epoch: int
    since: int
    top_missed: bool = False
    safety: Safety = NO_SAFETY
    #: keys answered with a stale value (the fail-safe), and keys whose load was left
    #: running in the background (it settles their flights when it lands)
    stale: set[str] = field(default_factory=set)
    detached: set[str] = field(default_factory=set)
    #: the leases this read took on the shared level for the keys it loads
    leases: list[Lease] = field(default_factory=list)
    #: the versions the origin gave the rows it loaded (see origin.Versioned)
    origin_versions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Stale:
    """What a load that outlived its wait answers with: the fail-safe's stale values."""

    values: Mapping[str, Any]

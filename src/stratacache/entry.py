"""The unit every level stores: a value with its logical expiry.

``expires_at`` is wall-clock time (seconds since the epoch) so that processes on different
hosts agree on it; the in-process tier converts it to its own monotonic clock on the way
in. A server-side TTL is only a backstop: every read checks ``expires_at`` against the
injected clock.

``negative`` marks a remembered "not found": the origin had no row for the key, and the
hierarchy may answer that without asking again until the entry expires.

``version`` orders the writes of one key across processes (0: unknown, older than any
numbered write); a shared level never replaces an entry with one of a lower version (see
:mod:`stratacache.coherence`). ``tags`` name groups the entry belongs to, and
``written_at`` is the wall-clock time its value was read from the source of truth: an
entry written before one of its tags was invalidated reads as expired.
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

__all__ = ["MISSING", "NEVER", "Entry", "MissingType"]

NEVER: Final = math.inf  # an expiry that never comes


class Entry(NamedTuple):
    # A named tuple rather than a frozen dataclass: every read of a shared level makes one
    # per key, and a tuple is built in about half the time.
    value: Any
    expires_at: float = NEVER
    negative: bool = False
    version: int = 0
    tags: tuple[str, ...] = ()
    written_at: float = 0.0

    def remaining(self, now: float) -> float:
        """Seconds left at wall-clock time ``now`` (may be negative; ``inf`` for no expiry)."""
        return self.expires_at - now


class MissingType:
    """The type of :data:`MISSING`: the result of a read that found nothing.

    A sentinel rather than ``None`` so that ``None`` is a value like any other.
    """

    _instance: MissingType | None = None

    def __new__(cls) -> MissingType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = MissingType()

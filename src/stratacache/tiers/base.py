"""The tier protocol: what the hierarchy needs from one storage level.

A tier stores :class:`~stratacache.entry.Entry` objects under ``str`` keys within its own
namespace. Reads return only live entries (the tier checks ``expires_at`` against its
injected clock); a corrupt or foreign payload is a miss that the tier counts in
``stats.corrupt`` and logs. When its server cannot be reached a tier raises
:class:`~stratacache.errors.TierUnavailableError`, which the hierarchy treats as
"skip this level".

Writes happen in two steps so that a value too large for every level is refused before
anything is written anywhere: ``prepare`` encodes and measures (no I/O) and reports the
keys this tier will not take; ``write`` stores what was prepared.

Each tier has a sync face and an async face. In-process tiers (``local = True``) are never
awaited: the async hierarchy calls their sync methods directly. Tiers that block on
files or sockets provide coroutine versions; the defaults here run the sync method in a
worker thread, which is right for a local file and should be overridden by network tiers
that have a native async client.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..entry import Entry
from ..metrics import LevelStats

__all__ = ["Prepared", "Tier", "logger"]

logger = logging.getLogger("stratacache")


@dataclass
class Prepared:
    """Entries made ready for one tier's ``write``. ``items`` is tier-specific (envelopes
    for shared tiers, weighed entries for memory); ``rejected`` maps each key this tier
    will not store to its size in bytes."""

    items: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)


class Tier(ABC):
    kind: ClassVar[str] = "?"
    #: True for in-process tiers: the async hierarchy calls them without awaiting.
    local: ClassVar[bool] = False

    def __init__(self, *, name: str | None = None, ttl: float | None = None) -> None:
        from ..errors import ConfigurationError

        if ttl is not None and not ttl > 0:
            raise ConfigurationError(
                f"{type(self).__name__}: ttl must be > 0 seconds or None, got {ttl!r}"
            )
        self.name = name or self.kind
        self.ttl = ttl
        self.stats = LevelStats(self.name, self.kind)
        self.closed = False

    def rename(self, name: str) -> None:
        """Set the display name (the hierarchy calls its levels L1, L2, ... by default)."""
        self.name = name
        self.stats.name = name

    # -- sync face

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Live entries for the keys that are present; absent keys are left out."""

    @abstractmethod
    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        """Encode and measure, without I/O. May raise SerializationError."""

    @abstractmethod
    def write(self, prepared: Prepared) -> None:
        """Store what ``prepare`` produced (rejected keys are not written and are deleted,
        so an older value cannot outlive the refused newer one)."""

    @abstractmethod
    def delete_many(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry of this tier's namespace (never anything else on the server)."""

    def close(self) -> None:
        self.closed = True

    def size_limit(self) -> int | None:
        """The largest value this tier stores, in the unit ``prepare`` reports for rejected
        keys (bytes), or None when it has no per-value limit. Used in error messages."""
        limit = getattr(self, "max_value_size", None)
        return limit if isinstance(limit, int) else None

    def set_many(self, entries: Mapping[str, Entry]) -> dict[str, int]:
        """``prepare`` then ``write``; returns the rejected keys with their sizes."""
        prepared = self.prepare(entries)
        self.write(prepared)
        return prepared.rejected

    # -- async face (defaults: the sync method in a worker thread)

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return await asyncio.to_thread(self.get_many, keys)

    async def awrite(self, prepared: Prepared) -> None:
        await asyncio.to_thread(self.write, prepared)

    async def adelete_many(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_many, keys)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aclose(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ttl={self.ttl}>"

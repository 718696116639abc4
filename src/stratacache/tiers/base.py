"""The tier protocol: what the hierarchy needs from one storage level, and the two ways a
tier gets its sync and async faces.

A tier stores :class:`~stratacache.entry.Entry` objects under ``str`` keys within its own
namespace. Reads return only live entries (the tier checks ``expires_at`` against its
injected clock); a corrupt or foreign payload is a miss that the tier counts in
``stats.corrupt`` and logs. When its server cannot be reached a tier raises
:class:`~stratacache.errors.TierUnavailableError`, which the hierarchy treats as
"skip this level".

Writes happen in two steps so that a value too large for every level is refused before
anything is written anywhere: ``prepare`` encodes and measures (no I/O) and reports the
keys this tier will not take; ``write`` stores what was prepared.

Sync and async, one way each:

* :class:`LocalTier`: in-process, no I/O. Its async face is its sync face; the async
  hierarchy calls it inline and never awaits it.
* :class:`CommandTier`: a tier over a store. Each operation is written once, as a
  generator that yields *commands* (what to send to the store) and receives their
  results, free of I/O, the way the hierarchy's flows are. The tier's transport runs a
  command synchronously (:meth:`CommandTier.perform`) or natively async
  (:meth:`CommandTier.aperform`); the two drivers of :mod:`stratacache.steps` turn every
  operation into both faces. A failure of the transport is thrown into the generator, so
  an operation that spans several servers can carry on without the one that failed.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar

from ..config import TierOptions
from ..entry import Entry
from ..errors import CacheError, ConfigurationError, TierUnavailableError
from ..events import CacheEvent, Listeners
from ..logs import Throttle
from ..metrics import LevelStats
from ..steps import adrive, drive
from .breaker import CircuitBreaker
from .permits import Permits

__all__ = [
    "DOWN",
    "RECOVERED",
    "CommandTier",
    "LocalTier",
    "Prepared",
    "Sizing",
    "Steps",
    "Tier",
    "Weigher",
    "logger",
]

logger = logging.getLogger("stratacache")

#: The warning subjects of a level's health (see :class:`~stratacache.logs.Throttle`):
#: every "this level is down" line of a tier (a skipped call, a breaker opening, a server
#: marked down) shares one, so an outage writes one line per interval whatever its shape.
DOWN = "down"
RECOVERED = "recovered"

T = TypeVar("T")
#: An operation of a command tier: yields commands, receives their results, returns T.
Steps = Generator[Any, Any, T]


@dataclass
class Prepared:
    """Entries made ready for one tier's ``write``. ``items`` is tier-specific (envelopes
    for shared tiers, weighed entries for memory); ``rejected`` maps each key this tier
    will not store (and so deletes) to its size in bytes, or to ``DROPPED`` when the key
    is deleted for another reason than its size."""

    items: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    #: the version of each item's entry (shared tiers: the store compares them)
    versions: dict[str, int] = field(default_factory=dict)
    #: WRITE replaces an entry of the same or an older version (a ``set``); FILL stores
    #: only where no newer entry is and no write holds the key (a load, a promotion)
    mode: str = "write"
    #: the lease (FILL) or write lock (WRITE) this write settles, on the level that gave it
    token: str | None = None


WRITE: Final = "write"
FILL: Final = "fill"

#: the size ``Prepared.rejected`` gives a key that is deleted for another reason than its
#: size (the origin's answer to a write left it out): not counted as too large
DROPPED: Final = 0

Weigher = Callable[[str, Any], int]


@dataclass(frozen=True, slots=True)
class Sizing:
    """How an in-process level weighs values: one rule for the flow's writes and the
    L1 fast path's alike. ``weighted``: weights count against the level's bound
    (``max_bytes``); ``max_weight``: the heaviest single value it accepts."""

    weigher: Weigher
    weighted: bool
    max_weight: int | None
    #: bytes charged to every entry beyond its weight: the eviction policy's bookkeeping
    overhead: int = 0

    def weigh(self, key: str, value: Any) -> int:
        return max(1, int(self.weigher(key, value)))

    def fits(self, weight: int) -> bool:
        return self.max_weight is None or weight <= self.max_weight

    def charge(self, weight: int) -> int:
        """What the entry counts against the level's bound."""
        return weight + self.overhead if self.weighted else 1


class Tier(ABC):
    kind: ClassVar[str] = "?"
    #: True for in-process tiers: the async hierarchy calls them without awaiting.
    local: ClassVar[bool] = False
    #: how values are weighed and bounded here (None: each entry weighs 1, any size fits)
    sizing: Sizing | None = None
    #: the dataclass of this kind's options (the constructor's keywords, the URL's query)
    Options: ClassVar[type[TierOptions]]
    #: how long an entry stays readable through ``get_stale_many`` after it expires, in
    #: seconds: the hierarchy sets it to ``fail_safe_max_age``, so that a value can be
    #: served when its reload fails. 0: an expired entry is gone.
    stale_for: float = 0.0
    #: the cache's event listeners (set by the cache): told of breaker transitions, and
    #: by an in-process tier of evictions and expiries
    events: Listeners | None = None

    def __init__(self, *, name: str | None = None, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ConfigurationError(
                f"{type(self).__name__}: ttl must be > 0 seconds or None, got {ttl!r}"
            )
        self.name = name or self.kind
        self.ttl = ttl
        self.stats = LevelStats(self.name, self.kind)
        #: this tier's warnings, at most one line per subject per interval: a sick store
        #: fails every call that reaches it, and a line per call would flood the log
        self.warnings = Throttle(logger)
        self.closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        options: dict[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> Tier:
        """The tier a URL names (options already parsed from its query, see
        :func:`stratacache.config.tier_from_url`). Every tier takes the injected clocks:
        ``clock`` (monotonic, for intervals) and ``wall_clock`` (for expiries)."""
        arguments = cls.url_arguments(url)
        return cls(*arguments, clock=clock, wall_clock=wall_clock, **options)  # type: ignore[call-arg]

    @classmethod
    def url_arguments(cls, url: str) -> tuple[Any, ...]:
        """The positional arguments a URL (without its query) gives the constructor:
        by default the URL itself."""
        return (url,)

    def rename(self, name: str) -> None:
        """Set the display name (the hierarchy calls its levels L1, L2, ... by default)."""
        self.name = name
        self.stats.name = name

    def size_limit(self) -> int | None:
        """The largest value this tier stores, in the unit ``prepare`` reports for rejected
        keys (bytes), or None when it has no per-value limit. Used in error messages."""
        return None

    def set_many(self, entries: Mapping[str, Entry]) -> dict[str, int]:
        """``prepare`` then ``write``; returns the rejected keys with their sizes."""
        prepared = self.prepare(entries)
        self.write(prepared)
        return prepared.rejected

    @abstractmethod
    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        """Encode and measure, without I/O. May raise SerializationError."""

    # -- the sync face

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Live entries for the keys that are present; absent keys are left out."""

    def get_stale_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """Entries for the keys present, expired ones included as long as they expired
        less than ``stale_for`` seconds ago (never remembered misses): the fail-safe's
        last resort. A tier that keeps nothing past expiry answers nothing."""
        return {}

    async def aget_stale_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self.get_stale_many(keys)

    @abstractmethod
    def write(self, prepared: Prepared) -> Collection[str] | None:
        """Store what ``prepare`` produced (rejected keys are not written and are deleted,
        so an older value cannot outlive the refused newer one). Returns the keys the
        store refused to change (it holds a newer version, a write holds the key, the
        fill's lease was lost): None or empty when it took everything."""

    @abstractmethod
    def delete_many(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry of this tier's namespace (never anything else on the server)."""

    def close(self) -> None:
        self.closed = True

    def retry_in(self) -> float:
        """Seconds before a delete could reach the store (0: now); its circuit breaker
        may be refusing calls. Asked by work that can wait, never counted as a skip."""
        return 0.0

    def _breaker_moved(self, before: str, after: str, why: str) -> None:
        """A circuit breaker's transition, logged (the breaker's ``on_change``); when it
        opens, the callers waiting for a connection skip the level at once."""
        self._log_breaker("circuit breaker", before, after, why)
        if self.events is not None and self.events.wants("breaker"):
            event = CacheEvent("breaker", level=self.name, state=after, previous=before, reason=why)
            self.events.emit(event)
        permits = getattr(self, "permits", None)
        if after == "open" and permits is not None:
            permits.abandon()

    def _log_breaker(self, which: str, before: str, after: str, why: str, note: str = "") -> None:
        # One subject for "this level is down", shared with the hierarchy's skipped-level
        # line: an outage reads as one line per interval, not one per transition. The
        # probe cycle (open -> half-open -> open, every breaker_reset) is routine.
        if after == "half-open":
            logger.debug("tier %s (%s): %s half-open: %s", self.name, self.kind, which, why)
            return
        self.warnings.warning(
            DOWN if after == "open" else RECOVERED,
            "tier %s (%s): %s %s -> %s: %s%s",
            self.name,
            self.kind,
            which,
            before,
            after,
            why,
            note if after == "open" else "",
        )

    # -- the async face

    @abstractmethod
    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]: ...

    @abstractmethod
    async def awrite(self, prepared: Prepared) -> Collection[str] | None: ...

    @abstractmethod
    async def adelete_many(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    async def aclear(self) -> None: ...

    async def aclose(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ttl={self.ttl}>"


class LocalTier(Tier):
    """An in-process tier: nothing to wait for, so the async face is the sync one."""

    local = True

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        return self.get_many(keys)

    async def awrite(self, prepared: Prepared) -> Collection[str] | None:
        return self.write(prepared)

    async def adelete_many(self, keys: Sequence[str]) -> None:
        self.delete_many(keys)

    async def aclear(self) -> None:
        self.clear()


class CommandTier(Tier):
    """A tier whose operations are command generators; see the module docstring.

    Subclasses write the four operations as generators and provide the transport:
    ``perform`` / ``aperform`` run one command, ``transport_errors`` names what their
    failures raise, and ``unavailable`` turns such a failure into the transient error
    the hierarchy skips a level on.
    """

    #: exceptions of the transport that mean "the store cannot answer now"
    transport_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    @abstractmethod
    def read_steps(self, keys: Sequence[str], stale: bool = False) -> Steps[dict[str, Entry]]:
        """The entries of ``keys``; with ``stale``, expired ones within ``stale_for`` too."""
        ...

    @abstractmethod
    def write_steps(self, prepared: Prepared) -> Steps[Collection[str] | None]: ...

    @abstractmethod
    def delete_steps(self, keys: Sequence[str]) -> Steps[None]: ...

    @abstractmethod
    def clear_steps(self) -> Steps[None]: ...

    @abstractmethod
    def perform(self, command: Any) -> Any:
        """Run one command synchronously and return its result."""

    @abstractmethod
    async def aperform(self, command: Any) -> Any:
        """Run one command on the event loop and return its result."""

    def unavailable(self, exc: BaseException) -> CacheError:
        """What a failure of the transport becomes: by default the transient error that
        makes the hierarchy skip this level. A tier may answer a permanent error instead
        for failures that no retry cures (wrong credentials)."""
        return TierUnavailableError(self.name, f"{type(exc).__name__}: {exc}")

    #: the circuit breaker every call passes (see :mod:`.breaker`); None: no breaker
    breaker: CircuitBreaker | None = None
    #: the bound on calls in flight, with a wait for a turn (see :mod:`.permits`); None:
    #: the transport needs none (its connections are per thread, or it waits itself)
    permits: Permits | None = None

    def retry_in(self) -> float:
        return 0.0 if self.breaker is None else self.breaker.retry_in()

    # -- both faces, from one operation (see stratacache.steps)

    def drive(self, steps: Steps[T]) -> T:
        permits = self.permits
        if permits is None:
            return self._drive_guarded(steps)
        # The turn is taken outside the breaker: a wait that runs out is not the store's
        # failure, and a caller that waited sees a breaker that opened meanwhile.
        with permits:
            return self._drive_guarded(steps)

    def _drive_guarded(self, steps: Steps[T]) -> T:
        breaker = self.breaker
        if breaker is None:
            return drive(steps, self.perform, self.transport_errors, self.unavailable)
        with breaker.guard():
            return drive(steps, self.perform, self.transport_errors, self.unavailable)

    async def adrive(self, steps: Steps[T]) -> T:
        permits = self.permits
        if permits is None:
            return await self._adrive_guarded(steps)
        turn = await permits.acquire()
        try:
            return await self._adrive_guarded(steps)
        finally:
            turn.release()

    async def _adrive_guarded(self, steps: Steps[T]) -> T:
        breaker = self.breaker
        if breaker is None:
            return await adrive(steps, self.aperform, self.transport_errors, self.unavailable)
        with breaker.guard():
            return await adrive(steps, self.aperform, self.transport_errors, self.unavailable)

    def run_one(self, command: Any) -> Any:
        """One command, synchronously, with the transport's failures mapped."""
        return self.drive(_single(command))

    # -- both faces of every operation

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        if self.breaker is not None or self.permits is not None:
            return self.drive(self.read_steps(keys))
        # The driver called directly: the read is the hot path.
        return drive(self.read_steps(keys), self.perform, self.transport_errors, self.unavailable)

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        return await self.adrive(self.read_steps(keys))

    def get_stale_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys or not self.stale_for:
            return {}
        return self.drive(self.read_steps(keys, stale=True))

    async def aget_stale_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys or not self.stale_for:
            return {}
        return await self.adrive(self.read_steps(keys, stale=True))

    def write(self, prepared: Prepared) -> Collection[str] | None:
        return self.drive(self.write_steps(prepared))

    async def awrite(self, prepared: Prepared) -> Collection[str] | None:
        return await self.adrive(self.write_steps(prepared))

    def delete_many(self, keys: Sequence[str]) -> None:
        self.drive(self.delete_steps(keys))

    async def adelete_many(self, keys: Sequence[str]) -> None:
        await self.adrive(self.delete_steps(keys))

    def clear(self) -> None:
        self.drive(self.clear_steps())

    async def aclear(self) -> None:
        await self.adrive(self.clear_steps())


def _single(command: Any) -> Steps[Any]:
    return (yield command)

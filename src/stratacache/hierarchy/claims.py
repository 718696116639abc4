"""Agreement between processes through the shared level: versions, write locks, leases.

Within one process the write fence (:mod:`.fence`) and single flight
(:mod:`stratacache.stampede`) keep fills from undoing writes and loads from repeating.
Between processes neither can see the other, so they agree through the first level that
can coordinate (Redis, the SQLite file: see :mod:`stratacache.tiers.shared`), as the
memcache paper ("Scaling Memcache at Facebook", NSDI 2013) does with leases:

* **Versions.** Every write takes a number from the level's counter, and every shared
  level compares numbers before it replaces a value: a write never loses to an older one
  that arrives later, in any process.
* **Write locks.** A write that reaches the origin holds its keys from the moment it
  takes its versions until the shared level has its value. Two processes writing one
  key therefore reach the origin and the levels in the same order (without that, A's
  origin write could commit first while B's value lands last in the cache, and the
  cache would disagree with the origin until the value expired). A write that finds a
  key locked waits for it (up to ``lock_ttl``); a lock left by a killed process expires.
* **Leases.** The first process to miss a key takes a lease and loads it; the others
  see the lease and poll the level for the value instead of asking the origin, so N
  processes missing one key cost one load. The fill carries the lease: a write or an
  invalidation in the meantime deletes it and the fill is dropped (it would have put
  back the value from before that write). A lease whose holder died expires after
  ``lease_ttl``, and a waiter whose wait runs out loads the key itself.

A level that is down is skipped here as everywhere: the write goes on unlocked and the
read loads without a lease, which is exactly what a cache without a shared level does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..entry import Entry
from ..errors import ConfigurationError, TransientError
from ..tiers.base import Tier
from ..tiers.shared import LEASE, LOCK, VERSION, Claim, SharedTier
from .ops import LevelGet, LevelRun, Op, Pause

__all__ = ["Coordinator", "Lease"]

Flow = Any  # a generator of ops (see .flow); kept loose to avoid an import cycle

#: how often a waiter looks at a key someone else holds: first after 2 ms, then backing
#: off to every 20 ms (a load or a write usually takes a few milliseconds)
_FIRST_LOOK = 0.002
_SLOWEST_LOOK = 0.02


@dataclass
class Lease:
    """What a read got from :meth:`Coordinator.lease`: the ``token`` its fill carries for
    the keys it holds (``granted``), the counter ``version`` the fill is stamped with,
    and the entries other processes filled while this one waited."""

    token: str | None = None
    version: int = 0
    granted: set[str] = field(default_factory=set)
    filled: dict[str, Entry] = field(default_factory=dict)
    #: keys other processes still held when the wait ended: loaded without a lease,
    #: unless the fail-safe serves them a stale value
    waiting: set[str] = field(default_factory=set)


class Coordinator:
    def __init__(
        self,
        level: SharedTier,
        index: int,
        *,
        lease_ttl: float,
        lock_ttl: float,
        failed: Callable[[Tier, str, BaseException], None],
        believed: Callable[[Tier, Mapping[str, Entry]], Flow],
    ) -> None:
        for name, value in (("lease_ttl", lease_ttl), ("lock_ttl", lock_ttl)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, got {value!r}")
        self.level = level
        self.index = index
        self.lease_ttl = lease_ttl
        self.lock_ttl = lock_ttl
        self._failed = failed
        #: what of a level's answer the hierarchy believes (versions, tags)
        self._believed = believed
        #: keys other processes filled while this one waited on their lease
        self.lease_waits = 0
        #: keys still held by another process when the wait for them ran out
        self.lease_wait_timeouts = 0
        #: keys whose lease was freed without a fill while this process waited (its
        #: holder died, failed, or lost the fill to a write): claimed again
        self.lease_retakes = 0
        #: writes that found a key locked by another writer and waited
        self.lock_waits = 0

    def _claim(
        self, keys: Sequence[str], token: str, kind: str, ttl: float, *, over: bool = False
    ) -> Op:
        return LevelRun(self.level, self.level.claim_steps(keys, token, kind, ttl, over=over))

    def versions(self, keys: Sequence[str], *, lock: bool) -> Flow:
        """Versions for a write of ``keys``, with their write lock when ``lock``.
        Returns ``(versions, token)``: the token releases the lock (None: no lock asked
        for, and empty versions when the level is down).

        A wait for the lock that runs out (``lock_ttl``: the holder stalled, or it is
        merely slow, as under a burst of hundreds of writers) goes on without the lock
        but still returns the token. The write then reaches the origin in no known order
        against the holder's, so neither value may stay in the level: the token, which
        holds no lock there, makes the level drop the key and raise a floor under it
        (see :data:`~stratacache.tiers.redis_scripts.WRITE`), which refuses the holder's
        write as well. The next read loads what the origin ends with."""
        token = uuid.uuid4().hex
        kind = LOCK if lock else VERSION
        deadline: float | None = None
        look = _FIRST_LOOK
        while True:
            try:
                claim: Claim = yield self._claim(keys, token, kind, self.lock_ttl)
            except TransientError as exc:
                self._failed(self.level, "lock", exc)
                return {}, None
            if claim.granted:
                return claim.versions(), (token if lock else None)
            now = time.monotonic()
            if deadline is None:
                self.lock_waits += 1
                deadline = now + self.lock_ttl
            elif now >= deadline:
                # The holder outlived its lock's lifetime on our clock: go on unlocked
                # rather than wait forever; the token tells the level (see above).
                kind = VERSION
                continue
            yield Pause(min(look, max(0.0, deadline - now)))
            look = min(look * 2, _SLOWEST_LOOK)

    def release(self, keys: Sequence[str], token: str | None, kind: str = LOCK) -> Flow:
        """Give back claims ``token`` holds (best effort: they expire anyway)."""
        if token is None or not keys:
            return
        try:
            yield LevelRun(self.level, self.level.release_steps(keys, token, kind))
        except TransientError as exc:
            self._failed(self.level, "release", exc)

    def lease(self, keys: Sequence[str], max_wait: float | None = None) -> Flow:
        """Leases for a load of ``keys``: returns a :class:`Lease` whose ``granted`` keys
        this read loads, and whose ``filled`` entries other processes loaded meanwhile.
        Keys in neither are loaded too, without a lease (the wait ran out, or the level
        is down). ``max_wait`` bounds the wait for other processes' fills (the
        fail-safe's soft timeout); keys still held then are listed in ``waiting``."""
        lease = Lease(token=uuid.uuid4().hex)
        began = time.monotonic()
        todo = list(keys)
        deadline: float | None = None
        look = _FIRST_LOOK
        over = False  # claim even where a value is stored: we read it and could not use it
        while todo:
            try:
                claim: Claim = yield self._claim(
                    todo, lease.token or "", LEASE, self.lease_ttl, over=over
                )
            except TransientError as exc:
                self._failed(self.level, "lease", exc)
                return lease
            lease.version = max(lease.version, claim.version)
            lease.granted.update(claim.granted)
            held = [key for key in todo if key in claim.held]
            if not held:
                break
            now = time.monotonic()
            if deadline is None:
                deadline = now + min(self.lease_ttl, max(claim.held.values()) + _SLOWEST_LOOK)
                if max_wait is not None:
                    deadline = min(deadline, began + max_wait)
            # Wait for the holders' fills. A key whose lease is gone without a value we
            # can use (its holder failed, a write dropped the fill, the stored value is
            # corrupt or outdated) is claimed again. The lease is looked at before the
            # value: a fill that lands in between is then seen, not claimed over.
            todo = []
            while held and time.monotonic() < deadline:
                yield Pause(look)
                look = min(look * 2, _SLOWEST_LOOK)
                try:
                    still = yield LevelRun(self.level, self.level.claimed_steps(held))
                    found: Mapping[str, Entry] = yield LevelGet(self.level, held)
                    if found:
                        found = yield from self._believed(self.level, found)
                except TransientError as exc:
                    self._failed(self.level, "lease wait", exc)
                    return lease
                if found:
                    self.lease_waits += len(found)
                    lease.filled.update(found)
                    held = [key for key in held if key not in found]
                freed = sum(1 for key in held if key not in still)
                if freed:
                    # The holder died, failed or lost its fill to a write: no value came.
                    self.lease_retakes += freed
                    todo = held  # claim them all again: some are free
                    over = True
                    break
            if not todo:
                lease.waiting.update(held)  # still held past the deadline
                self.lease_wait_timeouts += len(held)
                break
        return lease

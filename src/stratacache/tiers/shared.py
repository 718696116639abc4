"""What every tier over a store that processes share does the same way.

The SQLite file, Redis, Redis Cluster and memcached all hold values as the envelopes of
:class:`stratacache.serde.Codec`, in a store that other processes share and that anyone
with access to it can write. :class:`SharedTier` is the one place that deals with those
envelopes, so that no tier can get them subtly different:

* **The codec.** Its signing context is the tier's namespace: an entry signed for one
  cache cannot be replayed into another cache that shares the store, the key and the
  secret (a row copied between namespaces of one SQLite file, a Redis value copied
  between prefixes).
* **Writes.** :meth:`SharedTier.prepare` encodes and measures without I/O, and reports
  the values above ``max_value_size`` (serialized, before compression) and the envelopes
  above ``max_item_size`` (what the store itself takes, when it has a limit) as rejected.
* **Reads.** Anything that does not decode (corrupt, truncated, forged, foreign, stored
  under another key, written by a serializer or signing key this process does not have)
  is a miss, counted in ``stats.corrupt`` and logged with the reason: never raised, and
  never deleted. In a rolling deploy the processes that do not understand an entry yet
  (a new serializer, a rotated key) are not the ones to judge it: the others may read it
  fine, and a delete that failed would fail a read that already had its answer. Expiry
  (server-side TTLs, the SQLite trim) reclaims what nobody reads.
* **Coordination** (tiers whose ``coordinates`` is True: Redis, the SQLite file). The
  processes sharing the store agree through it on three things, each one atomic in the
  store (a Lua script, an SQLite transaction): a *version* counter that numbers every
  write of the namespace; short-lived *claims* on keys, a write lock (``LOCK``: a write
  holds the key from its version to its last level, so two writers of one key reach the
  origin and the levels in the same order) or a lease (``LEASE``: the first process to
  miss a key loads it, the others wait for its fill); and *conditional writes*: a write
  never replaces a newer version, and a fill is dropped when its lease was lost or a
  write holds the key (see :class:`~stratacache.tiers.base.Prepared`). A claim left by a
  killed process expires by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from ..config import SharedOptions
from ..entry import Entry
from ..errors import ConfigurationError
from ..keys import validate_namespace
from ..serde import Codec, PayloadError
from .base import CommandTier, Prepared, Steps

__all__ = ["FLOOR_SECONDS", "LEASE", "LOCK", "VERSION", "Claim", "SharedTier"]

#: how long a version floor keeps older writes of a key out (see redis_scripts.WRITE):
#: longer than any write still in flight can take to reach the level
FLOOR_SECONDS: Final = 30.0

#: claim kinds: a write lock, a load lease, or no claim (versions only)
LOCK: Final = "lock"
LEASE: Final = "lease"
VERSION: Final = "version"


@dataclass
class Claim:
    """The answer to a claim: the keys granted, the keys someone else holds (with the
    seconds their claim has left), and a version. For LOCK and VERSION the granted keys
    get the versions ``version - len(granted) + 1 ... version`` in order; for LEASE,
    ``version`` is the counter as it stood (a fill under the lease carries it)."""

    granted: list[str] = field(default_factory=list)
    held: dict[str, float] = field(default_factory=dict)
    version: int = 0

    def versions(self) -> dict[str, int]:
        first = self.version - len(self.granted) + 1
        return {key: first + offset for offset, key in enumerate(self.granted)}


class SharedTier(CommandTier):
    """Base of the tiers over a shared store; see the module docstring. Each operation is
    a command generator (:class:`~stratacache.tiers.base.CommandTier`).

    ``prepare`` puts ``(envelope, expires_at)`` under each accepted key; ``_found`` turns
    what the store returned into live entries.
    """

    def __init__(
        self,
        options: SharedOptions,
        *,
        max_item_size: int | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=options.name, ttl=options.ttl)
        self.options = options
        self.namespace = validate_namespace(options.namespace)
        if max_item_size is not None and max_item_size < 1:
            raise ConfigurationError(f"max_item_size must be positive, got {max_item_size}")
        self.codec = Codec(
            options.serializer,
            value_type=options.value_type,
            signer=options.signing_key,
            compress_threshold=options.compress_threshold,
            max_value_size=options.max_value_size,
            context=self.namespace,
        )
        #: the largest serialized value (before compression) this tier stores
        self.max_value_size = options.max_value_size
        #: the largest envelope the store takes (None: no limit of its own)
        self.max_item_size = max_item_size
        self._wall_clock = wall_clock

    def size_limit(self) -> int | None:
        return self.max_value_size

    # -- coordination (see the module docstring); only where ``coordinates`` is True

    #: this store offers versions, claims and conditional writes
    coordinates: ClassVar[bool] = False

    def claim_steps(
        self, keys: Sequence[str], token: str, kind: str, ttl: float, *, over: bool = False
    ) -> Steps[Claim]:
        """Claim ``keys`` for ``ttl`` seconds under ``token``: LOCK is all or nothing (a
        key someone holds grants none, and lists it in ``held``), LEASE is per key,
        VERSION claims nothing and only takes versions. A LEASE is not granted on a key
        that has a value stored (reported held: the caller reads it), unless ``over``:
        the caller read that value and could not use it (corrupt, outdated)."""
        raise NotImplementedError(f"{self.kind} tiers do not coordinate processes")

    def release_steps(self, keys: Sequence[str], token: str, kind: str) -> Steps[None]:
        """Give up the claims on ``keys`` that ``token`` still holds."""
        raise NotImplementedError(f"{self.kind} tiers do not coordinate processes")

    def claimed_steps(self, keys: Sequence[str]) -> Steps[set[str]]:
        """The keys among ``keys`` that a lease or a lock holds right now."""
        raise NotImplementedError(f"{self.kind} tiers do not coordinate processes")

    # -- reads

    def _found(
        self, keys: Sequence[str], blobs: Iterable[Any], stale: bool = False
    ) -> dict[str, Entry]:
        """The live entries among ``blobs`` (aligned with ``keys``; None = absent); with
        ``stale``, the values that expired less than ``stale_for`` ago too."""
        found: dict[str, Entry] = {}
        decode = self.codec.decode
        now = self._wall_clock()
        if stale:
            now -= self.stale_for
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                continue
            try:
                entry = decode(key, blob)
            except PayloadError as exc:
                self._corrupt(key, exc.reason)
                continue
            if entry.expires_at > now and not (stale and entry.negative):
                found[key] = entry
        return found

    def _corrupt(self, key: str, reason: str) -> None:
        self.stats.corrupt += 1
        self.warnings.warning(
            "corrupt",
            "tier %s (%s): ignoring the stored value of key %.200r: %s",
            self.name,
            self.kind,
            key,
            reason,
        )

    # -- writes

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared:
        prepared = Prepared()
        codec = self.codec
        limit = self.max_value_size
        item_limit = self.max_item_size
        for key, entry in entries.items():
            payload = codec.payload(entry)
            if len(payload) > limit:
                prepared.rejected[key] = len(payload)
                continue
            blob = codec.encode(key, entry, payload)
            if item_limit is not None and len(blob) > item_limit:
                prepared.rejected[key] = len(blob)
                continue
            prepared.items[key] = (blob, entry.expires_at)
            prepared.versions[key] = entry.version
        return prepared

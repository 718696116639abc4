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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..config import SharedOptions
from ..entry import Entry
from ..errors import ConfigurationError
from ..keys import validate_namespace
from ..serde import Codec, PayloadError
from .base import CommandTier, Prepared

__all__ = ["SharedTier"]


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
        return prepared

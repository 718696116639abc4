"""Listeners for what happens inside a cache: hits, misses, loads, evictions, expiries,
stale values served and circuit-breaker transitions.

``cache.on("miss", fn)`` calls ``fn(event)`` with a :class:`CacheEvent` for each key that
missed at a level. Listeners run synchronously, in the thread (or on the event loop) that
caused the event, so they must be quick; an exception in one is logged and dropped,
never raised into the cache operation that caused it.

What a kind costs when nobody listens: nothing on the L1 hit path, which stays the
compiled reader (a ``hit`` listener switches ``get`` to a Python reader that reports each
hit, and back when the last one is removed; an ``eviction`` listener likewise moves an
L1-only cache's ``set`` off the compiled writer, which evicts in C). Elsewhere, one
dictionary lookup per operation.

Kinds and their fields (``level`` is the level's name, e.g. ``"L1"``):

- ``hit``, ``miss``: ``key``, ``level``: one per key looked up at a level;
- ``load``: ``keys``, ``duration`` (seconds), ``error`` (None on success): one per call
  to a loader or the origin; keys not found are in ``keys`` too;
- ``eviction``: ``key``, ``level``: an in-process level dropped the key for room;
- ``expiry``: ``key``, ``level``: an in-process level dropped an expired entry (entries
  expire lazily: when a read finds them expired, or the fail-safe's window ends);
- ``stale``: ``key``: the fail-safe served an expired value;
- ``breaker``: ``level``, ``state`` and ``previous`` (``closed``, ``open``,
  ``half-open``), ``reason``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["EVENT_KINDS", "CacheEvent", "Listener", "Listeners"]

log = logging.getLogger("stratacache.events")

EVENT_KINDS = frozenset({"hit", "miss", "load", "eviction", "expiry", "stale", "breaker"})


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """One thing that happened; which fields are set depends on ``kind`` (see the module
    docstring)."""

    kind: str
    key: str | None = None
    level: str | None = None
    keys: tuple[str, ...] = ()
    duration: float | None = None
    error: BaseException | None = None
    state: str | None = None
    previous: str | None = None
    reason: str | None = None


Listener = Callable[[CacheEvent], object]


class Listeners:
    """The listeners of one cache, by kind. Adding and removing copy the tuple of a kind
    (under a lock), so emitting never locks and never sees a half-made change."""

    def __init__(self) -> None:
        self._by_kind: dict[str, tuple[Listener, ...]] = {}
        self._lock = threading.Lock()
        #: called with the kind after a kind gains its first listener or loses its last
        self.on_change: Callable[[str], None] | None = None

    def add(self, kind: str, listener: Listener) -> Callable[[], None]:
        """Register ``listener`` for ``kind``; returns a function that removes it."""
        check_kind(kind)
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {type(listener).__qualname__}")
        with self._lock:
            before = self._by_kind.get(kind, ())
            self._by_kind[kind] = (*before, listener)
        if not before and self.on_change is not None:
            self.on_change(kind)
        return lambda: self.remove(kind, listener)

    def remove(self, kind: str, listener: Listener) -> None:
        """Unregister ``listener`` from ``kind`` (nothing happens if it is not there)."""
        check_kind(kind)
        with self._lock:
            before = self._by_kind.get(kind, ())
            after = tuple(fn for fn in before if fn != listener)  # == : bound methods
            if len(after) == len(before):
                return
            if after:
                self._by_kind[kind] = after
            else:
                del self._by_kind[kind]
        if not after and self.on_change is not None:
            self.on_change(kind)

    def wants(self, kind: str) -> bool:
        return kind in self._by_kind

    def emit(self, event: CacheEvent) -> None:
        for listener in self._by_kind.get(event.kind, ()):
            try:
                listener(event)
            except Exception:
                log.exception("a %r listener (%r) raised; the cache goes on", event.kind, listener)

    def emit_keys(self, kind: str, keys: Iterable[str], level: str | None = None) -> None:
        """One event per key, when ``kind`` has listeners."""
        if kind in self._by_kind:
            for key in keys:
                self.emit(CacheEvent(kind, key=key, level=level))


def check_kind(kind: str) -> None:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(sorted(EVENT_KINDS))}")

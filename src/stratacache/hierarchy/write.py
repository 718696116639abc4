"""Write policies: what ``set`` does with the origin and the levels.

A write policy is data that the flow (:meth:`.flow.Hierarchy.write`) reads, not code that
drives the flow, so neither module needs the other:

* ``through`` (default): the origin is written first, then every level, bottom-up, before
  ``set`` returns. If the origin refuses, no level is touched. With no origin, or an
  origin that cannot store, ``set`` writes the levels only.
* ``cache``: the cache-aside pattern. ``set`` writes the levels only; the application
  writes its database itself and calls ``invalidate`` (or ``set``) afterwards.
* ``around``: ``set`` writes the origin only, then drops the keys from every level
  exactly as ``invalidate`` does (a level that is down owes the delete, and is not read
  again before it has paid it), so the next read loads what the origin stored. The write
  is marked in the fence first, so a read that was loading the key meanwhile does not
  fill the old value back. If the origin refuses, no level is touched. It needs an origin
  that can store: anything else is a ConfigurationError when the cache is built.

``through`` and ``cache`` refuse a value that fits no level before anything is written;
``around`` writes no level, so any value the origin takes is fine (keys are still
checked). Every write, delete and invalidation is announced on the invalidation bus
(:mod:`stratacache.coherence`), so other processes drop their in-process copies too.

* ``behind``: ``set`` writes every level and appends the write to a durable local
  journal (see :mod:`stratacache.behind`), then returns; a background flusher stores the
  queued writes in the origin in batches, coalescing each key to its last value and
  keeping each key's order, retrying with backoff while the origin fails. A ``delete``
  is queued behind the writes of its keys. Loads see the queue: a key whose write has
  not reached the origin yet answers with the queued value. The queue is bounded
  (``max_pending_writes``): a full queue raises ``WriteBehindFullError`` before anything
  is written. ``close()`` flushes; a crash leaves the journal, replayed at the next
  start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..origin import Origin

__all__ = [
    "CACHE_ONLY",
    "WRITE_AROUND",
    "WRITE_BEHIND",
    "WRITE_THROUGH",
    "WritePolicy",
    "make_write_policy",
]


@dataclass(frozen=True)
class WritePolicy:
    name: str
    #: ``set`` stores in the origin (when it can store) before any level is written
    writes_origin: bool
    #: ``set`` writes the levels; False: it invalidates them instead (write-around), and
    #: then it needs an origin that can store
    writes_levels: bool = True
    #: ``set`` hands the origin's write to a durable queue (write-behind): the levels and
    #: the journal hold it when ``set`` returns, the origin a little later
    defers_origin: bool = False


WRITE_THROUGH = WritePolicy("through", writes_origin=True)
CACHE_ONLY = WritePolicy("cache", writes_origin=False)
WRITE_AROUND = WritePolicy("around", writes_origin=True, writes_levels=False)
WRITE_BEHIND = WritePolicy("behind", writes_origin=False, defers_origin=True)
_POLICIES = {
    policy.name: policy for policy in (WRITE_THROUGH, CACHE_ONLY, WRITE_AROUND, WRITE_BEHIND)
}


def make_write_policy(write: str | WritePolicy, origin: Origin | None = None) -> WritePolicy:
    """The policy named by ``write``, checked against the cache's ``origin``: one that
    writes no level needs an origin that stores (else a ``set`` would store nothing)."""
    if isinstance(write, WritePolicy):
        policy = write
    else:
        try:
            policy = _POLICIES[write]
        except (KeyError, TypeError):
            raise ConfigurationError(
                f"unknown write policy {write!r}; accepted: {', '.join(_POLICIES)}"
            ) from None
    if policy.defers_origin and (origin is None or not origin.writable):
        raise ConfigurationError(
            f"write={policy.name!r} queues writes for the origin, and this cache has no "
            "origin that can store; give it one (CallableOrigin(load, store) or SQLOrigin), "
            "or use write='cache'"
        )
    if not policy.writes_levels:
        if not policy.writes_origin:
            raise ConfigurationError(
                f"write policy {policy.name!r} writes neither the origin nor the levels"
            )
        if origin is None:
            raise ConfigurationError(
                f"write={policy.name!r} writes the origin only, and this cache has no "
                "origin; give it an origin that can store (CallableOrigin(load, store) or "
                "SQLOrigin), or use write='through' or write='cache'"
            )
        if not origin.writable:
            raise ConfigurationError(
                f"write={policy.name!r} writes the origin only, and "
                f"{type(origin).__name__} cannot store values; give it a store function "
                "(CallableOrigin(load, store)), or use write='through' or write='cache'"
            )
    return policy

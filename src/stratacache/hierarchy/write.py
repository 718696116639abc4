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
checked). Write-around drops the keys from this process's levels only: the copies other
processes keep in their own in-process L1 stay until they expire, until the invalidation
bus (to come) tells those processes too. Write-behind (a durable queue drained to the
origin) would be a further value of these fields.
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


WRITE_THROUGH = WritePolicy("through", writes_origin=True)
CACHE_ONLY = WritePolicy("cache", writes_origin=False)
WRITE_AROUND = WritePolicy("around", writes_origin=True, writes_levels=False)
_POLICIES = {policy.name: policy for policy in (WRITE_THROUGH, CACHE_ONLY, WRITE_AROUND)}


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

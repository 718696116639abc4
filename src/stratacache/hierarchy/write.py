"""Write policies: what ``set`` does with the origin and the levels.

A write policy is data that the flow (:meth:`.flow.Hierarchy.write`) reads, not code that
drives the flow, so neither module needs the other:

* ``through`` (default): the origin is written first, then every level, bottom-up, before
  ``set`` returns. If the origin refuses, no level is touched. With no origin, or an
  origin that cannot store, ``set`` writes the levels only.
* ``cache``: the cache-aside pattern. ``set`` writes the levels only; the application
  writes its database itself and calls ``invalidate`` (or ``set``) afterwards.

Both refuse a value that fits no level before anything is written. Write-behind (a
durable queue drained to the origin) and write-around (origin only, then invalidate
every level and every process) are further values of these fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError

__all__ = ["CACHE_ONLY", "WRITE_THROUGH", "WritePolicy", "make_write_policy"]


@dataclass(frozen=True)
class WritePolicy:
    name: str
    #: ``set`` stores in the origin (when it can store) before any level is written
    writes_origin: bool


WRITE_THROUGH = WritePolicy("through", writes_origin=True)
CACHE_ONLY = WritePolicy("cache", writes_origin=False)
_POLICIES = {policy.name: policy for policy in (WRITE_THROUGH, CACHE_ONLY)}


def make_write_policy(write: str | WritePolicy) -> WritePolicy:
    if isinstance(write, WritePolicy):
        return write
    try:
        return _POLICIES[write]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown write policy {write!r}; accepted: {', '.join(_POLICIES)}"
        ) from None

"""Write policies: what ``set`` does with the origin and the levels.

* ``through`` (default): the origin is written first, then every level, bottom-up, before
  ``set`` returns. If the origin refuses, no level is touched. With no origin, or an
  origin that cannot store, ``set`` writes the levels only.
* ``cache``: the cache-aside pattern. ``set`` writes the levels only; the application
  writes its database itself and calls ``invalidate`` (or ``set``) afterwards.

Both refuse a value that fits no level before anything is written. The seam is the
:class:`WritePolicy` protocol: write-behind (a durable queue drained to the origin) and
write-around (origin only, then invalidate every level and every process) plug in as
further classes here.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigurationError, OriginError
from .ops import Op, OriginStore

if TYPE_CHECKING:
    from .flow import Hierarchy

__all__ = ["CacheOnly", "WritePolicy", "WriteThrough", "make_write_policy"]


class WritePolicy(Protocol):
    name: str

    def check(self, hierarchy: Hierarchy) -> None:
        """Reject a configuration this policy cannot serve."""
        ...

    def write(
        self, hierarchy: Hierarchy, items: Mapping[str, Any], ttl: float | None
    ) -> Generator[Op, Any, None]: ...


class WriteThrough:
    name = "through"

    def check(self, hierarchy: Hierarchy) -> None:
        pass

    def write(
        self, hierarchy: Hierarchy, items: Mapping[str, Any], ttl: float | None
    ) -> Generator[Op, Any, None]:
        prepared = hierarchy.prepare_write(items, ttl)
        origin = hierarchy.origin
        if origin is not None and origin.writable:
            try:
                yield OriginStore(origin, items)
            except ConfigurationError:
                raise
            except Exception as exc:
                hierarchy.origin_stats.errors += 1
                raise OriginError(
                    f"writing {len(items)} key(s) to the origin failed, no level was changed: "
                    f"{exc!r}"
                ) from exc
            hierarchy.origin_stats.stores += len(items)
        yield from hierarchy.store_in_levels(prepared)


class CacheOnly:
    name = "cache"

    def check(self, hierarchy: Hierarchy) -> None:
        pass

    def write(
        self, hierarchy: Hierarchy, items: Mapping[str, Any], ttl: float | None
    ) -> Generator[Op, Any, None]:
        yield from hierarchy.store_in_levels(hierarchy.prepare_write(items, ttl))


_POLICIES: dict[str, type[WriteThrough] | type[CacheOnly]] = {
    "through": WriteThrough,
    "cache": CacheOnly,
}


def make_write_policy(write: str | WritePolicy) -> WritePolicy:
    if not isinstance(write, str):
        return write
    try:
        return _POLICIES[write]()
    except KeyError:
        raise ConfigurationError(
            f"unknown write policy {write!r}; accepted: {', '.join(_POLICIES)}"
        ) from None

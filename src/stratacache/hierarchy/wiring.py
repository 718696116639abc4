"""What a cache builds around its hierarchy for other processes: the invalidation bus
(:mod:`stratacache.coherence`) and the write-behind queue (:mod:`stratacache.behind`).

``bus="auto"`` (the default) puts a bus on the first shared level that can carry one: a
Redis level's own server (pub/sub on ``stratacache:<namespace>``), or the SQLite file of
an embedded level (a table in the same file). Messages are signed with that level's
signing key, bound to its namespace. A hierarchy with no such level (in-process only, or
only memcached or a Redis Cluster below L1) gets no bus unless one is given as a URL or
an object; ``bus=None`` turns it off, and then another process's write reaches this
process's L1 only when the entry expires there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError
from ..origin import Origin
from ..tiers.base import DOWN, Tier
from ..tiers.shared import SharedTier
from .flow import Hierarchy

__all__ = ["AUTO", "make_bus", "make_write_behind"]

AUTO = "auto"
#: how long a new cache waits for its bus to listen (seconds)
READY_WAIT = 1.0


def _default_transport(levels: Sequence[Tier]) -> tuple[Any, SharedTier] | None:
    """The bus transport over the first shared level that can carry one."""
    from ..tiers.sqlite import SQLiteTier

    for level in levels:
        if not isinstance(level, SharedTier):
            continue
        url = getattr(level, "bus_url", None)
        if url is not None:
            from ..coherence.redis_transport import RedisTransport

            transport = RedisTransport(url(), _channel(level))
            transport.share_warnings(level.warnings, DOWN)
            return transport, level
        if isinstance(level, SQLiteTier):
            from ..coherence.sqlite_transport import SQLiteTransport

            # its own file: the level's writers hold the write lock of theirs
            bus_file = level.path.with_name(level.path.name + "-bus")
            return SQLiteTransport(str(bus_file), _channel(level)), level
    return None


def _channel(level: SharedTier) -> str:
    return f"stratacache:{level.namespace}"


def make_bus(bus: Any, hierarchy: Hierarchy) -> Any:
    """The started bus ``bus`` asks for (see the module docstring), wired to
    ``hierarchy``; None for none."""
    if bus is None:
        return None
    from ..coherence.bus import InvalidationBus, open_transport

    if isinstance(bus, InvalidationBus):
        raise ConfigurationError(
            "pass the bus's transport (or a URL), not an InvalidationBus: the cache makes "
            "its own, wired to its levels"
        )
    shared = next((lv for lv in hierarchy.levels if isinstance(lv, SharedTier)), None)
    if bus == AUTO:
        found = _default_transport(hierarchy.levels)
        if found is None:
            return None
        transport, shared = found
    elif isinstance(bus, str):
        channel = _channel(shared) if shared is not None else "stratacache:default"
        transport = open_transport(bus, channel=channel)
    elif callable(getattr(bus, "publish", None)) and callable(getattr(bus, "run", None)):
        transport = bus
    else:
        raise ConfigurationError(
            f"bus must be 'auto', a URL (redis://..., sqlite:///path), a transport with "
            f"publish() and run(), or None; got {type(bus).__qualname__}"
        )
    made = InvalidationBus(
        transport,
        on_keys=hierarchy.dropped_elsewhere,
        on_reset=hierarchy.reset_local,
        on_tags=hierarchy.tags_elsewhere,
        signer=shared.codec.signer if shared is not None else None,
        context=shared.namespace.encode() if shared is not None else b"",
        name=shared.namespace if shared is not None else "bus",
    )
    made.start()
    # Invalidations published before this process listens never reach it; its L1 is
    # empty then, but a cache that answers a moment after it is built should already
    # hear the writes made after that. Bounded: a bus whose server is down must not
    # hold up the start (it resets L1 once it connects).
    ready = getattr(transport, "ready", None)
    if ready is not None:
        ready.wait(READY_WAIT)
    return made


def make_write_behind(
    origin: Origin | None,
    journal: str | os.PathLike[str] | None,
    *,
    fsync: str,
    max_pending: int,
    name: str,
    order: Any,
) -> Any:
    """The write-behind queue of ``write="behind"``, replaying what an earlier run left
    once started (the caller starts it when the bus is up)."""
    from ..behind import WriteBehind, default_journal_dir

    if origin is None or not origin.writable:
        raise ConfigurationError(
            "write='behind' queues writes for the origin, and this cache has no origin "
            "that can store; give it one (CallableOrigin(load, store) or SQLOrigin)"
        )
    where = journal if journal is not None else default_journal_dir(name)
    return WriteBehind(
        origin,
        where,
        fsync=fsync,  # type: ignore[arg-type]
        max_pending=max_pending,
        name=name,
        order=order,
        start=False,
    )

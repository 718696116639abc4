"""Cross-process invalidation: the bus that keeps each process's L1 coherent with the
others' writes (see :mod:`.bus`).

Nothing here imports the hierarchy or the tiers: a cache wires the bus's callbacks to its
L1, the bus knows nothing of caches. :class:`RedisTransport` needs redis-py and is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bus import BusStats, InvalidationBus, Transport, open_transport
from .messages import BusMessageError, Message, decode, encode
from .sqlite_transport import SQLiteTransport

if TYPE_CHECKING:
    from .redis_transport import RedisTransport

__all__ = [
    "BusMessageError",
    "BusStats",
    "InvalidationBus",
    "Message",
    "RedisTransport",
    "SQLiteTransport",
    "Transport",
    "decode",
    "encode",
    "open_transport",
]


def __getattr__(name: str) -> Any:
    if name == "RedisTransport":
        from .redis_transport import RedisTransport

        return RedisTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

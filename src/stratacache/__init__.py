"""stratacache: a multi-level cache for Python.

One object runs the whole hierarchy: an in-process L1, shared levels below it (a SQLite
file on the host, Redis, memcached), and the origin behind them. See the README.
"""

from .entry import MISSING, Entry
from .errors import (
    CacheClosedError,
    CacheError,
    ConfigurationError,
    InvalidKeyError,
    JournalError,
    KeyTooLongError,
    LoadTimeoutError,
    OriginError,
    PoolTimeoutError,
    SerializationError,
    TierUnavailableError,
    TransientError,
    ValueTooLargeError,
    WriteBehindFullError,
)
from .events import CacheEvent
from .hierarchy.aio import AsyncCache
from .hierarchy.sync import Cache
from .hotkeys import HotKey, HotKeys
from .metrics import CacheStats, LevelSnapshot
from .origin import CallableOrigin, Origin, SQLOrigin
from .serde import Signer, register_type
from .tiers.base import Tier
from .tiers.memory import MemoryTier
from .tiers.sqlite import SQLiteTier
from .warming import Warmer, WarmResult

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Network tiers need optional dependencies ([redis], [memcached]): imported on first
    # use, with the install hint config.SCHEMES gives.
    if name in ("RedisTier", "RedisClusterTier", "MemcachedTier"):
        from .config import load_tier_class

        return load_tier_class(name)
    raise AttributeError(f"module 'stratacache' has no attribute {name!r}")


__all__ = [
    "MISSING",
    "AsyncCache",
    "Cache",
    "CacheClosedError",
    "CacheError",
    "CacheEvent",
    "CacheStats",
    "CallableOrigin",
    "ConfigurationError",
    "Entry",
    "HotKey",
    "HotKeys",
    "InvalidKeyError",
    "JournalError",
    "KeyTooLongError",
    "LevelSnapshot",
    "LoadTimeoutError",
    "MemcachedTier",
    "MemoryTier",
    "Origin",
    "OriginError",
    "PoolTimeoutError",
    "RedisClusterTier",
    "RedisTier",
    "SQLOrigin",
    "SQLiteTier",
    "SerializationError",
    "Signer",
    "Tier",
    "TierUnavailableError",
    "TransientError",
    "ValueTooLargeError",
    "WarmResult",
    "Warmer",
    "WriteBehindFullError",
    "__version__",
    "register_type",
]

"""Every error stratacache raises, in one tree.

::

    CacheError
    ├── ConfigurationError        permanent: the options given cannot work; says which and why
    ├── InvalidKeyError           permanent: a key that is not a non-empty str
    │   └── KeyTooLongError       ... or one longer than a shared level can carry (also a
    │                             SerializationError, so fills simply skip that level)
    ├── ValueTooLargeError        permanent: the value fits no level of the hierarchy
    ├── SerializationError        permanent: the value cannot be encoded by the chosen serializer
    ├── CacheClosedError          permanent: the cache was used after close()
    ├── OriginError               the origin (or a loader) failed; the cause is chained
    │   └── LoadTimeoutError      a load outran hard_timeout and nothing stale was kept
    └── TransientError            a tier's server is unreachable or timed out
        └── TierUnavailableError  raised by a tier; the hierarchy skips that level and goes on
            └── PoolTimeoutError  every connection stayed busy for pool_timeout (a burst)

The split that matters is transient against permanent. A transient error means "this level
is down right now": the hierarchy treats it as a miss at that level (reads) or a skipped
level (writes), counts it, and carries on. A permanent error means the call itself is wrong
and retrying cannot help, so it reaches the caller with a message naming what was wrong and
what would be right.

A corrupt, truncated or forged payload read from a shared tier is deliberately *not* in
this tree as something callers see: it is a miss, counted and logged on the ``stratacache``
logger (see ``serde.PayloadError``, which stays inside the tiers).
"""

from __future__ import annotations

__all__ = [
    "CacheClosedError",
    "CacheError",
    "ConfigurationError",
    "InvalidKeyError",
    "JournalError",
    "KeyTooLongError",
    "LoadTimeoutError",
    "OriginError",
    "PoolTimeoutError",
    "SerializationError",
    "TierUnavailableError",
    "TransientError",
    "ValueTooLargeError",
    "WriteBehindFullError",
]


class CacheError(Exception):
    """Root of every error raised by stratacache."""


class ConfigurationError(CacheError, ValueError):
    """The configuration cannot work. The message names the option and the accepted values."""


class InvalidKeyError(CacheError, TypeError):
    """A key the cache cannot use, raised by every method: not a non-empty ``str``, or,
    for a ``cached`` function, an argument it cannot turn into a stable key (the message
    names the parameter and how to key it)."""


class ValueTooLargeError(CacheError, ValueError):
    """A value larger than every level's maximum: no level could keep it."""


class SerializationError(CacheError, TypeError):
    """The value cannot be encoded (or, for a typed cache, is not of the declared type)."""


class KeyTooLongError(InvalidKeyError, SerializationError):
    """A key longer than a shared level can carry (65,535 UTF-8 bytes). A ``set`` raises
    it; a fill or promotion just leaves that level out. It is a SerializationError too,
    because it is found while encoding for that level."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache was used after ``close()``."""


class OriginError(CacheError):
    """The origin or a loader raised; the original exception is ``__cause__``."""


class LoadTimeoutError(OriginError):
    """A load took longer than ``hard_timeout`` and no stale value (within
    ``fail_safe_max_age``) could be served instead. The load goes on in the background
    and fills the cache when it lands."""


class TransientError(CacheError):
    """Something that may work on a later attempt: a server down, a timeout."""


class TierUnavailableError(TransientError, ConnectionError):
    """A tier could not reach its store. The hierarchy skips the level and carries on."""

    def __init__(self, tier: str, reason: str) -> None:
        super().__init__(f"tier {tier!r} is unavailable: {reason}")
        self.tier = tier
        self.reason = reason


class PoolTimeoutError(TierUnavailableError):
    """Every connection of a tier's pool stayed busy for ``pool_timeout`` seconds. The
    level is skipped for this call, but the store is not taken for down: the circuit
    breaker does not count it."""


class WriteBehindFullError(CacheError):
    """The write-behind queue holds ``max_pending`` keys already: the write was refused,
    and nothing of it was journaled."""

    def __init__(self, name: str, pending: int, limit: int, adding: int) -> None:
        super().__init__(
            f"write-behind queue {name!r} is full: {pending} keys are waiting for the "
            f"origin, the limit is max_pending={limit}, and this call would add {adding} "
            "more; nothing of it was written. Raise max_pending, slow the writes down, or "
            "check the origin (it is not keeping up, or it is failing: see the queue's "
            "stats.retries and stats.lag_seconds)"
        )
        self.name = name
        self.pending = pending
        self.limit = limit
        self.adding = adding


class JournalError(CacheError):
    """The write-behind journal could not be written or synced (the ``OSError`` is the
    ``__cause__``): a disk full, read-only, or failing."""

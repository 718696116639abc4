"""What a read does when its load fails or is slow: fail-safe and timeouts.

``fail_safe_max_age``: every level keeps an expired value that long past its expiry, and
when a load fails (the origin or the loader raises, or overruns a timeout) the last value
is served instead, if it expired no longer ago than that. ``soft_timeout``: how long a
read waits for its load when a stale value could be served instead; the load goes on in
the background and refreshes the cache when it lands. ``hard_timeout``: how long any
read waits for a load, stale value or not; past it the read raises
:class:`~stratacache.errors.LoadTimeoutError` (or serves a stale value when there is
one) and the load still lands in the background.

Each is a cache-wide default that a call may override (``get_or_load``, ``get_many``,
``cached``). A call may ask for a shorter ``fail_safe_max_age`` than the cache's; a longer
one cannot bring back what the levels did not keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigurationError

__all__ = ["UNSET", "Safety", "given"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: "not given for this call: use the cache's setting" (None means "off")
UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class Safety:
    fail_safe_max_age: float | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("fail_safe_max_age", "soft_timeout", "hard_timeout"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise ConfigurationError(
                    f"{name} must be a finite number of seconds > 0, or None (off); got {value!r}"
                )
        if self.soft_timeout is not None and self.fail_safe_max_age is None:
            raise ConfigurationError(
                "soft_timeout serves the last value when a load is slow, so it needs "
                "fail_safe_max_age (how old that value may be); use hard_timeout to bound "
                "a wait without serving stale values"
            )
        if (
            self.soft_timeout is not None
            and self.hard_timeout is not None
            and self.hard_timeout < self.soft_timeout
        ):
            raise ConfigurationError(
                f"hard_timeout ({self.hard_timeout}) must not be shorter than soft_timeout "
                f"({self.soft_timeout}): the soft one is the wait before a stale value is "
                "served, the hard one the wait before giving up"
            )

    @property
    def active(self) -> bool:
        return (
            self.fail_safe_max_age is not None
            or self.soft_timeout is not None
            or self.hard_timeout is not None
        )

    @property
    def first_wait(self) -> float | None:
        """How long a read waits for its load before it looks for a stale value (or,
        without a soft timeout, gives up): None waits as long as the load takes."""
        return self.soft_timeout if self.soft_timeout is not None else self.hard_timeout

    def for_call(self, **given: Any) -> Safety:
        """This safety with a call's overrides (arguments left at :data:`UNSET` keep the
        cache's value)."""
        changes = {name: value for name, value in given.items() if value is not UNSET}
        if (
            changes.get("fail_safe_max_age", UNSET) is None
            and "soft_timeout" not in changes
            and self.soft_timeout is not None
        ):
            # The call turns the fail-safe off: the cache's soft timeout (which serves
            # stale values) goes with it, rather than refuse the call.
            changes["soft_timeout"] = None
        return replace(self, **changes) if changes else self


def given(fail_safe_max_age: Any, soft_timeout: Any, hard_timeout: Any) -> dict[str, Any]:
    """The fail-safe keywords a decorator was given, to pass on to each call."""
    options = {
        "fail_safe_max_age": fail_safe_max_age,
        "soft_timeout": soft_timeout,
        "hard_timeout": hard_timeout,
    }
    return {name: value for name, value in options.items() if value is not UNSET}

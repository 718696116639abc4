"""The checks every bus transport makes of its arguments."""

from __future__ import annotations

import math

from ..errors import ConfigurationError

__all__ = ["check_transport"]


def check_transport(channel: object, **seconds: object) -> None:
    """``channel`` is a non-empty str; each of ``seconds`` a positive, finite number."""
    if not isinstance(channel, str) or not channel:
        raise ConfigurationError(f"a bus channel is a non-empty str, got {channel!r}")
    for option, value in seconds.items():
        if not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
            raise ConfigurationError(f"{option} must be a positive number, got {value!r}")

"""Log lines that cannot flood: at most one per subject per interval.

A level that is down fails every call that reaches it; logging each failure would write a
line per request (200 lines for 100 misses against a dead Redis), drowning the one line an
operator needs. :class:`Throttle` writes the first failure of a subject at once, then at
most one line per ``interval`` seconds, saying how many it held back since the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}  # subject -> when it may log again
        self._held: dict[str, int] = {}  # subject -> lines held back since its last one

    def warning(self, subject: str, message: str, *args: object) -> bool:
        """Log ``message % args`` for ``subject`` unless it logged within the interval;
        True when the line was written."""
        now = self.clock()
        with self._lock:
            if now < self._next.get(subject, -float("inf")):
                self._held[subject] = self._held.get(subject, 0) + 1
                return False
            self._next[subject] = now + self.interval
            held = self._held.pop(subject, 0)
        if held:
            message += " (%d more like it in the last %gs)"
            args = (*args, held, self.interval)
        self.logger.warning(message, *args)
        return True

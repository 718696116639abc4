"""Work that outlives the call that started it.

Three things run in the background: a load a caller stopped waiting for (it answered
with a stale value, or gave up at ``hard_timeout``), whose result still fills the levels
and settles the single flight; a refresh-ahead reload; and the flow that lands either.
A sync cache runs them on a small thread pool of its own; an async cache as tasks on the
caller's event loop, each kept referenced until it finishes (a task nobody references
can be collected mid-flight). A failure there has no caller to raise to: it is logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Background"]

logger = logging.getLogger("stratacache")

#: threads for a sync cache's background loads: a hung origin holds one per stuck load,
#: and later loads of other keys queue behind them (their callers' timeouts still hold)
WORKERS = 8


class Background:
    def __init__(self, workers: int = WORKERS) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """``fn(*args)`` on a background thread."""
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix="stratacache-background"
                )
            return self._executor.submit(fn, *args)

    def task(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """``coroutine`` as a task of the running loop, kept until it is done."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """Stop taking work; loads already running finish on their own (a thread cannot
        be interrupted), queued ones are dropped, tasks are cancelled."""
        self.closed = True
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for task in list(self._tasks):
            task.cancel()


def log_failure(what: str) -> Callable[[Any], None]:
    """A done-callback that logs what a background future or task raised."""

    def check(done: Any) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            logger.warning("background %s failed: %r", what, exc)

    return check

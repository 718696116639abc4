"""One asyncio client per event loop, for the network tiers' async faces.

A tier object may be used from several event loops over its life (one per thread, or a
test's ``asyncio.run`` after another), while an asyncio connection belongs to the loop
that opened it. :class:`LoopClients` keeps one client per loop and closes each one on
its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

__all__ = ["LoopClients"]


#: Closes scheduled from sync code on a running loop: a task nobody references can be
#: collected before it runs.
_CLOSING: set[asyncio.Task[None]] = set()


class LoopClients:
    """One asyncio client per event loop, each closed while its loop can still run the close.

    asyncio connections belong to the loop that opened them: they can neither be used nor
    closed from another loop, and once their loop is closed nothing can close them (the
    sockets linger until the transports are collected). So each client is held by a small
    async generator started on its own loop. ``asyncio.run()``, like every runner that
    calls ``loop.shutdown_asyncgens()``, closes the suspended generators before it closes
    the loop, and that closes the client on its loop at the right moment. ``close()`` and
    ``aclose()`` close the clients of loops still running through those loops.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._held: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        #: ``(loop, client)`` of the latest use, for the hot path: one tuple, read at once,
        #: so that no thread can pair its loop with another thread's client.
        self.last: tuple[asyncio.AbstractEventLoop | None, Any] = (None, None)

    async def get(self, loop: asyncio.AbstractEventLoop) -> Any:
        with self._lock:
            held = self._held.get(loop)
            # Loops closed without finalizing their async generators (a hand-run loop):
            # nothing can close their clients any more, so only forget them.
            for stale in [old for old in self._held if old.is_closed()]:
                del self._held[stale]
        if held is None:
            client = self._make()
            holder = self._hold(loop, client)
            await holder.__anext__()  # its first step registers it with this loop
            with self._lock:
                self._held[loop] = (client, holder)
        else:
            client = held[0]
        self.last = (loop, client)
        return client

    async def _hold(
        self, loop: asyncio.AbstractEventLoop, client: Any
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._held.get(loop, (None, None))[0] is client:
                    del self._held[loop]
            if self.last[0] is loop:
                self.last = (None, None)
            with contextlib.suppress(Exception):  # a dead server: nothing to close
                await client.aclose()

    async def aclose(self) -> None:
        """Close this loop's client here, and the others through their loops."""
        with self._lock:
            mine = self._held.pop(asyncio.get_running_loop(), None)
        if mine is not None:
            await mine[1].aclose()
        self.close()

    def close(self) -> None:
        with self._lock:
            held = list(self._held.items())
            self._held.clear()
        self.last = (None, None)
        for loop, (_, holder) in held:
            _close_on(loop, holder)


def _close_on(loop: asyncio.AbstractEventLoop, holder: AsyncGenerator[None, None]) -> None:
    """Close ``holder`` (and so its client) on ``loop``, from whatever thread and loop."""
    if loop.is_closed():
        return  # nothing can run there any more (asyncio.run already closed it)
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:  # sync close() called from a coroutine on that very loop
        task = loop.create_task(_finish(holder))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
    elif loop.is_running():  # another thread's loop
        asyncio.run_coroutine_threadsafe(_finish(holder), loop)
    elif running is None:  # a stopped loop, and this thread runs none: run the close now
        loop.run_until_complete(_finish(holder))
    # Else a stopped loop while another one runs in this thread: it cannot be run from
    # here. The holder stays registered with it, so the loop closes the client when it
    # runs again or shuts down.


async def _finish(holder: AsyncGenerator[None, None]) -> None:
    await holder.aclose()

"""A doorbell for the SQLite bus: wake receivers when a row was written, instead of
polling the file every millisecond.

Polling ``PRAGMA data_version`` every millisecond costs each process a thousand
wake-ups a second, each taking the GIL from the threads doing real work: measured, 8 to
22% on the L1 hit path of a busy process (BENCHMARKS.md, issue 11). So each receiver
binds a Unix datagram socket in Linux's abstract namespace (no file to clean up: it
vanishes with the process) and registers its name in a table of the bus file; a
publisher, after its INSERT commits, sends one empty datagram to every registered name.
The receiver blocks in ``recv`` with the GIL released and reads the table when woken.
The table stays the truth: a lost datagram (a full socket buffer) only delays delivery
to the receiver's fallback poll, and a name whose process is gone (the send is refused)
is removed by the publisher that finds it.

Abstract sockets are Linux only; elsewhere :func:`available` is False and the transport
polls, as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import sys
import time
import uuid
from typing import Final

__all__ = ["DOORBELL_SCHEMA", "Bell", "Ringer", "available"]

DOORBELL_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS stratacache_bus_doorbells (
    name TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    pid INTEGER NOT NULL
);
"""
#: how long a publisher trusts its list of receivers before reading it again (a new
#: receiver is rung at the latest that much later; it polls meanwhile)
_LIST_FOR: Final = 0.25


def available() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


class Bell:
    """A receiver's socket: registered in ``conn``'s file under ``channel``."""

    def __init__(self, conn: sqlite3.Connection, channel: str) -> None:
        self.name = f"stratacache-bus-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind("\0" + self.name)
            conn.execute(
                "INSERT OR REPLACE INTO stratacache_bus_doorbells (name, channel, pid) "
                "VALUES (?, ?, ?)",
                (self.name, channel, os.getpid()),
            )
        except BaseException:
            self.sock.close()
            raise

    def wait(self, timeout: float) -> bool:
        """Block (GIL released) until rung or ``timeout``; True when rung. Takes every
        ring already queued: one read of the table answers them all."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recv(16)
        except TimeoutError:
            return False
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(16)
        return True

    def ring_self(self) -> None:
        """Wake this bell's own waiter (a closing transport)."""
        with contextlib.suppress(OSError):
            self.sock.sendto(b"", "\0" + self.name)

    def close(self, conn: sqlite3.Connection | None) -> None:
        self.sock.close()
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("DELETE FROM stratacache_bus_doorbells WHERE name = ?", (self.name,))


class Ringer:
    """A publisher's side: rings every receiver of ``channel`` after a commit."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._names: list[str] = []
        self._listed = -_LIST_FOR

    def ring(self, conn: sqlite3.Connection, skip: str | None = None) -> None:
        """Ring every receiver of the channel but ``skip`` (this process's own: it
        ignores its own messages anyway)."""
        now = time.monotonic()
        if now - self._listed >= _LIST_FOR:
            self._names = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM stratacache_bus_doorbells WHERE channel = ?",
                    (self.channel,),
                )
            ]
            self._listed = now
        gone: list[str] = []
        for name in self._names:
            if name == skip:
                continue
            try:
                self.sock.sendto(b"", "\0" + name)
            except (ConnectionRefusedError, FileNotFoundError):
                gone.append(name)  # its process is gone
            except OSError:
                pass  # a full buffer: it has rings waiting already; the table is the truth
        if gone:
            self._names = [name for name in self._names if name not in gone]
            with contextlib.suppress(sqlite3.Error):
                conn.executemany(
                    "DELETE FROM stratacache_bus_doorbells WHERE name = ?", [(n,) for n in gone]
                )

    def close(self) -> None:
        self.sock.close()

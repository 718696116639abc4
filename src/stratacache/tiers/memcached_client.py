"""A small asyncio memcached client: the text protocol over asyncio streams, one server.

**Why it exists.** pymemcache has no asyncio path, so without this client the memcached
tier's async face has to run the sync ``Client`` in a thread pool: every async call pays
a hop to a worker thread and back, and, worse, a burst of async callers queues *without
any bound* behind a few threads that are all stuck on a server that stopped answering.
This client speaks the protocol natively on the event loop instead. Its methods mirror the part of
``pymemcache.client.base.Client`` the tier uses (``get``, ``get_many``, ``gets_many``,
``set_many``, ``add``, ``cas``, ``incr``, ``delete_many``, ``close``) with the same names,
arguments, return values and exception families, so tier code is written once as "a
function of a client" and the async face merely awaits what the sync face returns.

**A pool that waits, with a bound.** Each client owns at most ``max_connections``
connections. A caller that finds all of them busy waits its turn (first come, first
served) rather than failing: a burst of a thousand tasks is the normal case for an async
application, not an error. But the wait is bounded by ``timeout``: when a server pauses,
every connection hangs, and callers must learn that within a known time instead of
piling up forever; after ``pool_timeout`` (default ``timeout``) they get a
:class:`PoolExhaustedError`, which is not an ``OSError``: a burst on a healthy server
must not be taken for an outage. Worst case, a call therefore takes ``pool_timeout``
(waiting for a connection) + ``connect_timeout``
+ ``timeout`` (the exchange itself; that pair twice in the one retry described below),
and usually one round trip.

**Discard on error.** A connection goes back to the pool only after a complete, successful
exchange. After an error, a timeout or a cancellation in the middle of a request nobody
knows how much of the request the server read or how much of the reply is still on its
way; the next user of that connection would read someone else's reply. So such a
connection is aborted, never reused, and a cancelled task can never make another task
read a wrong value. Error replies (``SERVER_ERROR`` ...) discard the connection too: they
are rare, and reasoning about which of them leave the stream in step is not worth a
reconnect. The one failure that is retried is a *pooled* connection that the server
closed before saying a single byte (it restarted, or dropped the idle connection): the
request is sent once more on a new connection. That is safe even for ``incr``, ``add``
and ``cas``:
a memcached that closes without replying has not executed anything that survives (it has
no persistence), and a server that is really gone refuses the new connection.

**Errors** are those pymemcache raises, so one ``except`` serves both clients: refused,
reset and timed-out connections are ``OSError`` (``ConnectionError``, ``TimeoutError``);
``ERROR``, ``CLIENT_ERROR`` and ``SERVER_ERROR`` replies become
``MemcacheUnknownCommandError``, ``MemcacheClientError`` and ``MemcacheServerError``; a
connection closed in the middle of a reply is ``MemcacheUnexpectedCloseError``; a reply
that cannot be parsed is ``MemcacheUnknownError``. Replies are parsed strictly (a value is
read by its exact byte count, so it may contain ``\\r\\n``; a ``VALUE`` for a name that
was not asked for is an error), which turns any loss of step into an exception, never
into a wrong value. Names are refused with ``ValueError`` (wrong type: ``TypeError``)
before anything is sent if they could not be one memcached key: no command can be
smuggled in through a name.

**Values** are opaque bytes: flags are written as 0 and ignored on read, as the tier's
pymemcache serde does, so either client reads what the other wrote.

**One event loop.** asyncio streams belong to the loop that opened them, so a client
belongs to the event loop it is first used on; using it from another loop raises
``RuntimeError``: create one client per loop. It is not thread-safe. Close it on its loop
before the loop closes: a closed loop can no longer close sockets, which are then left to
the garbage collector.

**noreply.** ``noreply=None`` means ``False`` here (wait for the reply), where pymemcache
defaults to its ``default_noreply=True``; the tier passes ``noreply=False`` anyway.
``noreply=True`` is honoured (the call returns once the request is handed to the socket,
with pymemcache's return values), but memcached's silence then also hides its errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, overload

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

__all__ = ["AsyncMemcachedClient", "PoolExhaustedError"]


class PoolExhaustedError(Exception):
    """Every connection stayed busy for ``pool_timeout``. Not an OSError on purpose: the
    server may be perfectly healthy (a burst), so callers must not take it for down."""


T = TypeVar("T")

_MAX_NAME_BYTES: Final = 250
#: A memcached key ends at a space or a line end; every control byte is refused too.
_NOT_IN_A_NAME: Final = re.compile(rb"[\x00-\x20\x7f]")
_END: Final = b"END\r\n"
_STORED: Final = b"STORED\r\n"
_NOT_STORED: Final = b"NOT_STORED\r\n"
_DELETED: Final = b"DELETED\r\n"
_NOT_FOUND: Final = b"NOT_FOUND\r\n"
_EXISTS: Final = b"EXISTS\r\n"


class _Stale(Exception):
    """A pooled connection was closed by the server before it replied (internal)."""


class _Connection:
    """One stream pair, plus what decides whether a failure on it may be retried."""

    __slots__ = ("epoch", "reader", "replied", "reused", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, epoch: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.epoch = epoch  # close() retires the connections of earlier epochs
        self.reused = False  # has completed an exchange before this one
        self.replied = False  # a full reply line has arrived in this exchange

    def usable(self) -> bool:
        # The loop notices a server's FIN or RST on an idle connection on its own, so a
        # restarted server's old connections are usually weeded out here, at no cost.
        return not (
            self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None
        )

    async def line(self) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        self.replied = True
        return line

    async def value(self, size: int) -> bytes:
        # Two exact reads rather than one of size + 2 and a slice: no copy of a large value.
        data = await self.reader.readexactly(size)
        if await self.reader.readexactly(2) != b"\r\n":
            raise MemcacheUnknownError(f"a value of {size} bytes not followed by \\r\\n")
        return data

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # its event loop is closed already
            self.writer.close()

    def abort(self) -> None:
        # abort, not close: close() would keep the socket until its write buffer drained,
        # which is never for a request stuck behind a paused server.
        with contextlib.suppress(RuntimeError):
            self.writer.transport.abort()


#: Reads one exchange's reply from a connection.
Reply = Callable[[_Connection], Awaitable[T]]


class AsyncMemcachedClient:
    """An asyncio client of one memcached server; see the module docstring.

    ``timeout`` bounds each exchange and ``connect_timeout`` opening a connection;
    ``max_connections`` bounds the pool, and ``pool_timeout`` (default ``timeout``) the
    wait for a free connection. ``on_wait``, when given, is called each time a caller
    has to wait for one (a statistic).
    Belongs to the event loop it is first used on.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        connect_timeout: float,
        timeout: float,
        max_connections: int = 16,
        pool_timeout: float | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        host, port = address
        self.address: tuple[str, int] = (host, port)
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.timeout = _seconds("timeout", timeout)
        self.pool_timeout = (
            self.timeout if pool_timeout is None else _seconds("pool_timeout", pool_timeout)
        )
        self._on_wait = on_wait
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        self.max_connections = max_connections
        self._label = f"{host}:{port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Connection] = []  # LIFO: the warmest connection first
        self._free = max_connections  # slots nobody holds; > 0 only when nobody waits
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._epoch = 0

    def __repr__(self) -> str:
        busy = self.max_connections - self._free
        return (
            f"<AsyncMemcachedClient {self._label} busy={busy}/{self.max_connections} "
            f"idle={len(self._idle)}>"
        )

    # ------------------------------------------------------------------ commands

    async def get(self, name: str) -> bytes | None:
        """The value stored under ``name``, or None."""
        key = _encode(name)
        found = await self._request(b"get " + key + b"\r\n", _values({key: name}))
        return found.get(name)

    async def get_many(self, names: Iterable[str]) -> dict[str, bytes]:
        """The values of those ``names`` that are stored, in one ``get`` request."""
        wanted = {_encode(name): name for name in names}  # also drops repeated names
        if not wanted:
            return {}
        return await self._request(b"get " + b" ".join(wanted) + b"\r\n", _values(wanted))

    async def gets_many(self, names: Iterable[str]) -> dict[str, tuple[bytes, bytes]]:
        """``(value, cas unique)`` for those ``names`` that are stored, in one ``gets``
        request; the unique is the digits as bytes, as pymemcache returns it."""
        wanted = {_encode(name): name for name in names}
        if not wanted:
            return {}
        payload = b"gets " + b" ".join(wanted) + b"\r\n"
        return await self._request(payload, _values(wanted, cas=True))

    async def set_many(
        self, values: dict[str, bytes], expire: int = 0, noreply: bool | None = None
    ) -> list[str]:
        """Store every value (all ``set`` commands in one write); the names NOT stored."""
        if not values:
            return []
        names = list(values)  # the order of the replies, whatever happens to `values`
        exptime = _number("expire", expire)
        ending = b" noreply\r\n" if noreply else b"\r\n"
        parts: list[bytes] = []
        for name, value in values.items():
            data = _data(value)
            parts += (_store_line(b"set ", _encode(name), exptime, len(data), ending), data)
            parts.append(b"\r\n")
        payload = b"".join(parts)
        if noreply:
            await self._request(payload, _flushed)
            return []
        stored = await self._request(payload, functools.partial(_stored, len(names)))
        return [name for name, ok in zip(names, stored, strict=True) if not ok]

    async def add(
        self, name: str, value: bytes, expire: int = 0, noreply: bool | None = None
    ) -> bool:
        """Store ``value`` unless ``name`` exists: whether it was stored (True if noreply)."""
        data = _data(value)
        ending = b" noreply\r\n" if noreply else b"\r\n"
        line = _store_line(b"add ", _encode(name), _number("expire", expire), len(data), ending)
        payload = line + data + b"\r\n"
        if noreply:
            await self._request(payload, _flushed)
            return True
        return (await self._request(payload, functools.partial(_stored, 1)))[0]

    async def cas(
        self,
        name: str,
        value: bytes,
        cas: int | str | bytes,
        expire: int = 0,
        noreply: bool | None = None,
    ) -> bool | None:
        """Store ``value`` if ``name`` still has the unique ``cas`` (from ``gets_many``):
        True if stored, False if it changed since, None if it is gone (True if noreply)."""
        data = _data(value)
        unique = b" " + _unique(cas)
        ending = unique + (b" noreply\r\n" if noreply else b"\r\n")
        line = _store_line(b"cas ", _encode(name), _number("expire", expire), len(data), ending)
        payload = line + data + b"\r\n"
        if noreply:
            await self._request(payload, _flushed)
            return True
        return await self._request(payload, _swapped)

    async def incr(self, name: str, value: int, noreply: bool | None = False) -> int | None:
        """Add ``value`` to the counter ``name``: its new value, None if it is absent (or
        if noreply)."""
        payload = b"incr " + _encode(name) + b" " + _number("value", value)
        if noreply:
            await self._request(payload + b" noreply\r\n", _flushed)
            return None
        return await self._request(payload + b"\r\n", _counter)

    async def delete_many(self, names: Iterable[str], noreply: bool | None = None) -> bool:
        """Delete every name (pipelined); True, as pymemcache returns, absent names
        included."""
        ending = b" noreply\r\n" if noreply else b"\r\n"
        commands = [b"delete " + _encode(name) + ending for name in names]
        if not commands:
            return True
        payload = b"".join(commands)
        if noreply:
            await self._request(payload, _flushed)
        else:
            await self._request(payload, functools.partial(_deleted, len(commands)))
        return True

    def close(self) -> None:
        """Close the idle connections now, and each busy one when its exchange ends.

        As with pymemcache, the client stays usable: the next call connects again."""
        self._epoch += 1
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def aclose(self) -> None:
        """``close()``, then wait until the idle connections are closed."""
        idle = list(self._idle)
        self.close()
        for connection in idle:
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()

    async def __aenter__(self) -> AsyncMemcachedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the pool

    async def _request(self, payload: bytes, reply: Reply[T]) -> T:
        self._bind()
        await self._take_slot()
        try:
            connection = await self._connection()
            try:
                return await self._exchange(connection, payload, reply)
            except _Stale:
                # Its siblings in the pool are most likely just as dead (the server
                # restarted): do not walk through them one failure at a time.
                self._drop_idle()
                connection = await self._connect()
                return await self._exchange(connection, payload, reply)
        finally:
            self._give_slot()

    async def _exchange(self, connection: _Connection, payload: bytes, reply: Reply[T]) -> T:
        # No drain() between the write and the reads: a large pipeline could fill both
        # directions' buffers and deadlock if we waited for ours to empty before reading
        # the server's; the transport keeps writing in the background while we read.
        try:
            async with asyncio.timeout(self.timeout):
                connection.writer.write(payload)
                result = await reply(connection)
        except TimeoutError:
            connection.abort()
            raise TimeoutError(
                f"memcached {self._label}: no reply within {self.timeout:g} s"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            connection.abort()
            partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
            if connection.reused and not connection.replied and not partial:
                raise _Stale from exc
            if isinstance(exc, asyncio.IncompleteReadError):
                raise MemcacheUnexpectedCloseError(
                    f"memcached {self._label} closed the connection in the middle of a reply"
                ) from exc
            raise
        except (asyncio.LimitOverrunError, ValueError) as exc:
            connection.abort()
            raise MemcacheUnknownError(f"memcached {self._label}: unreadable reply") from exc
        except BaseException:
            connection.abort()  # cancelled, or an error reply: the stream's state is unknown
            raise
        connection.reused = True
        connection.replied = False
        if connection.epoch == self._epoch:
            self._idle.append(connection)
        else:
            connection.close()
        return result

    async def _connection(self) -> _Connection:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
            connection.abort()
        return await self._connect()

    async def _connect(self) -> _Connection:
        host, port = self.address
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise TimeoutError(
                f"memcached {self._label}: no connection within {self.connect_timeout:g} s"
            ) from None
        return _Connection(reader, writer, self._epoch)

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                raise RuntimeError(
                    f"AsyncMemcachedClient for {self._label} belongs to the event loop it "
                    "was first used on (asyncio streams cannot change loops): use one "
                    "client per event loop"
                )
            self._loop = loop

    async def _take_slot(self) -> None:
        if self._free:
            self._free -= 1
            return
        assert self._loop is not None
        if self._on_wait is not None:
            self._on_wait()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.pool_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # A slot was handed over just as we gave up: hand it on, or it is lost.
                self._give_slot()
            # Otherwise the cancelled waiter stays queued; _give_slot skips it.
            if isinstance(exc, TimeoutError):
                raise PoolExhaustedError(
                    f"memcached {self._label}: all {self.max_connections} connections "
                    f"stayed busy for {self.pool_timeout:g}s (pool_timeout)"
                ) from None
            raise

    def _give_slot(self) -> None:
        # Straight to the first live waiter, never through _free: a newcomer must not
        # overtake a task that has been waiting.
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


# ---------------------------------------------------------------------- replies


@overload
def _values(wanted: dict[bytes, str]) -> Reply[dict[str, bytes]]: ...
@overload
def _values(
    wanted: dict[bytes, str], *, cas: Literal[True]
) -> Reply[dict[str, tuple[bytes, bytes]]]: ...
def _values(wanted: dict[bytes, str], *, cas: bool = False) -> Reply[dict[str, Any]]:
    """The values of a ``get`` (name -> value) or, with ``cas``, of a ``gets`` (name ->
    ``(value, cas unique)``, the unique required)."""

    async def read(connection: _Connection) -> dict[str, Any]:
        found: dict[str, Any] = {}
        while True:
            line = await connection.line()
            if line == _END:
                return found
            if not line.startswith(b"VALUE "):
                raise _error(line)
            parts = line.split()  # VALUE <key> <flags> <bytes> [<cas unique>]
            if (
                len(parts) not in (4, 5)
                or not parts[3].isdigit()
                or (cas and (len(parts) != 5 or not parts[4].isdigit()))
            ):
                raise MemcacheUnknownError(line[:64])
            name = wanted.get(parts[1])
            if name is None:  # not ours: the stream is out of step
                raise MemcacheUnknownError(line[:64])
            value = await connection.value(int(parts[3]))
            found[name] = (value, parts[4]) if cas else value

    return read


async def _stored(count: int, connection: _Connection) -> list[bool]:
    results: list[bool] = []
    for _ in range(count):
        line = await connection.line()
        if line == _STORED:
            results.append(True)
        elif line == _NOT_STORED:
            results.append(False)
        else:
            raise _error(line)
    return results


async def _swapped(connection: _Connection) -> bool | None:
    line = await connection.line()
    if line == _STORED:
        return True
    if line == _EXISTS:
        return False
    if line == _NOT_FOUND:
        return None
    raise _error(line)


async def _deleted(count: int, connection: _Connection) -> None:
    for _ in range(count):
        line = await connection.line()
        if line != _DELETED and line != _NOT_FOUND:
            raise _error(line)


async def _counter(connection: _Connection) -> int | None:
    line = await connection.line()
    if line == _NOT_FOUND:
        return None
    digits = line[:-2]
    if not digits.isdigit():
        raise _error(line)
    return int(digits)


async def _flushed(connection: _Connection) -> None:
    await connection.writer.drain()


def _error(line: bytes) -> Exception:
    """The exception for a reply line that is not what the command expects, as pymemcache
    maps it (the message is the server's text after the first space, as bytes)."""
    text = line.rstrip(b"\r\n")
    message = text[text.find(b" ") + 1 :]
    if text.startswith(b"ERROR"):
        return MemcacheUnknownCommandError(text)  # type: ignore[no-any-return]
    if text.startswith(b"CLIENT_ERROR"):
        return MemcacheClientError(message)  # type: ignore[no-any-return]
    if text.startswith(b"SERVER_ERROR"):
        return MemcacheServerError(message)  # type: ignore[no-any-return]
    return MemcacheUnknownError(text[:64])  # type: ignore[no-any-return]


# ---------------------------------------------------------------------- arguments


def _encode(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"a memcached name must be a str, not {type(name).__name__}")
    key = name.encode()  # a lone surrogate raises UnicodeEncodeError, a ValueError
    if not key or len(key) > _MAX_NAME_BYTES or _NOT_IN_A_NAME.search(key):
        raise ValueError(
            f"not a memcached name (1 to {_MAX_NAME_BYTES} UTF-8 bytes, no whitespace or "
            f"control characters): {name[:60]!r}"
        )
    return key


def _data(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"a memcached value must be bytes, not {type(value).__name__}")
    return bytes(value)


def _number(what: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    return b"%d" % value


def _unique(cas: int | str | bytes) -> bytes:
    """A cas unique as its digits (what ``gets_many`` returned, or an int)."""
    if isinstance(cas, bool) or not isinstance(cas, int | str | bytes):
        raise TypeError(f"a cas unique must be an int, str or bytes, not {cas!r}")
    digits = cas if isinstance(cas, bytes) else str(cas).encode("ascii", "replace")
    if not digits.isdigit():  # bytes.isdigit: ASCII digits only
        raise ValueError(f"a cas unique is a non-negative integer, not {cas!r}")
    return digits


def _store_line(command: bytes, key: bytes, exptime: bytes, size: int, ending: bytes) -> bytes:
    return b"%s%s 0 %s %d%s" % (command, key, exptime, size, ending)  # flags always 0


def _seconds(what: str, value: float) -> float:
    seconds = float(value)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return seconds

"""The asyncio memcached client against real memcached servers: every method's round trip,
the bounded pool under a burst and under a paused server, a killed and a restarted server,
cancellation in the middle of requests, and the mapping of error replies. Replies a real
server never sends (``ERROR`` to our commands, ``NOT_STORED`` to a ``set``, a connection
closed half-way through a value, garbage) come from a scripted server in the test."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

from stratacache.tiers.memcached_client import AsyncMemcachedClient, PoolExhaustedError

from ..servers import MemcachedServer

T = TypeVar("T")
ONE_MB = 1024 * 1024 - 1024  # the largest round value under memcached's default -I 1m


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def client(
    address: tuple[str, int], *, timeout: float = 2.0, **options: Any
) -> AsyncMemcachedClient:
    options.setdefault("connect_timeout", 1.0)
    return AsyncMemcachedClient(address, timeout=timeout, **options)


def stats(server: MemcachedServer) -> dict[str, int]:
    """The server's own counters, read over a connection of our own (counted in them)."""
    with socket.create_connection(server.address, timeout=2.0) as sock:
        sock.sendall(b"stats\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            assert chunk, "memcached closed the stats connection"
            reply += chunk
    counters: dict[str, int] = {}
    for line in reply.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            counters[parts[1]] = int(parts[2])
    return counters


async def timed(awaitable: Awaitable[T]) -> tuple[float, T | BaseException]:
    start = time.monotonic()
    try:
        result: T | BaseException = await awaitable
    except Exception as exc:
        result = exc
    return time.monotonic() - start, result


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[tuple[str, int]]:
    """A fake memcached on this loop that answers every connection with ``script``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


def replying(reply: bytes, *, then_close: bool = False) -> Script:
    """Read one request line (and a value block if it is a store), answer ``reply``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if line.startswith((b"set ", b"add ")):
                await reader.readexactly(int(line.split()[4]) + 2)
            writer.write(reply)
            await writer.drain()
            if then_close:
                return

    return script


# ------------------------------------------------------------------------ round trips


def test_every_method_round_trips(memcached_servers: list[MemcachedServer]) -> None:
    rng = random.Random(7)
    big = bytearray(rng.randbytes(ONE_MB))
    big[1000:1002] = b"\r\n"
    big[-7:] = b"\r\nEND\r\n"
    values = {
        "plain": b"value",
        "crlf": b"a\r\nEND\r\nVALUE other 0 1\r\nx\r\n",
        "empty": b"",
        "binary": bytes(range(256)) * 4,
        "big": bytes(big),
        "ключ-✓": "значение".encode(),
    }

    async def scenario() -> None:
        async with client(memcached_servers[0].address) as mc:
            assert await mc.get("plain") is None
            assert await mc.get_many(["plain", "crlf"]) == {}
            assert await mc.set_many(values) == []
            for name, value in values.items():
                assert await mc.get(name) == value
            assert await mc.get_many([*values, "absent"]) == values
            assert await mc.get_many([]) == {}

            assert await mc.add("fresh", b"1") is True
            assert await mc.add("fresh", b"2") is False
            assert await mc.get("fresh") == b"1"

            assert await mc.incr("counter", 1) is None
            assert await mc.set_many({"counter": b"41"}, expire=600) == []
            assert await mc.incr("counter", 1) == 42
            assert await mc.incr("counter", 2**63) == 2**63 + 42

            assert await mc.delete_many(["plain", "big", "never-there"]) is True
            assert await mc.get_many(["plain", "big", "crlf"]) == {"crlf": values["crlf"]}
            assert await mc.delete_many([]) is True

            # A negative expiry is "already expired": the argument reaches the server.
            assert await mc.set_many({"expired": b"x"}, expire=-1) == []
            assert await mc.add("expired-add", b"x", expire=-1) is True
            assert await mc.get_many(["expired", "expired-add"]) == {}

            # noreply: pymemcache's return values, and the stream stays in step.
            assert await mc.set_many({"quiet": b"q"}, noreply=True) == []
            assert await mc.add("quiet-add", b"a", noreply=True) is True
            assert await mc.incr("counter", 1, noreply=True) is None
            assert await mc.delete_many(["fresh"], noreply=True) is True
            assert await mc.get_many(["quiet", "quiet-add", "counter", "fresh"]) == {
                "quiet": b"q",
                "quiet-add": b"a",
                "counter": str(2**63 + 43).encode(),
            }

    run(scenario())


def test_reads_what_pymemcache_writes_and_the_other_way_round(
    memcached_servers: list[MemcachedServer],
) -> None:
    sync = Client(memcached_servers[0].address, allow_unicode_keys=True, default_noreply=False)
    sync.set("theirs", b"a\r\nb", flags=7)  # flags are ignored on read
    sync.set("ключ", b"unicode name")

    async def scenario() -> None:
        async with client(memcached_servers[0].address) as mc:
            assert await mc.get_many(["theirs", "ключ"]) == {
                "theirs": b"a\r\nb",
                "ключ": b"unicode name",
            }
            assert await mc.set_many({"ours": b"\x00\r\n\xff"}) == []

    run(scenario())
    assert sync.get("ours") == b"\x00\r\n\xff"
    assert sync.gets("ours")[0] == b"\x00\r\n\xff"
    sync.close()


def test_get_many_of_200_names(memcached_servers: list[MemcachedServer]) -> None:
    names = [f"user:{i}:profile-{'x' * (i % 50)}" for i in range(200)]
    stored = {name: f"value {i}".encode() * (i + 1) for i, name in enumerate(names) if i % 2}

    async def scenario() -> None:
        async with client(memcached_servers[0].address) as mc:
            assert await mc.set_many(stored) == []
            assert await mc.get_many(names) == stored
            assert await mc.get_many(iter(names + names[:10])) == stored  # iterable, repeats

    run(scenario())


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "smuggle\r\nflush_all",
        "sentinel noreply\r\ndelete sentinel",
        "tab\there",
        "nul\x00",
        "del\x7f",
        "x" * 251,
        "é" * 125 + "x",  # 251 bytes in UTF-8
        "lone \udc80 surrogate",
    ],
    ids=[
        "empty",
        "space",
        "crlf",
        "noreply-crlf",
        "tab",
        "nul",
        "del",
        "251",
        "251-utf8",
        "surrogate",
    ],
)
def test_names_that_are_not_one_key_are_refused_before_any_io(
    memcached_servers: list[MemcachedServer], name: str
) -> None:
    server = memcached_servers[0]

    async def scenario() -> None:
        async with client(server.address) as mc:
            assert await mc.set_many({"sentinel": b"kept"}) == []
            before = stats(server)
            with pytest.raises(ValueError):
                await mc.get(name)
            with pytest.raises(ValueError):
                await mc.get_many(["sentinel", name])
            with pytest.raises(ValueError):
                await mc.set_many({"sentinel": b"new", name: b"v"})
            with pytest.raises(ValueError):
                await mc.add(name, b"v")
            with pytest.raises(ValueError):
                await mc.incr(name, 1)
            with pytest.raises(ValueError):
                await mc.delete_many(["sentinel", name])
            after = stats(server)
            assert after["cmd_get"] == before["cmd_get"]
            assert after["cmd_set"] == before["cmd_set"]
            assert await mc.get("sentinel") == b"kept"

    run(scenario())


def test_the_longest_names_and_wrong_argument_types(
    memcached_servers: list[MemcachedServer],
) -> None:
    address = memcached_servers[0].address

    async def scenario() -> None:
        async with client(address) as mc:
            longest = {"x" * 250: b"ascii", "é" * 125: b"two-byte"}
            assert await mc.set_many(longest) == []
            assert await mc.get_many(longest) == longest
            with pytest.raises(TypeError):
                await mc.get(b"bytes-name")  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await mc.set_many({"k": "not bytes"})  # type: ignore[dict-item]
            with pytest.raises(TypeError):
                await mc.add("k", b"v", expire=1.5)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await mc.incr("k", True)

    run(scenario())
    for bad in ({"max_connections": 0}, {"timeout": 0.0}, {"connect_timeout": float("inf")}):
        with pytest.raises(ValueError):
            client(address, **bad)


# ------------------------------------------------------------------------ the pool


def test_a_burst_of_1000_tasks_shares_8_connections(
    memcached_servers: list[MemcachedServer],
) -> None:
    server = memcached_servers[0]

    async def one(mc: AsyncMemcachedClient, i: int) -> None:
        name = f"burst:{i}"
        value = f"value of {i}".encode() * (1 + i % 7)
        assert await mc.set_many({name: value}) == []
        assert await mc.get(name) == value
        assert await mc.get_many([name, f"burst:absent:{i}"]) == {name: value}

    async def scenario() -> None:
        before = stats(server)["total_connections"]
        async with client(server.address, max_connections=8) as mc:
            await asyncio.gather(*(one(mc, i) for i in range(1000)))
        # Every connection ever accepted since `before`, less the second stats connection.
        opened = stats(server)["total_connections"] - before - 1
        assert opened == 8

    run(scenario())


def test_a_paused_server_exhausts_the_pool_and_callers_time_out_within_timeout(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    server = fresh_memcached_servers[0]
    timeout = 0.5

    async def scenario() -> None:
        mc = client(server.address, timeout=timeout, connect_timeout=0.5, max_connections=2)
        assert await mc.set_many({"k": b"v"}) == []
        server.pause()
        try:
            start = time.monotonic()
            outcomes = await asyncio.gather(*(timed(mc.get("k")) for _ in range(10)))
            total = time.monotonic() - start
        finally:
            server.resume()
        # A reply that never came is a TimeoutError (the server is sick); a connection
        # that never came free is not an OSError at all (it may be a healthy burst).
        assert all(
            isinstance(result, TimeoutError | PoolExhaustedError) for _, result in outcomes
        ), outcomes
        exhausted = [t for t, result in outcomes if isinstance(result, PoolExhaustedError)]
        assert all(not isinstance(r, OSError) for _, r in outcomes if "stayed busy" in str(r))
        # The two callers that got the connections wait for a reply; most of the others
        # give up waiting for a connection, after about `timeout`, not later.
        assert len(exhausted) >= 4, outcomes
        assert all(0.8 * timeout <= t <= 1.5 * timeout for t in exhausted), outcomes
        assert total < 2 * timeout + 0.5 + 0.5  # worst case (wait + connect + exchange) + slack
        # No slot leaked: the whole pool serves again, and every reply is the right one.
        values = await asyncio.gather(*(mc.get("k") for _ in range(50)))
        assert values == [b"v"] * 50
        await mc.aclose()

    run(scenario())


def test_a_killed_server_raises_connection_error_fast(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    server = fresh_memcached_servers[0]

    async def scenario() -> None:
        mc = client(server.address, timeout=3.0, connect_timeout=3.0)
        await asyncio.gather(*(mc.get("k") for _ in range(4)))  # four pooled connections
        server.kill()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: mc.get("k"),
            lambda: mc.get_many(["a", "b"]),
            lambda: mc.set_many({"k": b"v"}),
        ]
        for call in calls:
            elapsed, result = await timed(call())
            assert isinstance(result, ConnectionError), result
            assert elapsed < 0.5
        server.start()  # same port
        assert await mc.set_many({"k": b"back"}) == []
        assert await mc.get("k") == b"back"
        await mc.aclose()

    run(scenario())


def test_a_restarted_server_costs_no_failure(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    """The pooled connections predate the restart: a request on one of them meets a closed
    connection before any reply and is sent again on a new one, not reported."""
    server = fresh_memcached_servers[0]

    async def scenario() -> None:
        mc = client(server.address, max_connections=4)
        await asyncio.gather(*(mc.get("k") for _ in range(4)))
        server.kill()
        server.start()  # the loop has not run since: the pool has not seen the closes
        assert await mc.incr("n", 1) is None  # not added twice, not failed
        assert await mc.set_many({"k": b"v"}) == []
        assert await asyncio.gather(*(mc.get("k") for _ in range(8))) == [b"v"] * 8
        await mc.aclose()

    run(scenario())


def test_close_closes_the_pooled_connections_and_the_client_reconnects(
    memcached_servers: list[MemcachedServer],
) -> None:
    server = memcached_servers[0]

    async def current() -> int:
        await asyncio.sleep(0.05)  # the server notices closed connections on its own time
        return stats(server)["curr_connections"]

    async def scenario() -> None:
        mc = client(server.address, max_connections=4)
        baseline = await current()
        await asyncio.gather(*(mc.get("k") for _ in range(4)))
        assert await current() == baseline + 4
        await mc.aclose()
        assert await current() == baseline
        assert await mc.get("k") is None  # usable again, like pymemcache's Client
        assert await current() == baseline + 1
        mc.close()
        assert await current() == baseline

    run(scenario())


def test_a_client_belongs_to_its_first_event_loop(
    memcached_servers: list[MemcachedServer],
) -> None:
    mc = client(memcached_servers[0].address)

    async def use() -> bytes | None:
        value = await mc.get("k")
        await mc.aclose()  # closed or not, the client stays bound to this loop
        return value

    assert run(use()) is None
    with pytest.raises(RuntimeError, match="event loop"):
        run(use())


# ------------------------------------------------------------------------ cancellation


def test_a_request_cancelled_mid_flight_never_hands_its_reply_to_the_next(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    server = fresh_memcached_servers[0]

    async def scenario() -> None:
        # One connection: if the cancelled request's connection were reused, the next
        # request would read the cancelled one's reply.
        mc = client(server.address, max_connections=1)
        assert await mc.set_many({"a": b"A", "b": b"B", "n": b"10"}) == []
        before = stats(server)["total_connections"]
        server.pause()
        try:
            reading = asyncio.create_task(mc.get("a"))
            counting = asyncio.create_task(mc.incr("n", 5))  # waits for the connection
            await asyncio.sleep(0.1)
            reading.cancel()
            counting.cancel()
            for task in (reading, counting):
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            server.resume()
        await asyncio.sleep(0.05)  # the server now answers "get a" on the old connection
        assert await mc.get("b") == b"B"
        assert await mc.get_many(["b", "a"]) == {"a": b"A", "b": b"B"}
        assert await mc.incr("n", 1) == 11  # the cancelled incr never left the queue
        # The paused request's connection was dropped and exactly one new one opened (the
        # other connection counted is the second stats connection).
        assert stats(server)["total_connections"] - before == 2
        await mc.aclose()

    run(scenario())


def test_a_waiter_cancelled_just_as_it_is_handed_the_connection_passes_it_on(
    memcached_servers: list[MemcachedServer],
) -> None:
    async def scenario() -> None:
        mc = client(memcached_servers[0].address, timeout=0.5, max_connections=1)
        waiting: asyncio.Task[bytes | None] | None = None

        async def holder() -> None:
            await mc.get("k")  # hands the connection to `waiting` on the way out ...
            assert waiting is not None
            waiting.cancel()  # ... which is cancelled before it could run

        holding = asyncio.create_task(holder())
        waiting = asyncio.create_task(mc.get("k"))
        await holding
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await mc.get("k") is None  # the connection was not lost with the waiter
        await mc.aclose()

    run(scenario())


def test_random_cancellations_in_a_burst_never_cross_replies(
    memcached_servers: list[MemcachedServer],
) -> None:
    rng = random.Random(2024)
    names = [f"x:{i}" for i in range(300)]
    # Values of several sizes, so that replies take several reads and cancellations land
    # in the middle of them.
    values = {name: name.encode() * rng.choice([1, 50, 3000]) for name in names}

    async def check(mc: AsyncMemcachedClient, picked: list[str]) -> None:
        if len(picked) == 1:
            assert await mc.get(picked[0]) == values[picked[0]]
        else:
            assert await mc.get_many(picked) == {name: values[name] for name in picked}

    async def scenario() -> None:
        async with client(memcached_servers[0].address, max_connections=4) as mc:
            assert await mc.set_many(values) == []
            tasks = [
                asyncio.create_task(check(mc, rng.sample(names, rng.choice([1, 1, 5, 40]))))
                for _ in range(600)
            ]
            cancelled = 0
            while not all(task.done() for task in tasks):
                await asyncio.sleep(0)
                pending = [task for task in tasks if not task.done()]
                if pending and rng.random() < 0.5:
                    cancelled += rng.choice(pending).cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failures = [o for o in outcomes if not isinstance(o, asyncio.CancelledError | None)]
            assert failures == []
            assert cancelled > 50
            assert outcomes.count(None) > 100
            # And after all that, the pool still hands out connections in step.
            await check(mc, names)

    run(scenario())


# ------------------------------------------------------------------------ error replies


def test_error_replies_of_a_real_server_are_mapped(
    memcached_servers: list[MemcachedServer],
) -> None:
    async def scenario() -> None:
        async with client(memcached_servers[0].address, max_connections=1) as mc:
            assert await mc.set_many({"text": b"not a number", "ok": b"fine"}) == []
            with pytest.raises(MemcacheClientError, match="non-numeric"):
                await mc.incr("text", 1)
            with pytest.raises(MemcacheClientError, match="invalid numeric delta"):
                await mc.incr("text", -1)
            with pytest.raises(MemcacheServerError, match="too large"):
                await mc.set_many({"huge": b"x" * (2 * 1024 * 1024)})
            with pytest.raises(MemcacheServerError, match="too large"):
                await mc.add("huge", b"x" * (2 * 1024 * 1024))
            assert await mc.get_many(["ok", "huge"]) == {"ok": b"fine"}  # still in step

    run(scenario())


@pytest.mark.parametrize(
    ("reply", "call", "error", "match"),
    [
        (b"ERROR\r\n", "get", MemcacheUnknownCommandError, "ERROR"),
        (b"CLIENT_ERROR bad command line format\r\n", "get", MemcacheClientError, "bad command"),
        (b"SERVER_ERROR out of memory\r\n", "set_many", MemcacheServerError, "out of memory"),
        (b"VALUE k 0 10\r\nabc", "get", MemcacheUnexpectedCloseError, "middle of a reply"),
        (b"STORED\r\n", "get", MemcacheUnknownError, "STORED"),
        (b"VALUE other 0 1\r\nx\r\nEND\r\n", "get", MemcacheUnknownError, "other"),
        (b"VALUE k 0 1\r\nxyz\r\nEND\r\n", "get", MemcacheUnknownError, "not followed"),
        (b"DELETED\r\n", "set_many", MemcacheUnknownError, "DELETED"),
        (b"12x\r\n", "incr", MemcacheUnknownError, "12x"),
        (b"EXISTS\r\n", "delete_many", MemcacheUnknownError, "EXISTS"),
    ],
    ids=[
        "error",
        "client-error",
        "server-error",
        "closed-mid-value",
        "stored-to-get",
        "value-not-asked-for",
        "value-longer-than-said",
        "deleted-to-set",
        "bad-number",
        "exists-to-delete",
    ],
)
def test_scripted_replies_are_mapped(reply: bytes, call: str, error: type, match: str) -> None:
    calls: dict[str, Callable[[AsyncMemcachedClient], Awaitable[object]]] = {
        "get": lambda mc: mc.get("k"),
        "set_many": lambda mc: mc.set_many({"k": b"v"}),
        "incr": lambda mc: mc.incr("k", 1),
        "delete_many": lambda mc: mc.delete_many(["k"]),
    }

    async def scenario() -> None:
        async with scripted_server(replying(reply, then_close=True)) as address:
            mc = client(address, timeout=1.0)
            with pytest.raises(error, match=match):
                await calls[call](mc)
            await mc.aclose()

    run(scenario())


def test_names_not_stored_are_returned_and_a_silent_close_is_reported() -> None:
    async def not_every_set(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies = [b"STORED\r\n", b"NOT_STORED\r\n", b"STORED\r\n"]
        while line := await reader.readline():
            await reader.readexactly(int(line.split()[4]) + 2)
            writer.write(replies.pop(0))

    async def scenario() -> None:
        async with scripted_server(not_every_set) as address:
            mc = client(address)
            assert await mc.set_many({"a": b"1", "b": b"2", "c": b"3"}) == ["b"]
            await mc.aclose()
        # A *new* connection closed before any reply is not retried: it is reported.
        async with scripted_server(replying(b"", then_close=True)) as address:
            mc = client(address)
            with pytest.raises(MemcacheUnexpectedCloseError):
                await mc.get("k")
            await mc.aclose()

    run(scenario())

"""Redis (or Valkey) as a cache level: the L2 of the classic hierarchy, or any level.

One tier object has clients over the same options, redis-py's ``redis.Redis`` for the
sync face and a ``redis.asyncio.Redis`` per event loop for the async one (asyncio
connections belong to the loop that opened them; each client is closed when its loop shuts
down, or with the tier: see :class:`_LoopClients`). Every pool is bounded
(``max_connections``, 64 by default) and every socket operation has a finite timeout.
Everything but the client calls is shared, construction included (:class:`RedisFamilyTier`,
which the cluster tier extends): each operation is written once as a function of "a
client" that returns the client's result, which the sync face uses as is and the async
face awaits.

Round trips: a read of one key is a ``GET``, of more an ``MGET`` (batches above 1000 keys
are split into several MGETs sent in one pipeline); a write is one ``SET ... PX`` for a
single entry, else one pipeline of SETs and UNLINKs; a delete is one UNLINK per 1000 keys,
pipelined. ``clear()`` walks this namespace with ``SCAN MATCH <namespace>:*`` and UNLINKs
each batch, so it never touches anything else on the server and never blocks it the way
``KEYS`` would.

Failures: redis-py retries a command once, at once, when the *connection* fails (a pooled
connection the server closed on restart), and never on a timeout, so a stopped server costs
one refused connection and a hung one costs ``socket_timeout``; either way the call raises
:class:`~stratacache.errors.TierUnavailableError`, which the hierarchy treats as "skip this
level". Server replies that refuse the command (``OOM``, ``READONLY`` during a failover,
``LOADING``, an ACL ``NOPERM``) are mapped the same way: the level is unusable right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any, ClassVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from ..config import SchemeSpec, register_scheme
from ..entry import Entry
from ..errors import CacheClosedError, ConfigurationError
from ..keys import KeyRules
from ..serde import DEFAULT_MAX_VALUE_SIZE, Serializer
from .base import Prepared
from .remote import (
    COMMON_OPTIONS,
    Location,
    RemoteTier,
    SigningKey,
    check_timeout,
    chunks,
    milliseconds,
    parse_location,
    shown_url,
)

__all__ = ["DEFAULT_MAX_CONNECTIONS", "REDIS_ERRORS", "RedisFamilyTier", "RedisTier"]

#: Client failures that mean "this level cannot answer now". That includes redis-py's
#: DataError (an argument it cannot encode): every argument is built here from validated
#: options, storage names and envelopes, so it could only be a bug of ours, and a level
#: skipped (and logged) serves the caller better than an exception from outside the
#: CacheError tree.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

#: Connections per pool (per node, for a cluster) unless told otherwise: enough for a
#: busy process, and a bound, so that a stalled server cannot make a process open sockets
#: without limit. A call that finds the pool exhausted fails at once (the level is
#: skipped) instead of queueing behind the stall.
DEFAULT_MAX_CONNECTIONS = 64

_BATCH = 1000  # keys per MGET / UNLINK / SCAN page
#: A call maps a client (sync or async) to its result (sync) or an awaitable (async).
Call = Callable[[Any], Any]
Steps = Generator[Call, Any, None]


# ---------------------------------------------------------------------------- asyncio clients

#: Closes scheduled from sync code on a running loop: a task nobody references can be
#: collected before it runs.
_CLOSING: set[asyncio.Task[None]] = set()


class _LoopClients:
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
            with contextlib.suppress(*REDIS_ERRORS):  # a dead server: nothing to close
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


# ---------------------------------------------------------------------------- the family


class RedisFamilyTier(RemoteTier):
    """What the single-node and the cluster tiers share, construction included; see the
    module docstring. Options: see :class:`RedisTier`.

    Subclasses name their URL ``schemes`` and provide ``_server_options`` (check the
    URL's hosts and path, return what the client needs from them), ``_client_makers``
    (the sync and the asyncio client, made on first use) and the per-store calls
    ``_read`` (names to envelopes), ``_queue_unlink`` and ``_clear_steps``.
    """

    #: the plain and the TLS scheme of this tier's URLs
    schemes: ClassVar[tuple[str, str]]
    #: the keyword that sets the pool size, as this tier's callers spell it
    _pool_option: ClassVar[str] = "max_connections"

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        namespace: str = "default",
        ttl: float | None = None,
        ttl_grace: float = 1.0,
        serializer: str | Serializer = "msgpack",
        value_type: Any = Any,
        signing_key: SigningKey | None = None,
        compress_threshold: int | None = None,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        connect_timeout: float = 0.5,
        socket_timeout: float = 1.0,
        retries: int = 1,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        client_name: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_cert_reqs: str = "required",
        ssl_check_hostname: bool = True,
        name: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        scheme, location = _split_url(url, self.schemes)
        where = parse_location(url, location, default_port=6379)
        server_options = self._server_options(where, scheme)
        super().__init__(
            namespace=namespace,
            ttl=ttl,
            ttl_grace=ttl_grace,
            serializer=serializer,
            value_type=value_type,
            signing_key=signing_key,
            compress_threshold=compress_threshold,
            max_value_size=max_value_size,
            max_item_size=None,
            name=name,
            wall_clock=wall_clock,
            secrets=(where.password,),
        )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, got {retries!r}")
        self._location_text = where.display(scheme)
        options = _connection_options(
            where,
            scheme.removesuffix("+cluster"),
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            client_name=client_name,
            ssl_ca_certs=ssl_ca_certs,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_cert_reqs=ssl_cert_reqs,
            ssl_check_hostname=ssl_check_hostname,
        )
        options["max_connections"] = _pool_size(self._pool_option, max_connections)
        options.update(server_options)
        # Closures, not attributes: the password stays out of vars(tier) and its repr.
        self._make_client, make_async_client = self._client_makers(where, options, retries)
        self._client: Any = None  # made on first use: a cache must start while Redis is down
        self._client_lock = threading.Lock()
        self._aclients = _LoopClients(make_async_client)

    def _server_options(self, where: Location, scheme: str) -> dict[str, Any]:
        """Check the hosts and the path of the URL; the client options they give."""
        raise NotImplementedError

    def _client_makers(
        self, where: Location, options: dict[str, Any], retries: int
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """``(make the sync client, make an asyncio client)``."""
        raise NotImplementedError

    # -- clients

    def _sync_client(self) -> Any:
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")
        with self._client_lock:  # one client, however many threads get here first
            client = self._client
            if client is None:
                try:
                    client = self._client = self._make_client()
                except REDIS_ERRORS as exc:
                    raise self._unavailable(exc, "connecting: ") from exc
        return client

    async def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        last = self._aclients.last
        if last[0] is loop:
            return last[1]
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")
        try:
            return await self._aclients.get(loop)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc, "connecting: ") from exc

    # -- per-store calls

    def _read(self, client: Any, names: list[str]) -> Any:
        """The envelopes stored under ``names`` (None where absent), in order."""
        raise NotImplementedError

    def _queue_unlink(self, pipe: Any, names: Sequence[str]) -> None:
        raise NotImplementedError

    def _clear_steps(self) -> Steps:
        raise NotImplementedError

    # -- reads: the hot path, kept free of generators and closures

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        client = self._client if self._client is not None else self._sync_client()
        try:
            if len(keys) == 1:  # GET: a little cheaper than an MGET of one, on both clients
                return self._found(keys, (client.get(self._names.name(keys[0])),))
            blobs = self._read(client, self._names.names(keys))
        except ResponseError as exc:
            return self._wrong_type(keys, exc)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._found(keys, blobs)

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        last = self._aclients.last
        client = last[1] if last[0] is asyncio.get_running_loop() else await self._async_client()
        try:
            if len(keys) == 1:
                return self._found(keys, (await client.get(self._names.name(keys[0])),))
            blobs = await self._read(client, self._names.names(keys))
        except ResponseError as exc:
            return self._wrong_type(keys, exc)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._found(keys, blobs)

    def _wrong_type(self, keys: Sequence[str], exc: ResponseError) -> dict[str, Entry]:
        """GET of a name that holds a hash, a list...: someone else's value, a miss (MGET
        answers nil for those by itself). Any other refusal means the level is down."""
        if len(keys) == 1 and str(exc).startswith("WRONGTYPE"):
            self._corrupt(keys[0], "the name holds a non-string value (WRONGTYPE)")
            return {}
        raise self._unavailable(exc) from exc

    # -- writes, deletes, clear: written once as steps, driven sync or async

    def _write_steps(self, prepared: Prepared) -> Steps:
        sets, deletes = self._plan(prepared)
        if len(sets) == 1 and not deletes:
            name, blob, seconds = sets[0]
            px = None if seconds == math.inf else milliseconds(seconds)
            yield lambda client: client.set(name, blob, px=px)
        elif sets or deletes:

            def pipelined(client: Any) -> Any:
                pipe = client.pipeline(transaction=False)
                for name, blob, seconds in sets:
                    px = None if seconds == math.inf else milliseconds(seconds)
                    pipe.set(name, blob, px=px)
                self._queue_unlink(pipe, deletes)
                return pipe.execute()

            yield pipelined
        self.stats.writes += len(sets)

    def _delete_steps(self, keys: Sequence[str]) -> Steps:
        if not keys:
            return
        names = self._names.names(keys)

        def unlink(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            self._queue_unlink(pipe, names)
            return pipe.execute()

        yield unlink

    def _drive(self, steps: Steps) -> None:
        client = self._client if self._client is not None else self._sync_client()
        try:
            call = next(steps)
            while True:
                call = steps.send(call(client))
        except StopIteration:
            return
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _adrive(self, steps: Steps) -> None:
        client = await self._async_client()
        try:
            call = next(steps)
            while True:
                call = steps.send(await call(client))
        except StopIteration:
            return
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def write(self, prepared: Prepared) -> None:
        self._drive(self._write_steps(prepared))

    async def awrite(self, prepared: Prepared) -> None:
        await self._adrive(self._write_steps(prepared))

    def delete_many(self, keys: Sequence[str]) -> None:
        self._drive(self._delete_steps(keys))

    async def adelete_many(self, keys: Sequence[str]) -> None:
        await self._adrive(self._delete_steps(keys))

    def clear(self) -> None:
        self._drive(self._clear_steps())

    async def aclear(self) -> None:
        await self._adrive(self._clear_steps())

    @property
    def _scan_pattern(self) -> str:
        # Namespaces are letters, digits and "_.-", none of them special to MATCH; every
        # storage name of this tier (plain or hashed) starts with "<namespace>:".
        return f"{self.namespace}:*"

    # -- lifecycle

    def close(self) -> None:
        """Close the sync client and every asyncio client (see :class:`_LoopClients`)."""
        super().close()  # first, so that no client is made from here on
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self._aclients.close()

    async def aclose(self) -> None:
        self.closed = True
        await self._aclients.aclose()
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self._location_text} "
            f"namespace={self.namespace!r} ttl={self.ttl}>"
        )


class RedisTier(RedisFamilyTier):
    """A Redis or Valkey server as a cache level.

    ``url`` is ``redis://[user[:password]@]host[:port][/db]`` (``rediss://`` for TLS);
    options are keywords here, or query options in :func:`stratacache.config.tier_from_url`.
    ``namespace`` prefixes every key (``clear()`` removes only that namespace);
    ``signing_key`` turns on HMAC signing (required for ``serializer='pickle'``);
    ``compress_threshold`` turns on zstd above that many bytes; ``max_value_size`` bounds
    the serialized value. ``connect_timeout`` and ``socket_timeout`` (finite, in seconds)
    bound how long a dead or hung server can hold a call before the level is skipped;
    ``max_connections`` bounds each client's connection pool.
    """

    kind = "redis"
    schemes = ("redis", "rediss")
    # Redis takes any bytes as a key; long ones are hashed anyway to keep memory, SCAN
    # replies and logs small, and control characters to keep names printable.
    key_rules = KeyRules(1024)

    def _server_options(self, where: Location, scheme: str) -> dict[str, Any]:
        if len(where.hosts) != 1:
            raise ConfigurationError(
                f"{where.display(scheme)} names {len(where.hosts)} hosts; a redis:// URL "
                "names one server (use redis+cluster://h1:p1,h2:p2 for a cluster)"
            )
        self.db = _database(where, scheme)
        host, port = where.hosts[0]
        return {"host": host, "port": port, "db": self.db}

    def _client_makers(
        self, where: Location, options: dict[str, Any], retries: int
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        # redis-py retries at once, and only when the connection fails (a pooled one the
        # server closed on restart), never on a timeout: see the module docstring.
        def make_client() -> Any:
            retry = Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
            return redis.Redis(**options, retry=retry)

        def make_async_client() -> Any:
            retry = AsyncRetry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
            return redis.asyncio.Redis(**options, retry=retry)

        return make_client, make_async_client

    def _read(self, client: Any, names: list[str]) -> Any:
        if len(names) <= _BATCH:
            return client.mget(names)
        return _pipelined_mget(client, names)

    def _queue_unlink(self, pipe: Any, names: Sequence[str]) -> None:
        for chunk in chunks(names, _BATCH):
            pipe.unlink(*chunk)

    def _clear_steps(self) -> Steps:
        pattern = self._scan_pattern
        cursor = 0
        while True:
            cursor, names = yield _scan(cursor, pattern)
            if names:
                yield _unlink(names)
            if not cursor:
                return


def _scan(cursor: int, pattern: str) -> Call:
    return lambda client: client.scan(cursor, match=pattern, count=_BATCH)


def _unlink(names: Sequence[Any]) -> Call:
    return lambda client: client.unlink(*names)


def _pipelined_mget(client: Any, names: list[str]) -> Any:
    """Several MGETs in one round trip, flattened (sync: a list; async: an awaitable)."""
    pipe = client.pipeline(transaction=False)
    for chunk in chunks(names, _BATCH):
        pipe.mget(chunk)
    result = pipe.execute()
    if isinstance(result, list):
        return [blob for part in result for blob in part]

    async def flatten() -> list[Any]:
        return [blob for part in await result for blob in part]

    return flatten()


# ---------------------------------------------------------------------------- URL helpers


def _split_url(url: str, schemes: tuple[str, ...]) -> tuple[str, str]:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"expected a {schemes[0]}:// URL, got {shown_url(url)}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in schemes:
        raise ConfigurationError(
            f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, "
            f"got {scheme}://"
        )
    location, question, _ = rest.partition("?")
    if question:
        raise ConfigurationError(
            "options go in keyword arguments here (query options are for "
            "stratacache.config.tier_from_url)"
        )
    return scheme, location


def _pool_size(option: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{option} must be an int >= 1 (connection pools are bounded), got {value!r}"
        )
    return value


def _database(where: Location, scheme: str) -> int:
    path = where.path.strip("/")
    if not path:
        return 0
    try:
        db = int(path)
    except ValueError:
        raise ConfigurationError(
            f"the path of {where.display(scheme)} must be a database number, e.g. /0"
        ) from None
    if db < 0:
        raise ConfigurationError(f"database numbers are >= 0, got {db}")
    return db


def _connection_options(
    where: Location,
    scheme: str,
    *,
    connect_timeout: float,
    socket_timeout: float,
    client_name: str | None,
    ssl_ca_certs: str | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    ssl_cert_reqs: str,
    ssl_check_hostname: bool,
) -> dict[str, Any]:
    """redis-py keyword arguments shared by the single-node and the cluster clients."""
    if client_name is not None and not (
        isinstance(client_name, str) and all("!" <= char <= "~" for char in client_name)
    ):
        # Caught here rather than by the server (or by redis-py, for a non-str) on every
        # connection, where it would look like an unavailable level.
        raise ConfigurationError(
            f"client_name must be printable ASCII without spaces, got {client_name!r}"
        )
    options: dict[str, Any] = {
        "username": where.username,
        "password": where.password,
        "socket_connect_timeout": check_timeout("connect_timeout", connect_timeout),
        "socket_timeout": check_timeout("socket_timeout", socket_timeout),
        "client_name": client_name,
    }
    tls = scheme.startswith("rediss")
    ssl_given = {
        "ssl_ca_certs": ssl_ca_certs,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
    }
    if not tls:
        named = [key for key, value in ssl_given.items() if value is not None]
        if named:
            raise ConfigurationError(
                f"{', '.join(named)} given for {scheme}://, which does not use TLS; "
                f"use {scheme.replace('redis', 'rediss', 1)}://"
            )
        return options
    if ssl_cert_reqs not in ("required", "optional", "none"):
        raise ConfigurationError(
            f"ssl_cert_reqs must be required, optional or none; got {ssl_cert_reqs!r}"
        )
    options.update(
        ssl=True,
        ssl_cert_reqs=ssl_cert_reqs,
        ssl_check_hostname=ssl_check_hostname and ssl_cert_reqs != "none",
        **{key: value for key, value in ssl_given.items() if value is not None},
    )
    return options


REDIS_OPTIONS: dict[str, str] = {
    **COMMON_OPTIONS,
    "retries": "int",
    "client_name": "str",
    "ssl_ca_certs": "str",
    "ssl_certfile": "str",
    "ssl_keyfile": "str",
    "ssl_cert_reqs": "str",
    "ssl_check_hostname": "bool",
}


def url_builder(cls: type[RedisFamilyTier]) -> Callable[..., RedisFamilyTier]:
    """The :class:`~stratacache.config.SchemeSpec` builder of a Redis-family tier."""

    def build(
        *, url: str, location: str, options: dict[str, Any], clock: Any, wall_clock: Any
    ) -> RedisFamilyTier:
        scheme = url.split("://", 1)[0].lower()
        return cls(f"{scheme}://{location}", wall_clock=wall_clock, **options)

    return build


_SPEC = SchemeSpec(
    options={**REDIS_OPTIONS, "max_connections": "int"}, build=url_builder(RedisTier)
)
register_scheme("redis", _SPEC)
register_scheme("rediss", _SPEC)

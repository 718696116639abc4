"""Redis (or Valkey) as a cache level: the L2 of the classic hierarchy, or any level.

One tier object has clients over the same options, redis-py's ``redis.Redis`` for the
sync face and a ``redis.asyncio.Redis`` per event loop for the async one (asyncio
connections belong to the loop that opened them; see :mod:`.loops`). Every pool is
bounded (``max_connections``, 64 by default) and every socket operation has a finite
timeout. Everything but the client calls is shared, construction included
(:class:`RedisFamilyTier`, which the cluster tier extends): each operation is a command
generator (:class:`~stratacache.tiers.base.CommandTier`) whose commands are functions of
"a client" returning the client's result, which the sync transport uses as is and the
async one awaits.

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
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from operator import methodcaller
from typing import Any, ClassVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from ..config import RedisFamilyOptions, RedisOptions
from ..entry import Entry
from ..errors import CacheClosedError, CacheError, ConfigurationError
from ..keys import KeyRules
from .base import FILL, Prepared, Steps
from .loops import LoopClients
from .permits import Permits
from .redis_scripts import (
    CLAIM,
    COUNTER,
    FLOOR_SUFFIX,
    LEASE_SUFFIX,
    LOCK_SUFFIX,
    PEEK,
    RELEASE,
    WRITE,
)
from .remote import Location, RemoteTier, chunks, milliseconds, split_url
from .shared import FLOOR_SECONDS, LEASE, LOCK, VERSION, Claim

__all__ = ["REDIS_ERRORS", "RedisFamilyTier", "RedisTier"]

#: Client failures that mean "this level cannot answer now". That includes redis-py's
#: DataError (an argument it cannot encode): every argument is built here from validated
#: options, storage names and envelopes, so it could only be a bug of ours, and a level
#: skipped (and logged) serves the caller better than an exception from outside the
#: CacheError tree.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

#: Refusals that no retry cures: the credentials or the ACL rules are wrong. They are
#: configuration errors, raised to the caller at first use, not an outage to skip.
REFUSED: tuple[type[BaseException], ...] = (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)

_BATCH = 1000  # keys per MGET / UNLINK / SCAN page

#: A command maps a client (sync or async) to its result (sync) or an awaitable (async).
Call = Callable[[Any], Any]


# ---------------------------------------------------------------------------- the family


class RedisFamilyTier(RemoteTier):
    """What the single-node and the cluster tiers share, construction included; see the
    module docstring. Options: see :class:`RedisTier`.

    Subclasses name their URL ``schemes`` and provide ``_server_options`` (check the
    URL's hosts and path, return what the client needs from them), ``_client_makers``
    (the sync and the asyncio client, made on first use) and the per-store commands
    ``_read`` (names to envelopes), ``_queue_unlink`` and ``clear_steps``.
    """

    #: the plain and the TLS scheme of this tier's URLs
    schemes: ClassVar[tuple[str, str]]
    options: RedisFamilyOptions
    Options: ClassVar[type[RedisFamilyOptions]]
    transport_errors = REDIS_ERRORS

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        opts = self.Options.build(options)
        scheme, where = split_url(url, self.schemes, default_port=6379)
        server_options = self._server_options(where, scheme)
        super().__init__(opts, clock=clock, wall_clock=wall_clock, secrets=(where.password,))
        self._location_text = where.display(scheme)
        client_options = _connection_options(where, scheme.removesuffix("+cluster"), opts)
        pool_size = client_options["max_connections"] = self._pool_size(opts)
        client_options.update(server_options)
        # Closures, not attributes: the password stays out of vars(tier) and its repr.
        self._make_client, make_async_client = self._client_makers(
            where, client_options, opts.retries
        )
        # The URL for the invalidation bus over the same server (see stratacache.coherence),
        # a closure too; None for a cluster (its pub/sub is the bus's own business).
        bus_url = url.partition("?")[0]  # the query holds tier options, not the server's
        self.bus_url: Callable[[], str] | None = None if "+cluster" in scheme else (lambda: bus_url)
        self._client: Any = None  # made on first use: a cache must start while Redis is down
        self._client_lock = threading.Lock()
        self._aclients = LoopClients(make_async_client)
        self.permits = Permits(self.name, self.stats, pool_size, opts.pool_wait)

    def _pool_size(self, options: Any) -> int:
        raise NotImplementedError

    def _server_options(self, where: Location, scheme: str) -> dict[str, Any]:
        """Check the hosts and the path of the URL; the client options they give."""
        raise NotImplementedError

    def _client_makers(
        self, where: Location, options: dict[str, Any], retries: int
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """``(make the sync client, make an asyncio client)``."""
        raise NotImplementedError

    # -- the transport

    def perform(self, command: Call) -> Any:
        client = self._client
        if client is None:
            if self.closed:
                raise CacheClosedError(f"tier {self.name!r} is closed")
            with self._client_lock:  # one client, however many threads get here first
                client = self._client
                if client is None:
                    client = self._client = self._make_client()
        return command(client)

    async def aperform(self, command: Call) -> Any:
        loop = asyncio.get_running_loop()
        last = self._aclients.last
        if last[0] is loop:
            client = last[1]
        else:
            if self.closed:
                raise CacheClosedError(f"tier {self.name!r} is closed")
            client = await self._aclients.get(loop)
        return await command(client)

    def unavailable(self, exc: BaseException, doing: str = "") -> CacheError:
        if isinstance(exc, REFUSED):
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            return ConfigurationError(
                f"level {self.name} ({self._location_text}) refused this process: {detail}; "
                "check the user name and password in the URL and the server's ACL rules"
            )
        return super().unavailable(exc, doing)

    # -- per-store commands

    def _read(self, client: Any, names: list[str]) -> Any:
        """The envelopes stored under ``names`` (None where absent), in order."""
        raise NotImplementedError

    def _queue_unlink(self, pipe: Any, names: Sequence[str]) -> None:
        raise NotImplementedError

    # -- operations

    def read_steps(self, keys: Sequence[str], stale: bool = False) -> Steps[dict[str, Entry]]:
        try:
            if len(keys) == 1:  # GET: a little cheaper than an MGET of one, on both clients
                name = self._names.name(keys[0])
                blob = yield methodcaller("get", name)
                blobs = [blob]
            else:
                names = self._names.names(keys)
                blobs = yield lambda client: self._read(client, names)
        except ResponseError as exc:
            # GET of a name that holds a hash, a list...: someone else's value, a miss
            # (MGET answers nil for those by itself). Any other refusal means the level
            # is down.
            if len(keys) == 1 and str(exc).startswith("WRONGTYPE"):
                self._corrupt(keys[0], "the name holds a non-string value (WRONGTYPE)")
                return {}
            raise
        return self._found(keys, blobs, stale)

    def write_steps(self, prepared: Prepared) -> Steps[Collection[str] | None]:
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
        return None

    def delete_steps(self, keys: Sequence[str]) -> Steps[None]:
        if not keys:
            return
        names = self._names.names(keys)

        def unlink(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            self._queue_unlink(pipe, names)
            return pipe.execute()

        yield unlink

    @property
    def _scan_pattern(self) -> str:
        # Namespaces are letters, digits and "_.-", none of them special to MATCH; every
        # storage name of this tier (plain or hashed) starts with "<namespace>:".
        return f"{self.namespace}:*"

    # -- lifecycle

    def close(self) -> None:
        """Close the sync client and every asyncio client (see :mod:`.loops`)."""
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
    Options = RedisOptions
    schemes = ("redis", "rediss")
    # Redis takes any bytes as a key; long ones are hashed anyway to keep memory, SCAN
    # replies and logs small, and control characters to keep names printable.
    key_rules = KeyRules(1024)

    def _pool_size(self, options: Any) -> int:
        return int(options.max_connections)

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

    # -- coordination (see :mod:`.shared` and :mod:`.redis_scripts`)

    coordinates = True

    def write_steps(self, prepared: Prepared) -> Steps[Collection[str] | None]:
        """Every value through the compare-and-set script (one pipeline): a newer
        version in the store, a lost lease or a write's lock refuses it."""
        sets, deletes = self._plan(prepared)
        if not sets and not deletes:
            return []
        name = self._names.name
        by_name = {name(key): key for key in prepared.items}
        versions = prepared.versions
        mode = "fill" if prepared.mode == FILL else "write"
        token = prepared.token or ""
        counter = f"{self.namespace}:{COUNTER}"
        floor_ms = milliseconds(FLOOR_SECONDS)
        calls = [
            (
                by_name[stored],
                (
                    WRITE,
                    5,
                    stored,
                    stored + LEASE_SUFFIX,
                    stored + LOCK_SUFFIX,
                    stored + FLOOR_SUFFIX,
                    counter,
                    blob,
                    0 if seconds == math.inf else milliseconds(seconds),
                    versions.get(by_name[stored], 0),
                    mode,
                    token,
                    floor_ms,
                ),
            )
            for stored, blob, seconds in sets
        ]
        if len(calls) == 1 and not deletes:
            args = calls[0][1]
            stored_one = yield lambda client: client.eval(*args)
            return [] if stored_one else [calls[0][0]]

        def pipelined(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            for _, args in calls:
                pipe.eval(*args)
            self._queue_unlink(pipe, [*deletes, *(n + LEASE_SUFFIX for n in deletes)])
            return pipe.execute()

        replies = yield pipelined
        return [key for (key, _), stored in zip(calls, replies, strict=False) if not stored]

    def delete_steps(self, keys: Sequence[str]) -> Steps[None]:
        # The lease goes with the value: a fill that was loading the old value is dropped.
        if not keys:
            return
        names = self._names.names(keys)
        names += [stored + LEASE_SUFFIX for stored in names]

        def unlink(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            self._queue_unlink(pipe, names)
            return pipe.execute()

        yield unlink

    def claim_steps(
        self, keys: Sequence[str], token: str, kind: str, ttl: float, *, over: bool = False
    ) -> Steps[Claim]:
        names = self._names.names(keys)
        if kind == VERSION:
            claims = names
            extra: list[str] = []
        else:
            claims = [n + (LOCK_SUFFIX if kind == LOCK else LEASE_SUFFIX) for n in names]
            extra = [] if kind == LOCK else [*(n + LOCK_SUFFIX for n in names), *names]
        counter = f"{self.namespace}:{COUNTER}"
        ms = max(1, milliseconds(ttl))
        script_kind = "lease-over" if kind == LEASE and over else kind
        reply = yield lambda client: client.eval(
            CLAIM, len(claims) + 1, *claims, counter, token, ms, script_kind, *extra
        )
        held = {
            keys[int(reply[i]) - 1]: (ttl if int(reply[i + 1]) < 0 else int(reply[i + 1]) / 1000)
            for i in range(1, len(reply) - 1, 2)
        }
        if kind == LOCK:
            return Claim([] if held else list(keys), held, int(reply[0]))
        return Claim([key for key in keys if key not in held], held, int(reply[0]))

    def release_steps(self, keys: Sequence[str], token: str, kind: str) -> Steps[None]:
        suffix = LOCK_SUFFIX if kind == LOCK else LEASE_SUFFIX
        claims = [n + suffix for n in self._names.names(keys)]
        if claims:
            yield lambda client: client.eval(RELEASE, len(claims), *claims, token)

    def claimed_steps(self, keys: Sequence[str]) -> Steps[set[str]]:
        if not keys:
            return set()
        pairs: list[str] = []
        for stored in self._names.names(keys):
            pairs += (stored + LEASE_SUFFIX, stored + LOCK_SUFFIX)
        reply = yield lambda client: client.eval(PEEK, len(pairs), *pairs)
        return {keys[int(index) - 1] for index in reply}

    def clear_steps(self) -> Steps[None]:
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


def _connection_options(where: Location, scheme: str, opts: RedisFamilyOptions) -> dict[str, Any]:
    """redis-py keyword arguments shared by the single-node and the cluster clients."""
    client_name = opts.client_name
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
        "socket_connect_timeout": opts.connect_timeout,
        "socket_timeout": opts.socket_timeout,
        "client_name": client_name,
    }
    tls = scheme.startswith("rediss")
    ssl_given = {
        "ssl_ca_certs": opts.ssl_ca_certs,
        "ssl_certfile": opts.ssl_certfile,
        "ssl_keyfile": opts.ssl_keyfile,
    }
    ssl_cert_reqs = opts.ssl_cert_reqs
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
        ssl_check_hostname=opts.ssl_check_hostname and ssl_cert_reqs != "none",
        **{key: value for key, value in ssl_given.items() if value is not None},
    )
    return options

"""Redis (or Valkey) as a cache level: the L2 of the classic hierarchy, or any level.

One tier object has two clients over the same options, redis-py's ``redis.Redis`` for the
sync face and ``redis.asyncio.Redis`` for the async one (made on first use inside a running
loop, and again if the loop changes: asyncio connections belong to the loop that opened
them). Everything but the client calls is shared (:class:`RedisFamilyTier`, which the
cluster tier extends): each operation is written once as a function of "a client" that
returns the client's result, which the sync face uses as is and the async face awaits.

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
from collections.abc import Callable, Generator, Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import DataError, RedisClusterException, RedisError, ResponseError
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
)

__all__ = ["REDIS_ERRORS", "RedisFamilyTier", "RedisTier"]

#: Client failures that mean "this level cannot answer now". DataError (a bad argument:
#: our bug, not the server's state) is re-raised before this is consulted.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

_BATCH = 1000  # keys per MGET / UNLINK / SCAN page
#: A call maps a client (sync or async) to its result (sync) or an awaitable (async).
Call = Callable[[Any], Any]
Steps = Generator[Call, Any, None]


class RedisFamilyTier(RemoteTier):
    """What the single-node and the cluster tiers share; see the module docstring.

    Subclasses provide ``_make_client`` / ``_make_async_client`` and the per-store calls
    ``_read`` (keys to envelopes), ``_queue_unlink`` and ``_clear_steps``.
    """

    def __init__(self, *, location_text: str, retries: int, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, got {retries!r}")
        self._location_text = location_text
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._aclient: Any = None
        self._aloop: asyncio.AbstractEventLoop | None = None

    # -- clients

    def _make_client(self) -> Any:
        raise NotImplementedError

    def _make_async_client(self) -> Any:
        raise NotImplementedError

    def _sync_client(self) -> Any:
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")
        with self._client_lock:  # one client, however many threads get here first
            client = self._client
            if client is None:
                try:
                    client = self._client = self._make_client()
                except DataError:
                    raise
                except REDIS_ERRORS as exc:
                    raise self._unavailable(exc, "connecting: ") from exc
        return client

    def _async_client(self) -> Any:
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            # A client from another (finished) loop cannot be closed from this one; its
            # sockets are released when it is collected.
            self._aclient = self._make_async_client()
            self._aloop = loop
        return self._aclient

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
        except DataError:
            raise
        except ResponseError as exc:
            return self._wrong_type(keys, exc)
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._found(keys, blobs)

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        client = self._async_client()
        try:
            if len(keys) == 1:
                return self._found(keys, (await client.get(self._names.name(keys[0])),))
            blobs = await self._read(client, self._names.names(keys))
        except DataError:
            raise
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
        except DataError:
            raise
        except REDIS_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _adrive(self, steps: Steps) -> None:
        client = self._async_client()
        try:
            call = next(steps)
            while True:
                call = steps.send(await call(client))
        except StopIteration:
            return
        except DataError:
            raise
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
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._aclient = None  # see aclose(): sync code cannot close an asyncio client
        super().close()

    async def aclose(self) -> None:
        aclient, self._aclient = self._aclient, None
        if aclient is not None and self._aloop is asyncio.get_running_loop():
            await aclient.aclose()
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
    the serialized value. ``connect_timeout`` and ``socket_timeout`` bound how long a
    dead or hung server can hold a call before the level is skipped.
    """

    kind = "redis"
    # Redis takes any bytes as a key; long ones are hashed anyway to keep memory, SCAN
    # replies and logs small, and control characters to keep names printable.
    key_rules = KeyRules(1024)

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
        connect_timeout: float | None = 0.5,
        socket_timeout: float | None = 1.0,
        retries: int = 1,
        max_connections: int | None = None,
        client_name: str | None = None,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_cert_reqs: str = "required",
        ssl_check_hostname: bool = True,
        name: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        scheme, location = _split_url(url, ("redis", "rediss"))
        where = parse_location(url, location, default_port=6379)
        if len(where.hosts) != 1:
            raise ConfigurationError(
                f"{where.display(scheme)} names {len(where.hosts)} hosts; a redis:// URL "
                "names one server (use redis+cluster://h1:p1,h2:p2 for a cluster)"
            )
        db = _database(where, scheme)
        super().__init__(
            location_text=where.display(scheme),
            retries=retries,
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
        host, port = where.hosts[0]
        self.db = db
        options = _connection_options(
            where,
            scheme,
            connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            client_name=client_name,
            ssl_ca_certs=ssl_ca_certs,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_cert_reqs=ssl_cert_reqs,
            ssl_check_hostname=ssl_check_hostname,
        )
        options.update(host=host, port=port, db=db, max_connections=max_connections)
        # Closures, not attributes: the password stays out of vars(tier) and its repr.
        self._make_client = lambda: redis.Redis(  # type: ignore[method-assign]
            **options,
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )
        self._make_async_client = lambda: redis.asyncio.Redis(  # type: ignore[method-assign]
            **options,
            retry=AsyncRetry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )
        self._client = self._make_client()  # connects on first use, not here

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
        raise ConfigurationError(f"expected a {schemes[0]}:// URL, got {url!r:.100}")
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
    connect_timeout: float | None,
    socket_timeout: float | None,
    client_name: str | None,
    ssl_ca_certs: str | None,
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
    ssl_cert_reqs: str,
    ssl_check_hostname: bool,
) -> dict[str, Any]:
    """redis-py keyword arguments shared by the single-node and the cluster clients."""
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


def _build(
    *, url: str, location: str, options: dict[str, Any], clock: Any, wall_clock: Any
) -> RedisTier:
    scheme = url.split("://", 1)[0].lower()
    return RedisTier(f"{scheme}://{location}", wall_clock=wall_clock, **options)


_SPEC = SchemeSpec(options={**REDIS_OPTIONS, "max_connections": "int"}, build=_build)
register_scheme("redis", _SPEC)
register_scheme("rediss", _SPEC)

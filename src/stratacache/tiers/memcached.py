"""A pool of memcached servers as a cache level.

**Routing.** Keys are spread over the servers by consistent hashing: a ring of 160 points
per server (placed by BLAKE2b of ``"host:port-i"``), where a key belongs to the first point
at or after the CRC-32 of its storage name. Every process that lists the same servers, in
any order, sends a key to the same server, and adding or removing one server moves only
about 1/n of the keys. A batch is grouped by server and each server gets one multi-key
``get`` (one ``set`` per distinct expiry second, one batch of ``delete``), in turn, over
a plain pymemcache ``Client`` per server and thread.

Why not pymemcache's ``HashClient``: it hashes with a pure-Python murmur3 per key *and per
server* (about 6 µs each, so 1.2 ms to route 100 keys over two servers), it throws away
the answers of the healthy servers when one server of a batch fails, it deletes key by
key, its dead-server timers read ``time.time()`` (tests could not drive them), and it
re-routes a dead server's keys to the survivors. That last one is deliberate here too,
but the other way round: **a server that fails is skipped, never replaced.** Its keys are
misses (reads) or dropped (writes) until ``retry_interval`` has passed on the injected
clock, then it is tried again. Re-routing would make processes that disagree on which
servers are up read and write different copies of the same key, and a server that comes
back would serve values that were overwritten or invalidated elsewhere while it was away
(the reason "Scaling Memcache at Facebook" sends such traffic to a separate gutter pool
instead). A batch that reaches some servers returns what they had and counts one error;
a batch none of whose servers answers raises
:class:`~stratacache.errors.TierUnavailableError`.

**clear() and namespace generations.** memcached cannot list its keys, so a namespace
cannot be deleted key by key. Instead every storage name carries a generation,
``<namespace>:<generation>:<key>``, and the current generation lives in memcached itself
under ``<namespace>:generation``. ``clear()`` increments it (``incr`` is atomic), which
makes every older entry unreachable at once; memcached's LRU and the entries' server-side
TTLs reclaim the space. Each process caches the generation and re-reads it at most every
``generation_check_interval`` seconds, so **a clear made by another process takes effect
here within that interval** (one extra round trip per interval, not per call). A missing
generation (first use, its server restarted or evicted it) is created with ``add`` (only
one process wins) from the wall clock in milliseconds, which is larger than any
generation handed out before, so entries from before a lost generation never come back.
While the generation's server is down the last known generation is kept; a process that
never learned it uses a private one (its reads miss, its writes are invisible to others,
nothing stale is served) until the server answers.

**Limits.** Names are at most 250 bytes with no spaces or control characters (longer or
stranger keys are hashed, see :mod:`stratacache.tiers.remote`); an item is at most
``max_item_size`` bytes (memcached's ``-I``, 1 MiB by default), so larger envelopes are
refused in ``prepare``. memcached speaks no authentication in its text protocol and no TLS
here: keep it on a private network, and turn on signing if others can write to it.

**Async.** The async face runs the same sync code in a small dedicated thread pool
(``async_workers`` threads): there is nothing to share with an async client's routing,
and the round trip dominates the thread hop (see benchmarks/remote_overhead_results.md).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import math
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..config import SchemeSpec, register_scheme
from ..entry import Entry
from ..errors import CacheClosedError, ConfigurationError, TierUnavailableError
from ..keys import KeyRules
from ..serde import Serializer
from .base import Prepared, logger
from .remote import (
    COMMON_OPTIONS,
    NameMapper,
    RemoteTier,
    SigningKey,
    check_timeout,
    parse_location,
    shown_url,
)

__all__ = ["DEFAULT_MAX_ITEM_SIZE", "MemcachedTier"]

#: memcached's default item size limit (-I 1m) less room for the item header and the name.
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024 - 512
_POINTS_PER_SERVER = 160
_UP = -math.inf  # a server's down_until while it answers
_THIRTY_DAYS = 30 * 24 * 3600  # above this memcached reads an expiry as a Unix time
#: Failures that mean the server cannot be reached: it is skipped for retry_interval.
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, MemcacheUnexpectedCloseError)
#: Any failure of a call; the others (a SERVER_ERROR reply such as "out of memory") fail
#: that call's part but leave the server in use.
MEMCACHED_ERRORS: tuple[type[BaseException], ...] = (OSError, MemcacheError)


class _RawBytes:
    """pymemcache serde that stores and returns bytes untouched: whatever flags a stored
    item carries, nothing but :class:`~stratacache.serde.Codec` ever decodes it."""

    @staticmethod
    def serialize(key: Any, value: bytes) -> tuple[bytes, int]:
        return value, 0

    @staticmethod
    def deserialize(key: Any, value: bytes, flags: int) -> bytes:
        return value


class _Server:
    """One memcached server: its address, its down-until time, and a pymemcache ``Client``
    per thread (a Client is one socket and must not be shared between threads; a
    thread-local one costs nothing per call, where a lock-guarded pool costs a lock and a
    context manager on every call). Clients go away with their thread; ``close()`` closes
    the ones still alive."""

    __slots__ = ("__weakref__", "_clients", "_local", "_make", "address", "down_until", "label")

    def __init__(self, address: tuple[str, int], make: Callable[[], Any]) -> None:
        self.address = address
        self.label = f"{address[0]}:{address[1]}"
        self.down_until = _UP
        self._make = make
        self._local = threading.local()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def client(self) -> Any:
        try:
            return self._local.client
        except AttributeError:
            client = self._local.client = self._make()
            self._clients.add(client)
            return client

    def close(self) -> None:
        for client in list(self._clients):
            client.close()


class _Failed(Exception):
    """One server's part of a call did not happen: the server is down (``cause`` None) or
    failed (already remembered and logged). Never leaves the tier."""

    def __init__(self, label: str, cause: BaseException | None) -> None:
        super().__init__(label)
        self.label = label
        self.cause = cause


class _Ring:
    """Consistent hashing: see the module docstring."""

    def __init__(self, servers: Sequence[_Server]) -> None:
        points: list[tuple[int, str, _Server]] = []
        for server in servers:
            for index in range(_POINTS_PER_SERVER):
                digest = hashlib.blake2b(f"{server.label}-{index}".encode(), digest_size=4)
                points.append((int.from_bytes(digest.digest(), "big"), server.label, server))
        points.sort(key=lambda point: (point[0], point[1]))
        self._hashes = [point[0] for point in points]
        self._owners = [point[2] for point in points]
        self._only = servers[0] if len(servers) == 1 else None

    def server(self, name: str) -> _Server:
        if self._only is not None:
            return self._only
        index = bisect.bisect_left(self._hashes, zlib.crc32(name.encode()))
        return self._owners[index if index < len(self._owners) else 0]

    def group(self, names: Sequence[str]) -> dict[_Server, list[str]]:
        groups: dict[_Server, list[str]] = {}
        server = self.server
        for name in names:
            groups.setdefault(server(name), []).append(name)
        return groups


class MemcachedTier(RemoteTier):
    """A pool of memcached servers as a cache level; see the module docstring.

    ``url`` is ``memcached://host:port[,host:port...]``. ``retry_interval`` is how long a
    failed server is skipped before it is tried again; ``generation_check_interval`` how
    stale this process's view of the namespace generation may get (``clear()`` by another
    process); both run on ``clock``. Other options as for
    :class:`~stratacache.tiers.redis.RedisTier`.
    """

    kind = "memcached"
    key_rules = KeyRules(250, allow_whitespace=False)

    def __init__(
        self,
        url: str = "memcached://localhost:11211",
        *,
        namespace: str = "default",
        ttl: float | None = None,
        ttl_grace: float = 1.0,
        serializer: str | Serializer = "msgpack",
        value_type: Any = Any,
        signing_key: SigningKey | None = None,
        compress_threshold: int | None = None,
        max_value_size: int = DEFAULT_MAX_ITEM_SIZE,
        max_item_size: int = DEFAULT_MAX_ITEM_SIZE,
        connect_timeout: float = 0.5,
        socket_timeout: float = 1.0,
        retry_interval: float = 1.0,
        generation_check_interval: float = 1.0,
        async_workers: int = 8,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(url, str) or not url.lower().startswith("memcached://"):
            raise ConfigurationError(f"expected a memcached:// URL, got {shown_url(url)}")
        location, question, _ = url.split("://", 1)[1].partition("?")
        if question:
            raise ConfigurationError(
                "options go in keyword arguments here (query options are for "
                "stratacache.config.tier_from_url)"
            )
        where = parse_location(url, location, default_port=11211)
        if where.username or where.password:
            raise ConfigurationError(
                "memcached's text protocol has no authentication: drop the credentials "
                f"from {where.display('memcached')} (and keep memcached on a private network)"
            )
        if where.path.strip("/"):
            raise ConfigurationError(f"{where.display('memcached')}: a memcached URL has no path")
        if len(set(where.hosts)) != len(where.hosts):
            raise ConfigurationError(f"{where.display('memcached')} lists a server twice")
        for option, value in (
            ("retry_interval", retry_interval),
            ("generation_check_interval", generation_check_interval),
        ):
            if not (isinstance(value, int | float) and value >= 0):
                raise ConfigurationError(f"{option} must be >= 0 seconds, got {value!r}")
        if not (isinstance(async_workers, int) and async_workers >= 1):
            raise ConfigurationError(f"async_workers must be an int >= 1, got {async_workers!r}")
        super().__init__(
            namespace=namespace,
            ttl=ttl,
            ttl_grace=ttl_grace,
            serializer=serializer,
            value_type=value_type,
            signing_key=signing_key,
            compress_threshold=compress_threshold,
            max_value_size=max_value_size,
            max_item_size=max_item_size,
            name=name,
            wall_clock=wall_clock,
        )
        self._location_text = where.display("memcached")
        connect_timeout = check_timeout("connect_timeout", connect_timeout)
        socket_timeout = check_timeout("socket_timeout", socket_timeout)
        self.servers = [
            _Server(
                address,
                functools.partial(
                    Client,
                    address,
                    serde=_RawBytes(),
                    connect_timeout=connect_timeout,
                    timeout=socket_timeout,
                    no_delay=True,
                    allow_unicode_keys=True,  # names are checked by key_rules (UTF-8 bytes)
                    default_noreply=False,  # a write is done when memcached says so
                ),
            )
            for address in where.hosts
        ]
        self._ring = _Ring(self.servers)
        self._clock = clock
        self.retry_interval = float(retry_interval)
        self.generation_check_interval = float(generation_check_interval)
        self._generation_name = f"{self.namespace}:generation"
        self.generation: int | None = None  # the namespace generation in use
        self._generation_due = -math.inf
        self._generation_lock = threading.Lock()
        self._set_generation(None)
        self._async_workers = async_workers
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ generations

    def _set_generation(self, generation: int | None) -> None:
        if generation is None:
            # Never learned: a private generation (see the module docstring).
            generation = -int(self._wall_clock() * 1000)
        else:
            self.generation = generation
        self._names = NameMapper(f"{self.namespace}:{generation}:", self.key_rules)

    def storage_name(self, key: str) -> str:
        return self._current_names().name(key)

    def _current_names(self) -> NameMapper:
        """The name mapper for the current generation, re-read when it is due."""
        if self._clock() >= self._generation_due:
            self._refresh_generation()
        return self._names

    def _refresh_generation(self) -> None:
        with self._generation_lock:
            if self._clock() < self._generation_due:
                return  # another thread just did it
            self._generation_due = self._clock() + self.generation_check_interval
            server = self._ring.server(self._generation_name)
            if self._is_down(server):
                return
            try:
                generation = self._read_generation(server.client)
            except UNREACHABLE as exc:
                self._server_failed(server, exc)
                return
            except MemcacheError as exc:
                logger.warning(
                    "tier %s (memcached): cannot read the namespace generation: %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
                return
            if generation != self.generation:
                self._set_generation(generation)

    def _read_generation(self, client: Any) -> int:
        name = self._generation_name
        raw = client.get(name)
        if raw is None:
            client.add(name, str(int(self._wall_clock() * 1000)).encode(), noreply=False)
            raw = client.get(name)
        try:
            return int(raw)
        except (TypeError, ValueError):
            # Not ours (or evicted at once): start a new generation rather than trust it.
            fresh = int(self._wall_clock() * 1000)
            client.set(name, str(fresh).encode(), noreply=False)
            return fresh

    # ------------------------------------------------------------------ servers

    def _is_down(self, server: _Server) -> bool:
        return server.down_until > self._clock()

    def _server_failed(self, server: _Server, exc: BaseException) -> None:
        if server.down_until == _UP:
            logger.warning(
                "tier %s (memcached): server %s failed (%s: %s); skipping it for %.1f s",
                self.name,
                server.label,
                type(exc).__name__,
                exc,
                self.retry_interval,
            )
        server.down_until = self._clock() + self.retry_interval

    def _server_ok(self, server: _Server) -> None:
        if server.down_until != _UP:
            server.down_until = _UP
            logger.warning("tier %s (memcached): server %s answers again", self.name, server.label)

    def _on(
        self, server: _Server, now: float, action: Callable[[Any, Any], Any], part: Any, what: str
    ) -> Any:
        """``action(client, part)`` on ``server``; raises :class:`_Failed` when the server is
        down or fails (a server that cannot be reached is skipped for ``retry_interval``)."""
        if server.down_until > now:
            raise _Failed(server.label, None)
        try:
            result = action(server.client, part)
        except UNREACHABLE as exc:
            self._server_failed(server, exc)
            raise _Failed(server.label, exc) from exc
        except MemcacheError as exc:
            logger.warning(
                "tier %s (memcached): %s on %s failed: %s: %s",
                self.name,
                what,
                server.label,
                type(exc).__name__,
                exc,
            )
            raise _Failed(server.label, exc) from exc
        if server.down_until != _UP:
            self._server_ok(server)
        return result

    def _per_server(
        self,
        groups: dict[_Server, Any],
        action: Callable[[Any, Any], Any],
        what: str,
    ) -> list[Any]:
        """Run ``action(client, part)`` for each server's part; skip (and remember) the
        servers that are down or fail. Raises TierUnavailableError when none answered."""
        self._check_open()
        results: list[Any] = []
        failures: list[_Failed] = []
        now = self._clock()
        for server, part in groups.items():
            try:
                results.append(self._on(server, now, action, part, what))
            except _Failed as failed:
                failures.append(failed)
        if failures:
            if not results:
                raise self._no_answer(what, failures)
            self.stats.errors += 1  # partly served: the flow only counts what raises
        return results

    def _no_answer(self, what: str, failures: list[_Failed]) -> TierUnavailableError:
        reason = f"{what}: no answer from {', '.join(failed.label for failed in failures)}"
        causes = [failed.cause for failed in failures if failed.cause is not None]
        if causes:
            reason += f" ({type(causes[-1]).__name__}: {causes[-1]})"
        return TierUnavailableError(self.name, reason)

    def _check_open(self) -> None:
        if self.closed:
            raise CacheClosedError(f"tier {self.name!r} is closed")

    # ------------------------------------------------------------------ tier protocol

    def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        if len(keys) == 1:  # the commonest read: one name, one server, one plain get
            name = self._current_names().name(keys[0])
            self._check_open()
            try:
                blob = self._on(self._ring.server(name), self._clock(), _get, name, "read")
            except _Failed as failed:
                raise self._no_answer("read", [failed]) from None
            return self._found(keys, (blob,))
        names = self._current_names().names(keys)
        found: dict[str, bytes] = {}
        for part in self._per_server(self._ring.group(names), _get_many, "read"):
            found.update(part)
        return self._found(keys, [found.get(name) for name in names])

    def write(self, prepared: Prepared) -> None:
        self._current_names()
        sets, deletes = self._plan(prepared)
        if not sets and not deletes:
            return
        now = self._wall_clock()
        # Per server: {expiry: {name: envelope}} and the names to delete.
        work: dict[_Server, tuple[dict[int, dict[str, bytes]], list[str]]] = {}
        server_of = self._ring.server
        for name, blob, seconds in sets:
            batches = work.setdefault(server_of(name), ({}, []))[0]
            batches.setdefault(_expiry(seconds, now), {})[name] = blob
        for name in deletes:
            work.setdefault(server_of(name), ({}, []))[1].append(name)
        self._per_server(work, _store, "write")
        self.stats.writes += len(sets)

    def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        names = self._current_names().names(keys)
        self._per_server(self._ring.group(names), _delete_many, "delete")

    def clear(self) -> None:
        """Start a new generation of this namespace (see the module docstring)."""
        self._check_open()
        server = self._ring.server(self._generation_name)
        try:
            generation = server.client.incr(self._generation_name, 1, noreply=False)
            if generation is None:  # no generation yet: making one is a clear too
                generation = self._read_generation(server.client)
        except MEMCACHED_ERRORS as exc:
            if isinstance(exc, UNREACHABLE):
                self._server_failed(server, exc)
            raise self._unavailable(exc, f"clear (generation on {server.label}): ") from exc
        self._server_ok(server)
        with self._generation_lock:
            self._set_generation(int(generation))
            self._generation_due = self._clock() + self.generation_check_interval

    # ------------------------------------------------------------------ async face

    def _pool(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._generation_lock:
                if self.closed:  # never start threads that close() would not wait for
                    raise CacheClosedError(f"tier {self.name!r} is closed")
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self._async_workers, thread_name_prefix=f"stratacache-{self.name}"
                    )
                executor = self._executor
        return executor

    async def aget_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        if not keys:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self.get_many, keys)

    async def awrite(self, prepared: Prepared) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.write, prepared)

    async def adelete_many(self, keys: Sequence[str]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.delete_many, keys)

    async def aclear(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), self.clear)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._generation_lock:
            super().close()  # first: from here on no call starts, no worker is made
            executor, self._executor = self._executor, None
        if executor is not None:
            # Work already queued still uses the clients: let it finish (each call is
            # bounded by the socket timeouts) before the clients are closed under it.
            executor.shutdown(wait=True)
        for server in self.servers:
            server.close()

    async def aclose(self) -> None:
        # close() waits for the worker threads: wait in a thread, not on the event loop.
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return (
            f"<MemcachedTier {self.name!r} {self._location_text} namespace={self.namespace!r} "
            f"ttl={self.ttl}>"
        )


def _expiry(seconds: float, now: float) -> int:
    """memcached's exptime: 0 = never, up to 30 days relative, beyond that a Unix time."""
    if seconds == math.inf:
        return 0
    whole = max(1, math.ceil(seconds))
    return whole if whole <= _THIRTY_DAYS else math.ceil(now + seconds)


def _get(client: Any, name: str) -> bytes | None:
    return client.get(name)  # type: ignore[no-any-return]


def _get_many(client: Any, names: list[str]) -> dict[str, bytes]:
    return client.get_many(names)  # type: ignore[no-any-return]


def _store(client: Any, work: tuple[dict[int, dict[str, bytes]], list[str]]) -> None:
    batches, deletes = work
    for expire, values in batches.items():
        failed = client.set_many(values, expire=expire, noreply=False)
        if failed:  # not stored: make sure no older value stays in its place
            deletes = [*deletes, *failed]
    if deletes:
        client.delete_many(deletes, noreply=False)


def _delete_many(client: Any, names: list[str]) -> None:
    client.delete_many(names, noreply=False)


MEMCACHED_URL_OPTIONS: dict[str, str] = {
    **COMMON_OPTIONS,
    "max_item_size": "int",
    "retry_interval": "float",
    "generation_check_interval": "float",
    "async_workers": "int",
}


def _build(
    *, url: str, location: str, options: dict[str, Any], clock: Any, wall_clock: Any
) -> MemcachedTier:
    return MemcachedTier(f"memcached://{location}", clock=clock, wall_clock=wall_clock, **options)


register_scheme("memcached", SchemeSpec(options=MEMCACHED_URL_OPTIONS, build=_build))

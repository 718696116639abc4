"""A pool of memcached servers as a cache level.

**Routing.** Keys are spread over the servers by consistent hashing: a ring of 160 points
per server (placed by BLAKE2b of ``"host:port-i"``), where a key belongs to the first point
at or after the CRC-32 of its storage name. Every process that lists the same servers, in
any order, sends a key to the same server, and adding or removing one server moves only
about 1/n of the keys. A batch is grouped by server and each server gets one multi-key
``get`` (one ``set`` per distinct expiry second, one batch of ``delete``), in turn, over
a plain pymemcache ``Client`` per server and thread.

**Versions: compare-and-set.** An entry with a version (> 0) never replaces a newer one,
whether written or filled (memcached has no leases or write locks here: a fill is held to
the same rule as a write, and ``Prepared.token`` is ignored). Per server, one ``gets``
fetches every such key with its cas unique; then, key by key, an absent key is stored with
``add`` and a present one with ``cas`` on that unique, unless the stored entry's version is
higher: that key is refused, and ``write`` returns it. A stored value that does not
decode (not an envelope, forged, foreign) counts as version -1. An ``add`` or ``cas``
that loses a race (someone stored the key since the ``gets``) sends that key round again,
five attempts in all (``_CAS_ATTEMPTS``); a key still racing then is refused and deleted,
so that no older value stays in its place. A versioned write thus costs, per server (the
servers in turn), one ``gets`` plus one ``add`` or ``cas`` per key stored (pymemcache has
no multi-key ``cas``): two round trips for one key, one for a key refused. Unversioned
entries (version 0) keep the plain ``set``, one round trip, as before: they replace
whatever is stored, a newer version included.

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

**Sync and async.** Every operation is a command generator
(:class:`~stratacache.tiers.base.CommandTier`): routing, generations, the down-server
rules and the merging of answers are written once. A command names a server and a call
on a client; the sync transport runs it on that server's pymemcache ``Client`` for this
thread, the async one awaits it on that server's
:class:`~stratacache.tiers.memcached_client.AsyncMemcachedClient` for this event loop (a
native asyncio client with a bounded pool that waits for a free connection), whose calls
mirror pymemcache's.
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
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..config import MemcachedOptions
from ..entry import Entry
from ..errors import CacheClosedError, ConfigurationError, PoolTimeoutError, TierUnavailableError
from ..keys import KeyRules
from ..serde import PayloadError
from .base import DOWN, RECOVERED, Prepared, Steps
from .loops import LoopClients
from .memcached_client import AsyncMemcachedClient, PoolExhaustedError
from .remote import NameMapper, RemoteTier, split_url

__all__ = ["MemcachedTier"]

_POINTS_PER_SERVER = 160
_UP = -math.inf  # a server's down_until while it answers
_THIRTY_DAYS = 30 * 24 * 3600  # above this memcached reads an expiry as a Unix time
#: How many times a versioned key goes through gets, then add or cas, before it is
#: refused: each failed round means another writer stored the key in between.
_CAS_ATTEMPTS = 5
#: Failures that mean the server cannot be reached: it is skipped for retry_interval.
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, MemcacheUnexpectedCloseError)
#: Any failure of a call; the others (a SERVER_ERROR reply such as "out of memory") fail
#: that call's part but leave the server in use.
MEMCACHED_ERRORS: tuple[type[BaseException], ...] = (OSError, MemcacheError)
#: A call on a client, sync or async: ``action(client, argument)``.
Action = Callable[[Any, Any], Any]
#: A command: the action to run on a server's client, with its argument.
Command = tuple["_Server", Action, Any]
#: What one server is asked: one command, or a generator of them.
Work = Command | Steps[Any]


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
    """One memcached server: its address, its down-until time, a pymemcache ``Client``
    per thread (a Client is one socket and must not be shared between threads; a
    thread-local one costs nothing per call, where a lock-guarded pool costs a lock and a
    context manager on every call) and an asyncio client per event loop. Sync clients go
    away with their thread; ``close()`` closes the ones still alive."""

    __slots__ = (
        "__weakref__",
        "_clients",
        "_local",
        "_make",
        "aclients",
        "address",
        "down_until",
        "label",
    )

    def __init__(
        self, address: tuple[str, int], make: Callable[[], Any], make_async: Callable[[], Any]
    ) -> None:
        self.address = address
        self.label = f"{address[0]}:{address[1]}"
        self.down_until = _UP
        self._make = make
        self._local = threading.local()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.aclients = LoopClients(make_async)

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
        self.aclients.close()


class _Failed(Exception):
    """One server's part of a call did not happen: the server is down (``cause`` None) or
    failed (already remembered and logged). Never leaves the tier."""

    def __init__(self, label: str, cause: BaseException | None) -> None:
        super().__init__(label)
        self.label = label
        self.cause = cause


class _Swap(NamedTuple):
    """A versioned entry to compare-and-set: its storage name and cache key, the
    envelope, memcached's exptime and the entry's version."""

    name: str
    key: str
    blob: bytes
    expire: int
    version: int


class _Writes:
    """One server's part of a write: plain ``set`` batches by exptime (unversioned
    entries), the compare-and-sets, and the names to delete."""

    __slots__ = ("batches", "deletes", "swaps")

    def __init__(self) -> None:
        self.batches: dict[int, dict[str, bytes]] = {}
        self.swaps: list[_Swap] = []
        self.deletes: list[str] = []


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

    ``url`` is ``memcached://host:port[,host:port...]``. Options:
    :class:`~stratacache.config.MemcachedOptions`; ``retry_interval`` (how long a failed
    server is skipped) and ``generation_check_interval`` (how stale this process's view
    of the namespace generation may get) run on ``clock``.
    """

    kind = "memcached"
    Options = MemcachedOptions
    options: MemcachedOptions
    key_rules = KeyRules(250, allow_whitespace=False)
    transport_errors = MEMCACHED_ERRORS

    def __init__(
        self,
        url: str = "memcached://localhost:11211",
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        opts = MemcachedOptions.build(options)
        _, where = split_url(url, ("memcached",), default_port=11211)
        shown = where.display("memcached")
        if where.username or where.password:
            raise ConfigurationError(
                "memcached's text protocol has no authentication: drop the credentials "
                f"from {shown} (and keep memcached on a private network)"
            )
        if where.path.strip("/"):
            raise ConfigurationError(f"{shown}: a memcached URL has no path")
        if len(set(where.hosts)) != len(where.hosts):
            raise ConfigurationError(f"{shown} lists a server twice")
        super().__init__(opts, max_item_size=opts.max_item_size, clock=clock, wall_clock=wall_clock)
        self._location_text = shown
        self.servers = [
            _Server(
                address,
                functools.partial(
                    Client,
                    address,
                    serde=_RawBytes(),
                    connect_timeout=opts.connect_timeout,
                    timeout=opts.socket_timeout,
                    no_delay=True,
                    allow_unicode_keys=True,  # names are checked by key_rules (UTF-8 bytes)
                    default_noreply=False,  # a write is done when memcached says so
                ),
                functools.partial(
                    AsyncMemcachedClient,
                    address,
                    connect_timeout=opts.connect_timeout,
                    timeout=opts.socket_timeout,
                    max_connections=opts.max_connections,
                    pool_timeout=opts.pool_wait,
                    on_wait=self._pool_waited,
                ),
            )
            for address in where.hosts
        ]
        self._ring = _Ring(self.servers)
        self._clock = clock
        self.retry_interval = float(opts.retry_interval)
        self.generation_check_interval = float(opts.generation_check_interval)
        self._generation_name = f"{self.namespace}:generation"
        self.generation: int | None = None  # the namespace generation in use
        self._generation_due = -math.inf
        self._generation_lock = threading.Lock()
        self._set_generation(None)

    # ------------------------------------------------------------------ the transport

    def perform(self, command: Command) -> Any:
        server, action, argument = command
        return action(server.client, argument)

    async def aperform(self, command: Command) -> Any:
        server, action, argument = command
        loop = asyncio.get_running_loop()
        last = server.aclients.last
        client = last[1] if last[0] is loop else await server.aclients.get(loop)
        return await action(client, argument)

    # ------------------------------------------------------------------ generations

    def _set_generation(self, generation: int | None) -> None:
        if generation is None:
            # Never learned: a private generation (see the module docstring).
            generation = -int(self._wall_clock() * 1000)
        else:
            self.generation = generation
        self._names = NameMapper(f"{self.namespace}:{generation}:", self.key_rules)

    def storage_name(self, key: str) -> str:
        return self.drive(self._current_names()).name(key)

    def _current_names(self) -> Steps[NameMapper]:
        """The name mapper for the current generation, re-read when it is due."""
        if self._clock() >= self._generation_due:
            yield from self._refresh_generation()
        return self._names

    def _refresh_generation(self) -> Steps[None]:
        with self._generation_lock:  # claims the refresh; never held across a command
            if self._clock() < self._generation_due:
                return  # another thread just did it
            if self.generation is not None:
                # Known: one caller re-reads it while the others go on with it. Unknown
                # (first use), nobody may go on without it: a call that named its keys
                # with the private generation would write entries no one ever reads
                # (a burst of 1,000 first calls left 999 of them unreachable).
                self._generation_due = self._clock() + self.generation_check_interval
        server = self._ring.server(self._generation_name)
        if self._is_down(server):
            return
        try:
            generation = yield from self._read_generation(server)
        except PoolExhaustedError as exc:
            raise self._pool_timed_out(exc) from None
        except UNREACHABLE as exc:
            self._server_failed(server, exc)
            return
        except MemcacheError as exc:
            self.warnings.warning(
                "error reply",
                "tier %s (memcached): cannot read the namespace generation: %s: %s",
                self.name,
                type(exc).__name__,
                exc,
            )
            return
        with self._generation_lock:
            self._generation_due = self._clock() + self.generation_check_interval
            if generation != self.generation:
                self._set_generation(generation)

    def _read_generation(self, server: _Server) -> Steps[int]:
        name = self._generation_name
        raw = yield (server, _get, name)
        if raw is None:
            yield (server, _add, (name, str(int(self._wall_clock() * 1000)).encode()))
            raw = yield (server, _get, name)
        try:
            return int(raw)
        except (TypeError, ValueError):
            # Not ours (or evicted at once): start a new generation rather than trust it.
            fresh = int(self._wall_clock() * 1000)
            yield (server, _set_many, ({name: str(fresh).encode()}, 0))
            return fresh

    # ------------------------------------------------------------------ servers

    def _is_down(self, server: _Server) -> bool:
        return server.down_until > self._clock()

    def _server_failed(self, server: _Server, exc: BaseException) -> None:
        if server.down_until == _UP:
            self.warnings.warning(
                DOWN,
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
            self.warnings.warning(
                RECOVERED, "tier %s (memcached): server %s answers again", self.name, server.label
            )

    def _on(self, server: _Server, now: float, work: Work, what: str) -> Steps[Any]:
        """``work`` (one command, or commands, for ``server``); raises :class:`_Failed`
        when the server is down or fails (a server that cannot be reached is skipped for
        ``retry_interval``)."""
        if server.down_until > now:
            if not isinstance(work, tuple):
                work.close()
            raise _Failed(server.label, None)
        try:
            result = (yield work) if isinstance(work, tuple) else (yield from work)
        except PoolExhaustedError as exc:
            raise self._pool_timed_out(exc) from None
        except MEMCACHED_ERRORS as exc:
            raise self._failed(server, exc, what) from exc
        if server.down_until != _UP:
            self._server_ok(server)
        return result

    def _pool_waited(self) -> None:
        self.stats.pool_waits += 1

    def _pool_timed_out(self, exc: PoolExhaustedError) -> PoolTimeoutError:
        """A burst outran the asyncio pool: this call skips the level, but the server
        is not marked down (see :mod:`.permits` for the same rule on Redis)."""
        self.stats.pool_timeouts += 1
        return PoolTimeoutError(self.name, f"{exc}; raise max_connections or pool_timeout")

    def _failed(self, server: _Server, exc: BaseException, what: str) -> _Failed:
        """Remember a server's failure: one that cannot be reached is skipped for
        ``retry_interval``; an error reply fails only this call's part."""
        if isinstance(exc, UNREACHABLE):
            self._server_failed(server, exc)
        else:
            self.warnings.warning(
                "error reply",
                "tier %s (memcached): %s on %s failed: %s: %s",
                self.name,
                what,
                server.label,
                type(exc).__name__,
                exc,
            )
        return _Failed(server.label, exc)

    def _per_server(
        self,
        groups: dict[_Server, Any],
        work: Callable[[_Server, Any], Work],
        what: str,
    ) -> Steps[list[Any]]:
        """``work(server, part)`` for each server's part; skip (and remember) the servers
        that are down or fail. Raises TierUnavailableError when none answered."""
        self._check_open()
        results: list[Any] = []
        failures: list[_Failed] = []
        now = self._clock()
        for server, part in groups.items():
            try:
                results.append((yield from self._on(server, now, work(server, part), what)))
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

    # ------------------------------------------------------------------ operations

    def read_steps(self, keys: Sequence[str], stale: bool = False) -> Steps[dict[str, Entry]]:
        now = self._clock()
        if now >= self._generation_due:
            yield from self._refresh_generation()
        names = self._names
        if len(keys) == 1:
            # The commonest read: one name, one server, one plain get; written out rather
            # than through _on, which would cost two more generators on every hit.
            if self.closed:
                self._check_open()
            name = names.name(keys[0])
            server = self._ring.server(name)
            if server.down_until > now:
                raise self._no_answer("read", [_Failed(server.label, None)])
            try:
                blob = yield (server, _get, name)
            except PoolExhaustedError as exc:
                raise self._pool_timed_out(exc) from None
            except MEMCACHED_ERRORS as exc:
                raise self._no_answer("read", [self._failed(server, exc, "read")]) from None
            if server.down_until != _UP:
                self._server_ok(server)
            return self._found(keys, (blob,), stale)
        all_names = names.names(keys)
        merged: dict[str, bytes] = {}
        for part in (yield from self._per_server(self._ring.group(all_names), _gets, "read")):
            merged.update(part)
        return self._found(keys, [merged.get(name) for name in all_names], stale)

    def write_steps(self, prepared: Prepared) -> Steps[Collection[str] | None]:
        """Unversioned entries with a plain ``set``, versioned ones by compare-and-set
        (see the module docstring); returns the keys refused."""
        yield from self._current_names()
        versions = prepared.versions
        with self._generation_lock:  # no command inside: these names are _plan's
            sets, deletes = self._plan(prepared)
            name_of = self._names.name
            versioned = {name_of(k): k for k in prepared.items if versions.get(k, 0) > 0}
        if not sets and not deletes:
            return None
        now = self._wall_clock()
        work: dict[_Server, _Writes] = {}
        server_of = self._ring.server
        for name, blob, seconds in sets:
            server = server_of(name)
            writes = work.get(server)
            if writes is None:
                writes = work[server] = _Writes()
            expire = _expiry(seconds, now)
            key = versioned.get(name)
            if key is None:
                writes.batches.setdefault(expire, {})[name] = blob
            else:
                writes.swaps.append(_Swap(name, key, blob, expire, versions[key]))
        for name in deletes:
            work.setdefault(server_of(name), _Writes()).deletes.append(name)
        refused: list[str] = []
        for part in (yield from self._per_server(work, self._stores, "write")):
            refused += part
        return refused

    def _stores(self, server: _Server, writes: _Writes) -> Steps[list[str]]:
        """One server's part of a write; returns the keys refused."""
        deletes = writes.deletes
        for expire, values in writes.batches.items():
            failed = yield (server, _set_many, (values, expire))
            if failed:  # not stored: make sure no older value stays in its place
                deletes = [*deletes, *failed]
        refused: list[str] = []
        if writes.swaps:
            refused, lost = yield from self._swap_steps(server, writes.swaps)
            deletes = [*deletes, *lost]
        if deletes:
            yield (server, _delete_many, deletes)
        return refused

    def _swap_steps(
        self, server: _Server, swaps: list[_Swap]
    ) -> Steps[tuple[list[str], list[str]]]:
        """Compare-and-set ``swaps`` on ``server`` (see the module docstring). Returns
        the keys refused and the names of those among them to delete (still racing after
        the last attempt: what is stored may be older than the entry)."""
        refused: list[str] = []
        pending = swaps
        for _ in range(_CAS_ATTEMPTS):
            found = yield (server, _gets_many, [swap.name for swap in pending])
            raced: list[_Swap] = []
            for swap in pending:
                current = found.get(swap.name)
                if current is None:
                    stored = yield (server, _add_new, swap)
                elif self._stored_version(swap.key, current[0]) > swap.version:
                    refused.append(swap.key)
                    continue
                else:
                    stored = yield (server, _cas, (swap, current[1]))
                if not stored:  # added, changed or gone since the gets: look again
                    raced.append(swap)
            if not raced:
                return refused, []
            pending = raced
        return [*refused, *(swap.key for swap in pending)], [swap.name for swap in pending]

    def _stored_version(self, key: str, blob: bytes) -> int:
        """The version of the entry stored for ``key``; -1 when it does not decode."""
        try:
            return self.codec.decode(key, blob).version
        except PayloadError:
            return -1

    def delete_steps(self, keys: Sequence[str]) -> Steps[None]:
        if not keys:
            return
        names = (yield from self._current_names()).names(keys)
        yield from self._per_server(self._ring.group(names), _deletes, "delete")

    def clear_steps(self) -> Steps[None]:
        """Start a new generation of this namespace (see the module docstring)."""
        self._check_open()
        server = self._ring.server(self._generation_name)
        try:
            generation = yield (server, _incr, self._generation_name)
            if generation is None:  # no generation yet: making one is a clear too
                generation = yield from self._read_generation(server)
        except MEMCACHED_ERRORS as exc:
            if isinstance(exc, UNREACHABLE):
                self._server_failed(server, exc)
            raise self.unavailable(exc, f"clear (generation on {server.label}): ") from exc
        self._server_ok(server)
        with self._generation_lock:
            self._set_generation(int(generation))
            self._generation_due = self._clock() + self.generation_check_interval

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        super().close()
        for server in self.servers:
            server.close()

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


# Calls on a client: the same for pymemcache's Client and AsyncMemcachedClient (whose
# results the async transport awaits).


def _get(client: Any, name: str) -> Any:
    return client.get(name)


def _get_many(client: Any, names: list[str]) -> Any:
    return client.get_many(names)


def _add(client: Any, item: tuple[str, bytes]) -> Any:
    return client.add(item[0], item[1], noreply=False)


def _gets_many(client: Any, names: list[str]) -> Any:
    return client.gets_many(names)


def _add_new(client: Any, swap: _Swap) -> Any:
    return client.add(swap.name, swap.blob, expire=swap.expire, noreply=False)


def _cas(client: Any, item: tuple[_Swap, bytes]) -> Any:
    swap, unique = item
    return client.cas(swap.name, swap.blob, unique, expire=swap.expire, noreply=False)


def _incr(client: Any, name: str) -> Any:
    return client.incr(name, 1, noreply=False)


def _set_many(client: Any, batch: tuple[dict[str, bytes], int]) -> Any:
    return client.set_many(batch[0], expire=batch[1], noreply=False)


def _delete_many(client: Any, names: list[str]) -> Any:
    return client.delete_many(names, noreply=False)


# One server's part of an operation, as commands.


def _gets(server: _Server, names: list[str]) -> Command:
    return (server, _get_many, names)


def _deletes(server: _Server, names: list[str]) -> Command:
    return (server, _delete_many, names)

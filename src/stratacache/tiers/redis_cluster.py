"""Redis Cluster as a cache level: one level sharded over many nodes.

A cluster splits the key space into 16384 hash slots (CRC16 of the key, or of the part
between the first ``{`` and the next ``}`` when there is one: a *hash tag*), each served by
one master and copied to its replicas. A multi-key command is only allowed when all its
keys share a slot, so a batch is grouped **by slot**:

* reads use redis-py's ``mget_nonatomic``, which groups the names by slot and sends one
  MGET per slot through a cluster pipeline: one round trip per node, all nodes in turn;
  a single key is a plain MGET to its node;
* deletes group names by slot here (:func:`by_slot`) and queue one UNLINK per slot in a
  cluster pipeline; writes queue one SET per key, which the pipeline sends to each key's
  node, again one round trip per node;
* ``clear()`` runs ``SCAN MATCH <namespace>:*`` on every master in turn and UNLINKs each
  page (split by slot by redis-py): keys live only on masters, so that visits each once.

Storage names start with ``<namespace>:``, which has no braces, so the slot comes from the
cache key: keys that share a hash tag (``user:{42}:profile``, ``user:{42}:prefs``) share a
slot and a node. Hashed keys (too long, or not printable) have no tag and spread evenly.

Redirections and failover are redis-py's job: a ``MOVED`` reply updates its slot table
(and every few of them it reloads the whole topology), an ``ASK`` is followed once. When a
master dies, calls routed to it fail until a replica has taken over (about the cluster's
``cluster-node-timeout`` plus an election); each such call raises
:class:`~stratacache.errors.TierUnavailableError` after ``retries`` quick attempts (each
one reloads the topology first), so the hierarchy skips the level meanwhile, and the first
call after the promotion finds the new master. Nothing is read from replicas: a replica
may lag behind its master, and a cache level must not serve what was just invalidated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..config import RedisClusterOptions
from ..errors import ConfigurationError
from ..keys import KeyRules
from .base import Steps
from .redis import _BATCH, Call, RedisFamilyTier, _unlink
from .remote import Location

__all__ = ["RedisClusterTier", "by_slot"]


def by_slot(names: Sequence[str]) -> dict[int, list[str]]:
    """Storage names grouped by their cluster hash slot (hash tags respected)."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(key_slot(name.encode("utf-8", "surrogatepass")), []).append(name)
    return groups


class RedisClusterTier(RedisFamilyTier):
    """A Redis Cluster as a cache level.

    ``url`` is ``redis+cluster://[user[:password]@]host:port[,host:port...]``
    (``rediss+cluster://`` for TLS): any reachable node is enough to discover the rest,
    more nodes make start-up survive some of them being down. Options as for
    :class:`~stratacache.tiers.redis.RedisTier`, except that the pool bound is
    ``max_connections_per_node``; there is no database number (a cluster only has
    database 0). ``retries`` is how many more times a command is tried, after reloading
    the topology, when a node fails.
    """

    kind = "redis-cluster"
    Options = RedisClusterOptions
    schemes = ("redis+cluster", "rediss+cluster")
    key_rules = KeyRules(1024)

    def __init__(self, url: str, **options: Any) -> None:
        if "max_connections" in options:
            raise ConfigurationError(
                "a cluster has a connection pool per node: pass max_connections_per_node"
            )
        super().__init__(url, **options)

    def _pool_size(self, options: Any) -> int:
        return int(options.max_connections_per_node)

    def _server_options(self, where: Location, scheme: str) -> dict[str, Any]:
        if where.path.strip("/") not in ("", "0"):
            raise ConfigurationError(
                f"{where.display(scheme)}: a Redis Cluster has only database 0; drop the path"
            )
        self.nodes = where.hosts
        return {}

    def _client_makers(
        self, where: Location, options: dict[str, Any], retries: int
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        hosts = where.hosts
        # A short backoff between attempts: each one reloads the slot table from the
        # surviving nodes, and hammering them during a failover helps nobody.
        backoff = ExponentialBackoff(cap=0.1, base=0.02)

        # The sync client connects (and loads the slot table) when it is made, which is on
        # first use: a cache must start even while its cluster is down.
        def make_client() -> Any:
            return redis.cluster.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in hosts],  # type: ignore[no-untyped-call]
                retry=Retry(backoff, retries),
                **options,
            )

        def make_async_client() -> Any:
            return redis.asyncio.cluster.RedisCluster(
                startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in hosts],
                retry=AsyncRetry(backoff, retries),
                **options,
            )

        return make_client, make_async_client

    def _read(self, client: Any, names: list[str]) -> Any:
        return client.mget_nonatomic(names)

    def _queue_unlink(self, pipe: Any, names: Sequence[str]) -> None:
        for group in by_slot(names).values():
            for start in range(0, len(group), _BATCH):
                # execute_command queues in every pipeline; the asyncio cluster pipeline's
                # unlink() is a coroutine that would send at once.
                pipe.execute_command("UNLINK", *group[start : start + _BATCH])

    def clear_steps(self) -> Steps[None]:
        pattern = self._scan_pattern
        primaries = yield _primaries
        for node in primaries:
            cursor = 0
            while True:
                cursors, names = yield _scan_node(node, cursor, pattern)
                cursor = next(iter(cursors.values()), 0) if isinstance(cursors, dict) else 0
                if names:
                    yield _unlink(names)
                if not cursor:
                    break


def _primaries(client: Any) -> Any:
    """The masters, after loading the topology (the asyncio client loads it lazily)."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):

        async def loaded() -> Any:
            await client.initialize()
            return client.get_primaries()

        return loaded()
    return client.get_primaries()  # the sync client loaded the topology when it was made


def _scan_node(node: Any, cursor: int, pattern: str) -> Call:
    return lambda client: client.scan(cursor=cursor, match=pattern, count=_BATCH, target_nodes=node)

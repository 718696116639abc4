"""Helpers for testing the network tiers (Redis, Redis Cluster, memcached).

``remote_factory`` builds a tier for a kind and a running server (the shared conformance
suite and the remote contract use it); ``raw_store`` gives direct access to the bytes under
a storage name, which the contract and the hostile payload tests use to write what an
attacker with access to the store could write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import redis
import redis.cluster
from pymemcache.client.base import Client as MemcacheClient

from stratacache.config import tier_from_url
from stratacache.tiers.base import Tier
from stratacache.tiers.remote import RemoteTier

from ..conftest import FakeClock

__all__ = [
    "REMOTE_SERVERS",
    "RawStore",
    "made_tiers",
    "raw_store",
    "remote_factory",
    "server_url",
]

SIGNING_KEY = b"0123456789abcdef0123456789abcdef"

# tier kind -> the session fixture that runs its server
REMOTE_SERVERS = {
    "redis": "redis_server",
    "redis-cluster": "redis_cluster",
    "memcached": "memcached_servers",
}

TierFactory = Callable[..., RemoteTier]
T = TypeVar("T", bound=Tier)


# ---------------------------------------------------------------------------- factories


def server_url(kind: str, server: Any) -> str:
    if kind == "redis":
        return str(server.url)
    if kind == "redis-cluster":
        return str(server.cluster_url)
    return "memcached://" + ",".join(f"{s.host}:{s.port}" for s in server)


def remote_factory(kind: str, server: Any, clock: FakeClock) -> TierFactory:
    """``make(**options)`` for the shared suite's ``make_tier``: a tier of ``kind`` on
    ``server`` (a RedisServer, a RedisCluster, or a list of MemcachedServer) that reads
    the fake clock. Unknown suite options are ignored, as the shared factories do."""
    url = server_url(kind, server)
    accepted = {
        "namespace",
        "value_type",
        "max_value_size",
        "signing_key",
        "serializer",
        "compress_threshold",
        "socket_timeout",
        "connect_timeout",
        "ttl",
        "ttl_grace",
        "name",
        "retry_interval",
        "generation_check_interval",
        "max_item_size",
    }

    def make(**options: Any) -> RemoteTier:
        chosen = {k: v for k, v in options.items() if k in accepted and v is not None}
        chosen.setdefault("namespace", "t")
        if kind == "memcached":
            chosen["clock"] = clock.monotonic
        else:
            chosen.pop("retry_interval", None)
            chosen.pop("generation_check_interval", None)
            chosen.pop("max_item_size", None)
        tier = tier_from_url(url, wall_clock=clock.time, **chosen)
        assert isinstance(tier, RemoteTier)
        return tier

    return make


def made_tiers(factory: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """For a fixture to ``yield from``: ``make(**options)`` over ``factory``, and every
    tier it made closed after the test."""
    made: list[T] = []

    def make(**options: Any) -> T:
        made.append(factory(**options))
        return made[-1]

    yield make
    for tier in made:
        tier.close()


# ---------------------------------------------------------------------------- raw access


class RawStore(Protocol):
    """The store under a tier, reached with a plain client."""

    def put(self, name: str, blob: bytes) -> None: ...
    def get(self, name: str) -> bytes | None: ...
    def ttl(self, name: str) -> float | None:
        """Seconds the server will keep ``name``; None when it has no expiry."""

    def close(self) -> None: ...


class _RedisRaw:
    def __init__(self, client: Any) -> None:
        self.client = client

    def put(self, name: str, blob: bytes) -> None:
        self.client.set(name, blob)

    def get(self, name: str) -> bytes | None:
        value = self.client.get(name)
        return None if value is None else bytes(value)

    def ttl(self, name: str) -> float | None:
        millis = int(self.client.pttl(name))
        assert millis != -2, f"{name!r} is not stored"
        return None if millis == -1 else millis / 1000

    def close(self) -> None:
        self.client.close()


class _MemcachedRaw:
    """Writes go to every server, so the tier finds the bytes wherever it routes the name."""

    def __init__(self, servers: list[Any]) -> None:
        self.clients = [
            MemcacheClient((s.host, s.port), allow_unicode_keys=True, default_noreply=False)
            for s in servers
        ]

    def put(self, name: str, blob: bytes) -> None:
        for client in self.clients:
            client.set(name, blob, noreply=False)

    def get(self, name: str) -> bytes | None:
        for client in self.clients:
            value = client.get(name)
            if value is not None:
                return bytes(value)
        return None

    def ttl(self, name: str) -> float | None:
        for client in self.clients:
            # meta get with the "t" flag: "HD t<seconds left>" (-1: never), or "EN" (miss)
            reply = client.raw_command(b"mg " + name.encode() + b" t", b"\r\n")
            if reply.startswith(b"HD"):
                seconds = int(reply.split()[1][1:])
                return None if seconds == -1 else float(seconds)
        raise AssertionError(f"{name!r} is not stored")

    def close(self) -> None:
        for client in self.clients:
            client.close()


def raw_store(kind: str, server: Any) -> RawStore:
    if kind == "redis":
        return _RedisRaw(redis.Redis.from_url(server.url))
    if kind == "redis-cluster":
        host, port = server.addresses[0]
        return _RedisRaw(redis.cluster.RedisCluster(host=host, port=port))
    return _MemcachedRaw(list(server))

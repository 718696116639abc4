"""Conformance kit for the network tiers (Redis, Redis Cluster, memcached).

This module collects no test by itself: the servers are started by the fixtures of
``tests/integration/conftest.py``, which only modules under ``tests/integration`` can use.
Each remote tier's module there provides ``make_tier`` (and ``raw``) for its store and
pulls in :func:`remote_suite`: every test of the shared tier suite
(``test_tier_conformance.py``) plus the contract below, which only shared stores have to
keep (storage names, server-side TTLs, envelopes that come back wrong, signing, both
faces, the hierarchy on top).

``remote_factory`` builds a tier for a kind and a running server; ``raw_store`` gives
direct access to the bytes under a storage name, which the contract and the hostile
payload tests use to write what an attacker with access to the store could write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import pytest
import redis
import redis.cluster
from pymemcache.client.base import Client as MemcacheClient

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.config import tier_from_url
from stratacache.entry import NEVER, Entry
from stratacache.errors import CacheClosedError, ConfigurationError
from stratacache.serde import HEADER_SIZE, Codec
from stratacache.tiers.remote import RemoteTier

from ..conftest import FakeClock
from . import test_tier_conformance as shared

__all__ = ["RawStore", "raw_store", "remote_factory", "remote_suite", "server_url"]

SIGNING_KEY = b"0123456789abcdef0123456789abcdef"

TierFactory = Callable[..., RemoteTier]


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


# ---------------------------------------------------------------------------- the contract
# Functions named contract_* become test_remote_* in each module that takes remote_suite().


def entry(value: Any, clock: FakeClock, ttl: float | None = 60.0, **kw: Any) -> Entry:
    return Entry(value, NEVER if ttl is None else clock.time() + ttl, **kw)


def contract_storage_names_are_namespaced_and_valid(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier(namespace="names")
    plain, awkward, long = "user:42", "tab\tand space and ключ", "k" * 1100
    tier.set_many({k: entry(k, clock) for k in (plain, awkward, long)})
    assert tier.storage_name(plain).startswith("names:") and tier.storage_name(plain).endswith(
        ":user:42"
    )
    for key in (awkward, long):
        name = tier.storage_name(key)
        assert name.startswith("names:") and "#" in name
        assert tier.key_rules.accepts(name)
    for key in (plain, awkward, long):
        assert raw.get(tier.storage_name(key)) is not None
    assert {k: e.value for k, e in tier.get_many([plain, awkward, long]).items()} == {
        plain: plain,
        awkward: awkward,
        long: long,
    }


def contract_two_keys_under_one_name_never_see_each_other(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    """What a hash collision would do: key B's name holds key A's envelope."""
    tier = make_tier()
    tier.set_many({"a" * 1100: entry("value of A", clock)})
    blob = raw.get(tier.storage_name("a" * 1100))
    assert blob is not None
    raw.put(tier.storage_name("b" * 1100), blob)
    assert tier.get_many(["b" * 1100]) == {}
    assert tier.stats.corrupt == 1
    assert tier.get_many(["a" * 1100])["a" * 1100].value == "value of A"


def contract_server_side_ttl_is_a_backstop(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier(ttl_grace=5.0)
    tier.set_many({"timed": entry(1, clock, ttl=100), "forever": entry(2, clock, ttl=None)})
    left = raw.ttl(tier.storage_name("timed"))
    assert left is not None and 100 <= left <= 106
    assert raw.ttl(tier.storage_name("forever")) is None
    # The envelope's expiry decides, whatever the server still holds.
    clock.advance(101)
    assert tier.get_many(["timed"]) == {}
    assert raw.get(tier.storage_name("timed")) is not None


def contract_corrupt_payload_is_a_counted_logged_miss(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier()
    tier.set_many({"good": entry(1, clock), "bad": entry(2, clock)})
    raw.put(tier.storage_name("bad"), b"SC\x01garbage")
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        got = tier.get_many(["good", "bad"])
    assert set(got) == {"good"}
    assert tier.stats.corrupt == 1
    assert any("ignoring the stored value of key 'bad'" in r.getMessage() for r in caplog.records)


def contract_signing_compression_and_pickle(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier(
        namespace="signed",
        serializer="pickle",
        signing_key=SIGNING_KEY,
        compress_threshold=64,
    )
    value = {"set": {1, 2, 3}, "text": "x" * 5000}  # a set: only pickle keeps it
    tier.set_many({"k": entry(value, clock)})
    blob = raw.get(tier.storage_name("k"))
    assert blob is not None and len(blob) < 1000  # compressed
    assert blob[4] & 0x05 == 0x05  # flags: compressed and signed
    assert tier.get_many(["k"])["k"].value == value
    # Another namespace with the same key and the same secret cannot take it over.
    other = make_tier(namespace="other", serializer="pickle", signing_key=SIGNING_KEY)
    raw.put(other.storage_name("k"), blob)
    assert other.get_many(["k"]) == {} and other.stats.corrupt == 1


def contract_sync_and_async_faces_share_the_store(make_tier: TierFactory, clock: FakeClock) -> None:
    tier = make_tier()

    async def scenario() -> None:
        await tier.awrite(tier.prepare({"from-async": entry("a", clock)}))
        tier.set_many({"from-sync": entry("s", clock)})
        got = await tier.aget_many(["from-async", "from-sync"])
        assert {k: e.value for k, e in got.items()} == {"from-async": "a", "from-sync": "s"}
        await tier.adelete_many(["from-sync"])
        await tier.aclose()

    asyncio.run(scenario())
    with pytest.raises(CacheClosedError):
        tier.get_many(["from-async"])


def contract_repr_and_errors_never_show_the_password(make_tier: TierFactory, tier_url: str) -> None:
    tier = make_tier()
    text = repr(tier)
    assert tier.namespace in text and "secret" not in text
    with pytest.raises(ConfigurationError) as caught:
        tier_from_url(_with_password(tier_url, "hunter2-secret") + "?namespace=x&colour=blue")
    message = str(caught.value)
    assert "'colour'" in message and "namespace" in message  # names it and the accepted ones
    assert "hunter2-secret" not in message


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://user:{password}@{rest.split('@')[-1]}"


def contract_hierarchy_fills_and_reads_the_level(make_tier: TierFactory, clock: FakeClock) -> None:
    loads: list[list[str]] = []

    def origin(keys: list[str]) -> dict[str, Any]:
        loads.append(list(keys))
        return {key: key.upper() for key in keys if key != "absent"}

    def cache_over(cls: type[Any]) -> Any:
        return cls(
            [MemoryTier(100, clock=clock.monotonic, wall_clock=clock.time), make_tier()],
            origin,
            clock=clock.monotonic,
            wall_clock=clock.time,
        )

    first = cache_over(Cache)
    assert first.get("a") == "A"
    assert first.get_many(["a", "b", "absent"]) == {"a": "A", "b": "B"}
    assert loads == [["a"], ["b", "absent"]]
    first.close()

    async def from_async() -> None:
        second = cache_over(AsyncCache)  # empty L1: the remote level answers
        assert await second.get_many(["a", "b"]) == {"a": "A", "b": "B"}
        assert second.stats().levels[1].hits == 2
        await second.close()

    asyncio.run(from_async())
    assert loads == [["a"], ["b", "absent"]]


def contract_envelope_header_is_checked_not_trusted(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier()
    tier.set_many({"k": entry("v", clock)})
    blob = raw.get(tier.storage_name("k"))
    assert blob is not None
    raw.put(tier.storage_name("k"), blob[:HEADER_SIZE])  # truncated
    assert tier.get_many(["k"]) == {}
    assert Codec().decode("k", blob).value == "v"  # the intact one was fine


def remote_suite(*, host_list: bool = False) -> dict[str, Callable[..., Any]]:
    """The shared tier suite's tests plus this contract, named for collection.

    ``host_list``: the tier's URL lists several hosts. ``config.redact`` cannot parse such
    a URL when it has a password (urllib's ``.port`` raises ValueError), so the password
    test is expected to fail there until that is fixed (strict: the fix will show).
    """
    tests: dict[str, Callable[..., Any]] = {
        name: fn for name, fn in vars(shared).items() if name.startswith("test_") and callable(fn)
    }
    for name, fn in globals().items():
        if name.startswith("contract_") and callable(fn):
            tests["test_remote_" + name.removeprefix("contract_")] = fn
    if host_list:
        password_test = tests["test_remote_repr_and_errors_never_show_the_password"]

        @pytest.mark.xfail(
            strict=True,
            raises=ValueError,
            reason="config.redact() cannot parse a comma-separated host list with a password",
        )
        def password_test_with_host_list(make_tier: TierFactory, tier_url: str) -> None:
            password_test(make_tier, tier_url)

        tests["test_remote_repr_and_errors_never_show_the_password"] = password_test_with_host_list
    return tests

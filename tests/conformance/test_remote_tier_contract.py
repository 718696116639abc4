"""The contract every shared, networked tier keeps on top of the tier conformance suite:
storage names, server-side TTLs as a backstop, envelopes that come back wrong, signing,
both faces, passwords never shown, and the hierarchy on top. Parametrized over Redis,
Redis Cluster and memcached, each on a real server started by the test suite."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.config import tier_from_url
from stratacache.entry import NEVER, Entry
from stratacache.errors import (
    CacheClosedError,
    ConfigurationError,
    SerializationError,
    TierUnavailableError,
)
from stratacache.serde import HEADER_SIZE, Codec
from stratacache.tiers.memcached import MemcachedTier
from stratacache.tiers.redis import RedisTier
from stratacache.tiers.redis_cluster import RedisClusterTier
from stratacache.tiers.remote import RemoteTier

from ..conftest import FakeClock
from .remote_kit import (
    REMOTE_SERVERS,
    SIGNING_KEY,
    RawStore,
    made_tiers,
    raw_store,
    remote_factory,
    server_url,
)

TierFactory = Callable[..., RemoteTier]


@pytest.fixture(params=sorted(REMOTE_SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(REMOTE_SERVERS[kind])


@pytest.fixture
def tier_url(kind: str, server: Any) -> str:
    return server_url(kind, server)


@pytest.fixture
def make_tier(kind: str, server: Any, clock: FakeClock) -> Iterator[TierFactory]:
    yield from made_tiers(remote_factory(kind, server, clock))


@pytest.fixture
def tier(make_tier: TierFactory) -> RemoteTier:
    return make_tier()


@pytest.fixture
def raw(kind: str, server: Any) -> Iterator[RawStore]:
    store = raw_store(kind, server)
    yield store
    store.close()


def entry(value: Any, clock: FakeClock, ttl: float | None = 60.0, **kw: Any) -> Entry:
    return Entry(value, NEVER if ttl is None else clock.time() + ttl, **kw)


def test_storage_names_are_namespaced_and_valid(
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


def test_two_keys_under_one_name_never_see_each_other(
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


def test_server_side_ttl_is_a_backstop(
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


def test_corrupt_payload_is_a_counted_logged_miss(
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


def test_signing_compression_and_pickle(
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


def test_sync_and_async_faces_share_the_store(make_tier: TierFactory, clock: FakeClock) -> None:
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


SECRET = "hunter2-secret"


def test_repr_and_errors_never_show_the_password(
    kind: str, tier_url: str, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    shown: list[str] = []  # every repr and message the password could leak into

    # Tiers whose URL carries a password: their reprs and the errors they raise.
    if kind == "redis":  # a server that wants the password: the tier must really work
        server = request.getfixturevalue("make_redis_server")(password=SECRET)
        assert SECRET in server.url
        tier = tier_from_url(server.url + "?namespace=pw", wall_clock=clock.time)
        tier.set_many({"k": entry("v", clock)})
        assert tier.get_many(["k"])["k"].value == "v"
        shown.append(repr(tier))
        tier.close()
        wrong = tier_from_url(_with_password(server.url, "wrong-" + SECRET))
        # Wrong credentials are permanent: a configuration error, not an outage.
        with pytest.raises(ConfigurationError, match="AuthenticationError") as refused:
            wrong.get_many(["k"])
        shown += [repr(wrong), str(refused.value)]
        wrong.close()
    elif kind == "redis-cluster":  # the cluster wants none: its refusal must not show it
        tier = tier_from_url(_with_password(tier_url, SECRET))
        shown.append(repr(tier))
        with pytest.raises(TierUnavailableError) as refused:
            tier.get_many(["k"])
        shown.append(str(refused.value))
        tier.close()
    else:  # memcached speaks no authentication: credentials are refused
        with pytest.raises(ConfigurationError, match="no authentication") as caught:
            tier_from_url(_with_password(tier_url, SECRET))
        shown.append(str(caught.value))

    # Errors about URLs, from tier_from_url and from the class itself.
    with pytest.raises(ConfigurationError) as caught:
        tier_from_url(_with_password(tier_url, SECRET) + "?namespace=x&colour=blue")
    message = str(caught.value)
    assert "'colour'" in message and "namespace" in message  # names it and the accepted ones
    shown.append(message)
    scheme = tier_url.split("://", 1)[0]
    malformed = [
        _with_password(tier_url, SECRET).replace("://", ":/", 1),  # no "://" at all
        f"{scheme}://user:{SECRET}@localhost:notaport",
        f"{scheme}://user:{SECRET}@[::1",
        f"{scheme}://user:{SECRET}?@localhost",  # an unescaped "?" in the password
    ]
    for url in malformed:
        for build in (tier_from_url, TIER_CLASSES[kind]):
            with pytest.raises(ConfigurationError) as caught:
                build(url)
            shown.append(str(caught.value))
    for url in (f"{tier_url}?password={SECRET}", f"{tier_url}?namespace=x&pass={SECRET}"):
        with pytest.raises(ConfigurationError, match="unknown option") as caught:
            tier_from_url(url)
        shown.append(str(caught.value))

    for text in shown:
        assert "hunter2" not in text, text


TIER_CLASSES: dict[str, type[RemoteTier]] = {
    "redis": RedisTier,
    "redis-cluster": RedisClusterTier,
    "memcached": MemcachedTier,
}


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://user:{password}@{rest.split('@')[-1]}"


@pytest.mark.parametrize("option", ["socket_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [None, 0, -1.0, math.inf, math.nan, "1"])
def test_timeouts_must_be_finite(tier_url: str, option: str, value: Any) -> None:
    """Without a timeout a server that accepts the connection and then hangs would hold
    the calling thread (or task) forever."""
    with pytest.raises(ConfigurationError, match=f"{option} must be a finite number"):
        tier_from_url(tier_url, **{option: value})
    with pytest.raises(ConfigurationError, match=option):
        tier_from_url(f"{tier_url}?{option}=none")


def test_a_key_longer_than_an_envelope_takes_is_refused_cleanly(
    tier: RemoteTier, clock: FakeClock
) -> None:
    key = "k" * 70_000
    with pytest.raises(SerializationError, match="at most 65535 bytes"):
        tier.set_many({key: entry(1, clock)})
    assert tier.get_many([key]) == {}  # reading it is only a miss


def test_hierarchy_fills_and_reads_the_level(make_tier: TierFactory, clock: FakeClock) -> None:
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


def test_envelope_header_is_checked_not_trusted(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier()
    tier.set_many({"k": entry("v", clock)})
    blob = raw.get(tier.storage_name("k"))
    assert blob is not None
    raw.put(tier.storage_name("k"), blob[:HEADER_SIZE])  # truncated
    assert tier.get_many(["k"]) == {}
    assert Codec().decode("k", blob).value == "v"  # the intact one was fine

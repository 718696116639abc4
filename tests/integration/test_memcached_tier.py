"""The memcached tier on two real memcached servers: the tier conformance suite, then the
pool (a server down, back), namespace generations, key rules and item limits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stratacache.config import tier_from_url
from stratacache.entry import Entry
from stratacache.errors import CacheClosedError, ConfigurationError, TierUnavailableError
from stratacache.tiers.memcached import MemcachedTier
from stratacache.tiers.remote import RemoteTier

from ..conformance.remote_kit import (
    RawStore,
    made_tiers,
    raw_store,
    remote_factory,
    server_url,
)
from ..conftest import FakeClock
from ..servers import MemcachedServer

TierFactory = Callable[..., RemoteTier]


@pytest.fixture
def tier_url(memcached_servers: list[MemcachedServer]) -> str:
    return server_url("memcached", memcached_servers)


@pytest.fixture
def make_tier(memcached_servers: list[MemcachedServer], clock: FakeClock) -> Iterator[TierFactory]:
    yield from made_tiers(remote_factory("memcached", memcached_servers, clock))


@pytest.fixture
def tier(make_tier: TierFactory) -> RemoteTier:
    return make_tier()


@pytest.fixture
def raw(memcached_servers: list[MemcachedServer]) -> Iterator[RawStore]:
    store = raw_store("memcached", memcached_servers)
    yield store
    store.close()


def entry(value: Any, clock: FakeClock, ttl: float = 600.0) -> Entry:
    return Entry(value, clock.time() + ttl)


def pool(servers: list[MemcachedServer], clock: FakeClock, **options: Any) -> MemcachedTier:
    tier = tier_from_url(
        server_url("memcached", servers),
        clock=clock.monotonic,
        wall_clock=clock.time,
        connect_timeout=0.2,
        socket_timeout=0.5,
        **options,
    )
    assert isinstance(tier, MemcachedTier)
    return tier


def keys_by_server(tier: MemcachedTier, keys: list[str]) -> dict[int, list[str]]:
    """Which server each key lives on (by port), as the tier routes it."""
    owners: dict[int, list[str]] = {}
    for key in keys:
        server = tier._ring.server(tier.storage_name(key))
        owners.setdefault(server.address[1], []).append(key)
    return owners


# ---------------------------------------------------------------------------- the pool


def test_a_stopped_server_leaves_the_others_serving(
    fresh_memcached_servers: list[MemcachedServer], clock: FakeClock
) -> None:
    first, second = fresh_memcached_servers
    # The generation is read once: if its server is the one killed, re-reading it after the
    # restart would (rightly) start a new generation and hide every key (tested elsewhere).
    tier = pool(fresh_memcached_servers, clock, retry_interval=5.0, generation_check_interval=1e6)
    keys = [f"k{i}" for i in range(200)]
    tier.set_many({k: entry(k, clock) for k in keys})
    owners = keys_by_server(tier, keys)
    on_first, on_second = owners[first.port], owners[second.port]
    assert on_first and on_second

    first.kill()
    got = tier.get_many(keys)  # the batch reaches both: the survivor answers
    assert set(got) == set(on_second)
    assert tier.stats.errors == 1
    with pytest.raises(TierUnavailableError, match=f"no answer from 127.0.0.1:{first.port}"):
        tier.get_many(on_first)  # nobody to ask: the level is unavailable
    # Writes too: the survivor's keys are written, the dead server's are dropped.
    tier.set_many({k: entry("new", clock) for k in keys})
    assert {e.value for e in tier.get_many(keys).values()} == {"new"}

    async def from_async() -> None:
        values = await tier.aget_many(keys)
        assert set(values) == set(on_second)

    asyncio.run(from_async())

    # Back (empty: no persistence); the dead server is tried again after retry_interval.
    first.start()
    with pytest.raises(TierUnavailableError):  # still skipped: retry_interval has not passed
        tier.set_many({k: entry("back", clock) for k in on_first})
    clock.advance(5.1)
    tier.set_many({k: entry("back", clock) for k in on_first})
    assert {e.value for e in tier.get_many(on_first).values()} == {"back"}
    assert set(tier.get_many(keys)) == set(keys)
    tier.close()


def test_a_hung_server_times_out(
    fresh_memcached_servers: list[MemcachedServer], clock: FakeClock
) -> None:
    first, _ = fresh_memcached_servers
    tier = pool(fresh_memcached_servers, clock)
    keys = [f"k{i}" for i in range(50)]
    tier.set_many({k: entry(k, clock) for k in keys})
    on_first = keys_by_server(tier, keys)[first.port]
    first.pause()
    try:
        with pytest.raises(TierUnavailableError, match=r"timed out|TimeoutError"):
            tier.get_many(on_first)
    finally:
        first.resume()
    clock.advance(1.1)
    assert set(tier.get_many(on_first)) == set(on_first)
    tier.close()


def test_close_waits_for_work_in_flight_before_closing_the_clients(
    fresh_memcached_servers: list[MemcachedServer], clock: FakeClock
) -> None:
    """An async read is in a worker thread, waiting on a hung server: close() returns
    only once that read is over (its socket timed out), and closes the clients after."""
    tier = pool(fresh_memcached_servers, clock, name="closing")
    tier.set_many({"k": entry(1, clock)})
    for server in fresh_memcached_servers:
        server.pause()
    try:

        async def scenario() -> None:
            reading = asyncio.ensure_future(tier.aget_many(["k"]))
            await asyncio.sleep(0)  # one turn of the loop: the read is in a worker now
            tier.close()
            workers = [t for t in threading.enumerate() if t.name.startswith("stratacache-closing")]
            assert workers == []
            with pytest.raises(TierUnavailableError, match=r"timed out|TimeoutError"):
                await reading
            with pytest.raises(CacheClosedError):
                await tier.aget_many(["k"])

        asyncio.run(scenario())
    finally:
        for server in fresh_memcached_servers:
            server.resume()


def test_routing_is_balanced_and_independent_of_server_order(
    memcached_servers: list[MemcachedServer], clock: FakeClock
) -> None:
    forward = pool(memcached_servers, clock)
    backward = pool(list(reversed(memcached_servers)), clock)
    names = [f"ns:1:user:{i}" for i in range(2000)]
    assert [forward._ring.server(n).label for n in names] == [
        backward._ring.server(n).label for n in names
    ]
    spread = Counter(forward._ring.server(n).label for n in names)
    assert all(600 < count < 1400 for count in spread.values()), spread
    forward.close()
    backward.close()


# ---------------------------------------------------------------------------- generations


def test_clear_is_seen_by_other_processes_within_the_check_interval(
    memcached_servers: list[MemcachedServer], clock: FakeClock
) -> None:
    writer = pool(memcached_servers, clock, namespace="gen", generation_check_interval=2.0)
    reader = pool(memcached_servers, clock, namespace="gen", generation_check_interval=2.0)
    writer.set_many({"k": entry("v", clock)})
    assert reader.get_many(["k"])["k"].value == "v"
    before = writer.generation
    writer.clear()
    assert writer.generation is not None and before is not None
    assert writer.generation == before + 1
    assert writer.get_many(["k"]) == {}
    # The reader still uses the generation it read less than 2 s ago (documented) ...
    assert reader.get_many(["k"])["k"].value == "v"
    clock.advance(2.0)
    # ... and sees the clear once the interval has passed.
    assert reader.get_many(["k"]) == {}
    assert reader.generation == writer.generation
    writer.close()
    reader.close()


def test_a_lost_generation_never_brings_old_entries_back(
    memcached_servers: list[MemcachedServer], clock: FakeClock, raw: RawStore
) -> None:
    tier = pool(memcached_servers, clock, namespace="lost", generation_check_interval=1.0)
    tier.set_many({"k": entry("before clear", clock)})
    old_name = tier.storage_name("k")
    tier.clear()
    cleared = tier.generation
    for server in memcached_servers:  # the generation's server restarts or evicts it
        server.flush_all()
    raw.put(old_name, raw_envelope_for(tier, "k", "before clear", clock))
    clock.advance(1.0)
    assert tier.get_many(["k"]) == {}
    assert tier.generation is not None and cleared is not None
    assert tier.generation > cleared
    tier.close()


def raw_envelope_for(tier: MemcachedTier, key: str, value: Any, clock: FakeClock) -> bytes:
    return tier.codec.encode(key, entry(value, clock))


def test_garbage_in_the_generation_starts_a_new_one(
    memcached_servers: list[MemcachedServer], clock: FakeClock, raw: RawStore
) -> None:
    tier = pool(memcached_servers, clock, namespace="junk")
    tier.set_many({"k": entry(1, clock)})
    raw.put("junk:generation", b"not a number")
    clock.advance(1.0)
    assert tier.get_many(["k"]) == {}
    tier.set_many({"k": entry(2, clock)})
    assert tier.get_many(["k"])["k"].value == 2
    tier.close()


# ---------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "key",
    [
        "k" * 251,
        "with space",
        "line\r\nbreak",
        "get other\r\nflush_all",
        "ключ",
        "\x00nul",
        "k" * 230,
    ],
)
def test_memcached_key_rules(
    make_tier: TierFactory, clock: FakeClock, raw: RawStore, key: str
) -> None:
    tier = make_tier(namespace="rules")
    tier.set_many({"bystander": entry("still here", clock)})
    tier.set_many({key: entry(key, clock)})
    name = tier.storage_name(key)
    encoded = name.encode()
    assert len(encoded) <= 250 and not any(b <= 0x20 or b == 0x7F for b in encoded)
    assert tier.get_many([key])[key].value == key
    assert tier.get_many(["bystander"])["bystander"].value == "still here"  # nothing injected
    assert raw.get(name) is not None


def test_items_above_the_limit_are_refused_before_any_io(
    make_tier: TierFactory, clock: FakeClock
) -> None:
    tier = make_tier(max_item_size=4000)
    tier.set_many({"k": entry("small", clock)})
    rejected = tier.set_many({"k": entry("x" * 5000, clock)})
    assert set(rejected) == {"k"}
    assert tier.get_many(["k"]) == {}  # the old value went with the refused write
    assert tier.max_value_size == 1024 * 1024 - 512  # the default payload limit


def test_server_refusing_an_item_is_not_a_dead_server(
    make_tier: TierFactory, clock: FakeClock
) -> None:
    """A tier configured above the server's -I: memcached answers SERVER_ERROR."""
    tier = make_tier(max_item_size=4 * 1024 * 1024, max_value_size=4 * 1024 * 1024)
    tier.set_many({"big": entry("small first", clock), "other": entry("fine", clock)})
    with pytest.raises(TierUnavailableError, match=r"SERVER_ERROR|too large"):
        tier.set_many({"big": entry("x" * (2 * 1024 * 1024), clock)})
    assert "big" not in tier.get_many(["big"])  # memcached dropped the old one, as it does
    assert tier.get_many(["other"])["other"].value == "fine"  # the server stays in use


def test_long_lifetimes_use_an_absolute_expiry(
    memcached_servers: list[MemcachedServer], raw: RawStore
) -> None:
    """memcached reads an exptime above 30 days as a Unix time: the server's clock, so
    this test's wall clock is the real one."""
    real_clock = FakeClock(start=time.time())
    tier = remote_factory("memcached", memcached_servers, real_clock)()
    forty_days = 40 * 24 * 3600.0
    tier.set_many({"long": Entry("v", real_clock.time() + forty_days)})
    left = raw.ttl(tier.storage_name("long"))
    assert left is not None and forty_days - 5 <= left <= forty_days + 5
    tier.close()


def test_memcached_url_rules(memcached_servers: list[MemcachedServer]) -> None:
    url = server_url("memcached", memcached_servers)
    tier = tier_from_url(
        f"{url}?namespace=u&retry_interval=3&generation_check_interval=7&max_item_size=9000"
    )
    assert isinstance(tier, MemcachedTier)
    assert (tier.retry_interval, tier.generation_check_interval, tier.max_item_size) == (
        3.0,
        7.0,
        9000,
    )
    tier.close()
    with pytest.raises(ConfigurationError, match="no authentication"):
        tier_from_url("memcached://user:pw@127.0.0.1:11211")
    with pytest.raises(ConfigurationError, match="twice"):
        tier_from_url("memcached://127.0.0.1:11211,127.0.0.1:11211")
    with pytest.raises(
        ConfigurationError, match=r"unknown option 'db'.*accepted: .*retry_interval"
    ):
        tier_from_url(f"{url}?db=1")

"""The Redis tier on a real redis-server: the tier conformance suite, then what only a
single Redis does (outages, timeouts, ACL, databases, SCAN-based clear, TLS, round trips)."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from stratacache import Cache, MemoryTier
from stratacache.config import tier_from_url
from stratacache.entry import Entry
from stratacache.errors import CacheClosedError, ConfigurationError, TierUnavailableError
from stratacache.tiers.redis import RedisTier
from stratacache.tiers.remote import RemoteTier

from ..conformance.remote_kit import (
    RawStore,
    made_tiers,
    raw_store,
    remote_factory,
)
from ..conftest import Driver, FakeClock, wait_rejoined
from ..server_fixtures import in_ci
from ..servers import RedisServer, free_port

TierFactory = Callable[..., RemoteTier]


@pytest.fixture
def tier_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def make_tier(redis_server: RedisServer, clock: FakeClock) -> Iterator[TierFactory]:
    yield from made_tiers(remote_factory("redis", redis_server, clock))


@pytest.fixture
def tier(make_tier: TierFactory) -> RemoteTier:
    return make_tier()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[RawStore]:
    store = raw_store("redis", redis_server)
    yield store
    store.close()


def entry(value: Any, clock: FakeClock, ttl: float = 60.0) -> Entry:
    return Entry(value, clock.time() + ttl)


# ---------------------------------------------------------------------------- outages


def quick_tier(server: RedisServer, clock: FakeClock, **options: Any) -> RedisTier:
    tier = tier_from_url(
        server.url,
        clock=clock.monotonic,
        wall_clock=clock.time,
        connect_timeout=0.2,
        socket_timeout=0.3,
        **options,
    )
    assert isinstance(tier, RedisTier)
    return tier


def test_stopped_server_raises_tier_unavailable(
    fresh_redis_server: RedisServer, clock: FakeClock, driver: Driver
) -> None:
    tier = quick_tier(fresh_redis_server, clock, breaker_failures=0)  # every call tries
    tier.set_many({"k": entry(1, clock)})
    fresh_redis_server.stop()
    is_async = driver.mode == "async"
    calls: list[Callable[[], Any]] = [
        (lambda: tier.aget_many(["k"])) if is_async else (lambda: tier.get_many(["k"])),
        (lambda: tier.awrite(tier.prepare({"k": entry(2, clock)})))
        if is_async
        else (lambda: tier.set_many({"k": entry(2, clock)})),
        (lambda: tier.adelete_many(["k"])) if is_async else (lambda: tier.delete_many(["k"])),
        (lambda: tier.aclear()) if is_async else (lambda: tier.clear()),
    ]
    for call in calls:
        with pytest.raises(TierUnavailableError) as caught:
            driver(call())
        assert "Connection refused" in str(caught.value) or "connecting" in str(caught.value)
    fresh_redis_server.start()
    assert driver(tier.aget_many(["k"]) if is_async else tier.get_many(["k"])) == {}
    driver(tier.aclose() if is_async else _close(tier))


def _close(tier: RemoteTier) -> None:
    tier.close()


def test_hung_server_times_out_into_tier_unavailable(
    fresh_redis_server: RedisServer, clock: FakeClock
) -> None:
    """SIGSTOP: the socket stays open, nothing answers; socket_timeout bounds the wait."""
    tier = quick_tier(fresh_redis_server, clock, breaker_failures=0)
    tier.set_many({"k": entry(1, clock)})
    fresh_redis_server.pause()
    try:
        with pytest.raises(TierUnavailableError, match="Timeout"):
            tier.get_many(["k"])
    finally:
        fresh_redis_server.resume()
    assert tier.get_many(["k"])["k"].value == 1
    tier.close()


def test_cache_answers_through_a_redis_outage_and_uses_redis_again(
    fresh_redis_server: RedisServer, clock: FakeClock, driver: Driver
) -> None:
    """L1 + Redis + origin: while Redis is down the cache answers from L1 and the origin;
    after the restart it fills and reads Redis again."""
    loads: list[str] = []

    def origin(keys: list[str]) -> dict[str, str]:
        loads.extend(keys)
        return {key: key.upper() for key in keys}

    def make_cache() -> Any:
        levels = [
            MemoryTier(100, clock=clock.monotonic, wall_clock=clock.time),
            quick_tier(fresh_redis_server, clock, namespace="app"),
        ]
        cls = Cache if driver.mode == "sync" else _async_cache()
        return cls(levels, origin, clock=clock.monotonic, wall_clock=clock.time)

    cache = make_cache()
    assert driver(cache.get("a")) == "A"
    fresh_redis_server.stop()
    assert driver(cache.get("a")) == "A"  # L1
    assert driver(cache.get("b")) == "B"  # origin, Redis skipped
    assert driver(cache.get_many(["a", "b", "c"])) == {"a": "A", "b": "B", "c": "C"}
    l2 = cache.stats().levels[1]
    assert l2.errors >= 2  # the failed read of "b" and the skipped fill
    assert loads == ["a", "b", "c"]

    fresh_redis_server.start()  # empty again: no persistence
    clock.advance(1.5)  # the circuit breaker, open since the outage, probes in the background
    wait_rejoined(cache.levels[1])
    assert driver(cache.get("d")) == "D"  # loaded and written to Redis
    direct = redis.Redis.from_url(fresh_redis_server.url)
    assert direct.exists("app:d") == 1
    direct.close()
    driver(cache.close())

    second = make_cache()  # empty L1: Redis answers
    assert driver(second.get("d")) == "D"
    assert loads == ["a", "b", "c", "d"]
    assert second.stats().levels[1].hits == 1
    driver(second.close())


def _async_cache() -> type[Any]:
    from stratacache import AsyncCache

    return AsyncCache


# ---------------------------------------------------------------------------- connections


def connections(server: RedisServer, expected: int) -> int:
    """The clients connected to ``server`` (not counting the one that asks), once it has
    seen ``expected`` of them: a client's close reaches the server a moment later."""
    deadline = time.monotonic() + 5.0
    while True:
        count = int(server.info("clients")["connected_clients"]) - 1
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.01)  # waiting for the server to see a socket close, not passing time


def test_asyncio_clients_are_closed_with_their_loop_and_with_the_tier(
    fresh_redis_server: RedisServer, clock: FakeClock
) -> None:
    """asyncio connections belong to their loop: each loop gets its client, and it is
    closed when that loop shuts down or when the tier closes, never left to the garbage
    collector (which is off here, so that nothing else closes them)."""
    tier = quick_tier(fresh_redis_server, clock)
    tier.set_many({"k": entry(1, clock)})  # the sync client: one connection

    async def read() -> None:
        assert (await tier.aget_many(["k"]))["k"].value == 1

    gc.disable()
    try:
        asyncio.run(read())
        asyncio.run(read())
        assert connections(fresh_redis_server, 1) == 1  # each loop's client went with it
        kept = asyncio.new_event_loop()  # a loop that is not shut down
        kept.run_until_complete(read())
        asyncio.run(read())
        assert connections(fresh_redis_server, 2) == 2  # the sync client and kept's
        tier.close()  # closes kept's client on kept
        assert connections(fresh_redis_server, 0) == 0
        kept.close()
        with pytest.raises(CacheClosedError):
            asyncio.run(read())
    finally:
        gc.enable()


def test_aclose_closes_every_client(fresh_redis_server: RedisServer, clock: FakeClock) -> None:
    tier = quick_tier(fresh_redis_server, clock)
    tier.set_many({"k": entry(1, clock)})

    async def scenario() -> None:
        assert set(await tier.aget_many(["k"])) == {"k"}
        assert connections(fresh_redis_server, 2) == 2
        await tier.aclose()
        assert connections(fresh_redis_server, 0) == 0

    asyncio.run(scenario())


def test_connection_pools_are_bounded_and_a_burst_waits_its_turn(
    fresh_redis_server: RedisServer, clock: FakeClock, driver: Driver
) -> None:
    """70 calls at once on a hung server: 64 connections (the default bound) wait for the
    socket timeout; the other 6 wait for a turn and give up after pool_timeout with
    PoolTimeoutError (no breaker here: it would open at the first timeout and refuse
    the calls still to come). Before, redis-py's pool failed the 6 at once with
    MaxConnectionsError, which also failed bursts on a healthy server."""
    tier = quick_tier(fresh_redis_server, clock, breaker_failures=0, pool_timeout=0.1)
    tier.set_many({"k": entry(1, clock)})
    fresh_redis_server.pause()
    try:
        if driver.mode == "async":

            async def all_at_once() -> list[BaseException | None]:
                calls = [tier.aget_many(["k"]) for _ in range(70)]
                results = await asyncio.gather(*calls, return_exceptions=True)
                return [r if isinstance(r, BaseException) else None for r in results]

            errors = driver(all_at_once())
        else:
            errors = in_threads(70, lambda: tier.get_many(["k"]))
    finally:
        fresh_redis_server.resume()
    assert all(isinstance(e, TierUnavailableError) for e in errors), errors
    reasons = Counter(type(e).__name__ for e in errors)
    # Usually 64 + 6. On a loaded box the loop can start the last 6 only after the first
    # connects have failed (0.2 s); those then take a freed slot and time out on the
    # server instead. Either way, none fails for want of a connection at once.
    assert reasons["TierUnavailableError"] >= 64, errors
    assert reasons["TierUnavailableError"] + reasons["PoolTimeoutError"] == 70, errors
    stats = tier.stats.snapshot()
    assert (stats.pool_waits, stats.pool_timeouts) == (6, reasons["PoolTimeoutError"])
    assert connections(fresh_redis_server, 64) <= 64
    driver(tier.aclose() if driver.mode == "async" else _close(tier))


def in_threads(count: int, call: Callable[[], Any]) -> list[BaseException | None]:
    """Run ``call`` in ``count`` threads started together; what each raised."""
    start = threading.Barrier(count)
    errors: list[BaseException | None] = [None] * count

    def run(index: int) -> None:
        start.wait()
        try:
            call()
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_pool_size_option(redis_server: RedisServer, clock: FakeClock) -> None:
    tier = tier_from_url(f"{redis_server.url}?max_connections=3", wall_clock=clock.time)
    assert isinstance(tier, RedisTier)
    tier.set_many({"k": entry(1, clock)})
    assert tier.perform(lambda client: client).connection_pool.max_connections == 3
    tier.close()
    for bad in (None, 0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_connections must be an int >= 1"):
            RedisTier(redis_server.url, max_connections=bad)


# ---------------------------------------------------------------------------- auth, db, URL


def test_acl_user_and_password(
    make_redis_server: Callable[..., RedisServer],
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pa:ss/w@rd-Secret"
    server = make_redis_server(username="app", password=password)
    tier = tier_from_url(server.url + "?namespace=acl", wall_clock=clock.time)
    tier.set_many({"k": entry("v", clock)})
    assert tier.get_many(["k"])["k"].value == "v"
    assert password not in repr(tier) and "app:***@" in repr(tier)
    tier.close()

    wrong = server.url.replace("pa%3Ass", "nope")
    assert wrong != server.url
    bad = tier_from_url(wrong, wall_clock=clock.time)
    # Wrong credentials are a configuration error, not an outage to skip forever.
    with pytest.raises(ConfigurationError) as caught:
        bad.get_many(["k"])
    assert "AuthenticationError" in str(caught.value)

    # Through the hierarchy: raised to the caller at first use, the password nowhere.
    cache = Cache([MemoryTier(10), bad], lambda keys: {k: 1 for k in keys})
    with (
        caplog.at_level(logging.WARNING, logger="stratacache"),
        pytest.raises(ConfigurationError) as through,
    ):
        cache.get("x")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (password, "nope", "pa%3Ass"):
        assert secret not in logged
        assert secret not in str(caught.value)
        assert secret not in str(through.value)
        assert secret not in repr(bad)
    cache.close()


def test_an_acl_refusal_is_a_configuration_error(
    make_redis_server: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """A user the ACL does not allow to write: refused at first use, with the way out."""
    server = make_redis_server(username="app", password="secret-pw")
    admin = redis.Redis(
        host=server.address[0], port=server.address[1], username="app", password="secret-pw"
    )
    admin.execute_command(
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-pw",
        "~*",
        "+get",
        "+mget",
        "+ping",
        "+client|setname",
        "+hello",
    )
    admin.close()
    url = f"redis://reader:reader-pw@{server.address[0]}:{server.address[1]}/0"
    tier = tier_from_url(url + "?namespace=acl", wall_clock=clock.time)
    assert tier.get_many(["k"]) == {}
    with pytest.raises(ConfigurationError, match=r"NoPermissionError|ACL"):
        tier.set_many({"k": entry("v", clock)})
    tier.close()


def test_database_number_selects_the_database(redis_server: RedisServer, clock: FakeClock) -> None:
    base = redis_server.url.rsplit("/", 1)[0]
    tier = tier_from_url(f"{base}/3?namespace=db", wall_clock=clock.time)
    tier.set_many({"k": entry(1, clock)})
    in_3 = redis.Redis.from_url(f"{base}/3")
    in_0 = redis.Redis.from_url(f"{base}/0")
    assert in_3.exists("db:k") == 1 and in_0.exists("db:k") == 0
    in_3.flushdb()
    in_3.close()
    in_0.close()
    tier.close()


def test_url_options_are_parsed_and_unknown_ones_named(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    url = (
        f"{redis_server.url}?namespace=opts&ttl=30&ttl_grace=2&connect_timeout=0.1"
        "&socket_timeout=0.2&compress_threshold=100&max_value_size=5000&retries=0&name=L2"
    )
    tier = tier_from_url(url)
    assert isinstance(tier, RedisTier)
    assert (tier.namespace, tier.ttl, tier.ttl_grace, tier.name) == ("opts", 30.0, 2.0, "L2")
    assert tier.max_value_size == 5000 and tier.codec.compress_threshold == 100
    tier.close()

    with pytest.raises(
        ConfigurationError, match=r"unknown option 'namspace'.*accepted: .*namespace"
    ):
        tier_from_url(f"{redis_server.url}?namspace=x")
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        tier_from_url(f"{redis_server.url}?socket_timeout=-1")
    with pytest.raises(ConfigurationError, match="does not use TLS"):
        tier_from_url(f"{redis_server.url}?ssl_ca_certs=/tmp/ca.pem")
    with pytest.raises(ConfigurationError, match="one server"):
        tier_from_url("redis://h1:1,h2:2/0")
    with pytest.raises(ConfigurationError, match="database number"):
        tier_from_url("redis://localhost:6379/zero")
    with pytest.raises(ConfigurationError, match="keyword arguments"):
        RedisTier("redis://localhost:6379/0?namespace=x")
    for name in (True, 42, "has space", "new\nline", "ключ"):
        with pytest.raises(ConfigurationError, match="client_name must be printable ASCII"):
            RedisTier(redis_server.url, client_name=name)  # type: ignore[arg-type]
    named = RedisTier(redis_server.url, client_name="stratacache-test", wall_clock=clock.time)
    named.set_many({"k": entry(1, clock)})
    assert "name=stratacache-test" in str(redis_server.command("CLIENT", "LIST"))
    named.close()


# ---------------------------------------------------------------------------- behaviour


def test_clear_removes_only_its_namespace(
    redis_server: RedisServer, make_tier: TierFactory, clock: FakeClock
) -> None:
    tier = make_tier(namespace="mine")
    tier.set_many({f"k{i}": entry(i, clock) for i in range(2500)})
    tier.set_many({"x" * 2000: entry("hashed", clock)})
    direct = redis.Redis.from_url(redis_server.url)
    direct.set("mine", b"bare")  # no colon: not in the namespace
    direct.set("mine2:k1", b"neighbour")  # a namespace that starts alike
    direct.set("other:k1", b"other")
    tier.clear()
    assert sorted(direct.keys("*")) == [b"mine", b"mine2:k1", b"other:k1"]
    direct.close()


def test_batches_take_one_round_trip(
    redis_server: RedisServer, make_tier: TierFactory, clock: FakeClock
) -> None:
    """Counted by the server itself: 100 keys are one MGET; a write is one pipeline of
    compare-and-set scripts, each two GETs and a SET inside the server."""
    tier = make_tier()
    keys = [f"k{i}" for i in range(100)]
    redis_server.command("CONFIG", "RESETSTAT")
    tier.set_many({k: entry(k, clock) for k in keys})
    assert len(tier.get_many(keys)) == 100
    stats = redis_server.info("commandstats")
    assert stats["cmdstat_mget"].startswith("calls=1,")
    assert stats["cmdstat_eval"].startswith("calls=100,")
    assert stats["cmdstat_set"].startswith("calls=100,")
    # the scripts' own (the stored value and the key's version floor), none of ours
    assert stats["cmdstat_get"].startswith("calls=200,")


def test_keys_cannot_smuggle_commands(
    redis_server: RedisServer, make_tier: TierFactory, clock: FakeClock
) -> None:
    tier = make_tier()
    tier.set_many({"keep": entry("kept", clock)})
    evil = ["x\r\nFLUSHALL\r\n", "*1\r\n$8\r\nFLUSHALL\r\n", "k FLUSHALL", "\x00"]
    tier.set_many({k: entry(k, clock) for k in evil})
    got = tier.get_many([*evil, "keep"])
    assert {k: e.value for k, e in got.items()} == {**{k: k for k in evil}, "keep": "kept"}


# ---------------------------------------------------------------------------- TLS


def _make_certificates(directory: Path) -> dict[str, Path]:
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    csr = directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", paths["ca-key"], "-out", paths["ca"], "-subj", "/CN=stratacache test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["key"],
         "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"],
         "-CAcreateserial", "-days", "2", "-out", paths["cert"], "-extfile", ext],
    ]  # fmt: skip
    for args in commands:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return paths


def test_rediss_speaks_tls(
    make_redis_server: Callable[..., RedisServer], tmp_path: Path, clock: FakeClock
) -> None:
    try:
        certs = _make_certificates(tmp_path)
    except (OSError, subprocess.CalledProcessError) as exc:
        message = f"openssl could not make test certificates (apt-get install openssl): {exc}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    tls_port = free_port()
    tls = {
        "--tls-port": str(tls_port),
        "--tls-cert-file": str(certs["cert"]),
        "--tls-key-file": str(certs["key"]),
        "--tls-ca-cert-file": str(certs["ca"]),
        "--tls-auth-clients": "no",
    }
    server = make_redis_server(extra_args=[part for pair in tls.items() for part in pair])
    url = f"rediss://127.0.0.1:{tls_port}/0?namespace=tls&ssl_ca_certs={certs['ca']}"
    tier = tier_from_url(url, wall_clock=clock.time)
    tier.set_many({"k": entry("over tls", clock)})
    assert tier.get_many(["k"])["k"].value == "over tls"
    assert server.command("EXISTS", "tls:k") == 1
    tier.close()

    # Without the CA the certificate is refused: unavailable, not silently plaintext.
    untrusted = tier_from_url(f"rediss://127.0.0.1:{tls_port}/0", wall_clock=clock.time)
    with pytest.raises(TierUnavailableError):
        untrusted.get_many(["k"])
    untrusted.close()

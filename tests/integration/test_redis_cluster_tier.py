"""The Redis Cluster tier on a real cluster (3 masters, 3 replicas): the tier conformance
suite, then slot grouping, redirections (MOVED, ASK) and a master killed mid-flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stratacache.config import tier_from_url
from stratacache.entry import Entry
from stratacache.errors import ConfigurationError, TierUnavailableError
from stratacache.tiers.redis_cluster import RedisClusterTier, by_slot
from stratacache.tiers.remote import RemoteTier

from ..conformance.remote_kit import (
    RawStore,
    made_tiers,
    raw_store,
    remote_factory,
)
from ..conftest import FakeClock
from ..servers import RedisCluster, RedisServer

TierFactory = Callable[..., RemoteTier]
DEADLINE = 30.0  # seconds for the cluster to do something it does in a few


@pytest.fixture
def tier_url(redis_cluster: RedisCluster) -> str:
    return redis_cluster.cluster_url


@pytest.fixture
def make_tier(redis_cluster: RedisCluster, clock: FakeClock) -> Iterator[TierFactory]:
    yield from made_tiers(remote_factory("redis-cluster", redis_cluster, clock))


@pytest.fixture
def tier(make_tier: TierFactory) -> RemoteTier:
    return make_tier()


@pytest.fixture
def raw(redis_cluster: RedisCluster) -> Iterator[RawStore]:
    store = raw_store("redis-cluster", redis_cluster)
    yield store
    store.close()


def entry(value: Any, clock: FakeClock, ttl: float = 600.0) -> Entry:
    return Entry(value, clock.time() + ttl)


def cluster_tier(cluster: RedisCluster, clock: FakeClock, **options: Any) -> RedisClusterTier:
    tier = tier_from_url(cluster.cluster_url, wall_clock=clock.time, **options)
    assert isinstance(tier, RedisClusterTier)
    return tier


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a real-world event (a failover, a sync); the deadline is a hang guard only."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def replicated(master: RedisServer, replicas: list[RedisServer]) -> bool:
    offset = int(master.info("replication")["master_repl_offset"])
    return all(
        int(replica.info("replication").get("slave_repl_offset", -1)) >= offset
        for replica in replicas
    )


# ---------------------------------------------------------------------------- slots


def test_names_are_grouped_by_the_cluster_slot(
    redis_cluster: RedisCluster, make_tier: TierFactory
) -> None:
    tier = make_tier(namespace="slots")
    keys = ["a", "user:{42}:profile", "user:{42}:prefs", "x" * 1100, "ключ", "{}", "{a}b"]
    names = [tier.storage_name(key) for key in keys]
    for slot, group in by_slot(names).items():
        for name in group:
            assert redis_cluster.keyslot(name) == slot
    assert redis_cluster.keyslot(names[1]) == redis_cluster.keyslot(names[2])  # hash tag


def test_a_batch_over_every_master_in_one_pipeline(
    redis_cluster: RedisCluster, make_tier: TierFactory, clock: FakeClock
) -> None:
    tier = make_tier()
    keys = [f"k{i}" for i in range(300)]
    for master in redis_cluster.masters():
        master.command("CONFIG", "RESETSTAT")
    tier.set_many({k: entry(k, clock) for k in keys})
    assert len(tier.get_many(keys)) == 300
    owners = {redis_cluster.master_for_key(tier.storage_name(k)).port for k in keys}
    assert len(owners) == 3  # the batch really spans the cluster
    mgets = 0
    for master in redis_cluster.masters():
        stats = master.info("commandstats")
        mgets += int(stats["cmdstat_mget"].split(",")[0].removeprefix("calls="))
        assert "cmdstat_get" not in stats
    assert mgets == len(by_slot([tier.storage_name(k) for k in keys]))  # one MGET per slot
    tier.delete_many(keys)
    assert tier.get_many(keys) == {}


def test_clear_visits_every_master(
    redis_cluster: RedisCluster, make_tier: TierFactory, clock: FakeClock
) -> None:
    tier = make_tier(namespace="wide")
    other = make_tier(namespace="wide2")
    tier.set_many({f"k{i}": entry(i, clock) for i in range(1500)})
    other.set_many({"k1": entry("kept", clock)})
    tier.clear()
    assert sum(int(m.command("DBSIZE")) for m in redis_cluster.masters()) == 1  # type: ignore[arg-type]
    assert other.get_many(["k1"])["k1"].value == "kept"

    async def async_clear() -> None:
        tier.set_many({f"k{i}": entry(i, clock) for i in range(100)})
        await tier.aclear()
        assert await tier.aget_many([f"k{i}" for i in range(100)]) == {}
        await tier.aclose()

    asyncio.run(async_clear())


def test_cluster_url_rules() -> None:
    with pytest.raises(ConfigurationError, match="only database 0"):
        tier_from_url("redis+cluster://127.0.0.1:7000/2")
    with pytest.raises(ConfigurationError, match=r"unknown option 'db'.*accepted"):
        tier_from_url("redis+cluster://127.0.0.1:7000?db=1")
    tier = tier_from_url("redis+cluster://u:sesame-pw@10.0.0.1:7000,10.0.0.2:7001?namespace=n")
    assert isinstance(tier, RedisClusterTier)
    assert tier.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert "sesame-pw" not in repr(tier) and "u:***@" in repr(tier)
    with pytest.raises(ConfigurationError) as caught:
        tier_from_url("redis+cluster://u:sesame-pw@h1:1,h2:x")
    assert "sesame-pw" not in str(caught.value)


def test_connection_pools_are_bounded_per_node(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    """Every node's pool has a bound: 64 unless max_connections_per_node says otherwise."""
    default = tier_from_url(redis_cluster.cluster_url, wall_clock=clock.time)
    sized = tier_from_url(
        f"{redis_cluster.cluster_url}?max_connections_per_node=5", wall_clock=clock.time
    )
    assert isinstance(default, RedisClusterTier) and isinstance(sized, RedisClusterTier)
    for tier, bound in ((default, 64), (sized, 5)):
        tier.get_many(["k"])
        nodes = tier.perform(lambda client: client).get_nodes()
        assert {n.redis_connection.connection_pool.max_connections for n in nodes} == {bound}

        async def from_async(tier: RedisClusterTier = tier, bound: int = bound) -> None:
            await tier.aget_many(["k"])
            client = await tier.aperform(_the_client)
            assert {node.max_connections for node in client.get_nodes()} == {bound}
            await tier.aclose()

        asyncio.run(from_async())
    for bad in (None, 0, 1.5):
        with pytest.raises(ConfigurationError, match="max_connections_per_node must be an int"):
            RedisClusterTier(redis_cluster.cluster_url, max_connections_per_node=bad)
    with pytest.raises(ConfigurationError, match="pass max_connections_per_node"):
        RedisClusterTier(redis_cluster.cluster_url, max_connections=5)


def test_unreachable_cluster_is_unavailable_not_a_crash(clock: FakeClock) -> None:
    from ..servers import free_port

    tier = tier_from_url(
        f"redis+cluster://127.0.0.1:{free_port()}", wall_clock=clock.time, connect_timeout=0.2
    )
    with pytest.raises(TierUnavailableError):
        tier.get_many(["k"])

    async def from_async() -> None:
        with pytest.raises(TierUnavailableError):
            await tier.aget_many(["k"])
        await tier.aclose()

    asyncio.run(from_async())


# ---------------------------------------------------------------------------- redirections


def test_follows_moved_after_a_manual_failover(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    """The tier's slot table still names the old master; it answers MOVED."""
    tier = cluster_tier(redis_cluster, clock, namespace="moved")
    keys = [f"k{i}" for i in range(50)]
    tier.set_many({k: entry(k, clock) for k in keys})
    name = tier.storage_name("k1")
    old_master = redis_cluster.master_for_key(name)
    replica = redis_cluster.replicas_of(old_master)[0]
    wait_until(lambda: replicated(old_master, [replica]), "the replica to catch up")
    replica.command("CLUSTER", "FAILOVER")
    wait_until(lambda: redis_cluster.master_for_key(name).port == replica.port, "the failover")
    got = tier.get_many(keys)  # no TierUnavailableError: MOVED is followed
    assert {k: e.value for k, e in got.items()} == {k: k for k in keys}
    tier.set_many({"k1": entry("after", clock)})
    assert tier.get_many(["k1"])["k1"].value == "after"
    tier.close()
    redis_cluster.wait_healthy()


def test_follows_ask_while_a_slot_migrates(
    fresh_redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    cluster = fresh_redis_cluster
    tier = cluster_tier(cluster, clock, namespace="ask")
    tier.set_many({"{m}1": entry("one", clock), "{m}2": entry("two", clock)})
    names = [tier.storage_name("{m}1"), tier.storage_name("{m}2")]
    slot = cluster.keyslot(names[0])
    source = cluster.master_for_slot(slot)
    target = next(m for m in cluster.masters() if m.port != source.port)
    source_id, target_id = source.command("CLUSTER", "MYID"), target.command("CLUSTER", "MYID")
    assert isinstance(source_id, str) and isinstance(target_id, str)
    target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    source.command("MIGRATE", target.host, target.port, names[0], 0, 5000)
    # "{m}1" now lives on the target, "{m}2" still on the source: for the first the
    # source answers ASK, which the tier follows.
    assert tier.get_many(["{m}1"])["{m}1"].value == "one"
    assert tier.get_many(["{m}2"])["{m}2"].value == "two"
    # A multi-key command over a slot whose keys are split between two nodes gets
    # TRYAGAIN until the migration ends: the level is unavailable for that batch (the
    # hierarchy skips it), never wrong.
    try:
        got = tier.get_many(["{m}1", "{m}2"])
    except TierUnavailableError as exc:
        assert "TRYAGAIN" in str(exc) or "TTL exhausted" in str(exc)
    else:
        assert {k: e.value for k, e in got.items()} == {"{m}1": "one", "{m}2": "two"}
    tier.set_many({"{m}3": entry("three", clock)})  # a new key of the slot: ASK to target
    source.command("MIGRATE", target.host, target.port, names[1], 0, 5000)
    for master in cluster.masters():
        master.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    got = tier.get_many(["{m}1", "{m}2", "{m}3"])  # now MOVED
    assert {k: e.value for k, e in got.items()} == {"{m}1": "one", "{m}2": "two", "{m}3": "three"}
    tier.close()


# ---------------------------------------------------------------------------- failover


def test_reads_and_writes_recover_after_a_master_is_killed(
    fresh_redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    cluster = fresh_redis_cluster
    tier = cluster_tier(cluster, clock, namespace="fo", connect_timeout=0.2, socket_timeout=0.5)
    keys = [f"k{i}" for i in range(100)]
    tier.set_many({k: entry(k, clock) for k in keys})
    victim_key = "k1"
    master = cluster.master_for_key(tier.storage_name(victim_key))
    replicas = cluster.replicas_of(master)
    wait_until(lambda: replicated(master, replicas), "replication before the kill")
    master.kill()

    failures = 0

    def recovered() -> bool:
        nonlocal failures
        try:
            tier.set_many({victim_key: entry("written after", clock)})
            return len(tier.get_many(keys)) == 100
        except TierUnavailableError:
            failures += 1
            return False

    wait_until(recovered, "reads and writes to work again")
    assert failures >= 1  # the level really was unavailable for a while
    promoted = cluster.master_for_key(tier.storage_name(victim_key))
    assert promoted.port in {r.port for r in replicas}
    got = tier.get_many(keys)
    assert got[victim_key].value == "written after"
    assert all(got[k].value == k for k in keys if k != victim_key)  # the replica had them

    async def from_async() -> None:  # a new async client finds the new topology too
        values = await tier.aget_many(keys)
        assert len(values) == 100
        await tier.awrite(tier.prepare({"k2": entry("async after", clock)}))
        assert (await tier.aget_many(["k2"]))["k2"].value == "async after"
        await tier.aclose()

    asyncio.run(from_async())


async def _the_client(client: Any) -> Any:
    """A command that answers with the client it runs on."""
    return client

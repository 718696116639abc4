"""Key hygiene on real Redis and memcached servers: a literal key that looks like a hashed
storage name (``"#" + sha256(K)``) lives beside ``K`` instead of evicting it, and every
bad key is an InvalidKeyError from every public method of a cache over a network tier."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stratacache import AsyncCache, Cache, MemoryTier
from stratacache.entry import Entry
from stratacache.errors import InvalidKeyError
from stratacache.tiers.remote import RemoteTier

from ..conformance.remote_kit import RawStore, made_tiers, raw_store, remote_factory
from ..conftest import Driver, FakeClock

TierFactory = Callable[..., RemoteTier]

SERVERS = {"redis": "redis_server", "memcached": "memcached_servers"}


@pytest.fixture(params=sorted(SERVERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(SERVERS[kind])


@pytest.fixture
def make_tier(kind: str, server: Any, clock: FakeClock) -> Iterator[TierFactory]:
    yield from made_tiers(remote_factory(kind, server, clock))


@pytest.fixture
def raw(kind: str, server: Any) -> Iterator[RawStore]:
    store = raw_store(kind, server)
    yield store
    store.close()


def sha(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# Keys the stores cannot take literally, so they are stored under "<prefix>#<sha256>".
HASHED_KEYS = {
    "too-long": "k" * 1100,
    "crlf": "get other\r\nflush_all",
    "nul": "nul\x00key",
    "space": "a space",  # memcached only: Redis takes it literally
}


@pytest.mark.parametrize("what", sorted(HASHED_KEYS))
def test_a_key_and_its_hash_lookalike_live_side_by_side(
    kind: str, make_tier: TierFactory, raw: RawStore, clock: FakeClock, what: str
) -> None:
    key = HASHED_KEYS[what]
    lookalike = "#" + sha(key)
    tier = make_tier(namespace="hygiene")
    if what == "space" and kind == "redis":
        assert tier.storage_name(key).endswith(":a space")  # literal: nothing to collide
        return
    assert tier.storage_name(key).endswith(":#" + sha(key))
    assert tier.storage_name(lookalike) != tier.storage_name(key)
    expires = clock.time() + 600
    tier.set_many({key: Entry("value of K", expires)})
    tier.set_many({lookalike: Entry("value of #sha(K)", expires)})
    # Both are in the store under names of their own, and each reads back its own value.
    assert raw.get(tier.storage_name(key)) is not None
    assert raw.get(tier.storage_name(lookalike)) is not None
    found = tier.get_many([key, lookalike])
    assert {k: e.value for k, e in found.items()} == {
        key: "value of K",
        lookalike: "value of #sha(K)",
    }
    assert tier.stats.corrupt == 0
    # The other order, and through caches: one with L1 on top, one reading the server only.
    tier.set_many({lookalike: Entry("again", expires)})
    assert tier.get_many([key])[key].value == "value of K"
    cache = Cache([MemoryTier(10, clock=clock.monotonic), tier], wall_clock=clock.time)
    cache.set(lookalike, 2)
    cache.set(key, 1)
    reader = Cache([make_tier(namespace="hygiene")], wall_clock=clock.time)
    assert reader.get_many([key, lookalike]) == {key: 1, lookalike: 2}
    reader.close()
    cache.close()


def test_ordinary_names_are_unchanged_on_the_server(
    kind: str, make_tier: TierFactory, raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier(namespace="hygiene")
    tier.set_many({"user:42": Entry("v", clock.time() + 600)})
    name = tier.storage_name("user:42")
    assert name.startswith("hygiene:") and name.endswith(":user:42")
    assert raw.get(name) is not None


BAD_KEYS: list[Any] = [["a"], 5, b"k", None, ""]


def calls_with(cache: Any, key: Any) -> dict[str, Callable[[], Any]]:
    """Every public method of ``cache`` called with ``key`` (``set_many`` only when
    ``{key: 1}`` can be built at all)."""
    calls: dict[str, Callable[[], Any]] = {
        "get": lambda: cache.get(key),
        "get_or_load": lambda: cache.get_or_load(key, lambda keys: {}),
        "set": lambda: cache.set(key, 1),
        "get_many": lambda: cache.get_many([key]),
        "delete": lambda: cache.delete(key),
        "delete_many": lambda: cache.delete_many([key]),
        "invalidate": lambda: cache.invalidate(key),
        "invalidate_many": lambda: cache.invalidate_many([key]),
    }
    try:
        hash(key)
    except TypeError:
        return calls
    calls["set_many"] = lambda: cache.set_many({key: 1})
    return calls


@pytest.mark.parametrize("with_l1", [True, False], ids=["l1+remote", "remote"])
def test_every_method_refuses_bad_keys_over_a_network_tier(
    driver: Driver, make_tier: TierFactory, clock: FakeClock, with_l1: bool
) -> None:
    cls = AsyncCache if driver.mode == "async" else Cache
    levels: list[Any] = [MemoryTier(10, clock=clock.monotonic)] if with_l1 else []
    cache = cls([*levels, make_tier()], clock=clock.monotonic, wall_clock=clock.time)
    driver(cache.set("good", "v"))
    for key in BAD_KEYS:
        for method, call in calls_with(cache, key).items():
            with pytest.raises(InvalidKeyError, match="non-empty str"):
                driver(call())
            assert method  # (named in the failure's traceback)
    for method in ("get_many", "delete_many", "invalidate_many"):
        with pytest.raises(InvalidKeyError, match="iterable of keys"):
            driver(getattr(cache, method)("good"))
    with pytest.raises(InvalidKeyError, match="mapping"):
        driver(cache.set_many("good"))
    assert driver(cache.get("good")) == "v"
    driver(cache.close())
    if driver.mode == "async":  # let the tier's client finish closing on this loop
        driver(asyncio.sleep(0.05))

"""Versioned writes on the memcached tier, on two real memcached servers: the
compare-and-set made of ``gets``, ``add`` and ``cas`` (a newer version is never replaced,
by a write or a fill), concurrent writers of one key, foreign values, unversioned writes,
lost races, and the asyncio client's ``gets_many`` and ``cas`` that the async face uses.
Each tier test runs on the sync face and on the async one."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from pymemcache.client.base import Client

from stratacache.entry import Entry
from stratacache.tiers import memcached
from stratacache.tiers.base import FILL, WRITE, Prepared
from stratacache.tiers.memcached import MemcachedTier
from stratacache.tiers.memcached_client import AsyncMemcachedClient

from ..conformance.remote_kit import RawStore, made_tiers, raw_store, remote_factory
from ..conftest import FakeClock
from ..servers import MemcachedServer

SIGNING_KEY = b"versions-0123456789abcdef-012345"


class Face:
    """One tier's sync or async face: writes and reads, the async ones on one event
    loop kept for the whole test (its clients are closed with it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runner = asyncio.Runner() if name == "async" else None

    def write(
        self, tier: MemcachedTier, entries: Mapping[str, Entry], mode: str = WRITE
    ) -> set[str]:
        """Write ``entries`` in ``mode``: the keys the tier refused."""
        prepared = tier.prepare(entries)
        prepared.mode = mode
        return self.write_prepared(tier, prepared)

    def write_prepared(self, tier: MemcachedTier, prepared: Prepared) -> set[str]:
        return set(self._run(tier.write, tier.awrite, prepared) or ())

    def read(self, tier: MemcachedTier, *keys: str) -> dict[str, Entry]:
        found: dict[str, Entry] = self._run(tier.get_many, tier.aget_many, list(keys))
        return found

    def _run(self, sync: Callable[[Any], Any], face: Callable[[Any], Any], argument: Any) -> Any:
        if self.runner is None:
            return sync(argument)
        return self.runner.run(face(argument))

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    chosen = Face(request.param)
    yield chosen
    chosen.close()


@pytest.fixture
def make_tier(
    memcached_servers: list[MemcachedServer], clock: FakeClock
) -> Iterator[Callable[..., MemcachedTier]]:
    factory = remote_factory("memcached", memcached_servers, clock)

    def make(**options: Any) -> MemcachedTier:
        tier = factory(**{"namespace": "versions", **options})
        assert isinstance(tier, MemcachedTier)
        return tier

    yield from made_tiers(make)


@pytest.fixture
def tier(make_tier: Callable[..., MemcachedTier]) -> MemcachedTier:
    return make_tier()


@pytest.fixture
def raw(memcached_servers: list[MemcachedServer]) -> Iterator[RawStore]:
    store = raw_store("memcached", memcached_servers)
    yield store
    store.close()


def at(value: Any, version: int, clock: FakeClock) -> Entry:
    return Entry(value, clock.time() + 600.0, False, version)


def stored(face: Face, tier: MemcachedTier, key: str) -> tuple[Any, int] | None:
    found = face.read(tier, key).get(key)
    return None if found is None else (found.value, found.version)


def spread_keys(tier: MemcachedTier, count: int = 40) -> list[str]:
    """Keys that land on both servers."""
    keys = [f"key{i}" for i in range(count)]
    owners = {tier._ring.server(tier.storage_name(key)).label for key in keys}
    assert len(owners) == 2
    return keys


Recorded = list[str]


def record_commands(tier: MemcachedTier) -> Recorded:
    """The names of the client calls the tier makes from now on, on either face."""
    calls: Recorded = []
    perform, aperform = tier.perform, tier.aperform

    def sync(command: Any) -> Any:
        calls.append(command[1].__name__)
        return perform(command)

    async def face(command: Any) -> Any:
        calls.append(command[1].__name__)
        return await aperform(command)

    tier.perform = sync  # type: ignore[method-assign]
    tier.aperform = face  # type: ignore[method-assign]
    return calls


# ---------------------------------------------------------------------------- writes


def test_an_older_version_is_refused_and_reported(
    face: Face, tier: MemcachedTier, clock: FakeClock
) -> None:
    assert face.write(tier, {"k": at("v5", 5, clock)}) == set()
    assert face.write(tier, {"k": at("v3", 3, clock)}) == {"k"}
    assert stored(face, tier, "k") == ("v5", 5)
    # In a batch over both servers, exactly the older keys are refused.
    keys = spread_keys(tier)
    assert face.write(tier, {key: at("new", 10, clock) for key in keys[::2]}) == set()
    refused = face.write(tier, {key: at("old", 7, clock) for key in keys})
    assert refused == set(keys[::2])
    found = face.read(tier, *keys)
    assert {key: found[key].value for key in keys} == {
        key: "new" if index % 2 == 0 else "old" for index, key in enumerate(keys)
    }


def test_a_newer_or_equal_version_replaces(
    face: Face, tier: MemcachedTier, clock: FakeClock
) -> None:
    assert face.write(tier, {"k": at("v3", 3, clock)}) == set()
    assert face.write(tier, {"k": at("v5", 5, clock)}) == set()
    assert stored(face, tier, "k") == ("v5", 5)
    assert face.write(tier, {"k": at("v5 again", 5, clock)}) == set()  # as Redis, SQLite
    assert stored(face, tier, "k") == ("v5 again", 5)
    keys = spread_keys(tier)
    assert face.write(tier, {key: at("first", 1, clock) for key in keys}) == set()
    assert face.write(tier, {key: at("second", 2, clock) for key in keys}) == set()
    assert {entry.value for entry in face.read(tier, *keys).values()} == {"second"}


def test_a_fill_never_replaces_a_newer_version(
    face: Face, tier: MemcachedTier, clock: FakeClock
) -> None:
    assert face.write(tier, {"k": at("written", 5, clock)}) == set()
    assert face.write(tier, {"k": at("loaded before", 4, clock)}, FILL) == {"k"}
    assert stored(face, tier, "k") == ("written", 5)
    assert face.write(tier, {"k": at("loaded after", 6, clock)}, FILL) == set()
    assert stored(face, tier, "k") == ("loaded after", 6)
    assert face.write(tier, {"absent": at("loaded", 2, clock)}, FILL) == set()
    assert stored(face, tier, "absent") == ("loaded", 2)
    # memcached has no leases here: a fill's token changes nothing.
    prepared = tier.prepare({"k": at("leased", 3, clock)})
    prepared.mode, prepared.token = FILL, "some-lease"
    assert face.write_prepared(tier, prepared) == {"k"}


def test_a_foreign_or_undecodable_value_is_overwritten(
    face: Face, make_tier: Callable[..., MemcachedTier], raw: RawStore, clock: FakeClock
) -> None:
    tier = make_tier(signing_key=SIGNING_KEY)
    raw.put(tier.storage_name("foreign"), b"not an envelope at all")
    assert face.write(tier, {"foreign": at("mine", 1, clock)}) == set()
    assert stored(face, tier, "foreign") == ("mine", 1)
    # An envelope that claims a huge version but is not signed with this tier's key
    # (anyone who can write to memcached can write one) is not a newer version.
    unsigned = make_tier()
    forged = unsigned.codec.encode("forged", at("forged", 2**63, clock))
    raw.put(tier.storage_name("forged"), forged)
    assert face.read(tier, "forged") == {}  # a corrupt miss for readers too
    assert face.write(tier, {"forged": at("mine", 3, clock)}) == set()
    assert stored(face, tier, "forged") == ("mine", 3)
    # A valid envelope of another key under this key's name is not this key's version.
    raw.put(tier.storage_name("moved"), tier.codec.encode("other", at("x", 99, clock)))
    assert face.write(tier, {"moved": at("mine", 4, clock)}) == set()
    assert stored(face, tier, "moved") == ("mine", 4)


def test_unversioned_writes_behave_as_before(
    face: Face, tier: MemcachedTier, clock: FakeClock
) -> None:
    face.read(tier, "warm-up")  # the namespace generation is read once
    calls = record_commands(tier)
    assert face.write(tier, {"k": at("a", 0, clock)}) == set()
    assert face.write(tier, {"k": at("b", 0, clock)}) == set()
    # One plain set each, no gets: the same round trips as before versions existed.
    assert calls == ["_set_many", "_set_many"]
    assert stored(face, tier, "k") == ("b", 0)
    # A versioned write replaces an unversioned entry ...
    assert face.write(tier, {"k": at("c", 1, clock)}) == set()
    assert stored(face, tier, "k") == ("c", 1)
    # ... and an unversioned one is a plain set, as before: it replaces whatever is there.
    assert face.write(tier, {"k": at("d", 0, clock)}) == set()
    assert stored(face, tier, "k") == ("d", 0)


def test_round_trips_of_a_versioned_write(
    face: Face, tier: MemcachedTier, clock: FakeClock
) -> None:
    face.read(tier, "warm-up")  # the namespace generation is read once
    calls = record_commands(tier)
    face.write(tier, {"k": at("a", 1, clock)})
    assert calls == ["_gets_many", "_add_new"]
    calls.clear()
    face.write(tier, {"k": at("b", 2, clock)})
    assert calls == ["_gets_many", "_cas"]
    calls.clear()
    face.write(tier, {"k": at("c", 1, clock)})
    assert calls == ["_gets_many"]  # refused: nothing more to send


def test_one_batch_mixes_versioned_unversioned_and_rejected_keys(
    face: Face, make_tier: Callable[..., MemcachedTier], clock: FakeClock
) -> None:
    tier = make_tier(max_item_size=4000)
    keys = spread_keys(tier, 12)
    face.write(tier, {key: at("old", 5, clock) for key in keys})
    entries = {key: at("newer", 9, clock) for key in keys[:3]}
    entries |= {key: at("older", 1, clock) for key in keys[3:6]}
    entries |= {key: at("plain", 0, clock) for key in keys[6:9]}
    entries |= {key: at("x" * 5000, 9, clock) for key in keys[9:]}  # too large
    prepared = tier.prepare(entries)
    assert set(prepared.rejected) == set(keys[9:])
    assert face.write_prepared(tier, prepared) == set(keys[3:6])
    found = face.read(tier, *keys)
    assert {key: found[key].value for key in found} == {
        **dict.fromkeys(keys[:3], "newer"),
        **dict.fromkeys(keys[3:6], "old"),
        **dict.fromkeys(keys[6:9], "plain"),
    }  # the rejected keys are deleted, as before


# ---------------------------------------------------------------------------- races


def test_concurrent_threads_end_with_the_highest_version(
    make_tier: Callable[..., MemcachedTier], clock: FakeClock
) -> None:
    """Five writers (each its own tier, as processes would be) write one key at once, in
    rounds, each a different version: the highest always ends up stored. With at most
    _CAS_ATTEMPTS writers per key, the highest can lose at most one race to each of the
    others, so it never runs out of attempts: deterministic, not just likely."""
    writers = memcached._CAS_ATTEMPTS
    tiers = [make_tier() for _ in range(writers)]
    rounds = 30
    barrier = threading.Barrier(writers)
    refused: list[set[str]] = [set() for _ in range(writers)]
    orders = [random.Random(round_).sample(range(writers), writers) for round_ in range(rounds)]
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for round_ in range(rounds):
                version = round_ * writers + orders[round_][index] + 1
                barrier.wait()
                refused[index] |= set(
                    tiers[index].write(prepared(tiers[index], "hot", version, clock)) or ()
                )
                barrier.wait()
                if index == 0:
                    entry = tiers[0].get_many(["hot"])["hot"]
                    assert entry.version == (round_ + 1) * writers, round_
                barrier.wait()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert tiers[0].get_many(["hot"])["hot"].value == f"v{rounds * writers}"


def test_concurrent_tasks_end_with_the_highest_version(
    tier: MemcachedTier, clock: FakeClock
) -> None:
    """The same on one tier's async face: tasks interleave at every command."""
    writers = memcached._CAS_ATTEMPTS

    async def scenario() -> None:
        for round_ in range(30):
            versions = random.Random(round_).sample(range(writers), writers)
            results = await asyncio.gather(
                *(
                    tier.awrite(prepared(tier, "hot", round_ * writers + offset + 1, clock))
                    for offset in versions
                )
            )
            winner = versions.index(writers - 1)
            assert not results[winner]
            entry = (await tier.aget_many(["hot"]))["hot"]
            assert entry.version == (round_ + 1) * writers

    asyncio.run(scenario())


def prepared(tier: MemcachedTier, key: str, version: int, clock: FakeClock) -> Prepared:
    item = tier.prepare({key: at(f"v{version}", version, clock)})
    item.mode = WRITE
    return item


def rival_once(raw: RawStore, name: str, blob: bytes) -> Callable[[str], None]:
    """Store ``blob`` under ``name`` the first time it is called, then nothing."""
    pending = [blob]

    def store(action: str) -> None:
        if pending:
            raw.put(name, pending.pop())

    return store


def interfere(tier: MemcachedTier, before: Callable[[str], None]) -> None:
    """Call ``before(action name)`` ahead of every add and cas the tier sends."""
    perform, aperform = tier.perform, tier.aperform

    def sync(command: Any) -> Any:
        if command[1].__name__ in ("_add_new", "_cas"):
            before(command[1].__name__)
        return perform(command)

    async def face(command: Any) -> Any:
        if command[1].__name__ in ("_add_new", "_cas"):
            before(command[1].__name__)
        return await aperform(command)

    tier.perform = sync  # type: ignore[method-assign]
    tier.aperform = face  # type: ignore[method-assign]


def test_a_lost_race_is_retried(
    face: Face, tier: MemcachedTier, raw: RawStore, clock: FakeClock
) -> None:
    rival = tier.codec.encode("k", at("rival", 3, clock))
    interfere(tier, rival_once(raw, tier.storage_name("k"), rival))
    # The gets finds nothing, a rival stores an older version before our add: add fails,
    # the next round sees the rival's entry and replaces it with cas.
    assert face.write(tier, {"k": at("mine", 5, clock)}) == set()
    assert stored(face, tier, "k") == ("mine", 5)


def test_a_race_lost_to_a_newer_version_is_refused(
    face: Face, tier: MemcachedTier, raw: RawStore, clock: FakeClock
) -> None:
    face.write(tier, {"k": at("first", 1, clock)})
    rival = tier.codec.encode("k", at("rival", 9, clock))
    interfere(tier, rival_once(raw, tier.storage_name("k"), rival))
    assert face.write(tier, {"k": at("mine", 5, clock)}) == {"k"}
    assert stored(face, tier, "k") == ("rival", 9)


def test_a_key_still_racing_after_the_last_attempt_is_refused_and_dropped(
    face: Face, tier: MemcachedTier, raw: RawStore, clock: FakeClock
) -> None:
    """Someone stores an older version before every one of our attempts: the key is
    refused, and deleted rather than left holding what may be older than ours."""
    face.write(tier, {"k": at("first", 1, clock)})
    name = tier.storage_name("k")
    rounds: list[str] = []

    def rival(action: str) -> None:
        rounds.append(action)
        raw.put(name, tier.codec.encode("k", at("rival", 2, clock)))

    interfere(tier, rival)
    assert face.write(tier, {"k": at("mine", 5, clock)}) == {"k"}
    assert len(rounds) == memcached._CAS_ATTEMPTS
    assert face.read(tier, "k") == {}


# ---------------------------------------------------------------------------- the client


def test_async_client_gets_many_and_cas_match_pymemcache(
    memcached_servers: list[MemcachedServer],
) -> None:
    server = memcached_servers[0]
    sync = Client(server.address, default_noreply=False)
    sync.set("a", b"1")
    sync.set("b", b"two\r\nlines")

    async def scenario() -> None:
        async with AsyncMemcachedClient(server.address, connect_timeout=1.0, timeout=2.0) as c:
            assert await c.gets_many([]) == {}
            found = await c.gets_many(["a", "b", "missing", "a"])
            assert found == sync.gets_many(["a", "b", "missing"])
            (value, unique), (_, other) = found["a"], found["b"]
            assert value == b"1" and unique.isdigit() and unique != other
            assert await c.cas("a", b"changed", unique, expire=60) is True
            assert await c.cas("a", b"again", unique) is False  # changed since: EXISTS
            assert await c.cas("missing", b"x", unique) is None  # NOT_FOUND
            new_unique = (await c.gets_many(["a"]))["a"][1]
            assert await c.cas("a", b"by int", int(new_unique)) is True
            assert await c.get("a") == b"by int"
            assert sync.gets_many(["a"])["a"][0] == b"by int"
            with pytest.raises(ValueError, match="cas unique"):
                await c.cas("a", b"x", b"12a")
            with pytest.raises(TypeError, match="cas unique"):
                await c.cas("a", b"x", 1.5)  # type: ignore[arg-type]
            # noreply: returns once sent; the next request sees its effect.
            unique = (await c.gets_many(["b"]))["b"][1]
            assert await c.cas("b", b"quiet", unique, noreply=True) is True
            assert await c.get("b") == b"quiet"

    try:
        asyncio.run(scenario())
    finally:
        sync.close()

"""Hostile bytes written straight into each real store, read back through the tier.

Whoever can write to Redis, the cluster, memcached or the SQLite file can put any bytes
under any name. Every case here must come back as a miss, counted in ``stats.corrupt`` and
logged (every time it is read: a tier never deletes what it cannot decode), and nothing
may reach pickle: the gadgets below create a file when unpickled, and the tests check the
file was never made. Cases: pickle gadgets (bare, in an envelope claiming pickle,
unsigned, with a forged or foreign signature, stored with memcached's pickle flag),
signatures replayed under another key, another namespace or a longer expiry, huge length
prefixes, truncated and oversized compression frames, and broken header fields.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.serde import pickle_serde

from stratacache.entry import Entry
from stratacache.serde import (
    _HEADER,
    FLAG_COMPRESSED,
    FLAG_NEGATIVE,
    FLAG_SIGNED,
    FORMAT_VERSION,
    MAGIC,
    Signer,
)
from stratacache.tiers.remote import RemoteTier
from stratacache.tiers.shared import SharedTier
from stratacache.tiers.sqlite import SQLiteTier

from ..conformance.remote_kit import (
    REMOTE_SERVERS,
    SIGNING_KEY,
    RawStore,
    made_tiers,
    raw_store,
    remote_factory,
)
from ..conftest import FakeClock
from ..server_fixtures import heal
from ..servers import MemcachedServer

OTHER_KEY = b"fedcba9876543210fedcba9876543210"
KINDS = ["redis", "redis-cluster", "memcached", "sqlite"]
TierFactory = Callable[..., SharedTier]


class Gadget:
    """Unpickling this calls ``open(path, "w")``: it creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------- SQLite


class _SQLiteRaw:
    """The SQLite file under a tier, through the sqlite3 module. Names are
    ``"<namespace>:<key>"`` (see :func:`name_of`); keys are stored as the tier stores them
    (TEXT, or the surrogatepass bytes of a key that is not valid UTF-8)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    @staticmethod
    def _row(name: str) -> tuple[str, str | bytes]:
        namespace, _, key = name.partition(":")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return namespace, key.encode("utf-8", "surrogatepass")
        return namespace, key

    def put(self, name: str, blob: bytes) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO stratacache_entries VALUES (?, ?, ?, NULL, 0, 0)",
            (*self._row(name), blob),
        )

    def get(self, name: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT value FROM stratacache_entries WHERE namespace = ? AND key = ?",
            self._row(name),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def ttl(self, name: str) -> float | None:
        raise NotImplementedError("SQLite keeps no server-side TTL")

    def close(self) -> None:
        self.conn.close()


def name_of(tier: SharedTier, key: str) -> str:
    """Where ``tier`` keeps ``key``, as the raw store of its kind takes it."""
    if isinstance(tier, RemoteTier):
        return tier.storage_name(key)
    return f"{tier.namespace}:{key}"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The running server of a network kind (healed: answering and empty), or for SQLite
    the path of the file."""
    if kind == "sqlite":
        return tmp_path / "hostile.db"
    value = request.getfixturevalue(REMOTE_SERVERS[kind])
    heal(value)  # picked at run time, so the autouse healer did not see it
    return value


@pytest.fixture
def make_tier(kind: str, server: Any, clock: FakeClock) -> Iterator[TierFactory]:
    if kind != "sqlite":
        yield from made_tiers(remote_factory(kind, server, clock))
        return

    def sqlite_tier(**options: Any) -> SharedTier:
        options.setdefault("namespace", "t")
        tier = SQLiteTier(server, wall_clock=clock.time, **options)
        len(tier)  # opens the file and makes the table, so raw writes can go first
        return tier

    yield from made_tiers(sqlite_tier)


@pytest.fixture
def raw(kind: str, server: Any) -> Iterator[RawStore]:
    store: RawStore = _SQLiteRaw(server) if kind == "sqlite" else raw_store(kind, server)
    yield store
    store.close()


@pytest.fixture
def gadget(tmp_path: Path) -> tuple[bytes, Path]:
    target = tmp_path / "pwned"
    payload = pickle.dumps(Gadget(str(target)))
    # Prove the gadget is live: unpickled here, on purpose, it makes its file.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Gadget(str(proof)))).close()
    assert proof.exists()
    return payload, target


# ---------------------------------------------------------------------------- envelopes


def envelope(
    key: str,
    payload: bytes,
    *,
    serializer: int = 1,
    flags: int = 0,
    key_id: int = 0,
    expires: float = 0.0,
    key_len: int | None = None,
    payload_len: int | None = None,
    fmt: int = FORMAT_VERSION,
    magic: bytes = MAGIC,
    sign_with: bytes | None = None,
    context: bytes = b"",
    signature: bytes | None = None,
    version: int = 0,
) -> bytes:
    """An envelope built field by field, with any field wrong on purpose."""
    raw_key = key.encode()
    if sign_with is not None or signature is not None:
        flags |= FLAG_SIGNED
        key_id = key_id or 1
    header = _HEADER.pack(
        magic,
        fmt,
        serializer,
        flags,
        key_id,
        expires,
        version,
        len(raw_key) if key_len is None else key_len,
        0,  # no tags
        len(payload) if payload_len is None else payload_len,
    )
    body = header + raw_key + payload
    if sign_with is not None:
        body += Signer({key_id: sign_with}, key_id).sign(body, context)
    elif signature is not None:
        body += signature
    return body


def msgpack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def expect_misses(
    tier: SharedTier,
    raw: RawStore,
    blobs: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Store each blob under its key's name; every read must be a counted, logged miss
    (each logged: the throttle's interval is 0 here; by default they are rate-limited)."""
    for key, blob in blobs.items():
        raw.put(name_of(tier, key), blob)
    before = tier.stats.corrupt
    tier.warnings.interval = 0.0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        got = tier.get_many(list(blobs))
        for key in blobs:  # one at a time too: the single-key path
            assert tier.get_many([key]) == {}, key
    assert got == {}
    assert tier.stats.corrupt - before == 2 * len(blobs)
    logged = [
        r.getMessage() for r in caplog.records if "ignoring the stored value" in r.getMessage()
    ]
    assert len(logged) == 2 * len(blobs)


# ---------------------------------------------------------------------------- pickle


def test_pickle_gadgets_never_run(
    make_tier: TierFactory,
    raw: RawStore,
    clock: FakeClock,
    gadget: tuple[bytes, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload, target = gadget
    plain = make_tier(namespace="p")  # msgpack: never unpickles anything
    pickling = make_tier(namespace="p", serializer="pickle", signing_key=SIGNING_KEY)
    # Each form claims to be pickle (serializer id 3) and is wrong in its own way.
    forms: dict[str, dict[str, Any]] = {
        "envelope says pickle": {},
        "forged signature": {"signature": os.urandom(32)},
        "foreign secret": {"sign_with": OTHER_KEY, "context": b"p"},
        "signature stripped": {"flags": FLAG_SIGNED, "key_id": 1},
        "unknown key id": {"key_id": 9, "signature": os.urandom(32)},
    }
    blobs = {key: envelope(key, payload, serializer=3, **form) for key, form in forms.items()}
    blobs["bare pickle"] = payload
    blobs["compressed gadget"] = envelope(
        "compressed gadget",
        zstandard.ZstdCompressor().compress(payload),
        serializer=3,
        flags=FLAG_COMPRESSED,
    )
    expect_misses(plain, raw, blobs, caplog)
    expect_misses(pickling, raw, blobs, caplog)
    assert not target.exists()
    # The same tier still reads what it signed itself.
    pickling.set_many({"real": Entry({1, 2}, clock.time() + 60)})
    assert pickling.get_many(["real"])["real"].value == {1, 2}


def test_memcached_pickle_flag_is_ignored(
    memcached_servers: list[MemcachedServer],
    clock: FakeClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pymemcache's own pickle serde marks items with a flag; the tier never honours it."""
    target = tmp_path / "pwned"
    tier = remote_factory("memcached", memcached_servers, clock)(
        namespace="flags", serializer="pickle", signing_key=SIGNING_KEY
    )
    name = tier.storage_name("k")
    for server in memcached_servers:
        client = MemcacheClient((server.host, server.port), serde=pickle_serde)
        client.set(name, Gadget(str(target)), noreply=False)
        client.close()
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        assert tier.get_many(["k"]) == {}
    assert tier.stats.corrupt == 1 and not target.exists()
    tier.close()


# ---------------------------------------------------------------------------- signatures


def test_replayed_and_forged_signatures(
    make_tier: TierFactory, raw: RawStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(namespace="sig", signing_key=SIGNING_KEY)
    expires = clock.time() + 60
    tier.set_many({"alice": Entry("alice's", expires), "short": Entry("brief", clock.time() + 5)})
    alice = raw.get(name_of(tier, "alice"))
    short = raw.get(name_of(tier, "short"))
    assert alice is not None and short is not None

    longer = bytearray(short)  # the expiry pushed an hour further, signature kept
    struct.pack_into("<d", longer, 6, clock.time() + 3600)
    flipped = bytearray(alice)
    flipped[-40] ^= 0x01  # one payload bit
    other_ns = make_tier(namespace="sig2", signing_key=SIGNING_KEY)
    other_ns.set_many({"alice": Entry("from sig2", expires)})
    cross = raw.get(name_of(other_ns, "alice"))
    assert cross is not None

    blobs = {
        "bob": alice,  # alice's signed entry replayed under bob's name
        "short": bytes(longer),
        "alice": bytes(flipped),
    }
    expect_misses(tier, raw, blobs, caplog)
    expect_misses(tier, raw, {"alice": cross}, caplog)  # another namespace's entry

    # Rotation: an entry signed with key 1 reads under {1, 2} and not once 1 is retired.
    old = make_tier(namespace="rot", signing_key={1: SIGNING_KEY})
    old.set_many({"k": Entry("v1", expires)})
    rotated = make_tier(namespace="rot", signing_key={1: SIGNING_KEY, 2: OTHER_KEY})
    assert rotated.get_many(["k"])["k"].value == "v1"
    retired = make_tier(namespace="rot", signing_key={2: OTHER_KEY})
    assert retired.get_many(["k"]) == {} and retired.stats.corrupt == 1


# ---------------------------------------------------------------------------- lengths, frames


def test_huge_length_prefixes(
    make_tier: TierFactory, raw: RawStore, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(namespace="len")
    blobs = {
        "huge payload": envelope("huge payload", b"x", payload_len=2**32 - 1),
        "huge key": envelope("huge key", b"x", key_len=65535),
        "one more": envelope("one more", msgpack("v"), payload_len=len(msgpack("v")) + 1),
        "one less": envelope("one less", msgpack("v"), payload_len=len(msgpack("v")) - 1),
        "header only": envelope("header only", b"")[: _HEADER.size - 1],
        "empty": b"",
    }
    expect_misses(tier, raw, blobs, caplog)


def test_truncated_and_oversized_compression_frames(
    make_tier: TierFactory, raw: RawStore, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(namespace="zst", max_value_size=100_000)
    value = msgpack("compressible " * 2000)
    frame = zstandard.ZstdCompressor().compress(value)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(value)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 2_000_000)  # declares 2 MB
    assert len(bomb) < 1000

    def compressed(key: str, data: bytes) -> bytes:
        return envelope(key, data, flags=FLAG_COMPRESSED)

    whole = compressed("cut envelope", frame)
    blobs = {
        "truncated frame": compressed("truncated frame", frame[: len(frame) // 2]),
        "frame minus one": compressed("frame minus one", frame[:-1]),
        "no declared size": compressed("no declared size", unsized),
        "no declared size, cut": compressed("no declared size, cut", unsized[:-4]),
        "trailing bytes": compressed("trailing bytes", frame + b"junk"),
        "two frames": compressed("two frames", frame + frame),
        "bomb": compressed("bomb", bomb),
        "not zstd": compressed("not zstd", b"\x28\xb5\x2f\xfd" + os.urandom(40)),
        "cut envelope": whole[: len(whole) - 7],
    }
    expect_misses(tier, raw, blobs, caplog)
    # The intact frame under the right key is fine.
    raw.put(name_of(tier, "ok"), compressed("ok", frame))
    assert tier.get_many(["ok"])["ok"].value == "compressible " * 2000


def test_payload_over_the_maximum(
    make_tier: TierFactory, raw: RawStore, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(namespace="max", max_value_size=10_000)
    big = msgpack("y" * 50_000)
    expect_misses(tier, raw, {"big": envelope("big", big)}, caplog)


def test_a_flood_of_forged_payloads_is_one_log_line_with_a_count(
    make_tier: TierFactory, raw: RawStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can write the store must not be able to flood the log: each forged read is
    counted, and logged at most once per interval."""
    tier = make_tier(namespace="flood")
    names = [f"forged{i}" for i in range(50)]
    for key in names:
        raw.put(name_of(tier, key), b"not an envelope " + key.encode())
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        for _ in range(4):
            assert tier.get_many(names) == {}
    logged = [r for r in caplog.records if "ignoring the stored value" in r.getMessage()]
    assert tier.stats.corrupt == 200
    assert len(logged) == 1


# ---------------------------------------------------------------------------- header fields


def test_broken_header_fields(
    make_tier: TierFactory, raw: RawStore, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(namespace="hdr")
    good = msgpack({"v": 1})
    blobs = {
        "bad magic": envelope("bad magic", good, magic=b"XX"),
        "future format": envelope("future format", good, fmt=FORMAT_VERSION + 1),
        "unknown flag": envelope("unknown flag", good, flags=0x80),
        "json id": envelope("json id", b'{"v":1}', serializer=2),
        "unknown serializer": envelope("unknown serializer", good, serializer=99),
        "negative with payload": envelope("negative with payload", good, flags=FLAG_NEGATIVE),
        "someone else": envelope("someone else's key", good),
        "not msgpack": envelope("not msgpack", b"\xc1\xc1\xc1"),
        "trailing msgpack": envelope("trailing msgpack", good + good),
    }
    expect_misses(tier, raw, blobs, caplog)
    raw.put(name_of(tier, "fine"), envelope("fine", good))
    assert tier.get_many(["fine"])["fine"].value == {"v": 1}


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])  # memcached has no types
def test_foreign_redis_types_are_misses(
    kind: str, server: Any, make_tier: TierFactory, clock: FakeClock
) -> None:
    """A hash or a list under the tier's name: GET says WRONGTYPE, MGET says nil."""
    tier = make_tier(namespace="types")
    tier.set_many({"fine": Entry("v", clock.time() + 60)})
    for key, command in (("hash", ("HSET", "f", "v")), ("list", ("RPUSH", "x"))):
        name = name_of(tier, key)
        node = server if kind == "redis" else server.master_for_key(name)
        node.command(command[0], name, *command[1:])
    assert tier.get_many(["hash"]) == {} and tier.stats.corrupt == 1
    assert tier.get_many(["list", "hash", "fine"]).keys() == {"fine"}

    async def from_async() -> None:
        assert await tier.aget_many(["list"]) == {}
        await tier.aclose()

    asyncio.run(from_async())
    assert tier.stats.corrupt == 2

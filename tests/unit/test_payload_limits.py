"""What a stored payload can make a reader do: how much it may decompress, and which
expiries are corrupt rather than expired."""

from __future__ import annotations

import math
import sqlite3
import struct
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from stratacache.config import MemcachedOptions, SQLiteOptions
from stratacache.entry import Entry
from stratacache.serde import DEFAULT_MAX_VALUE_SIZE, HEADER_SIZE, Codec, PayloadError
from stratacache.tiers.sqlite import SQLiteTier

MiB = 1024 * 1024


def compressed_envelope(key: str, frame: bytes) -> bytes:
    """An unsigned msgpack envelope whose payload is ``frame``, flagged compressed."""
    template = bytearray(Codec().encode(key, Entry("x")))
    header = template[:HEADER_SIZE]
    header[4] |= 0x01
    header[26:30] = struct.pack("<I", len(frame))
    return bytes(header) + key.encode() + frame


def lying_frame(data: bytes, declared: int) -> bytes:
    """A zstd frame of ``data`` whose header claims ``declared`` bytes of content."""
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    descriptor = frame[4]
    assert descriptor & 0xE0 == 0  # no content size, not single-segment: a window byte
    assert 256 <= declared < 65536 + 256
    return (
        frame[:4]
        + bytes([descriptor | 0x40])  # a 2-byte content size field...
        + frame[5:6]
        + struct.pack("<H", declared - 256)  # ...holding declared - 256
        + frame[6:]
    )


# ---------------------------------------------------------------------------- defaults


def test_default_max_value_size_is_a_cache_entry_not_64_mib() -> None:
    assert MiB == DEFAULT_MAX_VALUE_SIZE
    assert Codec().max_value_size == MiB
    assert SQLiteOptions().max_value_size == MiB
    assert MemcachedOptions().max_item_size <= MiB  # memcached keeps its item size


def test_a_small_unsigned_frame_cannot_decode_to_60_mib() -> None:
    """The finding: ~2 KB of zstd stored by anyone decoded into 60 MiB by default."""
    frame = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (60 * MiB))
    assert len(frame) < 4096
    with pytest.raises(PayloadError, match="limit"):
        Codec().decode("k", compressed_envelope("k", frame))


def test_values_up_to_the_default_limit_still_round_trip() -> None:
    codec = Codec(compress_threshold=0)
    value = "v" * (MiB - 16)
    assert codec.decode("k", codec.encode("k", Entry(value))).value == value


# ---------------------------------------------------------------------------- lying frames


@pytest.mark.parametrize("limit", [4096, 60_000])
def test_a_frame_that_streams_more_than_it_declares_is_cut_off(limit: int) -> None:
    """The header declares the limit; the blocks hold 50 MB. Decoding fails without ever
    holding much more than the declared size."""
    frame = lying_frame(b"\x00" * 50_000_000, declared=limit)
    assert zstandard.get_frame_parameters(frame).content_size == limit
    codec = Codec(max_value_size=limit)
    blob = compressed_envelope("k", frame)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="zstd"):
            codec.decode("k", blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit + 16 * 1024, peak


def test_a_frame_that_streams_fewer_bytes_than_it_declares_is_refused() -> None:
    frame = lying_frame(b"\x01" * 500, declared=5000)
    with pytest.raises(PayloadError, match="zstd"):
        Codec().decode("k", compressed_envelope("k", frame))


# ---------------------------------------------------------------------------- expiries


def with_expiry(blob: bytes, expires: float) -> bytes:
    out = bytearray(blob)
    struct.pack_into("<d", out, 6, expires)
    return bytes(out)


@pytest.mark.parametrize("expires", [math.nan, -math.nan, math.inf, -math.inf])
def test_a_non_finite_expiry_is_corrupt(expires: float) -> None:
    blob = with_expiry(Codec().encode("k", Entry("v", 100.0)), expires)
    with pytest.raises(PayloadError, match="not a finite time"):
        Codec().decode("k", blob)


def test_finite_expiries_and_never_still_decode() -> None:
    codec = Codec()
    assert codec.decode("k", codec.encode("k", Entry("v"))).expires_at == math.inf
    assert codec.decode("k", codec.encode("k", Entry("v", 5.0))).expires_at == 5.0


def test_a_nan_expiry_in_a_shared_level_is_counted_as_corrupt(tmp_path: Path) -> None:
    """Before: NaN compared as expired, a silent miss nobody counted."""
    path = tmp_path / "l2.db"
    tier = SQLiteTier(path, namespace="t", wall_clock=lambda: 1000.0)
    tier.set_many({"k": Entry("v", 2000.0)})
    conn = sqlite3.connect(path, isolation_level=None)
    (blob,) = conn.execute("SELECT value FROM stratacache_entries WHERE key = 'k'").fetchone()
    conn.execute(
        "UPDATE stratacache_entries SET value = ? WHERE key = 'k'",
        (with_expiry(bytes(blob), math.nan),),
    )
    conn.close()
    assert tier.get_many(["k"]) == {}
    assert tier.stats.corrupt == 1
    tier.close()

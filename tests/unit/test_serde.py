"""The envelope: round trips, and every way a stored payload can be untrustworthy."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import pytest

from stratacache.entry import NEVER, Entry
from stratacache.errors import ConfigurationError, SerializationError
from stratacache.serde import HEADER_SIZE, Codec, PayloadError, Signer

KEY_A = b"0123456789abcdef-key-a"
KEY_B = b"0123456789abcdef-key-b"


def test_round_trip_keeps_expiry_version_and_negative_flag() -> None:
    codec = Codec()
    blob = codec.encode("k", Entry({"a": [1, 2]}, 1234.5))
    assert codec.decode("k", blob) == Entry({"a": [1, 2]}, 1234.5, False)
    never = codec.decode("k", codec.encode("k", Entry("v")))
    assert never.expires_at == NEVER
    negative = codec.decode("k", codec.encode("k", Entry(None, 5.0, negative=True)))
    assert negative.negative and negative.value is None


def test_json_serializer_round_trip() -> None:
    codec = Codec("json")
    assert codec.decode("k", codec.encode("k", Entry([1, "x", None]))).value == [1, "x", None]


def test_unencodable_value_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="object"):
        Codec().encode("k", Entry(object()))


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_a_str_that_is_not_unicode_text_raises_serialization_error(serializer: str) -> None:
    # A lone surrogate: msgspec raises UnicodeEncodeError, which is no CacheError.
    with pytest.raises(SerializationError, match="cannot encode"):
        Codec(serializer).encode("k", Entry({"name": "\ud800"}))


def test_a_key_too_long_for_the_envelope_raises_serialization_error() -> None:
    codec = Codec()
    longest = "k" * 0xFFFF
    assert codec.decode(longest, codec.encode(longest, Entry(1))).value == 1
    with pytest.raises(SerializationError, match="at most 65535 bytes"):
        codec.encode("é" * 0x8000, Entry(1))  # 65536 UTF-8 bytes


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[:10], "shorter than"),
        (lambda b: b"XX" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x09" + b[3:], "format 9"),
        (lambda b: b[:-1], "length mismatch"),
        (lambda b: b + b"extra", "length mismatch"),
        (lambda b: b[:4] + b"\x80" + b[5:], "unknown flags"),
        # a huge payload length in the header must not make us read or allocate anything
        (lambda b: b[:26] + struct.pack("<I", 0xFFFFFFFF) + b[30:], "length mismatch"),
        (lambda b: b[:3] + b"\x02" + b[4:], "serializer id 2"),
        (lambda b: b[:-3] + b"\xc1\xc1\xc1", "could not decode"),
    ],
)
def test_corrupt_envelopes_are_refused_with_a_reason(mangle, reason) -> None:  # type: ignore[no-untyped-def]
    codec = Codec()
    blob = codec.encode("key", Entry("some value"))
    with pytest.raises(PayloadError, match=reason):
        codec.decode("key", mangle(blob))


def test_envelope_under_another_key_is_refused() -> None:
    codec = Codec()
    with pytest.raises(PayloadError, match="another key"):
        codec.decode("b", codec.encode("a", Entry("secret")))


def test_payload_over_the_maximum_is_refused_on_read() -> None:
    big = Codec().encode("k", Entry("x" * 5000))
    with pytest.raises(PayloadError, match="max_value_size"):
        Codec(max_value_size=1000).decode("k", big)


def test_signed_round_trip_and_rotation() -> None:
    old = Codec(signer=Signer({1: KEY_A}, 1))
    blob = old.encode("k", Entry("v", 100.0))
    rotated = Codec(signer=Signer({1: KEY_A, 2: KEY_B}, 2))
    assert rotated.decode("k", blob).value == "v"  # old key still verifies
    new_blob = rotated.encode("k", Entry("w", 100.0))
    assert new_blob[5] == 2
    assert rotated.decode("k", new_blob).value == "w"
    with pytest.raises(PayloadError, match="bad signature"):
        old.decode("k", new_blob)  # key 2 unknown to the old configuration
    retired = Codec(signer=Signer({2: KEY_B}, 2))
    with pytest.raises(PayloadError, match="bad signature"):
        retired.decode("k", blob)


@pytest.mark.parametrize("offset", [5, 6, 20, -40])
def test_signature_binds_expiry_key_and_payload(offset: int) -> None:
    codec = Codec(signer=KEY_A)
    blob = bytearray(codec.encode("key", Entry("payload-bytes", 100.0)))
    blob[offset] ^= 0x01
    with pytest.raises(PayloadError, match="bad signature"):
        codec.decode("key", bytes(blob))


def test_signed_envelope_replayed_under_another_key_is_refused() -> None:
    codec = Codec(signer=KEY_A)
    with pytest.raises(PayloadError, match="another key"):
        codec.decode("victim", codec.encode("attacker", Entry("x")))


def test_unsigned_envelope_refused_when_signing_is_on() -> None:
    blob = Codec().encode("k", Entry("v"))
    with pytest.raises(PayloadError, match="unsigned"):
        Codec(signer=KEY_A).decode("k", blob)


def test_pickle_needs_a_signing_key() -> None:
    with pytest.raises(ConfigurationError, match="signing"):
        Codec("pickle")


class _Gadget:
    """Unpickling this creates a file: the classic pickle attack."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_forged_pickle_gadget_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    gadget = pickle.dumps(_Gadget(str(target)))
    codec = Codec("pickle", signer=KEY_A)
    # an attacker without the key builds an envelope by hand, signed with a key of theirs
    forger = Codec("pickle", signer=Signer({1: b"attacker-key-0123456789"}, 1))
    forged = forger.encode("k", Entry("placeholder"))
    header_end = HEADER_SIZE + 1
    body = forged[:26] + struct.pack("<I", len(gadget)) + forged[30:header_end] + gadget
    forged = body + forger.signer.sign(body)  # type: ignore[union-attr]
    with pytest.raises(PayloadError, match="bad signature"):
        codec.decode("k", forged)
    # unsigned
    unsigned = body[:4] + bytes([body[4] & ~0x04]) + b"\x00" + body[6:]
    with pytest.raises(PayloadError):
        codec.decode("k", unsigned)
    assert not target.exists()
    # and the legitimate signed pickle still works
    good = codec.encode("k", Entry({"any": object.__name__}))
    assert codec.decode("k", good).value == {"any": "object"}


def test_compression_round_trip_and_bounds() -> None:
    codec = Codec(compress_threshold=100, max_value_size=10_000)
    value = "abc" * 1000
    blob = codec.encode("k", Entry(value))
    assert blob[4] & 0x01 and len(blob) < 1000
    assert codec.decode("k", blob).value == value
    small = codec.encode("k", Entry("tiny"))
    assert not small[4] & 0x01


def test_decompression_bomb_is_refused() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * 5_000_000)
    codec = Codec(compress_threshold=0, max_value_size=100_000)
    template = codec.encode("k", Entry("x" * 200))
    header = bytearray(template[:HEADER_SIZE])
    header[26:30] = struct.pack("<I", len(bomb))
    header[4] |= 0x01
    with pytest.raises(PayloadError, match="limit"):
        codec.decode("k", bytes(header) + b"k" + bomb)


def test_truncated_compression_frame_is_refused() -> None:
    codec = Codec(compress_threshold=0)
    blob = codec.encode("k", Entry(os.urandom(10).hex() * 200))
    header = bytearray(blob[:HEADER_SIZE])
    payload = blob[HEADER_SIZE + 1 :]
    cut = payload[: len(payload) // 2]
    header[26:30] = struct.pack("<I", len(cut))
    with pytest.raises(PayloadError, match="zstd"):
        codec.decode("k", bytes(header) + b"k" + cut)


def test_signer_repr_never_shows_secrets() -> None:
    signer = Signer({1: KEY_A}, 1)
    assert "0123456789" not in repr(signer)
    assert "0123456789" not in repr(Codec(signer=signer).signer)


def test_version_and_tags_round_trip_and_are_signed() -> None:
    codec = Codec(signer=KEY_A)
    entry = Entry({"a": 1}, 2e9, False, 41, ("user:1", "team:2"), 1.7e9)
    assert codec.decode("k", codec.encode("k", entry)) == entry
    plain = Codec().encode("k", Entry("v"))
    assert Codec().decode("k", plain).version == 0
    # the version is part of the signed header: raising it breaks the signature
    blob = bytearray(codec.encode("k", entry))
    blob[14:22] = struct.pack("<Q", 99)
    with pytest.raises(PayloadError, match="bad signature"):
        codec.decode("k", bytes(blob))


def test_a_corrupt_tags_block_is_refused() -> None:
    codec = Codec()
    blob = bytearray(codec.encode("k", Entry("v", tags=("t",), written_at=5.0)))
    start = HEADER_SIZE + 1  # after the one-byte key
    blob[start] = 0xC1  # never valid msgpack
    with pytest.raises(PayloadError, match="tags block"):
        codec.decode("k", bytes(blob))

"""The invalidation bus's wire format (``stratacache.coherence.messages``): what round-trips,
and that everything else is a BusMessageError, never an exception of another kind nor a
message applied."""

from __future__ import annotations

import time

import msgspec
import pytest

from stratacache.coherence.messages import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    SIGNATURE_SIZE,
    BusMessageError,
    Message,
    decode,
    encode,
)
from stratacache.serde import Signer

SECRET = b"0123456789abcdef-bus-secret"
OTHER = b"fedcba9876543210-other-secret"


def sample(**changes: object) -> Message:
    fields: dict[str, object] = {
        "publisher": "a" * 32,
        "epoch": (1 << 63) - 1,
        "seq": 7,
        "keys": ("user:1", "user:2", "ключ"),
        "versions": (3, 0, 2**62),
        "clear": False,
        "tags": ("users",),
        "tag_time": 1_800_000_000.25,
        "sent_at": time.time(),
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def raw_body(*items: object) -> bytes:
    """A payload whose msgpack body is ``items``, unsigned."""
    return b"SCB\x01\x00" + msgspec.msgpack.encode(list(items))


GOOD_BODY = ("p" * 32, 1, 1, ["k"], [0], False, [], 0.0, 0.0)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "message",
    [
        sample(),
        sample(keys=(), versions=(), clear=True, tags=(), tag_time=0.0),
        sample(keys=("",), versions=(0,), tags=("a", "b"), epoch=0, seq=1, sent_at=0.0),
    ],
    ids=["keys-and-tags", "clear", "edge-values"],
)
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip(message: Message, signed: bool) -> None:
    signer = Signer.of(SECRET) if signed else None
    data = encode(message, signer, b"ctx")
    assert decode(data, signer, b"ctx") == message
    assert decode(bytearray(data), signer, b"ctx") == message


def test_signed_payload_layout() -> None:
    signer = Signer.of({1: OTHER, 2: SECRET})
    data = encode(sample(), signer, b"")
    assert data[:5] == b"SCB\x01\x01"
    assert data[-SIGNATURE_SIZE - 1] == 2  # the current key id
    assert signer.verify(2, data[:-SIGNATURE_SIZE], data[-SIGNATURE_SIZE:])


def test_rotated_key_still_verifies() -> None:
    message = sample()
    old = Signer.of({1: OTHER})
    rotated = Signer.of({1: OTHER, 2: SECRET})
    assert decode(encode(message, old, b""), rotated, b"") == message


def test_a_receiver_without_a_signer_accepts_signed_messages() -> None:
    message = sample()
    assert decode(encode(message, Signer.of(SECRET), b"x"), None, b"") == message


def test_encode_refuses_keys_and_versions_of_different_lengths() -> None:
    with pytest.raises(BusMessageError, match="versions"):
        encode(sample(versions=(1,)), None, b"")


def test_encode_refuses_an_oversized_message() -> None:
    with pytest.raises(BusMessageError, match="limit"):
        encode(sample(keys=("x" * MAX_PAYLOAD,), versions=(0,)), None, b"")


# ---------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("signed", [False, True])
def test_every_truncation_is_rejected(signed: bool) -> None:
    signer = Signer.of(SECRET) if signed else None
    data = encode(sample(), signer, b"")
    for end in range(len(data)):
        with pytest.raises(BusMessageError):
            decode(data[:end], signer, b"")


def test_trailing_garbage_is_rejected() -> None:
    with pytest.raises(BusMessageError):
        decode(encode(sample(), None, b"") + b"\x00", None, b"")


@pytest.mark.parametrize(
    "data",
    [b"", b"SC", b"XYZ\x01\x00\x90", b"SCB\x02\x00\x90", b"SCB\x01\x04\x90", b"\xff" * 64],
    ids=["empty", "short", "magic", "version", "flags", "noise"],
)
def test_foreign_payloads_are_rejected(data: bytes) -> None:
    with pytest.raises(BusMessageError):
        decode(data, None, b"")


def test_oversized_payload_is_rejected_before_anything_else() -> None:
    data = encode(sample(), None, b"")
    with pytest.raises(BusMessageError, match="limit"):
        decode(data + b"\x00" * (MAX_PAYLOAD - len(data) + 1), None, b"")


def test_unsigned_message_on_a_signed_bus_is_rejected() -> None:
    with pytest.raises(BusMessageError, match="unsigned"):
        decode(encode(sample(), None, b""), Signer.of(SECRET), b"")


def test_forged_signature_is_rejected() -> None:
    forged = encode(sample(), Signer.of(OTHER), b"")
    with pytest.raises(BusMessageError, match="signature"):
        decode(forged, Signer.of(SECRET), b"")


def test_unknown_key_id_is_rejected() -> None:
    data = bytearray(encode(sample(), Signer.of(SECRET), b""))
    data[-SIGNATURE_SIZE - 1] = 9
    with pytest.raises(BusMessageError, match="signature"):
        decode(bytes(data), Signer.of(SECRET), b"")


def test_signature_is_bound_to_the_context() -> None:
    signer = Signer.of(SECRET)
    with pytest.raises(BusMessageError, match="signature"):
        decode(encode(sample(), signer, b"ns-a"), signer, b"ns-b")


def test_every_flipped_bit_of_a_signed_payload_is_rejected() -> None:
    signer = Signer.of(SECRET)
    data = encode(sample(keys=("k",), versions=(1,), tags=()), signer, b"")
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            mangled = bytearray(data)
            mangled[index] ^= bit
            with pytest.raises(BusMessageError):
                decode(bytes(mangled), signer, b"")


def test_a_tampered_body_is_rejected_even_with_a_recomputed_layout() -> None:
    # The attacker re-encodes a different body behind the original signature.
    signer = Signer.of(SECRET)
    data = encode(sample(), signer, b"")
    other_body = msgspec.msgpack.encode(list(GOOD_BODY))
    tampered = data[:HEADER_SIZE] + other_body + data[-SIGNATURE_SIZE - 1 :]
    with pytest.raises(BusMessageError, match="signature"):
        decode(tampered, signer, b"")


def test_the_good_body_itself_decodes() -> None:
    # So that the wrong-type cases below fail for their one change, not for another.
    assert decode(raw_body(*GOOD_BODY), None, b"").keys == ("k",)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 5),  # publisher: not a str
        (0, ""),  # publisher: empty
        (0, "x" * 65),  # publisher: too long
        (1, -1),  # epoch: negative
        (1, 1 << 63),  # epoch: beyond 63 bits
        (1, "1"),  # epoch: not an int
        (2, 0),  # seq: starts at 1
        (2, 1.5),  # seq: not an int
        (2, True),  # seq: a bool is not an int
        (3, "k"),  # keys: a str, not an array
        (3, [1]),  # keys: not strs
        (3, [b"k"]),  # keys: bytes, not str
        (4, [-1]),  # versions: negative
        (4, [0, 0]),  # versions: not one per key
        (4, ["1"]),  # versions: not ints
        (5, 1),  # clear: not a bool
        (6, [None]),  # tags: not strs
        (7, "now"),  # tag_time: not a number
        (7, -1.0),  # tag_time: negative
        (7, float("inf")),  # tag_time: not finite
        (8, float("nan")),  # sent_at: not a number
    ],
)
def test_wrong_types_and_bounds_are_rejected(index: int, value: object) -> None:
    body = list(GOOD_BODY)
    body[index] = value
    with pytest.raises(BusMessageError):
        decode(raw_body(*body), None, b"")


@pytest.mark.parametrize(
    "body",
    [GOOD_BODY[:-1], (*GOOD_BODY, 0), {"publisher": "p"}, "text", None],
    ids=["missing-field", "extra-field", "map", "str", "nil"],
)
def test_wrong_shapes_are_rejected(body: object) -> None:
    data = b"SCB\x01\x00" + msgspec.msgpack.encode(body)
    with pytest.raises(BusMessageError):
        decode(data, None, b"")


def test_not_bytes_is_rejected() -> None:
    with pytest.raises(BusMessageError):
        decode("SCB", None, b"")  # type: ignore[arg-type]


def test_bus_message_error_is_a_value_error() -> None:
    assert issubclass(BusMessageError, ValueError)

"""The invalidation bus's wire format: one :class:`Message` per batch, msgpack, optionally signed.

::

    offset  size  field
    0       3     magic b"SCB"
    3       1     format version (1)
    4       1     flags (bit 0: signed)
    5       n     msgpack array [publisher, epoch, seq, keys, versions, clear, tags,
                  tag_time, sent_at]
    5+n     1     signing key id                      (only when signed)
    6+n     32    HMAC-SHA256 over every byte before  (only when signed)

The HMAC covers the header, the body and the key id, with the bus's ``context`` (for
example the channel or the cache's namespace) fed ahead of them the way
:class:`~stratacache.serde.Signer` does, so that a message signed for one bus cannot be
replayed into another that shares the transport and the key. A signature does not stop
the replay of a message *within* a bus: the receiver does that with the publisher's
``epoch`` and ``seq``, which the signature covers.

Decoding trusts nothing: the size is checked first (at most :data:`MAX_PAYLOAD` bytes),
then the header, then the signature (before msgspec parses a byte of the body), then the
body's types and bounds (typed msgspec decoding: an int where a string belongs, a missing
or extra field, a negative seq, keys and versions of different lengths, a time that is not
finite). Any failure raises :class:`BusMessageError`. A receiver with a signer refuses
unsigned messages; one without a signer accepts signed ones unverified (it trusts the
transport anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from ..serde import Signer

__all__ = ["MAX_PAYLOAD", "BusMessageError", "Message", "decode", "encode"]

MAGIC: Final = b"SCB"
FORMAT_VERSION: Final = 1
FLAG_SIGNED: Final = 0x01
HEADER_SIZE: Final = 5
SIGNATURE_SIZE: Final = 32
#: The largest payload :func:`decode` looks at (and :func:`encode` produces).
MAX_PAYLOAD: Final = 8 * 1024 * 1024
#: The longest publisher id accepted (ours are 32 hex digits).
MAX_PUBLISHER: Final = 64
_EPOCH_LIMIT: Final = 1 << 63


class BusMessageError(ValueError):
    """A bus payload that must not be applied: malformed, truncated, oversized, unsigned
    where a signature is required, or forged. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """One published batch of invalidations."""

    publisher: str  # random id of the publishing bus (uuid4 hex)
    epoch: int  # random 63-bit int chosen when the publisher's bus was made
    seq: int  # 1, 2, 3 ... per (publisher, epoch)
    keys: tuple[str, ...] = ()  # keys written, deleted or invalidated
    versions: tuple[int, ...] = ()  # one per key: the write version (0 = unknown)
    clear: bool = False  # the whole cache was cleared
    tags: tuple[str, ...] = ()  # tags invalidated
    tag_time: float = 0.0  # wall-clock time of the tag invalidation
    sent_at: float = 0.0  # wall-clock time the batch was sent


_Publisher = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PUBLISHER)]
_Epoch = Annotated[int, msgspec.Meta(ge=0, le=_EPOCH_LIMIT - 1)]
_Seq = Annotated[int, msgspec.Meta(ge=1)]
_Version = Annotated[int, msgspec.Meta(ge=0)]
_Time = Annotated[float, msgspec.Meta(ge=0.0)]
_Body = tuple[
    _Publisher,
    _Epoch,
    _Seq,
    tuple[str, ...],
    tuple[_Version, ...],
    bool,
    tuple[str, ...],
    _Time,
    _Time,
]

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(_Body)


def encode(message: Message, signer: Signer | None, context: bytes = b"") -> bytes:
    """The payload of ``message``: header, msgpack body, and (with a signer) the key id and
    an HMAC-SHA256 over everything before it."""
    if len(message.keys) != len(message.versions):
        raise BusMessageError(
            f"{len(message.keys)} keys but {len(message.versions)} versions: one version per key"
        )
    body = _encoder.encode(
        (
            message.publisher,
            message.epoch,
            message.seq,
            message.keys,
            message.versions,
            message.clear,
            message.tags,
            message.tag_time,
            message.sent_at,
        )
    )
    if signer is None:
        data = b"".join((MAGIC, bytes((FORMAT_VERSION, 0)), body))
    else:
        unsigned = b"".join(
            (MAGIC, bytes((FORMAT_VERSION, FLAG_SIGNED)), body, bytes((signer.current,)))
        )
        data = unsigned + signer.sign(unsigned, context)
    if len(data) > MAX_PAYLOAD:
        raise BusMessageError(f"message of {len(data)} bytes is over the {MAX_PAYLOAD}-byte limit")
    return data


def decode(data: bytes, signer: Signer | None, context: bytes = b"") -> Message:
    """The :class:`Message` in ``data``; :class:`BusMessageError` for anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BusMessageError(f"a payload is bytes, not {type(data).__name__}")
    size = len(data)
    if size > MAX_PAYLOAD:
        raise BusMessageError(f"payload of {size} bytes is over the {MAX_PAYLOAD}-byte limit")
    if size < HEADER_SIZE:
        raise BusMessageError(f"truncated payload ({size} bytes)")
    view = memoryview(data)
    if bytes(view[:3]) != MAGIC:
        raise BusMessageError("not a bus message (bad magic)")
    if view[3] != FORMAT_VERSION:
        raise BusMessageError(f"unknown bus message format {view[3]}")
    flags = view[4]
    if flags & ~FLAG_SIGNED:
        raise BusMessageError(f"unknown flags 0x{flags:02x}")
    end = size
    if flags & FLAG_SIGNED:
        end = size - SIGNATURE_SIZE - 1
        if end <= HEADER_SIZE:
            raise BusMessageError(f"truncated signed payload ({size} bytes)")
        if signer is not None:
            key_id = view[end]
            signature = bytes(view[end + 1 :])
            if not signer.verify(key_id, view[: end + 1], signature, context):
                raise BusMessageError(f"bad signature (key id {key_id})")
    elif signer is not None:
        raise BusMessageError("unsigned message on a signed bus")
    try:
        body = _decoder.decode(view[HEADER_SIZE:end])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BusMessageError(f"malformed body: {exc}") from None
    publisher, epoch, seq, keys, versions, clear, tags, tag_time, sent_at = body
    if len(keys) != len(versions):
        raise BusMessageError(f"{len(keys)} keys but {len(versions)} versions")
    if not (math.isfinite(tag_time) and math.isfinite(sent_at)):
        raise BusMessageError("a time that is not a finite number")
    return Message(publisher, epoch, seq, keys, versions, clear, tags, tag_time, sent_at)

"""Serializers, compression, signing, and the versioned envelope shared tiers store.

Every value a shared tier (SQLite file, Redis, memcached) holds is one envelope::

    offset  size  field
    0       2     magic b"SC"
    2       1     format version (2)
    3       1     serializer id (1 msgpack, 2 json, 3 pickle)
    4       1     flags (bit 0: zstd-compressed, bit 1: negative entry, bit 2: signed)
    5       1     signing key id (0 when unsigned)
    6       8     expires_at, float64 wall-clock seconds (0.0 = never)
    14      2     key length (bytes of the UTF-8 key)
    16      4     payload length
    20      k     the original key, UTF-8
    20+k    p     payload (compressed when flag 0 is set)
    end     32    HMAC-SHA256 over every byte before it (only when signed)

Why carry the key: a shared tier may hash long keys, and anyone with write access to the
store can put bytes under any name. Comparing the stored key on read means two keys that
hash alike never return each other's value, and a payload copied under another key is a
miss. Why sign the header too: a signature over the payload alone would let an attacker
replay a validly signed payload under another key or extend its expiry. A codec may also
have a ``context`` (remote tiers use their namespace): it is not stored, but it is fed to
the HMAC ahead of the envelope, so that an entry signed for one cache cannot be replayed
into another cache that shares the store and the signing key. An empty context signs
exactly as before, so existing signed entries stay valid.

Decoding is defensive: lengths are checked against the actual buffer before anything is
sliced, the signature (when configured) is verified before decompression and before the
serializer runs, decompression is bounded by the maximum value size (a compressed frame must
declare its size, be complete, and be followed by nothing), and pickle refuses to run unless
the envelope carried a valid signature. Any failure raises :class:`PayloadError`,
which tiers turn into a counted, logged miss: it never reaches the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import msgspec

from .entry import NEVER, Entry
from .errors import ConfigurationError, SerializationError

__all__ = [
    "Codec",
    "JsonSerializer",
    "MsgpackSerializer",
    "PayloadError",
    "PickleSerializer",
    "Serializer",
    "Signer",
    "make_serializer",
]

MAGIC = b"SC"
FORMAT_VERSION = 2
FLAG_COMPRESSED = 0x01
FLAG_NEGATIVE = 0x02
FLAG_SIGNED = 0x04
_HEADER = struct.Struct("<2sBBBBdHI")
HEADER_SIZE = _HEADER.size
SIGNATURE_SIZE = 32
#: The longest key an envelope can carry (its length field is 16 bits), in UTF-8 bytes.
MAX_KEY_BYTES = 0xFFFF
_KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_NEGATIVE | FLAG_SIGNED


class PayloadError(Exception):
    """A stored payload that must not be trusted: corrupt, truncated, forged, foreign.

    Raised by :meth:`Codec.decode` and caught by tiers, which count it and log
    ``reason``; it never reaches the caller.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------- serializers


class Serializer(Protocol):
    id: int
    name: str
    #: True when loads() can run arbitrary code (pickle): the codec then insists on a signature.
    executes_code: bool

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes | memoryview) -> Any: ...


class MsgpackSerializer:
    """msgspec MessagePack: compact and fast. With ``value_type`` (a dataclass, a
    ``msgspec.Struct`` or a typing form such as ``list[int]``) values come back typed."""

    id = 1
    name = "msgpack"
    executes_code = False

    def __init__(self, value_type: Any = Any) -> None:
        self.value_type = value_type
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(value_type).decode

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encode(value)
        except (TypeError, ValueError, msgspec.EncodeError, OverflowError) as exc:
            raise SerializationError(
                f"msgpack cannot encode a value of type {type(value).__qualname__}: {exc}; "
                "use plain types, a dataclass or a msgspec.Struct (and pass value_type= to "
                "get it back typed), or choose serializer='pickle' with a signing key"
            ) from exc

    def loads(self, data: bytes | memoryview) -> Any:
        return self._decode(data)


class JsonSerializer(MsgpackSerializer):
    """msgspec JSON: readable in the store, slower and larger than msgpack."""

    id = 2
    name = "json"

    def __init__(self, value_type: Any = Any) -> None:
        self.value_type = value_type
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(value_type).decode

    def dumps(self, value: Any) -> bytes:
        try:
            return self._encode(value)
        except (TypeError, ValueError, msgspec.EncodeError, OverflowError) as exc:
            raise SerializationError(
                f"json cannot encode a value of type {type(value).__qualname__}: {exc}"
            ) from exc


class PickleSerializer:
    """pickle: any picklable object. Unpickling runs code chosen by whoever wrote the bytes,
    so the codec only accepts it together with a :class:`Signer` and verifies every payload
    before it reaches ``pickle.loads``."""

    id = 3
    name = "pickle"
    executes_code = True

    def __init__(self, value_type: Any = Any) -> None:
        self.value_type = value_type

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"pickle cannot encode a value of type {type(value).__qualname__}: {exc}"
            ) from exc

    def loads(self, data: bytes | memoryview) -> Any:
        return pickle.loads(data)


_SERIALIZERS: dict[str, type[MsgpackSerializer] | type[PickleSerializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JsonSerializer,
    "pickle": PickleSerializer,
}


def make_serializer(name: str | Serializer, value_type: Any = Any) -> Serializer:
    if not isinstance(name, str):
        return name
    try:
        cls = _SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}; accepted: {', '.join(_SERIALIZERS)}"
        ) from None
    return cls(value_type)


# ---------------------------------------------------------------------------- signing


@dataclass(frozen=True)
class Signer:
    """HMAC-SHA256 signing with rotating keys.

    ``keys`` maps a small id (1-255) to a secret; new envelopes are signed with
    ``current``; any listed key verifies. To rotate: add the new key, make it current,
    and drop the old one once entries signed with it have expired.
    """

    keys: Mapping[int, bytes | str]
    current: int
    _keys: dict[int, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigurationError("Signer needs at least one key")
        normalized: dict[int, bytes] = {}
        for key_id, secret in self.keys.items():
            if not isinstance(key_id, int) or not 1 <= key_id <= 255:
                raise ConfigurationError(f"signing key ids must be ints 1-255, got {key_id!r}")
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            if len(raw) < 16:
                raise ConfigurationError(
                    f"signing key {key_id} is {len(raw)} bytes; use at least 16 random bytes"
                )
            normalized[key_id] = raw
        if self.current not in normalized:
            raise ConfigurationError(
                f"current signing key id {self.current} is not among the keys {sorted(normalized)}"
            )
        object.__setattr__(self, "_keys", normalized)

    def __repr__(self) -> str:  # never print secrets
        return f"Signer(key_ids={sorted(self._keys)}, current={self.current})"

    @classmethod
    def of(cls, secret: bytes | str | Signer | Mapping[int, bytes | str]) -> Signer:
        """A signer from one secret (id 1), an id→secret mapping (highest id is current),
        or an existing signer."""
        if isinstance(secret, Signer):
            return secret
        if not secret:
            raise ConfigurationError(
                "a signing key must be a non-empty secret (16+ random bytes) or a "
                "non-empty {key_id: secret} mapping"
            )
        if isinstance(secret, str):
            return cls({1: secret.encode()}, 1)
        if isinstance(secret, bytes):
            return cls({1: secret}, 1)
        return cls(dict(secret), max(secret))

    def sign(self, data: bytes | memoryview, context: bytes = b"") -> bytes:
        return _mac(self._keys[self.current], data, context)

    def verify(
        self, key_id: int, data: bytes | memoryview, signature: bytes, context: bytes = b""
    ) -> bool:
        secret = self._keys.get(key_id)
        if secret is None:
            return False
        return hmac.compare_digest(_mac(secret, data, context), signature)


def _mac(secret: bytes, data: bytes | memoryview, context: bytes) -> bytes:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    if context:
        # Length-prefixed, so that no (context, data) pair can pass for another; an empty
        # context adds nothing, which keeps signatures made before contexts existed valid.
        mac.update(len(context).to_bytes(4, "big"))
        mac.update(context)
    mac.update(data)
    return mac.digest()


# ---------------------------------------------------------------------------- compression


class _Zstd:
    """zstd with a bounded decompressor (so a small forged frame cannot expand into
    gigabytes). Imported lazily: zstandard is an optional extra.

    zstd contexts must not be used by two threads at once, and a codec is shared by every
    thread of a process (and by the worker threads of async tiers), so each thread gets its
    own compressor and decompressor.

    Frames are checked strictly, because a frame that decodes "successfully" into the wrong
    bytes is worse than one that fails: it must declare its content size (ours always do:
    without it a truncated frame silently yields a shorter payload), that size must be
    within the limit (zstd then refuses to produce more or fewer bytes than declared), the
    frame must be complete, and nothing may follow it.
    """

    def __init__(self, level: int) -> None:
        try:
            import zstandard
        except ImportError as exc:
            raise ConfigurationError(
                "compression needs the zstandard package: pip install 'stratacache[zstd]'"
            ) from exc
        self._zstd = zstandard
        self._level = level
        self._local = threading.local()

    def _contexts(self) -> Any:
        local = self._local
        if not hasattr(local, "compressor"):
            local.compressor = self._zstd.ZstdCompressor(level=self._level, write_content_size=True)
            local.decompressor = self._zstd.ZstdDecompressor()
        return local

    def compress(self, data: bytes) -> bytes:
        return bytes(self._contexts().compressor.compress(data))

    def decompress(self, data: bytes, limit: int) -> bytes:
        try:
            params = self._zstd.get_frame_parameters(data)
        except Exception as exc:
            raise PayloadError(f"bad zstd frame: {exc}") from exc
        declared = params.content_size
        if declared == self._zstd.CONTENTSIZE_UNKNOWN:
            raise PayloadError("zstd frame does not declare its content size")
        if declared > limit:
            raise PayloadError(
                f"compressed frame declares {declared} bytes, above the {limit}-byte limit"
            )
        stream = self._contexts().decompressor.decompressobj()
        try:
            out = stream.decompress(data)
        except Exception as exc:
            raise PayloadError(f"bad zstd frame: {exc}") from exc
        if not stream.eof:
            raise PayloadError("truncated zstd frame")
        if stream.unused_data:
            raise PayloadError(f"{len(stream.unused_data)} bytes after the zstd frame")
        if len(out) != declared:  # zstd enforces this; belt and braces
            raise PayloadError("zstd frame size does not match its header")
        return bytes(out)


# ---------------------------------------------------------------------------- the codec

DEFAULT_MAX_VALUE_SIZE = 64 * 1024 * 1024


class Codec:
    """Turns entries into envelopes and back, for one tier's configuration.

    Parameters mirror the tier options: ``serializer`` (name or object), ``value_type``,
    ``signer`` (a :class:`Signer`, a secret, or None), ``compress_threshold`` (bytes; None
    disables compression), ``max_value_size`` (bytes of serialized payload, before
    compression; larger values are refused on write and on read), ``context`` (bound into
    every signature, never stored: envelopes signed under another context do not verify).
    """

    sizes_are_exact: ClassVar[bool] = True

    def __init__(
        self,
        serializer: str | Serializer = "msgpack",
        *,
        value_type: Any = Any,
        signer: Signer | bytes | str | Mapping[int, bytes] | None = None,
        compress_threshold: int | None = None,
        compression_level: int = 3,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        context: bytes | str = b"",
    ) -> None:
        self.serializer = make_serializer(serializer, value_type)
        self.context = context.encode() if isinstance(context, str) else bytes(context)
        self.signer = Signer.of(signer) if signer is not None else None
        if self.serializer.executes_code and self.signer is None:
            raise ConfigurationError(
                f"serializer {self.serializer.name!r} runs code when it decodes, so it is only "
                "allowed with a signing key: pass signing_key=... (16+ random bytes), or use "
                "serializer='msgpack' (the default) or 'json'"
            )
        if max_value_size < 1:
            raise ConfigurationError(f"max_value_size must be positive, got {max_value_size}")
        if compress_threshold is not None and compress_threshold < 0:
            raise ConfigurationError(
                f"compress_threshold must be >= 0 bytes or None, got {compress_threshold}"
            )
        self.max_value_size = max_value_size
        self.compress_threshold = compress_threshold
        self._zstd = _Zstd(compression_level) if compress_threshold is not None else None

    # -- write side

    def payload(self, entry: Entry) -> bytes:
        """The serialized value (empty for a negative entry). Raises SerializationError."""
        return b"" if entry.negative else self.serializer.dumps(entry.value)

    def encode(self, key: str, entry: Entry, payload: bytes | None = None) -> bytes:
        if payload is None:
            payload = self.payload(entry)
        flags = FLAG_NEGATIVE if entry.negative else 0
        if self._zstd is not None and len(payload) >= (self.compress_threshold or 0) and payload:
            compressed = self._zstd.compress(payload)
            if len(compressed) < len(payload):
                payload = compressed
                flags |= FLAG_COMPRESSED
        key_bytes = key.encode("utf-8", "surrogatepass")
        if len(key_bytes) > MAX_KEY_BYTES:
            # struct would raise its own error from pack(); say what is wrong instead.
            raise SerializationError(
                f"a key of {len(key_bytes)} UTF-8 bytes cannot be stored in a shared tier: "
                f"envelopes carry keys of at most {MAX_KEY_BYTES} bytes; use a shorter key "
                "(a digest of the long one, say)"
            )
        signer = self.signer
        key_id = 0
        if signer is not None:
            flags |= FLAG_SIGNED
            key_id = signer.current
        expires = 0.0 if entry.expires_at == NEVER else entry.expires_at
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.serializer.id,
            flags,
            key_id,
            expires,
            len(key_bytes),
            len(payload),
        )
        body = b"".join((header, key_bytes, payload))
        if signer is not None:
            body += signer.sign(body, self.context)
        return body

    # -- read side

    def decode(self, key: str, data: bytes | bytearray | memoryview) -> Entry:
        """The entry stored as ``data`` under ``key``. Raises :class:`PayloadError`."""
        view = memoryview(data)
        total = len(view)
        if total < HEADER_SIZE:
            raise PayloadError(f"{total} bytes is shorter than the {HEADER_SIZE}-byte header")
        (magic, fmt, serializer_id, flags, key_id, expires, key_len, payload_len) = (
            _HEADER.unpack_from(view)
        )
        if magic != MAGIC:
            raise PayloadError("not a stratacache envelope (bad magic)")
        if fmt != FORMAT_VERSION:
            raise PayloadError(
                f"envelope format {fmt} is not supported (this reads {FORMAT_VERSION})"
            )
        if flags & ~_KNOWN_FLAGS:
            raise PayloadError(f"unknown flags 0x{flags:02x}")
        signed = bool(flags & FLAG_SIGNED)
        expected = HEADER_SIZE + key_len + payload_len + (SIGNATURE_SIZE if signed else 0)
        if expected != total:
            raise PayloadError(
                f"length mismatch: header announces {expected} bytes, buffer has {total}"
            )
        if payload_len > self.max_value_size:
            raise PayloadError(
                f"payload of {payload_len} bytes exceeds max_value_size {self.max_value_size}"
            )
        signer = self.signer
        if signer is not None:
            if not signed:
                raise PayloadError("unsigned envelope where a signature is required")
            body_end = total - SIGNATURE_SIZE
            if not signer.verify(key_id, view[:body_end], bytes(view[body_end:]), self.context):
                raise PayloadError(f"bad signature (key id {key_id})")
        elif signed and self.serializer.executes_code:
            # We cannot check the signature: never let such bytes reach pickle.
            raise PayloadError("signed envelope but no signing key configured")
        key_end = HEADER_SIZE + key_len
        if view[HEADER_SIZE:key_end] != key.encode("utf-8", "surrogatepass"):
            raise PayloadError("stored under another key")
        if serializer_id != self.serializer.id:
            raise PayloadError(
                f"written with serializer id {serializer_id}, this tier uses "
                f"{self.serializer.name} ({self.serializer.id})"
            )
        expires_at = NEVER if expires == 0.0 else expires
        negative = bool(flags & FLAG_NEGATIVE)
        if negative:
            if payload_len:
                raise PayloadError("negative entry with a payload")
            return Entry(None, expires_at, True)
        # A view, not a copy: the serializers read any buffer.
        payload: bytes | memoryview = view[key_end : key_end + payload_len]
        if flags & FLAG_COMPRESSED:
            if self._zstd is None:
                try:
                    self._zstd = _Zstd(3)
                except ConfigurationError as exc:
                    raise PayloadError(f"compressed payload, but {exc}") from exc
            payload = self._zstd.decompress(bytes(payload), self.max_value_size)
        try:
            value = self.serializer.loads(payload)
        except Exception as exc:
            raise PayloadError(
                f"{self.serializer.name} could not decode the payload: {exc}"
            ) from exc
        return Entry(value, expires_at)

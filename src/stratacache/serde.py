"""Serializers, compression, signing, and the versioned envelope shared tiers store.

Every value a shared tier (SQLite file, Redis, memcached) holds is one envelope::

    offset  size  field
    0       2     magic b"SC"
    2       1     format version (4)
    3       1     serializer id (1 msgpack, 2 json, 3 pickle)
    4       1     flags (bit 0: zstd-compressed, bit 1: negative entry, bit 2: signed)
    5       1     signing key id (0 when unsigned)
    6       8     expires_at, float64 wall-clock seconds (0.0 = never; finite)
    14      8     version, uint64 little-endian (0 = unknown: older than any numbered write)
    22      2     key length (bytes of the UTF-8 key)
    24      2     tags length (0 = no tags)
    26      4     payload length
    30      k     the original key, UTF-8
    30+k    t     tags: msgpack ``[written_at, [tag, ...]]`` (only when tags length > 0)
    30+k+t  p     payload (compressed when flag 0 is set)
    end     32    HMAC-SHA256 over every byte before it (only when signed)

The version sits at a fixed offset so that a store can compare it without decoding the
rest (the Redis tier's compare-and-set script reads those 8 bytes). It is signed with the
rest of the header: a replayed envelope cannot claim to be newer than it is. Format 3
envelopes (no version, no tags) read as corrupt misses: the cache reloads them.

Why carry the key: a shared tier may hash long keys, and anyone with write access to the
store can put bytes under any name. Comparing the stored key on read means two keys that
hash alike never return each other's value, and a payload copied under another key is a
miss. Why sign the header too: a signature over the payload alone would let an attacker
replay a validly signed payload under another key or extend its expiry. A codec may also
have a ``context`` (remote tiers use their namespace): it is not stored, but it is fed to
the HMAC ahead of the envelope, so that an entry signed for one cache cannot be replayed
into another cache that shares the store and the signing key. An empty context signs
exactly as before, so existing signed entries stay valid.

Values come back as the type they were stored as, whichever level answers (L1 hands back
the stored object itself, so a shared level must not hand back something else). Without
``value_type``, msgpack and JSON payloads carry what they cannot represent as *tags*:

* msgpack: an Ext type whose data is the msgpack of the tagged content. Codes: 1 tuple,
  2 set, 3 frozenset (items), 4 dict (``[[key, value], ...]``, for maps with keys msgpack
  does not bring back as themselves), 7 int beyond 64 bits (decimal text), 8 Decimal
  (text), 9 datetime (``[y, m, d, H, M, S, us, fold, tz]``), 10 date (ordinal), 11 time
  (``[H, M, S, us, fold, tz]``), 12 UUID (16 bytes), 13 Enum (``[class, value]``),
  14 dataclass and 15 msgspec.Struct (``[class, {field: value}]``). ``tz`` is null, a
  zoneinfo key, or ``[offset in microseconds, name or null]`` (datetime.timezone).
* JSON: an object with one member named ``"$sc.<tag>"`` (tags as above by name, plus
  ``bytes`` in base64 and ``float`` for NaN and the infinities). A dict of the user's
  whose only key starts with ``$sc.`` is written as a ``$sc.dict`` of pairs, so no user
  data reads as a tag.

Plain data (dicts with str keys, lists, str, int, float, bool, None, and bytes in msgpack)
is written untouched: such payloads are what they were in format 2. Anything else (a str
subclass as a value or a dict key, a set subclass, an object msgspec would turn into a
dict or a string) is
refused at write time with :class:`~stratacache.errors.SerializationError` naming the type
and the ways out (``value_type=``, registering the class, ``serializer='pickle'`` with a
signing key), never silently changed. With ``value_type`` no tags are written or read:
msgspec encodes natively and decodes as that type.

Classes are named in payloads as ``module:qualname``, and decoding **never imports
anything**: a name resolves only to a class this process put on the allow-list, with
:func:`register_type` (process-wide) or a codec's ``types=``; any other name makes the
payload corrupt. Writing a class that is not on the list is refused, so every process
sharing a level must register the same classes. A registered dataclass is stored as its
fields and rebuilt without calling ``__init__`` (as pickle does), so ``__post_init__`` does
not run twice; attributes outside the fields are refused at write. A Struct is rebuilt by
calling it with its fields, so one whose ``__post_init__`` would change them is refused at
write. An Enum comes back as ``cls(value)``.

Decoding is defensive: lengths are checked against the actual buffer before anything is
sliced, the signature (when configured) is verified before decompression and before the
serializer runs, decompression is bounded by the maximum value size (a compressed frame must
declare its size, within the limit, be complete, and be followed by nothing; it is
decompressed into a buffer of exactly that size, so a frame that streams more than it
declares fails rather than growing it), an expiry that is not a finite number (NaN, an
infinity) is corrupt rather than expired, and pickle refuses to run unless the envelope
carried a valid signature. Any failure raises :class:`PayloadError`,
which tiers turn into a counted, logged miss: it never reaches the caller.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import math
import pickle
import struct
import threading
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, ClassVar, Final, NoReturn, Protocol, TypeVar

import msgspec

from .entry import NEVER, Entry
from .errors import ConfigurationError, KeyTooLongError, SerializationError

__all__ = [
    "Codec",
    "JsonSerializer",
    "MsgpackSerializer",
    "PayloadError",
    "PickleSerializer",
    "Serializer",
    "Signer",
    "make_serializer",
    "register_type",
    "registered_types",
    "type_ref",
]

MAGIC = b"SC"
FORMAT_VERSION = 4
FLAG_COMPRESSED = 0x01
FLAG_NEGATIVE = 0x02
FLAG_SIGNED = 0x04
_HEADER = struct.Struct("<2sBBBBdQHHI")
#: where the version field starts (see the table above)
VERSION_OFFSET = 14
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


# ---------------------------------------------------------------------------- value fidelity

#: Ext type codes (msgpack) and tag names (json, after :data:`JSON_TAG_PREFIX`).
_TAG_CODES: Final = {
    "tuple": 1,
    "set": 2,
    "frozenset": 3,
    "dict": 4,
    "bytes": 5,
    "float": 6,
    "int": 7,
    "decimal": 8,
    "datetime": 9,
    "date": 10,
    "time": 11,
    "uuid": 12,
    "enum": 13,
    "dataclass": 14,
    "struct": 15,
}
_TAG_NAMES: Final = {code: name for name, code in _TAG_CODES.items()}
#: A JSON object with exactly one member whose name starts with this is a tagged value.
JSON_TAG_PREFIX: Final = "$sc."
_JSON_MARKER: Final = b'"' + JSON_TAG_PREFIX.encode()
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1
_NoneType = type(None)
_C = TypeVar("_C", bound=type)

#: module:qualname -> class, for every class registered with :func:`register_type`.
_registry: dict[str, type] = {}
_registry_lock = threading.Lock()


def type_ref(cls: type) -> str:
    """How a payload names a class: ``"module:qualname"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _class_kind(cls: Any) -> str | None:
    if not isinstance(cls, type):
        return None
    if issubclass(cls, enum.Enum):
        return "enum"
    if issubclass(cls, msgspec.Struct):
        return "struct"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    return None


_REBUILD_HELP = (
    "make __post_init__ leave already-normalised fields as they are, or pass value_type= "
    "or use serializer='pickle' with a signing key"
)


def _checked_types(classes: Iterable[type]) -> dict[str, type]:
    checked: dict[str, type] = {}
    for cls in classes:
        if _class_kind(cls) is None:
            raise ConfigurationError(
                f"{cls!r} cannot be registered: only Enum subclasses, dataclasses and "
                "msgspec.Struct subclasses are rebuilt from stored payloads"
            )
        checked[type_ref(cls)] = cls
    return checked


def register_type(cls: _C, /, *more: type) -> _C:
    """Allow the shared levels of this process to store and rebuild ``cls`` (and ``more``):
    an Enum, a dataclass or a msgspec.Struct. Usable as a class decorator.

    A payload names its classes as ``module:qualname``; decoding looks that name up among
    the registered classes (and a codec's own ``types=``) and never imports anything, so a
    payload written by someone else can only ever build classes this process allowed.
    Register the same classes in every process that shares the levels. A later
    registration under the same name replaces the earlier one (a reloaded module).
    """
    checked = _checked_types((cls, *more))
    with _registry_lock:
        _registry.update(checked)
    return cls


def registered_types() -> dict[str, type]:
    """A copy of the process-wide allow-list, by ``module:qualname``."""
    return dict(_registry)


def _tz_out(tz: Any, owner: type) -> Any:
    if tz is None:
        return None
    if type(tz) is dt.timezone:
        offset = tz.utcoffset(None) // dt.timedelta(microseconds=1)
        name = tz.tzname(None)
        return [offset, None if name == dt.timezone(tz.utcoffset(None)).tzname(None) else name]
    if type(tz) is zoneinfo.ZoneInfo and tz.key:
        return tz.key
    raise SerializationError(
        f"a {owner.__qualname__} with tzinfo of type {type(tz).__qualname__} cannot be stored "
        "so that it comes back the same: use datetime.timezone or zoneinfo.ZoneInfo, pass "
        "value_type=, or use serializer='pickle' with a signing key"
    )


def _tz_in(raw: Any) -> dt.tzinfo | None:
    if raw is None:
        return None
    if type(raw) is str:
        return zoneinfo.ZoneInfo(raw)
    offset, name = raw
    delta = dt.timedelta(microseconds=offset)
    return dt.timezone(delta) if name is None else dt.timezone(delta, name)


def _lift_datetime(raw: Any) -> dt.datetime:
    y, mo, d, h, mi, sec, us, fold, tz = _list(raw)
    return dt.datetime(y, mo, d, h, mi, sec, us, tzinfo=_tz_in(tz), fold=fold)


def _lift_time(raw: Any) -> dt.time:
    h, mi, sec, us, fold, tz = _list(raw)
    return dt.time(h, mi, sec, us, tzinfo=_tz_in(tz), fold=fold)


def _lift_fields(cls: Any, kind: str, fields: Any) -> Any:
    if type(fields) is not dict:
        raise PayloadError(f"{kind} fields are not a map")
    if kind == "struct":
        # msgspec offers no way to build a Struct without __post_init__; _lower_struct
        # refuses, at write time, a value that this call would not give back equal.
        return cls(**fields)
    return _restore_dataclass(cls, fields)


def _restore_dataclass(cls: Any, fields: dict[Any, Any]) -> Any:
    """The stored state put back as it was, without calling ``__init__``: like pickle, so a
    ``__post_init__`` that derives or normalises fields is not applied a second time,
    and a class with ``InitVar`` parameters (not stored: they are not state) rebuilds.
    A field the payload lacks takes its default (the class gained it since); one with
    no default, or a name the class does not have, makes the payload unusable."""
    obj = object.__new__(cls)
    found = 0
    for f in dataclasses.fields(cls):
        if f.name in fields:
            value = fields[f.name]
            found += 1
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise PayloadError(f"the stored {type_ref(cls)} lacks its field {f.name!r}")
        object.__setattr__(obj, f.name, value)
    if found < len(fields):
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)}, key=repr)
        raise PayloadError(f"the stored {type_ref(cls)} has fields it lacks: {unknown!r:.200}")
    return obj


class _Tagging:
    """Keeps the types of values through msgpack or JSON (see the module docstring).

    :meth:`lower` turns a value into what the format carries natively, tagging the rest;
    it returns plain data unchanged (the same objects, nothing copied), and refuses what it
    cannot bring back as the same type with :class:`SerializationError`. Decoding lifts
    the tags back: msgspec calls :meth:`ext_hook` for msgpack's Ext types; JSON payloads
    are walked by :meth:`lift_json` only when they contain a tag at all.
    """

    def __init__(self, fmt: str, types: Iterable[type] = (), *, strict_ints: bool = False) -> None:
        self.fmt = fmt
        self.json = fmt == "json"
        self.types = _checked_types(types)
        # What the format carries as is, for values and for map keys. JSON: every int
        # (msgspec writes and reads big ones), floats only when finite (see lower()).
        # msgpack: ints within 64 bits; strict_ints=False takes every int as plain and
        # relies on encodable() to retry with a strict twin.
        ints: frozenset[type] = frozenset() if strict_ints else frozenset({int})
        scalars: frozenset[type] = frozenset({str, bool, _NoneType, float, bytes})
        if self.json:
            self._plain: frozenset[type] = frozenset({str, bool, _NoneType, int})
            self._plain_keys: frozenset[type] = frozenset({str})
            self._strict: _Tagging | None = None
        else:
            self._plain = scalars | ints
            self._plain_keys = scalars | ints
            self._strict = None if strict_ints else _Tagging(fmt, types, strict_ints=True)
            if self._strict is not None:
                self._strict.types = self.types
        self._lifts: dict[str, Callable[[Any], Any]] = {
            "tuple": self._lift_tuple,
            "set": self._lift_set,
            "frozenset": self._lift_frozenset,
            "dict": self._lift_dict,
            "bytes": lambda raw: base64.b64decode(raw, validate=True),
            "float": self._lift_float,
            "int": self._lift_int,
            "decimal": lambda raw: decimal.Decimal(_str(raw)),
            "datetime": _lift_datetime,
            "date": lambda raw: dt.date.fromordinal(raw),
            "time": _lift_time,
            "uuid": lambda raw: uuid.UUID(bytes=raw) if type(raw) is bytes else uuid.UUID(raw),
            "enum": self._lift_enum,
            "dataclass": lambda raw: self._lift_class(raw, "dataclass"),
            "struct": lambda raw: self._lift_class(raw, "struct"),
        }

    # -- classes

    def _allowed(self, cls: type) -> str:
        ref = type_ref(cls)
        if self.types.get(ref, _registry.get(ref)) is not cls:
            raise SerializationError(
                f"{self.fmt} cannot store a {cls.__qualname__} ({ref}): shared levels only "
                "rebuild classes on an allow-list, so that a payload written by someone else "
                f"cannot construct arbitrary objects; allow it with "
                f"stratacache.serde.register_type({cls.__qualname__}) in every process "
                "that shares the level (or Codec(types=...)), pass value_type= to decode "
                "values as that type, or use serializer='pickle' with a signing key"
            )
        return ref

    def _resolve(self, ref: Any, kind: str) -> Any:
        cls = self.types.get(ref, _registry.get(ref)) if type(ref) is str else None
        if cls is None:
            raise PayloadError(
                f"the payload names the class {ref!r}, which is not on the allow-list "
                "(stratacache.serde.register_type)"
            )
        if _class_kind(cls) != kind:
            raise PayloadError(f"the payload names {ref!r} as a {kind}, which it is not")
        return cls

    # -- encoding

    def encodable(self, value: Any, encode: Callable[[Any], bytes]) -> bytes:
        """``value`` lowered and encoded with ``encode``.

        For msgpack, ints are taken as plain first (no range check per int); one beyond
        64 bits makes msgspec raise OverflowError, and the value is lowered again with
        such ints tagged.
        """
        try:
            return encode(self.lower(value))
        except OverflowError:
            if self._strict is None:
                return encode(self.lower(value))  # already strict: let it raise
            return encode(self._strict.lower(value))

    def _wrap(self, tag: str, inner: Any) -> Any:
        if self.json:
            return {JSON_TAG_PREFIX + tag: inner}
        return msgspec.msgpack.Ext(_TAG_CODES[tag], _msgpack_encode(inner))

    def _refuse(self, cls: type) -> NoReturn:
        raise SerializationError(
            f"{self.fmt} cannot store a value of type {cls.__module__}.{cls.__qualname__} "
            "so that it comes back as the same type (a shared level would return something "
            "else): store plain data, tuples, sets, datetimes, Decimal, UUID, or a "
            "registered Enum, dataclass or msgspec.Struct; pass value_type= to decode "
            "values as a type you choose; or use serializer='pickle' with a signing key"
        )

    def lower(self, value: Any) -> Any:
        cls = type(value)
        if cls in self._plain:
            return value
        if cls is dict:
            return self._lower_dict(value)
        if cls is list:
            return self._lower_list(value)
        if cls is int:
            if self.json or _I64_MIN <= value <= _U64_MAX:
                return value
            return self._wrap("int", str(value))
        if cls is float:  # JSON only: NaN and the infinities have no JSON form
            return value if value - value == 0.0 else self._wrap("float", repr(value))
        if cls is bytes:  # JSON only
            return self._wrap("bytes", base64.b64encode(value).decode("ascii"))
        return self._lower_other(value, cls)

    def _lower_list(self, items: list[Any]) -> list[Any]:
        plain = self._plain
        if plain.issuperset(map(type, items)):
            return items
        if _ONLY_DICTS.issuperset(map(type, items)) and self._plain_records(items):
            return items
        lower = self.lower
        out: list[Any] | None = None
        for i, item in enumerate(items):
            if type(item) in plain:
                continue
            low = lower(item)
            if low is not item:
                if out is None:
                    out = list(items)
                out[i] = low
        return items if out is None else out

    def _lower_dict(self, mapping: dict[Any, Any]) -> Any:
        if not self._plain_keys.issuperset(map(type, mapping)) and (
            self.json or not all(map(_is_plain_key, mapping))
        ):
            return self._lower_pairs(mapping)
        if self.json and len(mapping) == 1:
            (only,) = mapping
            if only.startswith(JSON_TAG_PREFIX):
                return self._lower_pairs(mapping)  # would read as a tag: escape it
        plain = self._plain
        if plain.issuperset(map(type, mapping.values())):
            return mapping
        lower = self.lower
        out: dict[Any, Any] | None = None
        for key, item in mapping.items():
            if type(item) in plain:
                continue
            low = lower(item)
            if low is not item:
                if out is None:
                    out = dict(mapping)
                out[key] = low
        return mapping if out is None else out

    def _plain_records(self, dicts: list[dict[Any, Any]]) -> bool:
        """True when every dict of ``dicts`` holds only plain keys and values (a list of
        records, checked in one pass over all of them)."""
        if not self._plain_keys.issuperset(map(type, chain.from_iterable(dicts))):
            return False
        if self.json and 1 in map(len, dicts):
            return False  # maybe a dict that needs escaping: let lower() decide
        return self._plain.issuperset(map(type, chain.from_iterable(map(dict.values, dicts))))

    def _lower_pairs(self, mapping: dict[Any, Any]) -> Any:
        lower = self.lower
        return self._wrap("dict", [[lower(key), lower(item)] for key, item in mapping.items()])

    def _lower_other(self, value: Any, cls: type) -> Any:
        if cls is tuple:
            return self._wrap("tuple", self._lower_list(list(value)))
        if cls is set or cls is frozenset:
            return self._wrap(cls.__name__, self._lower_list(list(value)))
        if cls is decimal.Decimal:
            return self._wrap("decimal", str(value))
        if cls is dt.datetime:
            v: Any = value
            parts = [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond]
            return self._wrap("datetime", [*parts, v.fold, _tz_out(v.tzinfo, cls)])
        if cls is dt.date:
            return self._wrap("date", value.toordinal())
        if cls is dt.time:
            v = value
            parts = [v.hour, v.minute, v.second, v.microsecond, v.fold]
            return self._wrap("time", [*parts, _tz_out(v.tzinfo, cls)])
        if cls is uuid.UUID:
            return self._wrap("uuid", value.hex if self.json else value.bytes)
        kind = _class_kind(cls)
        if kind == "enum":
            return self._wrap("enum", [self._allowed(cls), self.lower(value.value)])
        if kind == "struct":
            fields = {name: getattr(value, name) for name in value.__struct_fields__}
            if hasattr(cls, "__post_init__"):
                self._check_rebuilds(value, fields)
            return self._wrap("struct", [self._allowed(cls), self._lower_dict(fields)])
        if kind == "dataclass":
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            extra = getattr(value, "__dict__", fields).keys() - fields.keys()
            if extra:
                self._refuse_state(cls, sorted(extra))
            return self._wrap("dataclass", [self._allowed(cls), self._lower_dict(fields)])
        self._refuse(cls)

    def _check_rebuilds(self, value: Any, fields: dict[str, Any]) -> None:
        """A Struct is rebuilt by calling it, which runs its ``__post_init__`` again; one
        that changes the fields (doubles a number, appends to a list) would come back
        different, so it is refused here rather than altered on the way back."""
        cls = type(value)
        try:
            again = cls(**fields)
        except Exception as exc:  # whatever the class raises, the value cannot be stored
            raise SerializationError(
                f"{type_ref(cls)} cannot be rebuilt from its own fields ({exc}); " + _REBUILD_HELP
            ) from exc
        # Field by field, identity first: a NaN the hook leaves alone is still the same.
        if any(
            getattr(again, name) is not stored and getattr(again, name) != stored
            for name, stored in fields.items()
        ):
            raise SerializationError(
                f"{type_ref(cls)}.__post_init__ changes the fields it is rebuilt from, so a "
                "shared level would return a different value; " + _REBUILD_HELP
            )

    def _refuse_state(self, cls: type, names: list[str]) -> NoReturn:
        raise SerializationError(
            f"a {type_ref(cls)} holds attributes that are not dataclass fields "
            f"({', '.join(names)[:200]}), which a shared level would not bring back; declare "
            "them as fields (field(init=False) for derived ones), or pass value_type= or "
            "use serializer='pickle' with a signing key"
        )

    # -- decoding

    def ext_hook(self, code: int, data: memoryview) -> Any:
        tag = _TAG_NAMES.get(code)
        if tag is None:
            raise PayloadError(f"unknown msgpack ext type {code}")
        return self._lift(tag, msgspec.msgpack.decode(data, ext_hook=self.ext_hook))

    def lift_json(self, value: Any) -> Any:
        cls = type(value)
        if cls is list:
            lift = self.lift_json
            return [lift(item) for item in value]
        if cls is dict:
            if len(value) == 1:
                ((name, inner),) = value.items()
                if name.startswith(JSON_TAG_PREFIX):
                    return self._lift(name[len(JSON_TAG_PREFIX) :], self.lift_json(inner))
            lift = self.lift_json
            return {key: lift(item) for key, item in value.items()}
        return value

    def _lift(self, tag: str, inner: Any) -> Any:
        lift = self._lifts.get(tag)
        if lift is None:
            raise PayloadError(f"unknown tag {tag!r}")
        try:
            return lift(inner)
        except PayloadError:
            raise
        except Exception as exc:
            raise PayloadError(f"bad {tag} value: {exc!r}") from exc

    @staticmethod
    def _lift_tuple(raw: Any) -> tuple[Any, ...]:
        return tuple(_list(raw))

    @staticmethod
    def _lift_set(raw: Any) -> set[Any]:
        return set(_list(raw))

    @staticmethod
    def _lift_frozenset(raw: Any) -> frozenset[Any]:
        return frozenset(_list(raw))

    @staticmethod
    def _lift_dict(raw: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for pair in _list(raw):
            key, item = _list(pair)
            out[key] = item
        return out

    @staticmethod
    def _lift_float(raw: Any) -> float:
        if raw not in ("nan", "inf", "-inf"):
            raise PayloadError(f"{raw!r} is not a tagged float")
        return float(raw)

    @staticmethod
    def _lift_int(raw: Any) -> int:
        return int(_str(raw))

    def _lift_enum(self, raw: Any) -> Any:
        ref, value = _list(raw)
        return self._resolve(ref, "enum")(value)

    def _lift_class(self, raw: Any, kind: str) -> Any:
        ref, fields = _list(raw)
        return _lift_fields(self._resolve(ref, kind), kind, fields)


def _list(raw: Any) -> list[Any]:
    if type(raw) is not list:
        raise PayloadError(f"expected an array, got {type(raw).__qualname__}")
    return raw


def _str(raw: Any) -> str:
    if type(raw) is not str:
        raise PayloadError(f"expected a string, got {type(raw).__qualname__}")
    return raw


_msgpack_encode = msgspec.msgpack.encode
_ONLY_DICTS: Final = frozenset({dict})


def _is_plain_key(key: Any) -> bool:
    """A msgpack map key that comes back as itself (strict mode: ints are checked)."""
    cls = type(key)
    if cls is int:
        return bool(_I64_MIN <= key <= _U64_MAX)
    return cls in (str, bool, _NoneType, float, bytes)


_ENCODE_ERRORS = (TypeError, ValueError, msgspec.EncodeError, OverflowError, RecursionError)


class MsgpackSerializer:
    """msgspec MessagePack: compact and fast.

    Without ``value_type``, every value comes back as the type it was stored as (tuples,
    sets, datetimes, registered dataclasses... travel as Ext types; see the module
    docstring), and a value that cannot is refused with :class:`SerializationError`.
    With ``value_type`` (a dataclass, a ``msgspec.Struct`` or a typing form such as
    ``list[int]``) msgspec decodes values as that type instead.
    """

    id = 1
    name = "msgpack"
    executes_code = False

    def __init__(self, value_type: Any = Any, types: Iterable[type] = ()) -> None:
        self.value_type = value_type
        self._tags = _Tagging(self.name, types) if value_type is Any else None
        self._encode = msgspec.msgpack.Encoder().encode
        hook = self._tags.ext_hook if self._tags is not None else None
        self._decode = msgspec.msgpack.Decoder(value_type, ext_hook=hook).decode

    def dumps(self, value: Any) -> bytes:
        try:
            if self._tags is not None:
                return self._tags.encodable(value, self._encode)
            return self._encode(value)
        except SerializationError:
            raise
        except _ENCODE_ERRORS as exc:
            raise SerializationError(
                f"{self.name} cannot encode a value of type {type(value).__qualname__}: "
                f"{exc}; use plain types, a registered dataclass or msgspec.Struct (or pass "
                "value_type= to get it back typed), or choose serializer='pickle' with a "
                "signing key"
            ) from exc

    def loads(self, data: bytes | memoryview) -> Any:
        return self._decode(data)


class JsonSerializer(MsgpackSerializer):
    """msgspec JSON: readable in the store, slower and larger than msgpack. Without
    ``value_type`` it keeps types as msgpack does, with tagged objects
    (``{"$sc.tuple": [1, 2]}``) for what JSON has no form of."""

    id = 2
    name = "json"

    def __init__(self, value_type: Any = Any, types: Iterable[type] = ()) -> None:
        self.value_type = value_type
        self._tags = _Tagging(self.name, types) if value_type is Any else None
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(value_type).decode

    def loads(self, data: bytes | memoryview) -> Any:
        if self._tags is None:
            return self._decode(data)
        raw = data if type(data) is bytes else bytes(data)
        value = self._decode(raw)
        return self._tags.lift_json(value) if _JSON_MARKER in raw else value


class PickleSerializer:
    """pickle: any picklable object. Unpickling runs code chosen by whoever wrote the bytes,
    so the codec only accepts it together with a :class:`Signer` and verifies every payload
    before it reaches ``pickle.loads``."""

    id = 3
    name = "pickle"
    executes_code = True

    def __init__(self, value_type: Any = Any, types: Iterable[type] = ()) -> None:
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


def make_serializer(
    name: str | Serializer, value_type: Any = Any, types: Iterable[type] = ()
) -> Serializer:
    if not isinstance(name, str):
        return name
    try:
        cls = _SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}; accepted: {', '.join(_SERIALIZERS)}"
        ) from None
    return cls(value_type, types)


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
        decompressor = self._contexts().decompressor
        try:
            # One shot into a buffer of exactly the declared size (at most the limit): a
            # frame that streams more than it declares fails instead of growing it.
            out = decompressor.decompress(data, max_output_size=declared, allow_extra_data=False)
        except TypeError:  # zstandard < 0.22 has no allow_extra_data
            out = self._decompress_checked(decompressor, data)
        except Exception as exc:
            raise PayloadError(f"bad zstd frame: {exc}") from exc
        if len(out) != declared:  # zstd enforces this; belt and braces
            raise PayloadError("zstd frame size does not match its header")
        return bytes(out)

    @staticmethod
    def _decompress_checked(decompressor: Any, data: bytes) -> bytes:
        stream = decompressor.decompressobj()
        try:
            out = stream.decompress(data)
        except Exception as exc:
            raise PayloadError(f"bad zstd frame: {exc}") from exc
        if not stream.eof:
            raise PayloadError("truncated zstd frame")
        if stream.unused_data:
            raise PayloadError(f"{len(stream.unused_data)} bytes after the zstd frame")
        return bytes(out)


# ---------------------------------------------------------------------------- the codec

#: The default ``max_value_size`` of the shared levels: 1 MiB of serialized value. A cache
#: entry is a rendered page, a row, a computed result; one larger than this is rarely worth
#: a round trip to a shared store (memcached refuses items above 1 MiB by default, and its
#: tier keeps its own limit from the item size). The limit also bounds what one read can
#: make this process allocate: a forged compressed payload cannot decode into more.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024


_TAGS = msgspec.msgpack.Encoder()
_TAGS_DECODER = msgspec.msgpack.Decoder(tuple[float, tuple[str, ...]])


def _read_tags(data: memoryview) -> tuple[float, tuple[str, ...]]:
    """``(written_at, tags)`` from an envelope's tags block."""
    try:
        written_at, tags = _TAGS_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise PayloadError(f"the tags block does not decode: {exc}") from exc
    if not math.isfinite(written_at):
        raise PayloadError(f"tag write time {written_at!r} is not a finite time")
    return written_at, tags


class Codec:
    """Turns entries into envelopes and back, for one tier's configuration.

    Parameters mirror the tier options: ``serializer`` (name or object), ``value_type``,
    ``signer`` (a :class:`Signer`, a secret, or None), ``compress_threshold`` (bytes; None
    disables compression), ``max_value_size`` (bytes of serialized payload, before
    compression; larger values are refused on write and on read), ``context`` (bound into
    every signature, never stored: envelopes signed under another context do not verify),
    ``types`` (classes this codec may store and rebuild, besides those given to
    :func:`register_type`).
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
        types: Iterable[type] = (),
    ) -> None:
        self.serializer = make_serializer(serializer, value_type, types)
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
            raise KeyTooLongError(
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
        tags = _TAGS.encode([entry.written_at, entry.tags]) if entry.tags else b""
        if len(tags) > 0xFFFF:
            raise SerializationError(
                f"the tags of key {key!r} take {len(tags)} bytes encoded; an entry's tags "
                "may take at most 65535: use fewer or shorter tags"
            )
        header = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.serializer.id,
            flags,
            key_id,
            expires,
            entry.version,
            len(key_bytes),
            len(tags),
            len(payload),
        )
        body = b"".join((header, key_bytes, tags, payload))
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
        (
            magic,
            fmt,
            serializer_id,
            flags,
            key_id,
            expires,
            version,
            key_len,
            tags_len,
            payload_len,
        ) = _HEADER.unpack_from(view)
        if magic != MAGIC:
            raise PayloadError("not a stratacache envelope (bad magic)")
        if fmt != FORMAT_VERSION:
            raise PayloadError(
                f"envelope format {fmt} is not supported (this reads {FORMAT_VERSION})"
            )
        if flags & ~_KNOWN_FLAGS:
            raise PayloadError(f"unknown flags 0x{flags:02x}")
        if not math.isfinite(expires):  # "never" is 0.0; NaN would compare as expired
            raise PayloadError(f"expiry {expires!r} is not a finite time")
        signed = bool(flags & FLAG_SIGNED)
        expected = (
            HEADER_SIZE + key_len + tags_len + payload_len + (SIGNATURE_SIZE if signed else 0)
        )
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
        tags: tuple[str, ...] = ()
        written_at = 0.0
        if tags_len:
            written_at, tags = _read_tags(view[key_end : key_end + tags_len])
            key_end += tags_len
        negative = bool(flags & FLAG_NEGATIVE)
        if negative:
            if payload_len:
                raise PayloadError("negative entry with a payload")
            return Entry(None, expires_at, True, version, tags, written_at)
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
        return Entry(value, expires_at, False, version, tags, written_at)

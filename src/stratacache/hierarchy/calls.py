"""How ``cached`` names a call: the key of ``fn(*args, **kwargs)``.

A key is ``prefix + ":" + arguments``. The arguments come from the function's signature,
bound and with its defaults applied, so every spelling of one call is one key: with
``def area(width, height=1)``, ``area(2)``, ``area(2, 1)`` and ``area(width=2, height=1)``
are all ``"mod.area:width=2,height=1"``. Each parameter is ``name=value``, in the order of
the signature; a ``*args`` parameter is a tuple and a ``**kwargs`` parameter a dict sorted
by name, and either is left out when empty.

Values are encoded as text that is the same in every process and every run (never
``hash()``, ``id()`` or a repr with an address), and typed the way
``functools.lru_cache(typed=True)`` types them, so ``1``, ``1.0`` and ``True`` are three
keys, and so are a set and a frozenset, or a tuple and a list, with the same members.
Each encoded value is self-delimiting (strings are quoted with escapes), so two different
argument tuples never produce the same text::

    None  True  False          None, bools
    42  -7  0x1f...            int (hex past 8192 bits: str(int) is limited per process)
    1.5  -0.0  inf  nan        float: repr, the sign of zero kept, every NaN is "nan"
    'it\\'s'  b'\\x00ab'         str, bytes: quoted; \\ ' and control characters escaped
    (1,2)  [1,2]               tuple, list
    {'a':1}  {1,2}  set()      dict and set, in the order of their encoded members
    frozenset({1,2})           frozenset, ditto
    date(2024-01-31)  datetime(2024-01-31T12:00:00+01:00,'Europe/Paris')
    time(12:30:00)  timedelta(1,0,0)  Decimal(1.10)  UUID(…)  complex(1.0,2.0)
    mod:Color.RED              Enum member: module ":" qualified name of its class
    mod:Point(x=1,y=2)         dataclass instance or namedtuple: fields in order
    mod:User[42]               any object whose class has __cache_key__(): what it returns
    class(mod:User)            a class itself (a classmethod's cls)

Anything else raises :class:`~stratacache.errors.InvalidKeyError` naming the parameter
and the type, and how to key it instead. Keys are never shortened here: a long key is
stored under a hash by tiers that cannot take it (:func:`stratacache.keys.storage_key`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import inspect
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import ConfigurationError, InvalidKeyError

__all__ = ["CallKeys", "encode_value"]

_HUGE_INT_BITS = 8192  # past this, str(int) may hit the interpreter's digit limit
_STR_SPECIAL = re.compile("[\\\\'\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BYTE_TEXT = [
    "\\'" if b == 0x27 else "\\\\" if b == 0x5C else chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"
    for b in range(256)
]


class _Unencodable(Exception):
    """An argument (or a part of it) has no stable text form: ``value`` is that part,
    ``path`` where it sits inside the argument (``"['a'][2]"``)."""

    def __init__(self, value: Any, path: str, reason: str = "") -> None:
        super().__init__(value, path, reason)
        self.value = value
        self.path = path
        self.reason = reason


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in "\\'":
        return "\\" + char
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _str(value: str) -> str:
    if _STR_SPECIAL.search(value) is None:
        return f"'{value}'"
    return "'" + _STR_SPECIAL.sub(_escape_char, value) + "'"


def _bytes(value: bytes) -> str:
    return "b'" + "".join(map(_BYTE_TEXT.__getitem__, value)) + "'"


def _int(value: int) -> str:
    if value.bit_length() > _HUGE_INT_BITS:
        return hex(value)
    return repr(value)


def _float(value: float) -> str:
    # repr is the shortest text that round-trips, the same on every platform; it keeps
    # the sign of zero. NaNs differ only in payload bits no function sees: one key.
    return "nan" if value != value else repr(value)


def _class_path(cls: type, value: Any, path: str) -> str:
    qualname = cls.__qualname__
    if "<locals>" in qualname:
        raise _Unencodable(
            value,
            path,
            f"{qualname} is defined inside a function, so its name is not unique",
        )
    return f"{cls.__module__}:{qualname}"


def _zone(tz: _dt.tzinfo | None, value: Any, path: str) -> str:
    """What identifies a time zone beyond the UTC offset the ISO text already shows."""
    if tz is None or type(tz) is _dt.timezone:
        return ""
    if type(tz) is ZoneInfo and tz.key is not None:
        return "," + _str(tz.key)
    raise _Unencodable(
        value,
        path,
        f"its tzinfo {type(tz).__qualname__} has no stable name "
        "(datetime.timezone and zoneinfo.ZoneInfo do)",
    )


def _encode(value: Any, path: str) -> str:
    kind = type(value)
    simple = _SIMPLE.get(kind)
    if simple is not None:
        return simple(value)
    if kind is tuple:
        return "(" + ",".join(_encode(v, f"{path}[{i}]") for i, v in enumerate(value)) + ")"
    if kind is list:
        return "[" + ",".join(_encode(v, f"{path}[{i}]") for i, v in enumerate(value)) + "]"
    if kind is dict:
        items = []
        for k, v in value.items():
            encoded = _encode(k, f"{path} key")
            items.append(f"{encoded}:{_encode(v, f'{path}[{encoded}]')}")
        return "{" + ",".join(sorted(items)) + "}"
    if kind is set or kind is frozenset:
        inner = ",".join(sorted(_encode(v, f"{path} member") for v in value))
        if kind is frozenset:
            return f"frozenset({{{inner}}})" if inner else "frozenset()"
        return f"{{{inner}}}" if inner else "set()"
    if kind is _dt.datetime:
        return f"datetime({value.isoformat()}{_zone(value.tzinfo, value, path)})"
    if kind is _dt.date:
        return f"date({value.isoformat()})"
    if kind is _dt.time:
        return f"time({value.isoformat()}{_zone(value.tzinfo, value, path)})"
    if kind is _dt.timedelta:
        return f"timedelta({value.days},{value.seconds},{value.microseconds})"
    return _encode_object(value, kind, path)


def _encode_object(value: Any, kind: type, path: str) -> str:
    """Classes, and instances of classes that say what they are: ``__cache_key__``,
    enums, dataclasses, namedtuples."""
    if isinstance(value, type):
        return f"class({_class_path(value, value, path)})"
    own_key = getattr(kind, "__cache_key__", None)
    if callable(own_key):
        return f"{_class_path(kind, value, path)}[{_encode(value.__cache_key__(), path)}]"
    if isinstance(value, enum.Enum):
        name: str | None = value.name
        if name is None:  # a combination of flags without a name of its own
            return f"{_class_path(kind, value, path)}({_encode(value.value, path)})"
        member = name if name.isidentifier() else _str(name)
        return f"{_class_path(kind, value, path)}.{member}"
    if dataclasses.is_dataclass(value):
        fields = [f.name for f in dataclasses.fields(value)]
    elif isinstance(value, tuple) and isinstance(named := getattr(kind, "_fields", None), tuple):
        fields = list(named)  # a namedtuple
    else:
        raise _Unencodable(value, path)
    inner = ",".join(f"{name}={_encode(getattr(value, name), f'{path}.{name}')}" for name in fields)
    return f"{_class_path(kind, value, path)}({inner})"


_SIMPLE: dict[type, Callable[[Any], str]] = {
    type(None): lambda v: "None",
    bool: repr,
    int: _int,
    float: _float,
    str: _str,
    bytes: _bytes,
    complex: lambda v: f"complex({_float(v.real)},{_float(v.imag)})",
    Decimal: lambda v: f"Decimal({v})",
    uuid.UUID: lambda v: f"UUID({v})",
}


def encode_value(value: Any) -> str:
    """The stable, typed text of one value (see the module docstring); raises
    InvalidKeyError for a value that has none."""
    try:
        return _encode(value, "")
    except _Unencodable as exc:
        raise InvalidKeyError(_unencodable_message("the value", exc)) from None
    except RecursionError:
        raise InvalidKeyError("the value nests too deeply (or contains itself)") from None


def _unencodable_message(where: str, exc: _Unencodable) -> str:
    part = f"{where} (at {exc.path})" if exc.path else where
    reason = f" ({exc.reason})" if exc.reason else ""
    return (
        f"cannot build a stable cache key from {part} of type "
        f"{type(exc.value).__qualname__}{reason}: keys take None, bool, int, float, complex, "
        "str, bytes, date, datetime, time, timedelta, Decimal, UUID, enums, dataclasses, "
        "namedtuples, classes, objects with a __cache_key__() method, and tuples, lists, "
        "dicts, sets and frozensets of those; give the class a __cache_key__() method, or "
        "pass key=lambda *args, **kwargs: ... to cached()"
    )


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class CallKeys:
    """The key builder of one decorated function: ``keys(args, kwargs) -> str``.

    The signature is read once. A call with positional arguments only, to a function
    without ``*args``/``**kwargs``, is bound without :meth:`inspect.Signature.bind`.

    The first parameter (a method's ``self``) is keyed by ``key_self(self)`` when given,
    left out when ``skip_self``, and otherwise encoded like any argument; when it is
    called ``self`` and its value has no stable form, the error says how to key it.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        base: str,
        *,
        key_self: Callable[[Any], Any] | None = None,
        skip_self: bool = False,
    ) -> None:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the signature of {name} to build its cache keys ({exc}); "
                "pass key=lambda *args, **kwargs: ... to cached()"
            ) from None
        params = list(signature.parameters.values())
        if key_self is not None and not callable(key_self):
            raise ConfigurationError(
                f"key_self must be a function of the instance (e.g. key_self=lambda self: "
                f"self.id), got {type(key_self).__qualname__}"
            )
        if key_self is not None and skip_self:
            raise ConfigurationError(
                "pass key_self= or skip_self=True to cached(), not both: key_self keys the "
                "instance by what it returns, skip_self leaves the instance out of the key"
            )
        self_role = key_self is not None or skip_self
        if self_role and (not params or params[0].kind not in _POSITIONAL):
            option = "key_self=" if key_self is not None else "skip_self=True"
            raise ConfigurationError(
                f"{option} applies to the first parameter of a method (self), but {name} has "
                "no positional first parameter"
            )
        self._name = name
        self._base = base + ":"
        self._signature = signature
        self._params = params
        self._names = [p.name for p in params]
        self._kinds = [p.kind for p in params]
        self._key_self = key_self
        self._skip_self = skip_self
        # The first parameter is a method's self when the options say so or it is named so.
        self._self_name = params[0].name if params and params[0].kind in _POSITIONAL else None
        self._is_method = self_role or self._self_name == "self"
        # The fast bind: positional arguments only, no *args/**kwargs, every parameter
        # not given has a default.
        simple = all(
            p.kind in _POSITIONAL or p.kind is inspect.Parameter.KEYWORD_ONLY for p in params
        )
        self._fast = simple and all(
            p.default is not inspect.Parameter.empty
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        )
        positional = [p for p in params if p.kind in _POSITIONAL]
        self._max_positional = len(positional)
        self._min_positional = sum(1 for p in positional if p.default is inspect.Parameter.empty)
        self._defaults = [p.default for p in params]

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self._fast and not kwargs and self._min_positional <= len(args) <= self._max_positional:
            values: list[Any] = [*args, *self._defaults[len(args) :]]
        else:
            try:
                bound = self._signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self._name}(): {exc}") from None
            bound.apply_defaults()
            arguments = bound.arguments
            values = [arguments[name] for name in self._names]
        parts: list[str] = []
        for index, (name, kind, value) in enumerate(
            zip(self._names, self._kinds, values, strict=True)
        ):
            if index == 0 and self._is_method:
                if self._skip_self:
                    continue
                part = self._encode_self(name, value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if not value:
                    continue
                part = self._encode_arg(name, value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                if not value:
                    continue
                part = (
                    "{"
                    + ",".join(
                        f"{_str(key)}:{self._encode_arg(name, value[key], f'[{key!r}]')}"
                        for key in sorted(value)
                    )
                    + "}"
                )
            else:
                part = self._encode_arg(name, value)
            parts.append(f"{name}={part}")
        return self._base + ",".join(parts)

    def _encode_arg(self, name: str, value: Any, path: str = "") -> str:
        try:
            return _encode(value, path)
        except _Unencodable as exc:
            message = _unencodable_message(f"argument {name!r}", exc)
            if name == self._self_name and not exc.path and not path:
                message += (
                    f"; if {name!r} is a method's instance, pass key_self=lambda {name}: ... "
                    "or skip_self=True to cached()"
                )
            raise InvalidKeyError(f"{self._name}: {message}") from None
        except RecursionError:
            raise InvalidKeyError(
                f"{self._name}: argument {name!r} nests too deeply (or contains itself) to "
                "build a cache key; pass key=lambda *args, **kwargs: ... to cached()"
            ) from None

    def _encode_self(self, name: str, value: Any) -> str:
        key_self = self._key_self
        if key_self is not None:
            return self._encode_arg(f"{name} (key_self's result)", key_self(value))
        try:
            return _encode(value, "")
        except _Unencodable as exc:
            if exc.path or exc.reason or exc.value is not value:
                return self._encode_arg(name, value)  # a part of it: the usual message
            cls = type(value).__qualname__
            raise ConfigurationError(
                f"{self._name} is a cached method, and a {cls} instance has no stable cache "
                f"key (never its id() or repr): give {cls} a __cache_key__(self) method "
                "returning what identifies the instance (e.g. its id), or pass "
                f"key_self=lambda {name}: {name}.id to cached(), or skip_self=True if the "
                "result does not depend on the instance"
            ) from None
        except RecursionError:
            return self._encode_arg(name, value)

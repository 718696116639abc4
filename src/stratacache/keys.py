"""Keys: validation, namespacing, and the mapping onto each store's rules.

Callers use any non-empty ``str`` as a key; anything else raises
:class:`~stratacache.errors.InvalidKeyError` (:func:`validate_key`, :func:`validate_keys`,
:func:`validate_items`). Stores have rules of their own (memcached: at most 250 bytes, no
whitespace or control characters), so a tier asks :func:`storage_key` for the name to
use. A key that already satisfies the rules is used verbatim (readable in the store); any
other key becomes ``prefix + "#" + sha256``. A key that itself starts with ``"#"`` (the
:data:`HASH_MARKER`) is always hashed, so the literal names and the hashed names are two
disjoint spaces: no key can be stored under the name another key hashes to. Hashing
loses the original, so the envelope carries the full key and tiers compare it on read:
two keys that hash alike can never return each other's value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError, InvalidKeyError

__all__ = [
    "HASH_MARKER",
    "KeyRules",
    "namespaced",
    "stable_key_part",
    "storage_key",
    "validate_items",
    "validate_key",
    "validate_keys",
]

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


#: What starts a hashed storage name after its prefix (``prefix + "#" + sha256``).
HASH_MARKER = "#"


def validate_key(key: object) -> str:
    """``key`` if it is a non-empty ``str``, else :class:`InvalidKeyError` saying why."""
    if type(key) is not str:
        raise InvalidKeyError(
            f"cache keys must be non-empty str, got {type(key).__qualname__}: {key!r:.80}; "
            "convert it to a str (e.g. str(key) or key.decode()) or build one from its parts"
        )
    if not key:
        raise InvalidKeyError("cache keys must be non-empty str, got the empty string ''")
    return key


def validate_keys(keys: object, method: str) -> list[str]:
    """The keys of an iterable-of-keys argument (``get_many``, ``delete_many``,
    ``invalidate_many``) as a list, each checked. A single ``str`` or ``bytes`` is refused:
    iterating it would silently use its characters as keys."""
    if isinstance(keys, str | bytes | bytearray):
        raise InvalidKeyError(
            f"{method} takes an iterable of keys, got a single {type(keys).__qualname__} "
            f"{keys!r:.80}; pass [key] (or call the single-key method)"
        )
    try:
        iterator = iter(keys)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidKeyError(
            f"{method} takes an iterable of keys (e.g. a list of str), got "
            f"{type(keys).__qualname__}: {keys!r:.80}"
        ) from None
    items: list[str] = list(iterator)
    for key in items:
        if type(key) is not str or not key:
            validate_key(key)
    return items


def validate_items(items: object, method: str) -> dict[str, Any]:
    """``items`` of a ``set_many``-style call as a dict, every key checked. A mapping is
    required: a str, a list of pairs or anything else without ``items()`` is refused."""
    if not isinstance(items, Mapping) and (
        isinstance(items, str | bytes | bytearray) or not callable(getattr(items, "items", None))
    ):
        raise InvalidKeyError(
            f"{method} takes a mapping {{key: value}} with str keys, got "
            f"{type(items).__qualname__}: {items!r:.80}; pass a dict"
        )
    checked: dict[str, Any] = {}
    for key, value in items.items():  # type: ignore[attr-defined]
        if type(key) is not str or not key:
            validate_key(key)
        checked[key] = value
    return checked


def validate_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ConfigurationError(
            f"namespace must be 1-64 characters of letters, digits, '_', '.', '-'; "
            f"got {namespace!r}"
        )
    return namespace


def namespaced(namespace: str, key: str) -> str:
    return f"{namespace}:{key}"


class KeyRules:
    """What one store accepts as a key name: a maximum length in UTF-8 bytes and whether
    whitespace and control characters are allowed."""

    def __init__(self, max_bytes: int, *, allow_whitespace: bool = True) -> None:
        self.max_bytes = max_bytes
        self.allow_whitespace = allow_whitespace

    def accepts(self, name: str) -> bool:
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: binary-ish, hash it
            return False
        if len(raw) > self.max_bytes:
            return False
        if not self.allow_whitespace:
            return not any(b <= 0x20 or b == 0x7F for b in raw)
        return not any(b < 0x20 or b == 0x7F for b in raw)


def storage_key(prefix: str, key: str, rules: KeyRules) -> str:
    """The name under which ``key`` is stored in a store with ``rules``: ``prefix + key``
    when the store accepts that, else ``prefix + "#" + sha256(key)``.

    A key starting with :data:`HASH_MARKER` is hashed even when the store would take it:
    stored literally, ``"#" + sha256(K)`` would land on the very name a hashed key ``K``
    uses, and the two would evict each other. So a literal name never has the marker
    right after the prefix and a hashed one always does: the two spaces are disjoint.
    """
    name = prefix + key
    if not key.startswith(HASH_MARKER) and rules.accepts(name):
        return name
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}{HASH_MARKER}{digest}"


def stable_key_part(value: Any) -> str:
    """A representation of a function argument that is the same in every process.

    Only types whose text form is stable are accepted (no ``hash()``, no default reprs with
    memory addresses): None, bool, int, float, str, bytes, and tuples, lists, sets,
    frozensets and dicts of those. Anything else raises TypeError naming the type, so the
    caller can pass a key function instead (InvalidKeyError is a TypeError).
    """
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bytes):
        return "b" + value.hex()
    if isinstance(value, tuple | list):
        inner = ",".join(stable_key_part(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, set | frozenset):
        return "{" + ",".join(sorted(stable_key_part(v) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted((stable_key_part(k), stable_key_part(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    raise InvalidKeyError(
        f"cannot build a stable cache key from an argument of type {type(value).__qualname__}; "
        "pass key=lambda *args, **kwargs: ... to cached()"
    )

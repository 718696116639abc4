"""Keys: validation, namespacing, and the mapping onto each store's rules.

Callers use any non-empty ``str`` as a key. Stores have rules of their own (memcached:
at most 250 bytes, no whitespace or control characters), so a tier asks
:func:`storage_key` for the name to use. A key that already satisfies the rules is used
verbatim (readable in the store); any other key becomes ``prefix + "#" + sha256``. Hashing
loses the original, so the envelope carries the full key and tiers compare it on read:
two keys that hash alike can never return each other's value.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .errors import ConfigurationError, InvalidKeyError

__all__ = ["KeyRules", "namespaced", "stable_key_part", "storage_key", "validate_key"]

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def validate_key(key: object) -> str:
    if type(key) is not str:
        raise InvalidKeyError(f"cache keys are str, got {type(key).__qualname__}: {key!r:.80}")
    if not key:
        raise InvalidKeyError("cache keys must not be empty")
    return key


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
    """The name under which ``key`` is stored in a store with ``rules``."""
    name = prefix + key
    if rules.accepts(name):
        return name
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}#{digest}"


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

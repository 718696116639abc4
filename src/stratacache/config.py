"""Tier URLs: ``memory://?max_entries=10000&ttl=60``, ``sqlite:///var/tmp/cache.db?ttl=600``.

Each scheme names its accepted options with their types; an unknown option is rejected
with a message listing the accepted ones, and a password in a URL never appears in an
error or a repr (:func:`redact`). Remote schemes (``redis://``, ``rediss://``,
``redis+cluster://``, ``memcached://``) register themselves here when their tier module
is imported.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from .errors import ConfigurationError

__all__ = ["SchemeSpec", "redact", "register_scheme", "tier_from_url"]


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none") else float(text)


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "optional_float": _optional_float,
    "str": str,
    "bool": _bool,
}


@dataclass(frozen=True)
class SchemeSpec:
    """How to build a tier from a URL: ``options`` maps each accepted query option to a
    converter name in :data:`CONVERTERS`; ``build(url_parts, options, clocks)`` makes the tier."""

    options: Mapping[str, str]
    build: Callable[..., Any]
    module: str | None = None  # imported on demand (remote tiers live in optional extras)


_SCHEMES: dict[str, SchemeSpec] = {}
# Schemes whose tier module registers them on import (optional dependencies).
_LAZY_SCHEMES: dict[str, str] = {
    "redis": "stratacache.tiers.redis",
    "rediss": "stratacache.tiers.redis",
    "redis+cluster": "stratacache.tiers.redis_cluster",
    "rediss+cluster": "stratacache.tiers.redis_cluster",
    "memcached": "stratacache.tiers.memcached",
}


def register_scheme(scheme: str, spec: SchemeSpec) -> None:
    _SCHEMES[scheme] = spec


_SECRET_OPTION = re.compile(
    r"(?P<name>(?:^|[?&;])(?:password|passwd|pass|pwd|secret|token|signing_key)=)[^&;#]*",
    re.IGNORECASE,
)


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***``: the password of the credentials and
    the value of options such as ``password=``.

    Done on the text rather than with urllib, which cannot parse the comma-separated host
    lists of cluster and pool URLs, nor a malformed URL that still carries a password. The
    credentials run from the scheme to the last ``@`` that is not inside an option value,
    so a password holding an unescaped ``/``, ``?`` or ``#`` is still hidden.
    """
    start = url.find("://")
    start = 0 if start == -1 else start + 3
    at = url.rfind("@")
    while at != -1 and "=" in url[start:at]:  # an "@" inside an option value
        at = url.rfind("@", start, at)
    if at != -1:
        user, colon, _password = url[start:at].partition(":")
        if colon:
            url = f"{url[:start]}{user}:***{url[at:]}"
    head, sep, query = url.partition("?")
    if sep:
        query = _SECRET_OPTION.sub(r"\g<name>***", "?" + query)[1:]
    return head + sep + query


def parse_options(url: str, query: str, accepted: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        kind = accepted.get(name)
        if kind is None:
            raise ConfigurationError(
                f"unknown option {name!r} in {redact(url)}; accepted: {', '.join(sorted(accepted))}"
            )
        try:
            options[name] = CONVERTERS[kind](raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"option {name}={raw!r} in {redact(url)} is not a valid {kind}: {exc}"
            ) from None
    return options


def tier_from_url(
    url: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    **overrides: Any,
) -> Any:
    """Build a tier from its URL; keyword ``overrides`` win over query options."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"a tier URL looks like scheme://...; got {redact(url)!r}. Schemes: "
            f"{', '.join(sorted(set(_SCHEMES) | set(_LAZY_SCHEMES)))}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES and scheme in _LAZY_SCHEMES:
        import importlib

        try:
            importlib.import_module(_LAZY_SCHEMES[scheme])
        except ImportError as exc:
            extra = "memcached" if scheme == "memcached" else "redis"
            raise ConfigurationError(
                f"{scheme}:// needs an optional dependency: pip install 'stratacache[{extra}]' "
                f"({exc})"
            ) from exc
    spec = _SCHEMES.get(scheme)
    if spec is None:
        raise ConfigurationError(
            f"unknown tier scheme {scheme!r} in {redact(url)}; accepted: "
            f"{', '.join(sorted(set(_SCHEMES) | set(_LAZY_SCHEMES)))}"
        )
    # urlsplit cannot parse comma-separated host lists; keep the raw text for the builder.
    rest = url.split("://", 1)[1]
    location, _, query = rest.partition("?")
    options = parse_options(url, query, spec.options)
    options.update(overrides)
    return spec.build(
        url=url, location=location, options=options, clock=clock, wall_clock=wall_clock
    )


# ----------------------------------------------------------------------------- built-ins


def _build_memory(
    *, url: str, location: str, options: dict[str, Any], clock: Any, wall_clock: Any
) -> Any:
    from .tiers.memory import MemoryTier

    if location not in ("", "/"):
        raise ConfigurationError(f"memory:// takes no host or path, got {redact(url)}")
    return MemoryTier(clock=clock, wall_clock=wall_clock, **options)


def _build_sqlite(
    *, url: str, location: str, options: dict[str, Any], clock: Any, wall_clock: Any
) -> Any:
    from .tiers.sqlite import SQLiteTier

    # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
    if not location.startswith("/"):
        raise ConfigurationError(
            f"a SQLite tier URL is sqlite:///relative/path.db or sqlite:////absolute/path.db; "
            f"got {redact(url)}"
        )
    path = location[1:]
    if not path:
        raise ConfigurationError(f"{redact(url)} names no file")
    return SQLiteTier(path, wall_clock=wall_clock, **options)


register_scheme(
    "memory",
    SchemeSpec(
        options={
            "max_entries": "int",
            "max_bytes": "int",
            "max_value_bytes": "int",
            "ttl": "optional_float",
            "policy": "str",
            "name": "str",
        },
        build=_build_memory,
    ),
)
register_scheme(
    "sqlite",
    SchemeSpec(
        options={
            "namespace": "str",
            "max_entries": "int",
            "ttl": "optional_float",
            "serializer": "str",
            "compress_threshold": "int",
            "max_value_size": "int",
            "busy_timeout": "float",
            "name": "str",
        },
        build=_build_sqlite,
    ),
)

"""Tier options and tier URLs, declared once.

Each tier kind has one frozen dataclass of options (:class:`MemoryOptions`,
:class:`SQLiteOptions`, :class:`RedisOptions`, :class:`RedisClusterOptions`,
:class:`MemcachedOptions`). A tier's constructor takes its options as keywords and
builds that dataclass (:meth:`TierOptions.build`), and a tier URL's query is parsed
against the same fields (:meth:`TierOptions.from_query`): the two cannot drift apart. An
unknown option is refused with the list of accepted ones, a bad value with what is
wrong; a password in a URL never appears in an error or a repr (:func:`redact`).

URLs: ``memory://?max_entries=10000&ttl=60``, ``sqlite:///var/tmp/cache.db?ttl=600``,
``redis://[user:password@]host:port/db``, ``rediss://`` (TLS), ``redis+cluster://h1,h2``,
``memcached://h1:11211,h2:11211``. :data:`SCHEMES` maps each scheme to its tier class,
imported on first use: network tiers need optional dependencies, and the install hint for
each lives there, once.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl

from .errors import ConfigurationError
from .policies import DEFAULT_POLICY
from .serde import DEFAULT_MAX_VALUE_SIZE

__all__ = [
    "SCHEMES",
    "MemcachedOptions",
    "MemoryOptions",
    "NetworkOptions",
    "RedisClusterOptions",
    "RedisOptions",
    "SQLiteOptions",
    "SharedOptions",
    "TierOptions",
    "load_tier_class",
    "redact",
    "tier_from_url",
]

OptionsT = TypeVar("OptionsT", bound="TierOptions")


# ----------------------------------------------------------------------------- values


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none") else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def url(parse: Callable[[str], Any]) -> dict[str, Any]:
    """The metadata of an option that a URL query may give: ``parse`` reads it from text.
    Options without it (a signing key, a weigher) are keywords only."""
    return {"parse": parse}


def positive_int(owner: str, name: str, value: Any, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{owner}: {name} must be an int >= 1{why}, got {value!r}")


def seconds(owner: str, name: str, value: Any, *, finite: bool = False, zero: bool = True) -> None:
    """A duration option: a number >= 0 (> 0 when not ``zero``), finite when ``finite``
    (a timeout: without one, a hung server would hold a call forever)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and (value >= 0 if zero else value > 0)
        and (value < math.inf or not finite)
    )
    if not ok:
        bound = ">= 0" if zero else "> 0"
        why = " (so that a hung server cannot block a call forever)" if finite else ""
        kind = "a finite number of seconds" if finite else "a number of seconds"
        raise ConfigurationError(f"{owner}: {name} must be {kind} {bound}{why}, got {value!r}")


def breaker_options(owner: str, failures: Any, reset: Any) -> None:
    """A circuit breaker's two options (network tiers, and SQLite's write breaker)."""
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
        raise ConfigurationError(
            f"{owner}: breaker_failures must be an int >= 0 (0: no circuit breaker), "
            f"got {failures!r}"
        )
    seconds(owner, "breaker_reset", reset, finite=True, zero=False)


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class TierOptions:
    """What every tier takes."""

    #: the tier's display name (default: its place, L1, L2...)
    name: str | None = field(default=None, metadata=url(str))
    #: the level's own bound on an entry's lifetime, in seconds (None: no bound)
    ttl: float | None = field(default=None, metadata=url(_optional_float))

    #: the class name errors speak of
    owner: ClassVar[str] = "tier"

    def __post_init__(self) -> None:
        ttl = self.ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise ConfigurationError(f"{self.owner}: ttl must be > 0 seconds or None, got {ttl!r}")

    @classmethod
    def accepted(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls: type[OptionsT], given: Mapping[str, Any]) -> OptionsT:
        """The options from keywords; an unknown one is refused, naming the accepted ones."""
        unknown = sorted(set(given) - set(cls.accepted()))
        if unknown:
            raise ConfigurationError(
                f"{cls.owner} got unknown option(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(cls.accepted())}"
            )
        return cls(**given)

    @classmethod
    def from_query(cls, url: str, query: str) -> dict[str, Any]:
        """The options a URL's query gives, converted by each field's parser."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        url_options = sorted(n for n, f in fields.items() if f.metadata.get("parse"))
        options: dict[str, Any] = {}
        for name, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
            spec = fields.get(name)
            parse = spec.metadata.get("parse") if spec is not None else None
            if parse is None:
                raise ConfigurationError(
                    f"unknown option {name!r} in {redact(url)}; accepted: {', '.join(url_options)}"
                )
            try:
                options[name] = parse(raw)
            except ValueError as exc:
                raise ConfigurationError(
                    f"option {name}={raw!r} in {redact(url)} is not valid: {exc}"
                ) from None
        return options


@dataclass(frozen=True, kw_only=True)
class MemoryOptions(TierOptions):
    owner: ClassVar[str] = "MemoryTier"
    #: the bound in entries (default 10,000); or bound by ``max_bytes`` instead
    max_entries: int | None = field(default=None, metadata=url(_optional_int))
    #: the bound in bytes, entries weighed by ``weigher``
    max_bytes: int | None = field(default=None, metadata=url(_optional_int))
    #: ``weigher(key, value) -> bytes`` (default: a rough size, see tiers/memory.py)
    weigher: Callable[[str, Any], int] | None = None
    #: the largest single value accepted, in the weigher's bytes
    max_value_bytes: int | None = field(default=None, metadata=url(_optional_int))
    #: an eviction policy by name, or a factory ``capacity -> Policy``
    policy: Any = field(default=DEFAULT_POLICY, metadata=url(str))
    #: hits buffered before the policy hears of them
    read_buffer_size: int = field(default=64, metadata=url(int))
    #: a file the tier saves its hottest entries to on close and loads them from when
    #: built, keeping each one's remaining lifetime (None: no snapshot; tiers/snapshot.py)
    snapshot: str | os.PathLike[str] | None = field(default=None, metadata=url(str))
    #: the most entries a snapshot keeps, hottest first (None: all, up to the bound)
    snapshot_entries: int | None = field(default=None, metadata=url(_optional_int))


@dataclass(frozen=True, kw_only=True)
class SharedOptions(TierOptions):
    """What every tier over a store shared between processes takes (envelopes)."""

    #: prefixes every key; ``clear()`` removes only this namespace
    namespace: str = field(default="default", metadata=url(str))
    #: ``msgpack`` (default), ``json``, ``pickle`` (needs a signing key) or a Serializer
    serializer: Any = field(default="msgpack", metadata=url(str))
    #: a type to decode values as (msgspec), instead of plain data
    value_type: Any = Any
    #: turns on HMAC signing of every envelope (required for pickle)
    signing_key: Any = None
    #: compress payloads of at least this many bytes with zstd (None: never)
    compress_threshold: int | None = field(default=None, metadata=url(_optional_int))
    #: the largest serialized value (before compression) stored, in bytes
    max_value_size: int = field(default=DEFAULT_MAX_VALUE_SIZE, metadata=url(int))


@dataclass(frozen=True, kw_only=True)
class SQLiteOptions(SharedOptions):
    owner: ClassVar[str] = "SQLiteTier"
    #: the row count the tier trims its namespace back to (approximately)
    max_entries: int = field(default=1_000_000, metadata=url(int))
    #: how long a writer waits for another process's write lock, in seconds
    busy_timeout: float = field(default=5.0, metadata=url(float))
    #: the write circuit breaker (reads never pass it); 0 turns it off. Spelled as
    #: NetworkOptions' so that one setting reads the same on every tier; what feeds it is
    #: a write that waited out busy_timeout for the lock, and that one opens it at once
    #: (a timeout), so today any value >= 1 turns it on
    breaker_failures: int = field(default=3, metadata=url(int))
    #: how long an open write breaker skips the tier's writes before one write probes it,
    #: in seconds
    breaker_reset: float = field(default=1.0, metadata=url(float))

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self.owner, "max_entries", self.max_entries)
        seconds(self.owner, "busy_timeout", self.busy_timeout, finite=True)
        breaker_options(self.owner, self.breaker_failures, self.breaker_reset)


@dataclass(frozen=True, kw_only=True)
class NetworkOptions(SharedOptions):
    """What every network tier takes."""

    @property
    def pool_wait(self) -> float:
        """The bound on a wait for a free connection: ``pool_timeout``, else the socket's."""
        return self.socket_timeout if self.pool_timeout is None else self.pool_timeout

    #: the store keeps an entry this long after its logical expiry (a backstop)
    ttl_grace: float = field(default=1.0, metadata=url(float))
    connect_timeout: float = field(default=0.5, metadata=url(float))
    socket_timeout: float = field(default=1.0, metadata=url(float))
    #: consecutive failures that open the circuit breaker (a timeout opens it at once);
    #: 0 turns the breaker off
    breaker_failures: int = field(default=3, metadata=url(int))
    #: how long an open breaker skips the tier before one call probes it, in seconds
    breaker_reset: float = field(default=1.0, metadata=url(float))
    #: how long a caller waits for a free connection when all are busy, in seconds
    #: (None: socket_timeout); a burst waits its turn instead of skipping the level
    pool_timeout: float | None = field(default=None, metadata=url(float))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_timeout is not None:
            seconds(self.owner, "pool_timeout", self.pool_timeout, finite=True, zero=False)
        breaker_options(self.owner, self.breaker_failures, self.breaker_reset)
        seconds(self.owner, "ttl_grace", self.ttl_grace)
        seconds(self.owner, "connect_timeout", self.connect_timeout, finite=True, zero=False)
        seconds(self.owner, "socket_timeout", self.socket_timeout, finite=True, zero=False)


_BOUNDED = " (connection pools are bounded)"

#: Connections per pool (per node, for a cluster; per server for memcached's asyncio
#: clients) unless told otherwise: enough for a busy process, and a bound, so that a
#: stalled server cannot make a process open sockets without limit.
DEFAULT_MAX_CONNECTIONS = 64


@dataclass(frozen=True, kw_only=True)
class RedisFamilyOptions(NetworkOptions):
    #: how many more times a command is tried when its connection fails
    retries: int = field(default=1, metadata=url(int))
    client_name: str | None = field(default=None, metadata=url(str))
    ssl_ca_certs: str | None = field(default=None, metadata=url(str))
    ssl_certfile: str | None = field(default=None, metadata=url(str))
    ssl_keyfile: str | None = field(default=None, metadata=url(str))
    ssl_cert_reqs: str = field(default="required", metadata=url(str))
    ssl_check_hostname: bool = field(default=True, metadata=url(_bool))

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be an int >= 0, got {self.retries!r}")


@dataclass(frozen=True, kw_only=True)
class RedisOptions(RedisFamilyOptions):
    owner: ClassVar[str] = "RedisTier"
    max_connections: int = field(default=DEFAULT_MAX_CONNECTIONS, metadata=url(int))

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self.owner, "max_connections", self.max_connections, _BOUNDED)


@dataclass(frozen=True, kw_only=True)
class RedisClusterOptions(RedisFamilyOptions):
    owner: ClassVar[str] = "RedisClusterTier"
    max_connections_per_node: int = field(default=DEFAULT_MAX_CONNECTIONS, metadata=url(int))

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(
            self.owner, "max_connections_per_node", self.max_connections_per_node, _BOUNDED
        )


#: memcached's default item size limit (-I 1m) less room for the item header and the name.
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024 - 512


@dataclass(frozen=True, kw_only=True)
class MemcachedOptions(NetworkOptions):
    owner: ClassVar[str] = "MemcachedTier"
    max_value_size: int = field(default=DEFAULT_MAX_ITEM_SIZE, metadata=url(int))
    #: the largest envelope a server takes (memcached's -I)
    max_item_size: int = field(default=DEFAULT_MAX_ITEM_SIZE, metadata=url(int))
    #: how long a failed server is skipped before it is tried again
    retry_interval: float = field(default=1.0, metadata=url(float))
    #: how stale this process's view of the namespace generation may get
    generation_check_interval: float = field(default=1.0, metadata=url(float))
    #: asyncio connections per server and event loop
    max_connections: int = field(default=DEFAULT_MAX_CONNECTIONS, metadata=url(int))

    def __post_init__(self) -> None:
        super().__post_init__()
        seconds(self.owner, "retry_interval", self.retry_interval)
        seconds(self.owner, "generation_check_interval", self.generation_check_interval)
        positive_int(self.owner, "max_connections", self.max_connections)
        positive_int(self.owner, "max_item_size", self.max_item_size)


# ----------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class Scheme:
    module: str
    tier: str
    #: the pip extra its module needs (None: the core has everything)
    extra: str | None = None


SCHEMES: dict[str, Scheme] = {
    "memory": Scheme("stratacache.tiers.memory", "MemoryTier"),
    "sqlite": Scheme("stratacache.tiers.sqlite", "SQLiteTier"),
    "redis": Scheme("stratacache.tiers.redis", "RedisTier", "redis"),
    "rediss": Scheme("stratacache.tiers.redis", "RedisTier", "redis"),
    "redis+cluster": Scheme("stratacache.tiers.redis_cluster", "RedisClusterTier", "redis"),
    "rediss+cluster": Scheme("stratacache.tiers.redis_cluster", "RedisClusterTier", "redis"),
    "memcached": Scheme("stratacache.tiers.memcached", "MemcachedTier", "memcached"),
}


def load_tier_class(name: str) -> Any:
    """The tier class called ``name`` (``RedisTier``...), imported now; a missing optional
    dependency raises ImportError naming the extra to install."""
    scheme = next(s for s in SCHEMES.values() if s.tier == name)
    try:
        module = importlib.import_module(scheme.module)
    except ImportError as exc:
        raise ImportError(
            f"stratacache.{name} needs an optional dependency: "
            f"pip install 'stratacache[{scheme.extra}]' ({exc})"
        ) from exc
    return getattr(module, name)


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
            f"{', '.join(sorted(SCHEMES))}"
        )
    scheme_name, rest = url.split("://", 1)
    scheme = SCHEMES.get(scheme_name.lower())
    if scheme is None:
        raise ConfigurationError(
            f"unknown tier scheme {scheme_name.lower()!r} in {redact(url)}; accepted: "
            f"{', '.join(sorted(SCHEMES))}"
        )
    try:
        tier_class = load_tier_class(scheme.tier)
    except ImportError as exc:
        raise ConfigurationError(str(exc)) from exc
    # urlsplit cannot parse comma-separated host lists; the tier parses the location.
    location, _, query = rest.partition("?")
    options = tier_class.Options.from_query(url, query)
    options.update(overrides)
    return tier_class.from_url(
        f"{scheme_name.lower()}://{location}", options, clock=clock, wall_clock=wall_clock
    )

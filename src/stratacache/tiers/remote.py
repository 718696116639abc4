"""What every network tier shares: storage names, envelopes, server-side TTLs, URLs, errors.

A network tier (Redis, Redis Cluster, memcached) is a thin layer over its client library.
Everything that is not a client call lives here, once, for all of them and for both of
their faces (sync and async):

* **Storage names.** A cache key becomes ``<namespace>:<key>`` when the store's
  :class:`~stratacache.keys.KeyRules` accept that name, else ``<namespace>:#<sha256>``
  (see :func:`~stratacache.keys.storage_key`); a key that starts with ``#`` is always
  hashed, so no literal key can take the name of a hashed one. The check runs on every
  read, so the common case (a short printable ASCII key) is answered by ``str`` methods
  implemented in C before the general rules run. Hashing loses the key, so the envelope
  carries it and :meth:`~stratacache.serde.Codec.decode` compares it: two keys that hash
  alike can never return each other's value. Names are sent as length-prefixed arguments (RESP) or
  validated tokens (memcached), so no key can smuggle a command.
* **Envelopes** are :class:`~stratacache.tiers.shared.SharedTier`'s, shared with
  the SQLite tier: a codec whose signing context is the namespace, so an entry signed for
  one cache cannot be replayed into another that shares the store and the key; anything
  that does not decode is a miss, counted in ``stats.corrupt`` and logged with the
  reason, never raised and never deleted.
* **Server-side TTLs are a backstop.** Reads check the envelope's expiry against the
  injected wall clock; the store is only told to drop the entry ``ttl_grace`` seconds
  after that, so that it does not keep dead entries forever. An entry already expired
  when it is written is deleted instead.
* **Errors.** Every client failure that means "the store cannot answer now" becomes
  :class:`~stratacache.errors.TierUnavailableError` with a reason from which every
  configured secret has been scrubbed; timeouts are finite (the options refuse anything
  else), so a hung server costs a bounded wait. Messages and reprs show URLs only through
  :func:`~stratacache.config.redact` (or built from their parts without the password).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from ..config import NetworkOptions, redact
from ..entry import NEVER
from ..errors import CacheError, ConfigurationError, TierUnavailableError
from ..keys import HASH_MARKER, KeyRules, storage_key
from ..steps import drive
from .base import Prepared
from .breaker import CircuitBreaker
from .shared import SharedTier

__all__ = [
    "Location",
    "NameMapper",
    "RemoteTier",
    "chunks",
    "parse_location",
    "split_url",
]


#: what the circuit breaker's probe reads: any key does; this one is nobody's
_PROBE_KEY = "stratacache:breaker-probe"


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------- names


class NameMapper:
    """Maps cache keys to storage names under ``prefix`` following ``rules``."""

    __slots__ = ("max_bytes", "prefix", "rules", "spaces_ok")

    def __init__(self, prefix: str, rules: KeyRules) -> None:
        self.prefix = prefix
        self.rules = rules
        self.max_bytes = rules.max_bytes
        self.spaces_ok = rules.allow_whitespace

    def name(self, key: str) -> str:
        name = self.prefix + key
        # Fast path, exact for ASCII: isprintable() is False for every control character
        # and DEL, so it agrees with KeyRules.accepts; anything else takes the full check.
        # A key starting with the hash marker is never literal (storage_key hashes it),
        # so that no key's name can equal the name a hashed key gets.
        if (
            name.isascii()
            and len(name) <= self.max_bytes
            and name.isprintable()
            and (self.spaces_ok or " " not in name)
            and not key.startswith(HASH_MARKER)
        ):
            return name
        return storage_key(self.prefix, key, self.rules)

    def names(self, keys: Iterable[str]) -> list[str]:
        name = self.name
        return [name(key) for key in keys]


# ---------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class Location:
    """The part of a tier URL before ``?``: credentials, hosts, path."""

    username: str | None
    password: str | None
    hosts: tuple[tuple[str, int], ...]
    path: str

    def display(self, scheme: str) -> str:
        """The location as a URL with the password left out."""
        user = f"{self.username}:***@" if self.password and self.username else ""
        if self.password and not self.username:
            user = ":***@"
        elif self.username and not self.password:
            user = f"{self.username}@"
        hosts = ",".join(_host_text(host, port) for host, port in self.hosts)
        return f"{scheme}://{user}{hosts}{self.path}"


def _host_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_location(
    url: str, location: str, *, default_port: int, default_host: str = "localhost"
) -> Location:
    """Split ``[user[:password]@]host[:port][,host[:port]...][/path]``.

    urllib cannot parse comma-separated host lists, hence this small parser. Errors show
    the URL through :func:`stratacache.config.redact`.
    """
    shown = redact(url)
    credentials, at, hostpart = location.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if password == "":
            password = None
    hostlist, slash, rest = hostpart.partition("/")
    path = slash + rest
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(",") if hostlist else [""]:
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, bracket, after = item[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise ConfigurationError(f"bad host {item!r} in {shown}")
            port_text = after[1:]
        elif item.count(":") > 1:
            raise ConfigurationError(f"write IPv6 hosts in brackets ([::1]:6379) in {shown}")
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"bad port {port_text!r} in {shown}") from None
        if not 0 < port < 65536:
            raise ConfigurationError(f"port {port} out of range in {shown}")
        hosts.append((host or default_host, port))
    return Location(username, password, tuple(hosts), path)


def split_url(url: object, schemes: tuple[str, ...], default_port: int) -> tuple[str, Location]:
    """A network tier's URL as ``(scheme, location)``; options go in keywords, not in the
    query (that form is :func:`stratacache.config.tier_from_url`'s)."""
    if not isinstance(url, str) or "://" not in url:
        shown = f"{redact(url)!r:.100}" if isinstance(url, str) else f"a {type(url).__name__}"
        raise ConfigurationError(f"expected a {schemes[0]}:// URL, got {shown}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in schemes:
        raise ConfigurationError(
            f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, "
            f"got {scheme}://"
        )
    location, question, _ = rest.partition("?")
    if question:
        raise ConfigurationError(
            "options go in keyword arguments here (query options are for "
            "stratacache.config.tier_from_url)"
        )
    return scheme, parse_location(url, location, default_port=default_port)


# ---------------------------------------------------------------------------- the tier


class RemoteTier(SharedTier):
    """Base of the network tiers: storage names, server-side expiry, error mapping (the
    envelopes are :class:`~stratacache.tiers.shared.SharedTier`'s).

    Subclasses set ``key_rules`` and the transport; see the module docstring.
    """

    #: what the store accepts as a key name (longer or stranger keys are hashed)
    key_rules: ClassVar[KeyRules]
    options: NetworkOptions

    def __init__(
        self,
        options: NetworkOptions,
        *,
        secrets: Iterable[str | None] = (),
        max_item_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(options, max_item_size=max_item_size, wall_clock=wall_clock)
        if options.breaker_failures:
            self.breaker = CircuitBreaker(
                self.name,
                self.stats,
                failures=options.breaker_failures,
                reset_after=options.breaker_reset,
                clock=clock,
                on_change=self._breaker_moved,
                probe=self._probe,
            )
        self.ttl_grace = float(options.ttl_grace)
        self._secrets = tuple(s for s in secrets if s)
        self._names = NameMapper(f"{self.namespace}:", self.key_rules)

    def rename(self, name: str) -> None:
        super().rename(name)
        if self.breaker is not None:
            self.breaker.tier = name
        if self.permits is not None:
            self.permits.tier = name

    def _probe(self) -> None:
        """One read, past the breaker (which is what asks): does the store answer?"""
        if self.closed:
            raise TierUnavailableError(self.name, "closed")
        drive(self.read_steps([_PROBE_KEY]), self.perform, self.transport_errors, self.unavailable)

    def storage_name(self, key: str) -> str:
        """The name under which this tier stores ``key`` (for operators and tests)."""
        return self._names.name(key)

    def _plan(self, prepared: Prepared) -> tuple[list[tuple[str, bytes, float]], list[str]]:
        """What ``write`` sends: ``(name, envelope, seconds the store keeps it)`` for each
        entry still alive (``inf``: no server-side expiry), and the names to delete (the
        rejected keys, so an older value cannot outlive a refused newer one, and entries
        that expired before they could be written)."""
        now = self._wall_clock()
        # The store keeps an entry past its expiry: ttl_grace (clocks differ a little) and
        # the fail-safe's window (an expired value may still be served when a load fails).
        grace = self.ttl_grace + self.stale_for
        name = self._names.name
        sets: list[tuple[str, bytes, float]] = []
        deletes = [name(key) for key in prepared.rejected]
        for key, (blob, expires_at) in prepared.items.items():
            if expires_at == NEVER:
                sets.append((name(key), blob, math.inf))
            elif expires_at > now:
                sets.append((name(key), blob, expires_at - now + grace))
            else:
                deletes.append(name(key))
        return sets, deletes

    # -- errors

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def unavailable(self, exc: BaseException, doing: str = "") -> CacheError:
        detail = str(exc) or type(exc).__name__
        reason = self._scrub(f"{doing}{type(exc).__name__}: {detail}")
        return TierUnavailableError(self.name, reason)


def milliseconds(seconds: float) -> int:
    """A server-side TTL in whole milliseconds, never 0 (which would mean "now")."""
    return max(1, math.ceil(seconds * 1000))

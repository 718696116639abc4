"""The invalidation bus over Redis pub/sub.

Why pub/sub, not RESP3 client-side tracking: tracking is no faster, and it says less.
Measured on loopback against redis-server 7.0.15 (2 cores, redis-py 8.2 + hiredis as the
sender, the receiver reading a raw socket; 2,000 invalidations at ~1 kHz, the time from
sending the command to reading the notification)::

    PUBLISH -> SUBSCRIBE (RESP2)                 p50 0.097 ms  p99 0.246 ms  max 2.1 ms
    SET -> CLIENT TRACKING ON REDIRECT BCAST     p50 0.093 ms  p99 0.300 ms  max 1.4 ms
    SET -> RESP3 CLIENT TRACKING ON BCAST (push) p50 0.096 ms  p99 0.356 ms  max 1.4 ms

(the throwaway script: a subscriber on ``bus`` / on ``__redis__:invalidate`` with
``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX k`` / ``HELLO 3`` + ``CLIENT TRACKING ON
BCAST PREFIX k``, a redis-py client sending ``PUBLISH bus k<i>`` or ``SET k<i> 1`` every
millisecond.) The same latency, then, and tracking loses on everything else:

* Without BCAST, Redis only reports keys *this connection read* (checked: a SET of a key
  the tracking connection never read sends nothing), and our L1 is filled through other
  connections, pools, and levels that are not Redis at all. With BCAST it reports every
  change under a prefix, including TTL expiries and evictions of the shared level, which
  would drop L1 entries for nothing, and it names store keys (namespaced, possibly
  hashed), not cache keys.
* It only sees writes that reach this Redis: not an L1-only cache, a SQLite level, a
  write-around to the origin, a tag invalidation, a clear of one namespace.
* A notification carries no publisher, sequence number, version or signature, so lost
  or forged notifications cannot be noticed, and write versions cannot travel with keys.
* redis-py 8's sync client uses tracking only for its own client-side cache
  (``protocol=3, cache_config=``), which drops entries of that cache and tells the
  application nothing; reading the invalidation pushes ourselves means driving a raw
  RESP3 connection (or a ``PubSub`` with a ``push_handler_func``) either way.

So the bus publishes its own messages (numbered, signed, batched) on a channel; they cost
one PUBLISH per batch, not one per key.

The receiver reads its subscription on a plain redis-py connection rather than
``PubSub``, whose retry layer reconnects and resubscribes silently: the bus must know
about every drop, because messages published meanwhile are gone. It waits at most 0.2 s
per read (so ``stop`` is honoured), pings after 1 s of silence and takes a missing PONG
after ``socket_timeout`` for a dead server (a paused one, a dropped connection nobody
closed). After any failure it backs off (50 ms doubling to 1 s), subscribes again and
calls ``reset("reconnected")``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigurationError
from ..logs import Throttle
from .options import check_transport

__all__ = ["RedisTransport"]

logger = logging.getLogger("stratacache.coherence")

_BACKOFF: Final = (0.05, 1.0)
_READ_WAIT: Final = 0.05  # the longest a read waits before looking at `stop` and the pings
#: a PING unanswered this long makes the subscription *silent*: the bus may be missing
#: messages, so the cache stops trusting its L1 (see InvalidationBus.healthy)
SILENT_AFTER: Final = 0.5
#: connection_kwargs a pool sets up for itself, not to be copied into another pool
_POOL_OWNED: Final = ("maint_notifications", "orig_", "himport_registry")


def _where(url: str) -> str:
    """host:port or the socket path of ``url``, without credentials."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "(unparsable URL)"


class RedisTransport:
    """Bus payloads over a Redis channel: PUBLISH from one connection, SUBSCRIBE on
    another, both our own."""

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        socket_timeout: float = 2.0,
        health_check_interval: float = 0.25,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ConfigurationError(
                f"a Redis bus URL is redis://, rediss:// or unix://..., got {url!r}"
            )
        self._setup(
            lambda options: redis.ConnectionPool.from_url(url, **options),
            _where(url),
            channel,
            socket_timeout,
            health_check_interval,
        )

    @classmethod
    def from_client(
        cls,
        client: redis.Redis,
        channel: str,
        *,
        socket_timeout: float = 2.0,
        health_check_interval: float = 0.25,
    ) -> RedisTransport:
        """A transport to the server ``client`` talks to (its address, credentials, TLS
        and database), on connections of its own."""
        pool = client.connection_pool
        kwargs = {
            name: value
            for name, value in pool.connection_kwargs.items()
            if not name.startswith(_POOL_OWNED)
            and name not in ("retry", "socket_timeout", "socket_connect_timeout")
        }
        connection_class = pool.connection_class
        where = str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")
        transport = cls.__new__(cls)
        transport._setup(
            lambda options: redis.ConnectionPool(
                connection_class=connection_class, **kwargs, **options
            ),
            where,
            channel,
            socket_timeout,
            health_check_interval,
        )
        return transport

    def _setup(
        self,
        make_pool: Callable[[dict[str, Any]], redis.ConnectionPool],
        where: str,
        channel: str,
        socket_timeout: float,
        health_check_interval: float,
    ) -> None:
        check_transport(
            channel, socket_timeout=socket_timeout, health_check_interval=health_check_interval
        )
        self.channel = channel
        self.where = where
        self.socket_timeout = float(socket_timeout)
        self.health_check_interval = float(health_check_interval)
        #: set while the receiver is subscribed (tests and benchmarks wait for it)
        self.ready = threading.Event()
        self._warnings = Throttle(logger)
        self._subject = "receive"
        #: subscribed and answering: messages are not being missed (see SILENT_AFTER)
        self.healthy = False

        def options(retries: int) -> dict[str, Any]:
            return {
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": self.socket_timeout,
                # At most one quick retry on a fresh connection (a pooled one the server
                # dropped); the bus keeps its own backoff, and a timeout is not retried.
                "retry": Retry(NoBackoff(), retries, (redis.ConnectionError,)),
            }

        self._make_pool: Callable[[], redis.ConnectionPool] = lambda: make_pool(options(0))
        self._publisher = redis.Redis(connection_pool=make_pool(options(1)))

    def __repr__(self) -> str:
        return f"<RedisTransport {self.where} channel={self.channel!r}>"

    def publish(self, payload: bytes) -> None:
        try:
            self._publisher.publish(self.channel, payload)
        except redis.RedisError as exc:
            raise ConnectionError(f"PUBLISH to Redis at {self.where} failed: {exc}") from exc

    def run(
        self,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        pool = self._make_pool()
        pause = _BACKOFF[0]
        missed = False  # whether a failure since the last subscription may have lost messages
        try:
            while not stop.is_set():
                conn: Any = None
                try:
                    conn = pool.get_connection()
                    conn.send_command("SUBSCRIBE", self.channel)
                    reply = conn.read_response(push_request=True)
                    if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
                        raise redis.ConnectionError(f"unexpected SUBSCRIBE reply {reply!r}")
                    self.ready.set()
                    if missed:
                        reset("reconnected")
                    missed = False
                    pause = _BACKOFF[0]
                    self.healthy = True
                    self._listen(conn, deliver, reset, stop)
                except (redis.RedisError, OSError) as exc:
                    missed = True
                    if not stop.is_set():
                        self._warnings.warning(
                            self._subject,
                            "bus: subscription to Redis at %s failed (retrying): %s: %s",
                            self.where,
                            type(exc).__name__,
                            exc,
                        )
                finally:
                    self.ready.clear()
                    self.healthy = False
                    if conn is not None:
                        conn.disconnect()
                        pool.release(conn)
                if stop.wait(pause):
                    return
                pause = min(pause * 2, _BACKOFF[1])
        finally:
            pool.disconnect()

    def _listen(
        self,
        conn: Any,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        heard = time.monotonic()  # the last time the server said anything
        pinged: float | None = None  # when the unanswered PING went out
        while not stop.is_set():
            if conn.can_read(timeout=_READ_WAIT):
                reply = conn.read_response(push_request=True)
                heard = time.monotonic()
                pinged = None
                if not self.healthy:  # what it said while silent may be lost or late
                    self.healthy = True
                    reset("the server answers again")
                # an empty message is a closing bus waking its receiver (see wake)
                if (
                    isinstance(reply, list)
                    and len(reply) == 3
                    and reply[0] == b"message"
                    and reply[2]
                ):
                    deliver(reply[2])
                continue  # a PONG, or a (un)subscribe confirmation
            now = time.monotonic()
            if pinged is not None:
                if self.healthy and now - pinged > SILENT_AFTER:
                    self.healthy = False
                    reset(f"no answer to PING within {SILENT_AFTER:g} s")
                if now - pinged > self.socket_timeout:
                    raise redis.TimeoutError(f"no answer to PING within {self.socket_timeout:g} s")
            elif now - heard >= self.health_check_interval:
                conn.send_command("PING")
                pinged = now

    def after_fork(self) -> None:
        """In a forked child: a new receiver subscribes (redis-py's pools notice the new
        process and open their own connections)."""
        self.ready = threading.Event()
        self.healthy = False

    def share_warnings(self, warnings: Throttle, subject: str) -> None:
        """Log through ``warnings`` under ``subject``: a bus riding on a cache level's
        server is down exactly when that level is, and one line per interval says so."""
        self._warnings = warnings
        self._subject = subject

    def wake(self) -> None:
        """Make a receiver that waits for a message look at its stop event now (a
        closing bus; else it would notice only after its read wait): an empty message,
        which every receiver ignores."""
        # a server that is gone: the receiver's wait ends by itself
        with contextlib.suppress(redis.RedisError):
            self._publisher.publish(self.channel, b"")

    def close(self) -> None:
        self._publisher.close()
        self._publisher.connection_pool.disconnect()

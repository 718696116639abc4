"""The cross-process invalidation bus.

Several processes each keep an in-process L1 over a shared level. When one of them
writes, deletes or invalidates keys, clears the cache or invalidates tags, it publishes
that on the bus, and every *other* process drops those keys from its L1. The bus only
carries what it is given: deciding what to publish (writes yes, fills no) is the caller's.

Two daemon threads per bus:

* the **sender** waits for work, gives more work ``batch_delay`` to arrive, merges all that
  is queued into one numbered :class:`~.messages.Message` (keys deduplicated, highest
  version kept; tags merged, latest time kept; split at ``max_batch`` keys) and hands it
  to the transport. A publish that fails is retried, in order, with a backoff of 10 ms
  doubling to 1 s; nothing is dropped while the process lives. Past
  :data:`MAX_PENDING_KEYS` keys waiting, they are collapsed into one *clear* message
  (receivers drop their whole L1: always safe, and bounded memory here).
* the **receiver** runs the transport's loop. Each payload is decoded (and verified, with
  a signer); our own messages are skipped; per ``(publisher, epoch)`` the last ``seq`` is
  kept, so a duplicate or replay is ignored and a skipped number (a lost message) calls
  ``on_reset``. So do a payload that does not decode or verify (it may have been a real
  message, mangled), a message older than ``max_lag`` (we fell behind), a clear, and a
  transport that says it may have missed messages (a reconnect). ``on_reset`` means
  "drop the whole L1": the answer to every doubt, and never wrong.

Transports (:class:`Transport`): :class:`~.redis_transport.RedisTransport` (pub/sub) and
:class:`~.sqlite_transport.SQLiteTransport` (a table in a host-local SQLite file);
:func:`open_transport` picks one from a URL.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import secrets
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..errors import CacheClosedError, ConfigurationError
from ..logs import Throttle
from ..metrics import LatencyHistogram
from ..serde import Signer
from .messages import BusMessageError, Message, decode, encode
from .sqlite_transport import SQLiteTransport

__all__ = ["MAX_PENDING_KEYS", "BusStats", "InvalidationBus", "Transport", "open_transport"]

logger = logging.getLogger("stratacache.coherence")

#: Past this many keys waiting to be sent (the transport is down), they are replaced by
#: one clear message.
MAX_PENDING_KEYS: Final = 100_000
#: A publisher not heard from for this long is forgotten (its last seq with it).
FORGET_AFTER: Final = 600.0
#: Keys and tags of one message stay under this many characters in all, so that a message
#: stays far below messages.MAX_PAYLOAD (8 MiB) whatever the keys' lengths; a single key
#: longer than this is sent as a clear.
MESSAGE_CHARS: Final = 1 << 20
_SEND_BACKOFF: Final = (0.01, 1.0)
_RECEIVE_BACKOFF: Final = (0.05, 1.0)
_CLOSE_JOIN: Final = 2.0


class Transport(Protocol):
    """How bus payloads travel between processes."""

    def publish(self, payload: bytes) -> None:
        """Send ``payload`` to every subscriber (ourselves included). Raises (an OSError,
        a ConnectionError...) when it could not; the bus retries."""
        ...

    def run(
        self,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        """Run on the bus's receiver thread until ``stop`` is set (returning within about
        0.5 s of it): ``deliver`` every payload anyone publishes, and call ``reset(reason)``
        after (re)connecting when messages may have been missed."""
        ...

    def close(self) -> None: ...


#: how far into a payload the publisher id can be (the header, then the msgpack array's
#: first element)
_OWN_ID_WITHIN: Final = 64


@dataclass(slots=True)
class BusStats:
    """What a bus did. Each counter is written by one thread only (sender or receiver)."""

    published: int = 0  # messages handed to the transport
    published_keys: int = 0
    received: int = 0  # messages from other publishers, duplicates left out
    received_keys: int = 0
    gaps: int = 0  # a seq skipped: messages were lost
    resets: int = 0  # the transport said it may have missed messages
    rejected: int = 0  # payloads that did not decode or verify
    lagged: int = 0  # messages older than max_lag when they arrived
    send_errors: int = 0  # failed publish attempts (each is retried)

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(slots=True)
class _Outgoing:
    message: Message
    #: the publish_* calls (numbered from 1) all taken care of once this one is sent
    covers: int


@dataclass(slots=True)
class _Publisher:
    seq: int
    heard: float  # time.monotonic() of its last message
    #: a transport reset came since its last message: whatever it sent while we were
    #: away is covered by that reset, so a jump in its next seq is not a new gap
    resynced: bool = False


class InvalidationBus:
    """Publishes this process's invalidations and applies everyone else's.

    ``on_keys(keys, versions)``, ``on_reset()`` and ``on_tags(tags, at)`` run on the
    receiver thread; an exception from one is logged, never fatal.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        on_keys: Callable[[list[str], list[int]], None],
        on_reset: Callable[[], None],
        on_tags: Callable[[list[str], float], None] | None = None,
        signer: Signer | None = None,
        context: bytes = b"",
        batch_delay: float = 0.0005,
        max_batch: int = 1000,
        max_lag: float = 2.0,
        name: str = "bus",
    ) -> None:
        if not isinstance(batch_delay, int | float) or not 0 <= batch_delay <= 1.0:
            raise ConfigurationError(f"batch_delay must be 0-1 seconds, got {batch_delay!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigurationError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not isinstance(max_lag, int | float) or not (max_lag > 0 and math.isfinite(max_lag)):
            raise ConfigurationError(
                f"max_lag must be a positive number of seconds, got {max_lag!r}"
            )
        if not isinstance(context, bytes):
            raise ConfigurationError(f"context must be bytes, got {type(context).__name__}")
        self.transport = transport
        self.on_keys = on_keys
        self.on_reset = on_reset
        self.on_tags = on_tags
        self.signer = signer
        self.context = context
        self.batch_delay = float(batch_delay)
        self.max_batch = max_batch
        self.max_lag = float(max_lag)
        self.name = name
        self.stats = BusStats()
        #: how long messages from other processes took to arrive (see _deliver)
        self.delays = LatencyHistogram()
        self._warnings = Throttle(logger)
        self._fresh_state()

    def _fresh_state(self) -> None:
        """Locks, queues and numbering: made at construction, and again in a forked
        child (where the parent's threads are gone and a lock may be held forever)."""
        self.publisher = uuid.uuid4().hex
        self._publisher_bytes = self.publisher.encode()
        self.epoch = secrets.randbits(63)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the sender waits for work here
        self._progress = threading.Condition(self._lock)  # flush() waits here
        # What publish_* queued and the sender has not taken yet.
        self._keys: dict[str, int] = {}
        self._clear = False
        self._tags: dict[str, None] = {}
        self._tag_time = 0.0
        self._calls = 0  # publish_* calls that queued something
        self._handed = 0  # of those, the ones whose messages are all with the transport
        self._closing = False
        self._closed = False
        self._started = False
        # The sender's own (only its thread touches them once started).
        self._unsent: deque[_Outgoing] = deque()
        self._unsent_keys = 0
        self._seq = 0
        self._built = 0  # the calls covered by the messages built so far
        self._abandon = threading.Event()  # close() gave up waiting for the sender
        self._stop = threading.Event()  # the receiver's stop
        # The receiver's own.
        self._publishers: dict[tuple[str, int], _Publisher] = {}
        self._next_sweep = time.monotonic() + FORGET_AFTER
        self._sender: threading.Thread | None = None
        self._receiver: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<InvalidationBus {self.name!r} publisher={self.publisher}>"

    @property
    def healthy(self) -> bool:
        """True while messages from other processes are known to reach this one (the
        transport is connected and answering). While False, the cache keeps its
        in-process copies only briefly (see ``Cache(bus_silence_ttl=)``)."""
        if not self._started or self._closed:
            return False
        return bool(getattr(self.transport, "healthy", True))

    def snapshot(self) -> dict[str, Any]:
        """The counters of :attr:`stats`, and the delivery delay of the messages
        received (p50 and p99, in milliseconds; None before any)."""
        delays = self.delays
        p50, p99 = delays.quantile_us(0.5), delays.quantile_us(0.99)
        return {
            **self.stats.snapshot(),
            "healthy": self.healthy,
            "delay_p50_ms": None if p50 is None else p50 / 1000,
            "delay_p99_ms": None if p99 is None else p99 / 1000,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the sender and receiver threads (once; later calls do nothing)."""
        with self._lock:
            if self._closed:
                raise CacheClosedError(f"invalidation bus {self.name!r} is closed")
            if self._started:
                return
            self._started = True
        self._sender = threading.Thread(
            target=self._send_loop, name=f"{self.name}-sender", daemon=True
        )
        self._receiver = threading.Thread(
            target=self._receive_loop, name=f"{self.name}-receiver", daemon=True
        )
        self._sender.start()
        self._receiver.start()
        # A process that exits right after a write, without closing its cache, must
        # still tell the others: the sender is a daemon thread and would die with the
        # interpreter, its queue unsent. (A weak reference: this does not keep the bus.)
        atexit.register(_flush_at_exit, weakref.ref(self))
        _STARTED.add(self)

    def _restart_in_child(self) -> None:
        """In a forked child (a web server forking its workers after the cache was
        made): the threads did not come along, so start them anew, as a new publisher.
        What the child inherited in L1 was not watched between the fork and the new
        subscription: it is dropped."""
        if self._closed or not self._started:
            return
        self._fresh_state()
        after_fork = getattr(self.transport, "after_fork", None)
        if after_fork is not None:
            after_fork()
        self._started = False
        self.start()
        self._call_reset()

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until everything published so far was handed to the transport; False if
        that did not happen within ``timeout`` seconds (the transport is down, or the bus
        was never started)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._calls
            while self._handed < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self) -> None:
        """Send what is queued (waiting at most about a second for it), stop both threads
        and close the transport. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing = True
            self._work.notify_all()
        sender, receiver = self._sender, self._receiver
        if sender is not None:
            sender.join(1.0)
            if sender.is_alive():
                self._abandon.set()  # stop retrying: the bus is going away
                sender.join(_CLOSE_JOIN)
            with self._lock:
                left = len(self._unsent) + (1 if self._queued() else 0)
            if left:
                logger.warning(
                    "invalidation bus %r closed with %d messages unsent (the transport did "
                    "not take them); other processes may keep stale L1 entries",
                    self.name,
                    left,
                )
        self._stop.set()
        if receiver is not None:
            wake = getattr(self.transport, "wake", None)
            if wake is not None:
                wake()
            receiver.join(_CLOSE_JOIN)
        try:
            self.transport.close()
        except Exception as exc:  # closing must not fail the caller's shutdown
            logger.warning("invalidation bus %r: closing the transport failed: %r", self.name, exc)

    # ------------------------------------------------------------------ publishing

    def publish_keys(self, keys: Sequence[str], versions: Sequence[int] | None = None) -> None:
        """Queue ``keys`` (with their write versions, 0 = unknown) for the other processes
        to drop. Never blocks on the transport."""
        if isinstance(keys, str | bytes):
            raise TypeError("publish_keys takes a sequence of keys, not a single str")
        keys = list(keys)
        if not keys:
            return
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"bus keys are str, got {type(key).__name__}")
        if versions is None:
            pairs = [(key, 0) for key in keys]
        else:
            versions = list(versions)
            if len(versions) != len(keys):
                raise ValueError(f"{len(keys)} keys but {len(versions)} versions")
            for version in versions:
                if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                    raise TypeError(f"versions are ints >= 0, got {version!r}")
            pairs = list(zip(keys, versions, strict=True))
        with self._lock:
            self._check_open()
            queued = self._keys
            for key, version in pairs:
                held = queued.get(key)
                if held is None or version > held:
                    queued[key] = version
            if len(queued) > MAX_PENDING_KEYS:
                # The sender is far behind (the transport is down): a clear covers them
                # all, and keeps this process's memory bounded.
                queued.clear()
                self._clear = True
            self._calls += 1
            self._work.notify()

    def publish_clear(self) -> None:
        """Tell the other processes the whole cache was cleared."""
        with self._lock:
            self._check_open()
            self._clear = True
            self._calls += 1
            self._work.notify()

    def publish_tags(self, tags: Sequence[str], at: float) -> None:
        """Tell the other processes that ``tags`` were invalidated at wall-clock ``at``."""
        if isinstance(tags, str | bytes):
            raise TypeError("publish_tags takes a sequence of tags, not a single str")
        tags = list(tags)
        if not tags:
            return
        for tag in tags:
            if not isinstance(tag, str):
                raise TypeError(f"tags are str, got {type(tag).__name__}")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise TypeError(f"at is a finite wall-clock time, got {at!r}")
        with self._lock:
            self._check_open()
            for tag in tags:
                self._tags[tag] = None
            self._tag_time = max(self._tag_time, float(at))
            self._calls += 1
            self._work.notify()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError(f"invalidation bus {self.name!r} is closed")

    # ------------------------------------------------------------------ the sender thread

    def _queued(self) -> bool:
        return bool(self._keys or self._clear or self._tags)

    def _send_loop(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                while not self._unsent and not self._queued() and not self._closing:
                    self._work.wait()
                if not self._unsent and not self._queued():
                    return  # closing, and everything was sent
                gather = not self._unsent and not self._closing and self.batch_delay > 0
            if gather:
                # More work arriving within batch_delay joins this batch.
                self._abandon.wait(self.batch_delay)
            self._take()
            while self._unsent:
                outgoing = self._unsent[0]
                try:
                    payload = self._encode(outgoing)
                    self.transport.publish(payload)
                except Exception as exc:
                    self.stats.send_errors += 1
                    self._warnings.warning(
                        "publish",
                        "invalidation bus %r could not publish (%d messages waiting; "
                        "retrying): %s: %s",
                        self.name,
                        len(self._unsent),
                        type(exc).__name__,
                        exc,
                    )
                    backoff = min(backoff * 2, _SEND_BACKOFF[1]) if backoff else _SEND_BACKOFF[0]
                    if self._abandon.wait(backoff):
                        return
                    self._take()  # absorb what was queued meanwhile (and maybe collapse)
                    continue
                backoff = 0.0
                self._unsent.popleft()
                self._unsent_keys -= len(outgoing.message.keys)
                self.stats.published += 1
                self.stats.published_keys += len(outgoing.message.keys)
                with self._lock:
                    if outgoing.covers > self._handed:
                        self._handed = outgoing.covers
                        self._progress.notify_all()

    def _encode(self, outgoing: _Outgoing) -> bytes:
        message = dataclasses.replace(outgoing.message, sent_at=time.time())
        try:
            return encode(message, self.signer, self.context)
        except BusMessageError:
            # Cannot happen with the limits _build keeps; if it does, a clear is safe.
            cleared = Message(
                message.publisher, message.epoch, message.seq, clear=True, sent_at=message.sent_at
            )
            outgoing.message = cleared
            self._unsent_keys -= len(message.keys)
            return encode(cleared, self.signer, self.context)

    def _take(self) -> None:
        """Turn what publish_* queued into numbered messages at the end of the unsent ones."""
        with self._lock:
            keys, self._keys = self._keys, {}
            clear, self._clear = self._clear, False
            tags, self._tags = self._tags, {}
            tag_time, self._tag_time = self._tag_time, 0.0
            calls = self._calls
        if not (keys or clear or tags):
            return
        if self._unsent_keys + len(keys) > MAX_PENDING_KEYS:
            self._warnings.warning(
                "collapse",
                "invalidation bus %r: %d keys waiting to be published; sending one clear "
                "instead (the other processes drop their whole L1)",
                self.name,
                self._unsent_keys + len(keys),
            )
            for dropped in self._unsent:
                tags.update(dict.fromkeys(dropped.message.tags))
                tag_time = max(tag_time, dropped.message.tag_time)
            self._unsent.clear()
            self._unsent_keys = 0
            keys = {}
            clear = True
        for message in self._build(keys, clear, list(tags), tag_time):
            self._unsent.append(_Outgoing(message, self._built))
            self._unsent_keys += len(message.keys)
        self._unsent[-1].covers = self._built = calls

    def _build(
        self, keys: dict[str, int], clear: bool, tags: list[str], tag_time: float
    ) -> list[Message]:
        key_chunks: list[list[tuple[str, int]]] = []
        chunk: list[tuple[str, int]] = []
        chars = 0
        for key, version in keys.items():
            if len(key) > MESSAGE_CHARS:
                clear = True  # too long to send: dropping everything covers it
                continue
            if chunk and (len(chunk) >= self.max_batch or chars + len(key) > MESSAGE_CHARS):
                key_chunks.append(chunk)
                chunk, chars = [], 0
            chunk.append((key, version))
            chars += len(key)
        if chunk:
            key_chunks.append(chunk)
        tag_chunks: list[list[str]] = []
        tag_chunk: list[str] = []
        chars = 0
        for tag in tags:
            if len(tag) > MESSAGE_CHARS:
                clear = True
                continue
            if tag_chunk and (len(tag_chunk) >= self.max_batch or chars + len(tag) > MESSAGE_CHARS):
                tag_chunks.append(tag_chunk)
                tag_chunk, chars = [], 0
            tag_chunk.append(tag)
            chars += len(tag)
        if tag_chunk:
            tag_chunks.append(tag_chunk)
        messages: list[Message] = []
        for i in range(max(len(key_chunks), len(tag_chunks), 1)):
            pairs = key_chunks[i] if i < len(key_chunks) else []
            some_tags = tag_chunks[i] if i < len(tag_chunks) else []
            self._seq += 1
            messages.append(
                Message(
                    self.publisher,
                    self.epoch,
                    self._seq,
                    keys=tuple(key for key, _ in pairs),
                    versions=tuple(version for _, version in pairs),
                    clear=clear and i == 0,
                    tags=tuple(some_tags),
                    tag_time=tag_time if some_tags else 0.0,
                )
            )
        return messages

    # ------------------------------------------------------------------ the receiver thread

    def _receive_loop(self) -> None:
        pause = _RECEIVE_BACKOFF[0]
        while not self._stop.is_set():
            try:
                self.transport.run(self._deliver, self._reset, self._stop)
            except Exception as exc:
                self._warnings.warning(
                    "transport",
                    "invalidation bus %r: the transport's receiver failed (restarting it): %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, _RECEIVE_BACKOFF[1])
            # Before the transport listens again, so not a resync: a message lost until
            # then still shows as a gap.
            self._reset("the transport's receiver restarted", resync=False)

    def _reset(self, reason: str, resync: bool = True) -> None:
        self.stats.resets += 1
        if resync:
            # Messages missed while the transport was away were all sent before this
            # reset (the transport calls it once it hears everything again): it covers them.
            for known in self._publishers.values():
                known.resynced = True
        self._warnings.warning(
            "reset", "invalidation bus %r: %s; dropping the whole L1", self.name, reason
        )
        self._call_reset()

    def _call_reset(self) -> None:
        try:
            self.on_reset()
        except Exception as exc:
            self._warnings.warning(
                "on_reset",
                "invalidation bus %r: on_reset raised %s: %s",
                self.name,
                type(exc).__name__,
                exc,
            )

    def _deliver(self, payload: bytes) -> None:
        # Our own messages come back to us over Redis pub/sub: skip them before paying
        # for the signature and the decoding. The publisher id (32 random hex digits)
        # opens every message, so finding it near the start is finding ourselves.
        if self._publisher_bytes in payload[:_OWN_ID_WITHIN]:
            return
        try:
            message = decode(payload, self.signer, self.context)
        except BusMessageError as exc:
            self.stats.rejected += 1
            self._warnings.warning(
                "rejected",
                "invalidation bus %r rejected a payload (%s); dropping the whole L1",
                self.name,
                exc.reason,
            )
            self._call_reset()
            return
        if message.publisher == self.publisher:
            return
        now = time.monotonic()
        if now >= self._next_sweep:
            self._forget(now)
        known = self._publishers.get((message.publisher, message.epoch))
        if known is None:
            self._publishers[message.publisher, message.epoch] = _Publisher(message.seq, now)
        else:
            if message.seq <= known.seq:
                return  # a duplicate or a replay
            skipped = message.seq > known.seq + 1 and not known.resynced
            known.seq, known.heard, known.resynced = message.seq, now, False
            if skipped:
                self.stats.gaps += 1
                self._warnings.warning(
                    "gap",
                    "invalidation bus %r: messages from %s were lost; dropping the whole L1",
                    self.name,
                    message.publisher,
                )
                self._call_reset()
        self.stats.received += 1
        self.stats.received_keys += len(message.keys)
        if message.sent_at and time.time() - message.sent_at > self.max_lag:
            self.stats.lagged += 1
            self._warnings.warning(
                "lagged",
                "invalidation bus %r: a message arrived %.1f s after it was sent; dropping "
                "the whole L1",
                self.name,
                time.time() - message.sent_at,
            )
            self._call_reset()
            return
        if message.clear:
            self._call_reset()
        if message.sent_at:
            # sent to applied, on the wall clock (one host: one clock): what a message
            # adds to an invalidation (the sender's batching delay not included)
            self.delays.record(max(0, int((time.time() - message.sent_at) * 1e9)))
        if message.keys:
            try:
                self.on_keys(list(message.keys), list(message.versions))
            except Exception as exc:
                self._warnings.warning(
                    "on_keys",
                    "invalidation bus %r: on_keys raised %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                )
        if message.tags and self.on_tags is not None:
            try:
                self.on_tags(list(message.tags), message.tag_time)
            except Exception as exc:
                self._warnings.warning(
                    "on_tags",
                    "invalidation bus %r: on_tags raised %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                )

    def _forget(self, now: float) -> None:
        cutoff = now - FORGET_AFTER
        self._publishers = {
            ident: known for ident, known in self._publishers.items() if known.heard >= cutoff
        }
        self._next_sweep = now + 60.0


# ---------------------------------------------------------------------------- transports

_SCHEMES = "redis://, rediss://, unix:// (Redis pub/sub), sqlite:///relative/path, " + (
    "sqlite:////absolute/path or a plain file path (a host-local SQLite file)"
)


#: the buses started in this process, restarted in a forked child
_STARTED: weakref.WeakSet[InvalidationBus] = weakref.WeakSet()


def _restart_buses_in_child() -> None:
    for bus in list(_STARTED):
        bus._restart_in_child()


os.register_at_fork(after_in_child=_restart_buses_in_child)


def _flush_at_exit(bus: weakref.ref[InvalidationBus]) -> None:
    alive = bus()
    if alive is not None and not alive._closed:
        alive.flush(_EXIT_FLUSH)


#: how long a process at exit waits for its unsent invalidations to go out
_EXIT_FLUSH: Final = 1.0


def open_transport(url: str, *, channel: str) -> Transport:
    """The transport for ``url``: Redis pub/sub for ``redis://``, ``rediss://`` and
    ``unix://``; a SQLite file for ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    a plain path."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"a bus URL is a non-empty str ({_SCHEMES}); got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return SQLiteTransport(url, channel)
    scheme = scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        try:
            from .redis_transport import RedisTransport
        except ImportError as exc:
            raise ConfigurationError(
                f"a {scheme}:// bus needs redis-py: pip install 'stratacache[redis]' ({exc})"
            ) from exc
        return RedisTransport(url, channel)
    if scheme == "sqlite":
        if not rest.startswith("/") or not rest[1:]:
            raise ConfigurationError(f"{url!r} names no SQLite file; accepted: {_SCHEMES}")
        return SQLiteTransport(rest[1:], channel)
    raise ConfigurationError(f"unknown bus transport scheme {scheme!r}; accepted: {_SCHEMES}")

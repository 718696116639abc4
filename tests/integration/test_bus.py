"""The invalidation bus (``stratacache.coherence``) between real OS processes, over a real
Redis (started by ``tests/servers.py``) and a real SQLite file.

The other process is a *peer*: a child started with multiprocessing's "spawn" context that
runs a bus of its own, takes commands on one queue (publish, burst, stats, close) and
reports what its callbacks saw on another. The test process runs the bus on the other end.
Clocks: arrival and send times are ``time.monotonic()``, which on Linux is one clock for
every process of the machine, so latencies can be taken across processes.

A few tests of the sender's own logic (collapse into a clear, batching limits, callback
errors) run in one process over an in-memory ``Loopback`` transport or a SQLite file; the
loopback is a transport of its own, not a stand-in for Redis.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import redis

from stratacache.coherence import (
    InvalidationBus,
    Message,
    RedisTransport,
    SQLiteTransport,
    encode,
    open_transport,
)
from stratacache.coherence import bus as bus_module
from stratacache.errors import CacheClosedError, ConfigurationError
from stratacache.serde import Signer

from ..servers import RedisServer, redis_command

SECRET = b"integration-bus-secret-0123456789"
WRONG_SECRET = b"not-the-bus-secret-9876543210abcd"
SPAWN = multiprocessing.get_context("spawn")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


# ------------------------------------------------------------------ the peer


@dataclass(frozen=True)
class PeerSpec:
    url: str
    channel: str
    secret: bytes | None = None
    batch_delay: float = 0.0005


def peer_main(spec: PeerSpec, commands: Any, events: Any) -> None:
    """The child process: one bus, driven by ``commands``, reporting on ``events``."""
    signer = Signer.of(spec.secret) if spec.secret else None
    transport = open_transport(spec.url, channel=spec.channel)
    bus = InvalidationBus(
        transport,
        on_keys=lambda keys, versions: events.put(("keys", keys, versions, time.monotonic())),
        on_reset=lambda: events.put(("reset", time.monotonic())),
        on_tags=lambda tags, at: events.put(("tags", tags, at)),
        signer=signer,
        batch_delay=spec.batch_delay,
        name="peer",
    )
    bus.start()
    if not transport.ready.wait(10):  # type: ignore[attr-defined]
        events.put(("error", "the peer's transport did not become ready"))
        return
    events.put(("ready", bus.publisher))
    while True:
        command, *args = commands.get()
        if command == "publish":
            bus.publish_keys(*args)
        elif command == "timed":  # n single-key messages at ~rate/s, the send time in the key
            n, rate = args
            due = time.monotonic()
            for i in range(n):
                bus.publish_keys([f"lat:{i}:{time.monotonic()!r}"])
                due += 1.0 / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            events.put(("flushed", bus.flush(5.0)))
        elif command == "burst":  # n publish_keys calls in a tight loop
            n, prefix = args
            for i in range(n):
                bus.publish_keys([f"{prefix}{i}"])
            events.put(("flushed", bus.flush(5.0)))
        elif command == "stats":
            events.put(("stats", bus.stats.snapshot()))
        elif command == "close":
            bus.close()
            events.put(("stats", bus.stats.snapshot()))
            return


class Peer:
    """The parent's handle on a peer process and what the peer's callbacks reported."""

    def __init__(self, spec: PeerSpec) -> None:
        self.commands: Any = SPAWN.Queue()
        self.events: Any = SPAWN.Queue()
        self.process = SPAWN.Process(
            target=peer_main, args=(spec, self.commands, self.events), daemon=True
        )
        self.publisher = ""
        self.keys: dict[str, tuple[int, float]] = {}  # key -> (version, arrival)
        self.calls: list[list[str]] = []  # one per on_keys call
        self.resets: list[float] = []
        self.flushed: list[bool] = []
        self.stats: dict[str, int] | None = None

    def start(self) -> Peer:
        self.process.start()
        self.wait(lambda: bool(self.publisher), 30.0, "the peer to start")
        return self

    def send(self, *command: object) -> None:
        self.commands.put(command)

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "keys":
            _, keys, versions, at = event
            self.calls.append(keys)
            for key, version in zip(keys, versions, strict=True):
                self.keys[key] = (version, at)
        elif kind == "reset":
            self.resets.append(event[1])
        elif kind == "ready":
            self.publisher = event[1]
        elif kind == "flushed":
            self.flushed.append(event[1])
        elif kind == "stats":
            self.stats = event[1]
        elif kind == "error":
            raise AssertionError(f"peer: {event[1]}")

    def poll(self, timeout: float = 0.0) -> None:
        """Take in what the peer reported, waiting up to ``timeout`` for the first event."""
        try:
            event = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except Empty:
            return
        self._handle(event)
        while True:
            try:
                self._handle(self.events.get_nowait())
            except Empty:
                return

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if not self.process.is_alive() and self.events.empty():
                raise AssertionError(f"the peer died (exit code {self.process.exitcode})")
            self.poll(min(left, 0.05))

    def pump(self, seconds: float) -> None:
        """Take in whatever the peer reports for ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(min(left, 0.05))

    def get_stats(self) -> dict[str, int]:
        self.stats = None
        self.send("stats")
        self.wait(lambda: self.stats is not None, 5.0, "the peer's stats")
        assert self.stats is not None
        return self.stats

    def close(self) -> None:
        if self.process.is_alive():
            self.send("close")
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.commands.close()
        self.events.close()


# ------------------------------------------------------------------ this process's bus


@dataclass
class Recorder:
    """What this process's bus handed its callbacks."""

    keys: dict[str, tuple[int, float]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    resets: list[float] = field(default_factory=list)
    tags: list[tuple[list[str], float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_keys(self, keys: list[str], versions: list[int]) -> None:
        now = time.monotonic()
        with self.lock:
            self.calls.append(keys)
            for key, version in zip(keys, versions, strict=True):
                self.keys[key] = (version, now)

    def on_reset(self) -> None:
        with self.lock:
            self.resets.append(time.monotonic())

    def on_tags(self, tags: list[str], at: float) -> None:
        with self.lock:
            self.tags.append((tags, at))

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.002)


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Buses, transports and peers to close after the test, whatever happened."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.close()


def local_bus(
    closing: list[Any], url: str, channel: str, recorder: Recorder, **options: Any
) -> InvalidationBus:
    transport = open_transport(url, channel=channel)
    bus = InvalidationBus(
        transport,
        on_keys=recorder.on_keys,
        on_reset=recorder.on_reset,
        on_tags=recorder.on_tags,
        name="local",
        **options,
    )
    closing.append(bus)
    bus.start()
    assert transport.ready.wait(10)  # type: ignore[attr-defined]
    return bus


def peer(closing: list[Any], url: str, channel: str, **options: Any) -> Peer:
    started = Peer(PeerSpec(url, channel, **options))
    closing.append(started)
    return started.start()


def channel() -> str:
    return f"bus-test-{uuid.uuid4().hex[:8]}"


def latency_ms(keys: dict[str, tuple[int, float]]) -> list[float]:
    return [(at - float(key.split(":", 2)[2])) * 1e3 for key, (_, at) in keys.items()]


# ------------------------------------------------------------------ (a) (b) across processes


def test_redis_keys_reach_another_process_fast(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    name = channel()
    here = Recorder()
    local_bus(closing, redis_server.url, name, here)
    sender = peer(closing, redis_server.url, name)
    sender.send("timed", 300, 1000.0)
    sender.wait(lambda: bool(sender.flushed), 10.0, "the peer to send")
    here.wait(lambda: len(here.keys) == 300, 5.0, "300 keys")
    lat = latency_ms(here.keys)
    print(f"redis: p50 {quantile(lat, 0.5):.2f} ms, p99 {quantile(lat, 0.99):.2f} ms")
    # Speed is benchmarks/bus_latency.py's job (goal p99 < 10 ms). Here only the median is
    # held, loosely: a shared CI box stalls single messages, but most must arrive at once.
    assert quantile(lat, 0.5) < 30.0
    assert not here.resets


def test_sqlite_file_carries_keys_between_processes(tmp_path: Path, closing: list[Any]) -> None:
    path = str(tmp_path / "shared.db")
    name = channel()
    here = Recorder()
    local_bus(closing, path, name, here)
    other = peer(closing, f"sqlite:///{path}", name)  # the same file by URL
    other.send("timed", 200, 1000.0)
    other.wait(lambda: bool(other.flushed), 10.0, "the peer to send")
    here.wait(lambda: len(here.keys) == 200, 5.0, "200 keys")
    lat = latency_ms(here.keys)
    print(f"sqlite: p50 {quantile(lat, 0.5):.2f} ms, p99 {quantile(lat, 0.99):.2f} ms")
    # The median shows the doorbell woke the receiver: polling alone would sit near the
    # 100 ms fallback period. The tail is benchmarks/bus_latency.py's job.
    assert quantile(lat, 0.5) < 50.0
    # And the other way, with versions.
    mine = local_bus(closing, path, name, Recorder())
    mine.publish_keys(["v:a", "v:b"], [7, 9])
    other.wait(lambda: {"v:a", "v:b"} <= other.keys.keys(), 5.0, "the versioned keys")
    assert other.keys["v:a"][0] == 7 and other.keys["v:b"][0] == 9
    assert not here.resets and not other.resets


# ------------------------------------------------------------------ (c) (d) outages


def test_client_kill_pubsub_resets_then_receives_again(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    name = channel()
    publisher = local_bus(closing, redis_server.url, name, Recorder())
    receiver = peer(closing, redis_server.url, name)
    publisher.publish_keys(["before"])
    receiver.wait(lambda: "before" in receiver.keys, 5.0, "the first key")
    killed_at = time.monotonic()
    killed = redis_command(redis_server.host, redis_server.port, "CLIENT", "KILL", "TYPE", "pubsub")
    assert isinstance(killed, int) and killed >= 2  # the peer's and ours
    receiver.wait(lambda: bool(receiver.resets), 2.0, "the peer's reset")
    i = 0
    while not any(key.startswith("after") for key in receiver.keys):
        assert time.monotonic() - killed_at < 2.0, "no message received within 2 s of the kill"
        publisher.publish_keys([f"after{i}"])
        i += 1
        receiver.pump(0.02)
    assert len(receiver.resets) == 1
    assert receiver.get_stats()["resets"] == 1


def test_killed_and_restarted_redis_loses_nothing(
    fresh_redis_server: RedisServer, closing: list[Any]
) -> None:
    server = fresh_redis_server
    name = channel()
    publisher = local_bus(closing, server.url, name, Recorder())
    receiver = peer(closing, server.url, name)
    publisher.publish_keys(["before"])
    receiver.wait(lambda: "before" in receiver.keys, 5.0, "the first key")

    server.kill()
    outage = [f"outage{i}" for i in range(20)]
    for key in outage:
        publisher.publish_keys([key])
    assert not publisher.flush(0.3)  # nowhere to send them
    published_before = publisher.stats.published
    assert publisher.stats.send_errors >= 1
    outage_done = time.monotonic()
    server.start()

    assert publisher.flush(5.0), "the publisher did not send its backlog after the restart"
    assert publisher.stats.published > published_before
    receiver.wait(lambda: bool(receiver.resets), 5.0, "the peer's reset after reconnecting")
    post = [f"post{i}" for i in range(5)]
    publisher.publish_keys(post)
    receiver.wait(lambda: set(post) <= receiver.keys.keys(), 3.0, "keys sent after the restart")
    # Every outage key reached the peer, or the peer dropped its whole L1 after they were
    # published: nothing was lost either way. (Which of the two depends on whether the
    # peer resubscribed before the publisher's retry; both are correct.)
    missing = set(outage) - receiver.keys.keys()
    assert not missing or receiver.resets[0] > outage_done
    receiver.pump(0.2)
    assert len(receiver.resets) == 1


def test_a_paused_server_is_noticed_by_the_health_check(
    fresh_redis_server: RedisServer, closing: list[Any]
) -> None:
    """SIGSTOP: the subscription stays open and says nothing. The receiver's PING goes
    unanswered, it reconnects once the server is back, and resets."""
    server = fresh_redis_server
    here = Recorder()

    def bus(recorder: Recorder) -> tuple[InvalidationBus, RedisTransport]:
        transport = RedisTransport(
            server.url, "paused", socket_timeout=0.4, health_check_interval=0.2
        )
        made = InvalidationBus(transport, on_keys=recorder.on_keys, on_reset=recorder.on_reset)
        closing.append(made)
        made.start()
        assert transport.ready.wait(5)
        return made, transport

    publisher, _ = bus(Recorder())
    _, receiving = bus(here)
    server.pause()
    Recorder().wait(lambda: not receiving.ready.is_set(), 3.0, "the receiver to notice")
    publisher.publish_keys(["during"])
    server.resume()
    here.wait(lambda: bool(here.resets), 3.0, "the reset after the pause")
    publisher.publish_keys(["after"])
    here.wait(lambda: "after" in here.keys, 3.0, "a message after the pause")
    assert publisher.flush(1.0)


# ------------------------------------------------------------------ (e) (f) (g) trust


def test_signed_bus_rejects_forged_and_unsigned_messages(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    name = channel()
    receiver = peer(closing, redis_server.url, name, secret=SECRET)
    raw = redis.Redis.from_url(redis_server.url)
    closing.append(raw)

    def message(key: str, seq: int = 1) -> Message:
        return Message(uuid.uuid4().hex, 1, seq, keys=(key,), versions=(0,), sent_at=time.time())

    raw.publish(name, encode(message("unsigned"), None, b""))
    raw.publish(name, encode(message("forged"), Signer.of(WRONG_SECRET), b""))
    raw.publish(name, b"\x00garbage")
    receiver.wait(lambda: len(receiver.resets) == 3, 5.0, "three resets")
    legit = local_bus(closing, redis_server.url, name, Recorder(), signer=Signer.of(SECRET))
    legit.publish_keys(["legit"])
    receiver.wait(lambda: "legit" in receiver.keys, 5.0, "the signed message")
    assert set(receiver.keys) == {"legit"}
    stats = receiver.get_stats()
    assert stats["rejected"] == 3
    assert stats["received"] == 1


def test_gaps_reset_replays_are_ignored_and_old_messages_lag(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    name = channel()
    receiver = peer(closing, redis_server.url, name, secret=SECRET)
    raw = redis.Redis.from_url(redis_server.url)
    closing.append(raw)
    signer = Signer.of(SECRET)  # the test's own signer, with the bus's key

    def payload(seq: int, key: str, publisher: str = "injector", sent_at: float = 0.0) -> bytes:
        message = Message(
            publisher, 42, seq, keys=(key,), versions=(seq,), sent_at=sent_at or time.time()
        )
        return encode(message, signer, b"")

    second = payload(2, "s2")
    for data in (payload(1, "s1"), second, payload(5, "s5")):
        raw.publish(name, data)
    receiver.wait(lambda: "s5" in receiver.keys, 5.0, "the message after the gap")
    assert len(receiver.resets) == 1  # the gap 2 -> 5
    raw.publish(name, second)  # a replay of a message already applied
    raw.publish(name, payload(3, "s3"))  # an old number, never seen: still too old
    raw.publish(name, payload(5, "s5-again"))
    raw.publish(name, payload(6, "s6"))
    receiver.wait(lambda: "s6" in receiver.keys, 5.0, "the marker")
    assert set(receiver.keys) == {"s1", "s2", "s5", "s6"}
    assert len(receiver.resets) == 1
    # A message sent long ago (a receiver that fell behind): dropped for a reset.
    raw.publish(name, payload(1, "stale", publisher="late", sent_at=time.time() - 60))
    receiver.wait(lambda: len(receiver.resets) == 2, 5.0, "the lag reset")
    stats = receiver.get_stats()
    assert "stale" not in receiver.keys
    assert (stats["gaps"], stats["lagged"], stats["rejected"]) == (1, 1, 0)


def test_own_messages_are_ignored(redis_server: RedisServer, closing: list[Any]) -> None:
    name = channel()
    here = Recorder()
    mine = local_bus(closing, redis_server.url, name, here)
    other = peer(closing, redis_server.url, name)
    mine.publish_keys(["from-here"])
    other.send("publish", ["from-there"])
    other.wait(lambda: "from-here" in other.keys, 5.0, "our key at the peer")
    here.wait(lambda: "from-there" in here.keys, 5.0, "the peer's key here")
    other.pump(0.1)
    time.sleep(0.05)
    assert set(here.keys) == {"from-there"}
    assert set(other.keys) == {"from-here"}
    assert mine.stats.received == 1
    assert mine.stats.published == 1


# ------------------------------------------------------------------ (h) batching


def test_a_tight_loop_of_publishes_is_batched(
    redis_server: RedisServer, closing: list[Any]
) -> None:
    name = channel()
    here = Recorder()
    local_bus(closing, redis_server.url, name, here)
    sender = peer(closing, redis_server.url, name)
    sender.send("burst", 1000, "b")
    sender.wait(lambda: bool(sender.flushed), 10.0, "the burst")
    assert sender.flushed == [True]
    here.wait(lambda: len(here.keys) == 1000, 5.0, "1,000 keys")
    stats = sender.get_stats()
    assert stats["published_keys"] == 1000
    assert stats["published"] == len(here.calls) <= 100, stats


# ------------------------------------------------------------------ one process


class Hub:
    """Payloads in memory, for the buses of one process; ``down`` fails every publish."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.down = False
        self.changed = threading.Condition()


class Loopback:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.ready = threading.Event()

    def publish(self, payload: bytes) -> None:
        with self.hub.changed:
            if self.hub.down:
                raise ConnectionError("the hub is down")
            self.hub.payloads.append(payload)
            self.hub.changed.notify_all()

    def run(
        self,
        deliver: Callable[[bytes], None],
        reset: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        with self.hub.changed:
            seen = len(self.hub.payloads)
        self.ready.set()
        while not stop.is_set():
            with self.hub.changed:
                self.hub.changed.wait(0.05)
                fresh = self.hub.payloads[seen:]
                seen += len(fresh)
            for payload in fresh:
                deliver(payload)

    def close(self) -> None:
        pass


def loop_bus(closing: list[Any], hub: Hub, recorder: Recorder, **options: Any) -> InvalidationBus:
    transport = Loopback(hub)
    bus = InvalidationBus(
        transport,
        on_keys=recorder.on_keys,
        on_reset=recorder.on_reset,
        on_tags=recorder.on_tags,
        **options,
    )
    closing.append(bus)
    bus.start()
    assert transport.ready.wait(5)
    return bus


def test_a_long_outage_collapses_the_backlog_into_one_clear(closing: list[Any]) -> None:
    hub = Hub()
    there = Recorder()
    sender = loop_bus(closing, hub, Recorder())
    loop_bus(closing, hub, there)
    hub.down = True
    sender.publish_keys([f"k{i}" for i in range(60_000)])
    Recorder().wait(lambda: sender.stats.send_errors >= 1, 2.0, "a failed publish")
    sender.publish_tags(["t"], 123.0)
    sender.publish_keys([f"j{i}" for i in range(60_000)])  # 120,000 waiting: too many
    assert not sender.flush(0.1)
    hub.down = False
    assert sender.flush(3.0)
    there.wait(lambda: bool(there.resets), 2.0, "the clear")
    assert not there.keys  # the keys went into the clear
    assert there.tags == [(["t"], 123.0)]
    assert sender.stats.published == 1


def test_batches_respect_max_batch_and_keep_the_highest_version(closing: list[Any]) -> None:
    hub = Hub()
    there = Recorder()
    sender = loop_bus(closing, hub, Recorder(), max_batch=10, batch_delay=0.1)
    loop_bus(closing, hub, there)
    sender.publish_keys(["a"], [3])
    sender.publish_keys(["a", "b"], [5, 1])
    sender.publish_keys(["a"], [4])
    sender.publish_keys([f"k{i}" for i in range(23)])
    sender.publish_tags(["t1"], 100.0)
    sender.publish_tags(["t2"], 50.0)
    sender.publish_clear()
    assert sender.flush(2.0)
    there.wait(lambda: len(there.keys) == 25 and bool(there.tags), 2.0, "every key")
    assert [len(call) for call in there.calls] == [10, 10, 5]
    assert there.keys["a"][0] == 5 and there.keys["b"][0] == 1
    assert there.tags == [(["t1", "t2"], 100.0)]
    assert len(there.resets) == 1  # the clear
    assert sender.stats.published == 3


def test_callback_errors_do_not_stop_the_receiver(closing: list[Any]) -> None:
    hub = Hub()
    seen: list[str] = []

    def on_keys(keys: list[str], versions: list[int]) -> None:
        seen.extend(keys)
        raise RuntimeError("a broken callback")

    def on_reset() -> None:
        raise RuntimeError("another")

    sender = loop_bus(closing, hub, Recorder())
    transport = Loopback(hub)
    receiver = InvalidationBus(transport, on_keys=on_keys, on_reset=on_reset)
    closing.append(receiver)
    receiver.start()
    assert transport.ready.wait(5)
    sender.publish_keys(["one"])
    sender.publish_clear()
    assert sender.flush(1.0)
    time.sleep(0.05)
    sender.publish_keys(["two"])
    Recorder().wait(lambda: seen == ["one", "two"], 2.0, "both keys")


def test_sqlite_receiver_that_fell_behind_resets(tmp_path: Path, closing: list[Any]) -> None:
    path = tmp_path / "bus.db"
    resets: list[str] = []
    receiver = SQLiteTransport(path, "c", keep_seconds=0.2)
    publisher = SQLiteTransport(path, "c", keep_seconds=0.2)
    closing += [publisher, receiver]
    stop = threading.Event()
    delivered: list[bytes] = []
    blocked = threading.Event()

    def deliver(payload: bytes) -> None:
        delivered.append(payload)
        if payload == b"block":
            blocked.wait(5)  # the receiver is held up; rows are trimmed meanwhile

    thread = threading.Thread(target=receiver.run, args=(deliver, resets.append, stop))
    thread.start()
    try:
        assert receiver.ready.wait(5)
        publisher.publish(b"block")
        Recorder().wait(lambda: delivered == [b"block"], 2.0, "the first row")
        publisher.publish(b"lost")
        time.sleep(0.25)
        publisher.trim()  # "lost" is older than keep_seconds: gone unread
        publisher.publish(b"next")
        blocked.set()
        Recorder().wait(lambda: b"next" in delivered, 2.0, "the next row")
        assert b"lost" not in delivered
        assert resets and all(reason.startswith("fell behind") for reason in resets)
    finally:
        blocked.set()
        stop.set()
        thread.join(2)
    assert not thread.is_alive()


def test_publishers_unheard_for_ten_minutes_are_forgotten(closing: list[Any]) -> None:
    hub = Hub()
    there = Recorder()
    receiver = loop_bus(closing, hub, there)
    sender = Loopback(hub)

    def send(seq: int, key: str) -> None:
        message = Message("quiet", 7, seq, keys=(key,), versions=(0,), sent_at=time.time())
        sender.publish(encode(message, None, b""))

    send(1, "first")
    there.wait(lambda: "first" in there.keys, 2.0, "the first message")
    assert ("quiet", 7) in receiver._publishers
    receiver._next_sweep = 0.0  # sweep at the next message, as if 10 minutes went by:
    receiver._publishers["quiet", 7].heard -= bus_module.FORGET_AFTER + 1
    send(9, "much-later")  # a new start, not a gap
    there.wait(lambda: "much-later" in there.keys, 2.0, "the later message")
    assert not there.resets
    assert receiver.stats.gaps == 0


def test_close_is_idempotent_and_stops_the_threads(tmp_path: Path) -> None:
    transport = SQLiteTransport(tmp_path / "bus.db", "c")
    bus = InvalidationBus(transport, on_keys=lambda k, v: None, on_reset=lambda: None, name="x")
    bus.start()
    names = {thread.name for thread in threading.enumerate()}
    assert {"x-sender", "x-receiver"} <= names
    bus.publish_keys(["k"])
    started = time.monotonic()
    bus.close()
    bus.close()
    assert time.monotonic() - started < 1.5
    assert not {"x-sender", "x-receiver"} & {thread.name for thread in threading.enumerate()}
    with pytest.raises(CacheClosedError):
        bus.publish_keys(["k"])
    assert bus.stats.published == 1


def test_redis_transport_from_a_client(redis_server: RedisServer, closing: list[Any]) -> None:
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=0)
    closing.append(client)
    transport = RedisTransport.from_client(client, "from-client", socket_timeout=1.0)
    got: list[bytes] = []
    stop = threading.Event()
    thread = threading.Thread(target=transport.run, args=(got.append, print, stop))
    thread.start()
    try:
        assert transport.ready.wait(5)
        transport.publish(b"hello")
        Recorder().wait(lambda: got == [b"hello"], 2.0, "the payload")
    finally:
        stop.set()
        thread.join(2)
        transport.close()
    assert not thread.is_alive()


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("redis://127.0.0.1:6399/0", "RedisTransport", "127.0.0.1:6399"),
        ("rediss://user:secret@example.com:6380", "RedisTransport", "example.com:6380"),
        ("unix:///tmp/redis.sock", "RedisTransport", "/tmp/redis.sock"),
        ("sqlite:///relative/bus.db", "SQLiteTransport", "relative/bus.db"),
        ("sqlite:////absolute/bus.db", "SQLiteTransport", "/absolute/bus.db"),
        ("/plain/path/bus.db", "SQLiteTransport", "/plain/path/bus.db"),
        ("relative.db", "SQLiteTransport", "relative.db"),
    ],
)
def test_open_transport_picks_by_url(url: str, kind: str, where: str) -> None:
    transport = open_transport(url, channel="c")
    try:
        assert type(transport).__name__ == kind
        shown = str(getattr(transport, "where", None) or getattr(transport, "path", ""))
        assert shown == where
        assert "secret" not in repr(transport)
    finally:
        transport.close()


@pytest.mark.parametrize("url", ["memcached://h:11211", "http://x", "sqlite://bus.db", ""])
def test_open_transport_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigurationError, match="redis://") as info:
        open_transport(url, channel="c")
    assert "sqlite" in str(info.value)


def test_the_bus_package_stays_below_the_hierarchy_and_tiers() -> None:
    from ..unit.test_import_cycles import import_graph

    graph = import_graph()
    reached: set[str] = set()
    todo = [name for name in graph if name.startswith("stratacache.coherence")]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edge.target for edge in graph[name])
    wrong = sorted(
        name
        for name in reached
        if name.startswith(("stratacache.hierarchy", "stratacache.tiers")) or name == "stratacache"
    )
    assert not wrong, f"stratacache.coherence reaches {wrong}"

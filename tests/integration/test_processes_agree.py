"""Every process agrees: several real OS processes (spawned), each with its own L1, over a
real Redis (started here) or the embedded SQLite file, and a SQLite origin.

* invalidation reaches the other processes, quickly;
* concurrent writers from several processes leave every level of every process agreeing
  with the origin after quiescence;
* N processes missing one key cost one origin load (a lease on the shared level);
* a reload that started before a write in another process never puts the old value back;
* the bus connection killed during conflicting writes: every process reads the last
  value within the recovery delay plus 1 s;
* a replayed older envelope is refused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stratacache import Cache, MemoryTier
from stratacache.origin import SQLOrigin
from stratacache.tiers.redis import RedisTier

from ..servers import RedisServer, redis_command
from .origin_table import VERSIONED, make_origin_db, origin_rows

SPAWN = mp.get_context("spawn")


def shared_level(kind: str, tmp: Path, redis_url: str) -> str:
    return redis_url if kind == "redis" else f"sqlite:///{tmp}/l2.db"


def build(level2: str, origin_url: str, **options: Any) -> Cache:
    """A cache over ``level2`` and the origin table (numbering its rows itself when the
    URL says so: see origin_table.VERSIONED)."""
    url, versioned, _ = origin_url.partition(VERSIONED)
    origin = SQLOrigin(
        url, "items", value_column="value", version_column="version" if versioned else None
    )
    return Cache([MemoryTier(10_000), level2], origin, **options)


# --------------------------------------------------------------------------- workers


def _writer(
    level2: str,
    origin_url: str,
    worker: int,
    keys: int,
    seconds: float,
    q: Any,
    inbox: Any,
    options: dict[str, Any],
) -> None:
    import random
    import threading

    cache = build(level2, origin_url, **options)
    stop = time.monotonic() + seconds
    errors: list[str] = []

    def loop(thread: int) -> None:
        rng = random.Random(worker * 100 + thread)
        n = 0
        while time.monotonic() < stop:
            key = f"k{rng.randrange(keys)}"
            n += 1
            try:
                cache.set(key, f"w{worker}t{thread}n{n}")
                if rng.random() < 0.5:
                    cache.get(key)
            except Exception as exc:  # reported to the parent, which fails the test
                errors.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # under write-behind: until the origin has every write (and the levels were checked)
    while cache.stats().write_behind.get("depth", 0) and time.monotonic() < stop + 60:
        time.sleep(0.01)
    q.put(("written", worker, errors[:3]))
    # quiescence: the parent says when every writer is done, then this process reads
    # every key through its own L1
    assert inbox.get(timeout=120) == "read"
    time.sleep(0.2)  # the bus's last messages
    q.put({f"k{i}": cache.get(f"k{i}") for i in range(keys)})
    cache.close()


def _reader_after_quiescence(
    level2: str, origin_url: str, keys: int, inbox: Any, outbox: Any, seconds: float
) -> None:
    cache = build(level2, origin_url)
    # warm this process's L1 with whatever is there during the writes
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for i in range(keys):
            cache.get(f"k{i}")
    assert inbox.get(timeout=120) == "read"
    time.sleep(0.2)  # the bus's last messages
    outbox.put({f"k{i}": cache.get(f"k{i}") for i in range(keys)})
    cache.close()


def _one_key_miss(level2: str, origin_url: str, counter: str, start: float, q: Any) -> None:
    def load(keys: list[str]) -> dict[str, str]:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # a slow origin: the others arrive while this loads
        return {k: f"loaded:{k}" for k in keys}

    cache = Cache([MemoryTier(100), level2], load)
    time.sleep(max(0.0, start - time.time()))
    q.put(cache.get("hot"))
    cache.close()


def _watch(level2: str, origin_url: str, key: str, ready: Any, q: Any, seconds: float) -> None:
    cache = build(level2, origin_url)
    cache.get(key)
    ready.put("ready")
    seen: dict[str, float] = {}
    stop = time.time() + seconds
    while time.time() < stop:
        value = cache.get(key)
        if value not in seen:
            seen[value] = time.time()
        time.sleep(0.0005)
    q.put(seen)
    cache.close()


# --------------------------------------------------------------------------- tests


@pytest.fixture
def redis_url() -> Any:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_write_reaches_the_l1_of_other_processes(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    origin_url = make_origin_db(tmp_path / "origin.db", keys=1)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    ready, q = SPAWN.Queue(), SPAWN.Queue()
    watchers = [
        SPAWN.Process(target=_watch, args=(level2, origin_url, "k0", ready, q, 4.0))
        for _ in range(2)
    ]
    for proc in watchers:
        proc.start()
    for _ in watchers:
        assert ready.get(timeout=60) == "ready"
    cache = build(level2, origin_url)
    sent: dict[str, float] = {}
    for i in range(20):
        value = f"new{i}"
        sent[value] = time.time()
        cache.set("k0", value)
        time.sleep(0.05)
    results = [q.get(timeout=60) for _ in watchers]
    for proc in watchers:
        proc.join(timeout=30)
    cache.close()
    for seen in results:
        missing = [v for v in sent if v not in seen]
        # a watcher may skip a value that was overwritten before it looked; the last
        # must arrive, and every value seen must arrive quickly
        assert "new19" in seen, (seen, missing)
        delays = [seen[v] - sent[v] for v in sent if v in seen]
        assert len(delays) >= 15
        assert max(delays) < 0.25, sorted(delays)[-3:]


def writers_then_readers(
    level2: str,
    origin_url: str,
    keys: int,
    during: Callable[[], None] = lambda: None,
    **options: Any,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Two writer processes (3 threads each, their caches built with ``options``) and a
    reader process over ``level2`` for 3 s, ``during`` run in the middle; once every
    writer is done (its write-behind queue drained), each process reads every key
    through its own L1. Returns the origin's rows and what each process read."""
    origin_path = Path(origin_url.partition(VERSIONED)[0].removeprefix("sqlite:///"))
    writer_q = [SPAWN.Queue() for _ in range(2)]
    writer_in = [SPAWN.Queue() for _ in range(2)]
    reader_in, reader_out = SPAWN.Queue(), SPAWN.Queue()
    writers = [
        SPAWN.Process(
            target=_writer,
            args=(level2, origin_url, w, keys, 3.0, writer_q[w], writer_in[w], options),
        )
        for w in range(2)
    ]
    reader = SPAWN.Process(
        target=_reader_after_quiescence,
        args=(level2, origin_url, keys, reader_in, reader_out, 3.0),
    )
    for proc in [*writers, reader]:
        proc.start()
    during()
    for w, q in enumerate(writer_q):
        tag, worker, errors = q.get(timeout=120)
        assert tag == "written" and worker == w and errors == []
    truth = origin_rows(origin_path)  # every writer is done: the origin is the truth now
    reader_in.put("read")
    for inbox in writer_in:
        inbox.put("read")
    seen = [reader_out.get(timeout=60), *(q.get(timeout=60) for q in writer_q)]
    for proc in [*writers, reader]:
        proc.join(timeout=60)
    assert truth != {f"k{i}": "v0" for i in range(keys)}  # the writers did write
    return truth, seen


def disagreements(truth: dict[str, str], seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (got[k], truth[k]) for k in truth if got[k] != truth[k]} for got in seen]


@pytest.mark.parametrize("versioned", [False, True], ids=["counter", "origin-versions"])
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_concurrent_writers_in_several_processes_agree_with_the_origin(
    tmp_path: Path, redis_url: Any, kind: str, versioned: bool
) -> None:
    origin_url = make_origin_db(tmp_path / "origin.db", keys=40, versioned=versioned)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    truth, seen = writers_then_readers(level2, origin_url, 40)
    late = build(level2, origin_url)  # a process that starts afterwards
    seen.append({key: late.get(key) for key in truth})
    late.close()
    assert disagreements(truth, seen) == [{}] * 4


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_concurrent_write_behind_writers_in_several_processes_agree_with_the_origin(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    """Each writer's flusher stores its writes when it gets to them, so the origin can
    get two processes' writes of a key in the opposite order from the levels; after
    each store the flusher compares, and a key the levels hold otherwise is reloaded."""
    origin_url = make_origin_db(tmp_path / "origin.db", keys=30)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    truth, seen = writers_then_readers(
        level2, origin_url, 30, write="behind", journal=str(tmp_path / "journal")
    )
    late = build(level2, origin_url)
    seen.append({key: late.get(key) for key in truth})
    late.close()
    assert disagreements(truth, seen) == [{}] * 4


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_four_processes_missing_one_key_cause_one_load(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    level2 = shared_level(kind, tmp_path, redis_url.url)
    counter = str(tmp_path / "loads.txt")
    Path(counter).write_text("")
    q = SPAWN.Queue()
    start = time.time() + 3.0  # every process is up and imported by then
    procs = [
        SPAWN.Process(target=_one_key_miss, args=(level2, "", counter, start, q)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    answers = [q.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert answers == ["loaded:hot"] * 4
    loads = Path(counter).read_text().split()
    assert len(loads) == 1, loads


@pytest.mark.parametrize("versioned", [False, True], ids=["counter", "origin-versions"])
def test_a_reload_from_before_a_write_in_another_process_is_not_filled_back(
    tmp_path: Path, redis_url: Any, versioned: bool
) -> None:
    # B misses and loads v0 slowly; A's set(v1) lands meanwhile; B's fill must be dropped.
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path, keys=1, versioned=versioned)
    slow = SQLOrigin(
        origin_url.partition(VERSIONED)[0],
        "items",
        value_column="value",
        version_column="version" if versioned else None,
    )
    loading = []

    def slow_load(keys: list[str]) -> Any:
        got = slow.load_many(keys)
        loading.append(True)
        time.sleep(0.3)
        return got

    b = Cache([MemoryTier(100), redis_url.url], slow_load)
    a = build(redis_url.url, origin_url)
    import threading

    reader = threading.Thread(target=lambda: b.get("k0"))
    reader.start()
    while not loading:
        time.sleep(0.005)
    a.set("k0", "v1")
    reader.join()
    time.sleep(0.1)
    fresh = build(redis_url.url, origin_url)
    assert origin_rows(origin_path)["k0"] == "v1"
    assert fresh.get("k0") == "v1"  # the shared level
    assert b.get("k0") == "v1"  # and B's own L1
    for cache in (a, b, fresh):
        cache.close()


def test_killing_the_bus_connection_during_conflicting_writes(
    tmp_path: Path, redis_url: Any
) -> None:
    origin_url = make_origin_db(tmp_path / "origin.db", keys=20)

    def kill_the_bus_connections() -> None:
        time.sleep(2.0)  # in the middle of the writes
        for _ in range(3):
            redis_command(*redis_url.address, "CLIENT", "KILL", "TYPE", "pubsub")
            time.sleep(0.3)

    truth, seen = writers_then_readers(redis_url.url, origin_url, 20, kill_the_bus_connections)
    # the readers read 0.2 s after the writers stopped: well within the bus's recovery
    # delay (a reconnect resets L1) plus 1 s
    assert disagreements(truth, seen) == [{}] * 3


def test_an_older_envelope_copied_back_is_refused(tmp_path: Path, redis_url: Any) -> None:
    import redis

    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path, keys=1)
    secret = "stratacache-test-signing-key-0123"

    def signed() -> Cache:
        origin = SQLOrigin(origin_url, "items", value_column="value")
        return Cache([MemoryTier(100), RedisTier(redis_url.url, signing_key=secret)], origin)

    a = signed()
    b = signed()  # another process's cache: it hears a's writes on the bus
    a.set("k0", "balance:100")
    raw = redis.Redis.from_url(redis_url.url)
    name = a.levels[1].storage_name("k0")
    old = raw.get(name)
    a.set("k0", "balance:0")
    assert a._hierarchy.announce.flush(2.0)
    time.sleep(0.2)
    raw.set(name, old)  # the replay: a validly signed envelope of the same key
    assert b.get("k0") == "balance:0"
    assert b.stats().levels[1].outdated >= 1
    a.levels[0].clear()  # as if L1 had evicted it
    assert a.get("k0") == "balance:0"
    # the reload repaired the shared level with a newer version
    fresh = signed()
    assert fresh.get("k0") == "balance:0"
    fresh.close()
    raw.close()
    a.close()
    b.close()


def _tag_watcher(level2: str, origin_url: str, ready: Any, go: Any, q: Any) -> None:
    cache = build(level2, origin_url)
    assert cache.get("k0") == "tagged-0"  # in this process's L1 now
    assert cache.get("k1") == "tagged-1"
    assert cache.get("k2") == "plain-2"
    ready.put("ready")
    assert go.get(timeout=60) == "check"
    time.sleep(0.2)
    q.put({k: cache.get(k) for k in ("k0", "k1", "k2")})
    cache.close()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_invalidate_tag_reaches_every_level_and_process(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path, keys=3)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    writer = build(level2, origin_url)
    writer.set("k0", "tagged-0", tags=["team:1"])
    writer.set("k1", "tagged-1", tags=["team:1", "other"])
    writer.set("k2", "plain-2")
    ready, go, q = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Queue()
    watcher = SPAWN.Process(target=_tag_watcher, args=(level2, origin_url, ready, go, q))
    watcher.start()
    assert ready.get(timeout=60) == "ready"
    # the origin changes behind the cache's back, then the tag is invalidated
    conn = sqlite3.connect(origin_path)
    conn.executemany(
        "UPDATE items SET value = ? WHERE key = ?", [("fresh-0", "k0"), ("fresh-1", "k1")]
    )
    conn.execute("UPDATE items SET value = 'fresh-2' WHERE key = 'k2'")
    conn.commit()
    conn.close()
    writer.invalidate_tag("team:1")
    go.put("check")
    seen = q.get(timeout=60)
    watcher.join(timeout=30)
    # tagged entries reload from the origin everywhere; the untagged one stays cached
    assert seen == {"k0": "fresh-0", "k1": "fresh-1", "k2": "plain-2"}
    assert {k: writer.get(k) for k in ("k0", "k1", "k2")} == seen
    # a process that starts now reads the shared level: the stale entries read as misses
    late = build(level2, origin_url)
    assert late.get("k1") == "fresh-1"
    # entries written after the invalidation carry the tag again and are served
    writer.set("k0", "again-0", tags=["team:1"])
    assert late.get("k0") == "again-0"
    late.close()
    writer.close()


def test_tags_on_an_in_process_only_cache() -> None:
    cache = Cache([MemoryTier(100)])
    cache.set("a", 1, tags=["t"])
    cache.set("b", 2)
    cache.invalidate_tag("t")
    assert cache.get("a", None) is None and cache.get("b") == 2
    with pytest.raises(Exception, match="list of strings"):
        cache.set("c", 3, tags="t")


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_clear_and_write_around_reach_other_processes(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path, keys=3)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    ready, q = SPAWN.Queue(), SPAWN.Queue()
    around = build(level2, origin_url, write="around")
    watcher = SPAWN.Process(target=_watch, args=(level2, origin_url, "k1", ready, q, 2.5))
    watcher.start()
    assert ready.get(timeout=60) == "ready"
    time.sleep(0.3)
    around.set("k1", "around-1")  # the origin, then every level of every process
    time.sleep(0.5)
    around.clear()  # and clear() reaches every process too
    seen = q.get(timeout=60)
    watcher.join(timeout=30)
    assert "around-1" in seen
    assert origin_rows(origin_path)["k1"] == "around-1"
    around.close()


def _hold_lease_forever(level2: str, started: Any) -> None:
    def load(keys: list[str]) -> dict[str, str]:
        started.put("loading")
        time.sleep(3600)  # killed with the lease held
        return {}

    Cache([MemoryTier(10), level2], load).get("orphan")


def _stopped_writer(level2: str, origin_url: str, started: Any) -> None:
    class Stuck(SQLOrigin):
        def store_many(self, items: Any) -> Any:
            started.put("locked")
            time.sleep(3600)  # SIGSTOPped here, holding the write lock
            return super().store_many(items)

    Cache([MemoryTier(10), level2], Stuck(origin_url, "items", value_column="value")).set(
        "k0", "never"
    )


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_lease_left_by_a_killed_process_expires(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    level2 = shared_level(kind, tmp_path, redis_url.url)
    started = SPAWN.Queue()
    holder = SPAWN.Process(target=_hold_lease_forever, args=(level2, started))
    holder.start()
    assert started.get(timeout=60) == "loading"
    assert holder.pid is not None
    os.kill(holder.pid, 9)
    holder.join(timeout=30)
    loads: list[str] = []
    cache = Cache([MemoryTier(10), level2], lambda keys: loads.extend(keys) or {"orphan": 1})
    began = time.monotonic()
    assert cache.get("orphan") == 1
    waited = time.monotonic() - began
    assert loads == ["orphan"]
    assert waited < 3.0 + 1.0  # at most the lease's lifetime (3 s by default), then loads
    stats = cache.stats()
    assert (stats.lease_retakes, stats.lease_waits, stats.lease_wait_timeouts) == (1, 0, 0)
    cache.close()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_write_lock_held_by_a_stopped_process_expires(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    origin_path = tmp_path / "origin.db"
    origin_url = make_origin_db(origin_path, keys=1)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    started = SPAWN.Queue()
    stopped = SPAWN.Process(target=_stopped_writer, args=(level2, origin_url, started))
    stopped.start()
    assert started.get(timeout=60) == "locked"
    assert stopped.pid is not None
    os.kill(stopped.pid, 19)  # SIGSTOP
    try:
        cache = build(level2, origin_url)
        began = time.monotonic()
        cache.set("k0", "mine")
        waited = time.monotonic() - began
        assert 0.5 < waited < 2.0 + 1.0  # waited for the lock, at most its lifetime
        assert cache.stats().lock_waits == 1
        assert cache.get("k0") == "mine" and origin_rows(origin_path)["k0"] == "mine"
        cache.close()
    finally:
        os.kill(stopped.pid, 9)
        stopped.join(timeout=30)


def test_a_paused_bus_server_makes_the_bus_silent_and_resets_l1(tmp_path: Path) -> None:
    server = RedisServer().start()
    try:
        origin_url = make_origin_db(tmp_path / "origin.db", keys=1)
        cache = build(server.url, origin_url)
        assert cache.get("k0") == "v0"
        assert cache.stats().bus["healthy"] is True
        server.pause()
        deadline = time.monotonic() + 3.0
        while cache.stats().bus["healthy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = cache.stats().bus
        assert stats["healthy"] is False and stats["resets"] == 1
        assert cache.levels[0].get_many(["k0"]) == {}  # L1 dropped: it may be stale now
        server.resume()
        deadline = time.monotonic() + 5.0
        while not cache.stats().bus["healthy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = cache.stats().bus
        assert stats["healthy"] is True and stats["resets"] == 2  # again: it may have missed some
        cache.close()
    finally:
        server.stop()


def _slow_writer(level2: str, origin_url: str, started: Any) -> None:
    class Slow(SQLOrigin):
        def store_many(self, items: Any) -> Any:
            started.put("storing")
            time.sleep(1.2)  # longer than lock_ttl: another writer goes ahead meanwhile
            return super().store_many(items)

    origin = Slow(origin_url, "items", value_column="value")
    Cache([MemoryTier(10), level2], origin, lock_ttl=0.5).set("k0", "slow")


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_write_that_outlives_its_lock_cannot_leave_the_cache_disagreeing(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    # The slow write reaches the origin last, after another writer that waited out the
    # lock; its level write then finds its lock gone and drops the key (with a version
    # floor, so the other writer's value cannot land after it): everyone reads the origin.
    origin_url = make_origin_db(tmp_path / "origin.db", keys=1)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    started = SPAWN.Queue()
    slow = SPAWN.Process(target=_slow_writer, args=(level2, origin_url, started))
    slow.start()
    assert started.get(timeout=60) == "storing"
    fast = build(level2, origin_url, lock_ttl=0.5)
    fast.set("k0", "fast")  # waits out the lock, then goes ahead
    slow.join(timeout=30)
    time.sleep(0.2)
    truth = origin_rows(tmp_path / "origin.db")["k0"]
    assert truth == "slow"  # the slow one committed last
    fresh = build(level2, origin_url)
    assert fresh.get("k0") == truth and fast.get("k0") == truth
    fast.close()
    fresh.close()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_lease_waiter_gets_a_stale_value_under_the_fail_safe(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    import threading

    level2 = shared_level(kind, tmp_path, redis_url.url)
    loads: dict[str, int] = {"holder": 0, "waiter": 0}

    def loader(who: str, delay: float) -> Any:
        def load(keys: list[str]) -> dict[str, str]:
            loads[who] += 1
            time.sleep(delay)
            return {key: f"fresh-{who}" for key in keys}

        return load

    options: dict[str, Any] = {"fail_safe_max_age": 60, "soft_timeout": 0.1}
    holder = Cache([MemoryTier(10), level2], loader("holder", 1.0), **options)
    waiter = Cache([MemoryTier(10), level2], loader("waiter", 0.0), **options)
    holder.set("k", "old", ttl=0.5)
    time.sleep(0.7)  # expired everywhere, kept for the fail-safe
    slow = threading.Thread(target=lambda: holder.get("k"))
    slow.start()
    while not loads["holder"]:
        time.sleep(0.005)
    began = time.monotonic()
    assert waiter.get("k") == "old"  # the other process's load is late: the stale value
    assert time.monotonic() - began < 0.6
    assert loads["waiter"] == 0 and waiter.stats().stale_served == 1
    assert waiter.stats().lease_wait_timeouts == 1  # its wait ran out at soft_timeout
    slow.join()  # the holder was served the stale value too; its load goes on
    deadline = time.monotonic() + 5.0
    while waiter.get("k") != "fresh-holder" and time.monotonic() < deadline:
        time.sleep(0.05)  # stale meanwhile, never a load of its own
    assert waiter.get("k") == "fresh-holder"  # the holder's load landed for everyone
    assert loads == {"holder": 1, "waiter": 0}
    holder.close()
    waiter.close()


def _forked_reader(cache: Cache, ready: Any, q: Any) -> None:
    assert cache.get("k0") == "before"  # L1 was dropped in the child: read from L2
    ready.put("ready")
    deadline = time.monotonic() + 5.0
    while cache.get("k0") != "after" and time.monotonic() < deadline:
        time.sleep(0.002)
    q.put((cache.get("k0"), cache.stats().bus["healthy"]))


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_cache_made_before_a_fork_keeps_its_bus_in_the_child(
    tmp_path: Path, redis_url: Any, kind: str
) -> None:
    # A web server that builds the cache, then forks its workers (gunicorn's preload).
    origin_url = make_origin_db(tmp_path / "origin.db", keys=1)
    level2 = shared_level(kind, tmp_path, redis_url.url)
    parent = build(level2, origin_url)
    parent.set("k0", "before")
    fork = mp.get_context("fork")
    ready, q = fork.Queue(), fork.Queue()
    child = fork.Process(target=_forked_reader, args=(parent, ready, q))
    child.start()
    assert ready.get(timeout=30) == "ready"
    writer = build(level2, origin_url)  # another process's write
    writer.set("k0", "after")
    assert q.get(timeout=30) == ("after", True)
    child.join(timeout=30)
    writer.close()
    parent.close()


def test_a_write_whose_lock_wait_ran_out_leaves_no_value_the_origin_lacks(
    tmp_path: Path, redis_server: Any
) -> None:
    """Three writers of one key, as under a burst: the first holds the lock almost all of
    ``lock_ttl`` (a slow origin), so of the two waiting behind it, one takes the lock
    when it is released and the other's wait runs out: that one goes on without the
    lock, and the origin gets the two writes in no known order. The level must not keep
    either value over the other: after they all return, every cache reads what the
    origin ends with."""
    origin_url = make_origin_db(tmp_path / "origin.db")
    base = SQLOrigin(origin_url, "items", value_column="value")
    from stratacache import CallableOrigin

    def writer(store_seconds: float) -> Cache:
        def store(items: Any) -> Any:
            time.sleep(store_seconds)
            return base.store_many(items)

        return Cache(
            [MemoryTier(100), redis_server.url],
            CallableOrigin(base.load_many, store),
            lock_ttl=0.5,
        )

    import threading

    for trial in range(4):
        key = f"contended{trial}"
        caches = [writer(0.45), writer(0.3), writer(0.02)]
        threads = []
        for name, cache, delay in zip(("H", "W1", "W2"), caches, (0.0, 0.05, 0.15), strict=True):
            threads.append(threading.Timer(delay, cache.set, args=(key, name)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.5)  # the bus
        truth = origin_rows(tmp_path / "origin.db")[key]
        late = build(redis_server.url, origin_url)
        got = [cache.get(key) for cache in caches] + [late.get(key)]
        assert got == [truth] * 4, f"trial {trial}: origin {truth!r}, caches read {got}"
        for cache in [*caches, late]:
            cache.close()

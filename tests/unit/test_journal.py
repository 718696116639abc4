"""The write-behind journal (stratacache.journal) and the queue over it (stratacache.behind).

Real files, real fsyncs, real threads; the origin is a small in-process Origin storing into
a dict (with switches to fail, block, or refuse some keys)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from stratacache.behind import (
    DELETED,
    WriteBehind,
    WriteBehindFullError,
    default_journal_dir,
    read_dead_letters,
)
from stratacache.errors import (
    CacheClosedError,
    CacheError,
    ConfigurationError,
    InvalidKeyError,
    SerializationError,
)
from stratacache.journal import (
    FILE_HEADER_SIZE,
    OP_DELETE,
    OP_MARK,
    OP_SET,
    Journal,
    Record,
    encode_record,
    read_segment,
    scan_records,
)
from stratacache.origin import CallableOrigin, Origin

FAST = {"retry_base": 0.001, "retry_max": 0.005, "flush_interval": 0.001}


class DictOrigin(Origin):
    """A real, writable origin over a dict. ``fail_next`` failures are raised first;
    ``refuse`` keys make every store containing them fail; ``down`` fails everything;
    ``hold`` (an Event) makes store_many wait on it after setting ``entered``."""

    writable = True

    def __init__(self, *, fail_next: int = 0, refuse: Sequence[str] = ()) -> None:
        self.data: dict[str, Any] = {}
        self.calls: list[tuple[str, dict[str, Any] | list[str]]] = []
        self.attempts = 0
        self.fail_next = fail_next
        self.refuse = set(refuse)
        self.down = False
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        with self.lock:
            return {key: self.data[key] for key in keys if key in self.data}

    def store_many(self, items: Mapping[str, Any]) -> None:
        self.attempts += 1
        if self.hold is not None:
            self.entered.set()
            self.hold.wait(10)
        if self.down:
            raise ConnectionError("origin down")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("origin hiccup")
        refused = sorted(self.refuse & items.keys())
        if refused:
            raise ValueError(f"the origin refuses {refused}")
        with self.lock:
            self.calls.append(("set", dict(items)))
            self.data.update(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        if self.down:
            raise ConnectionError("origin down")
        with self.lock:
            self.calls.append(("delete", list(keys)))
            for key in keys:
                self.data.pop(key, None)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.journal"))


def leave_behind(directory: Path, items: Mapping[str, Any], **options: Any) -> None:
    """A queue whose origin never got the writes, closed: they stay in the journal."""
    queue = WriteBehind(DictOrigin(), directory, start=False, **options)
    queue.submit(items)
    queue.close(timeout=0)


def set_offsets(path: Path) -> list[int]:
    """Where each set record of a segment starts."""
    offsets, position = [], FILE_HEADER_SIZE
    for record in read_segment(path).records:
        if record.op == OP_SET:
            offsets.append(position)
        position += len(
            encode_record(record.seq, record.op, record.key, record.value, record.version)
        )
    return offsets


# ---------------------------------------------------------------------------- format


def test_record_round_trip() -> None:
    records = [
        Record(1, OP_SET, "user:1", b"\x81\xa1a\x01"),
        Record(2, OP_DELETE, "user:2", b""),
        Record(3, OP_MARK, "", b""),
        Record(2**62, OP_SET, "ключ-🔑", bytes(range(256)) * 40),
    ]
    data = b"SCJ\x00\x01\x00\x00\x00" + b"".join(
        encode_record(r.seq, r.op, r.key, r.value) for r in records
    )
    found, end, problem = scan_records(data)
    assert found == records
    assert end == len(data)
    assert problem == ""


def test_record_versions_round_trip_and_old_records_have_none() -> None:
    records = [
        Record(1, OP_SET, "a", b"\x01", 41),
        Record(2, OP_DELETE, "b", b"", 2**62),
        Record(3, OP_SET, "c", b"\x02"),  # no version: written as before versions were kept
    ]
    data = b"SCJ\x00\x01\x00\x00\x00" + b"".join(
        encode_record(r.seq, r.op, r.key, r.value, r.version) for r in records
    )
    assert len(encode_record(3, OP_SET, "c", b"\x02")) < len(
        encode_record(3, OP_SET, "c", b"\x02", 1)
    )
    found, end, problem = scan_records(data)
    assert (found, end, problem) == (records, len(data), "")


def test_queued_versions_survive_a_replay(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    queue.submit({"a": 1, "b": 2}, versions={"a": 7})
    queue.submit_deletes(["c"], versions={"c": 9})
    queue.close(timeout=0)
    seen: list[dict[str, Any]] = []

    def order(batch: dict[str, Any], send: Any) -> list[str]:
        seen.append(dict(batch))
        send(list(batch))
        return []

    origin = DictOrigin()
    replay = WriteBehind(origin, tmp_path, order=order)
    assert replay.flush(5)
    replay.close()
    assert seen == [{"a": (7, 1), "b": (None, 2), "c": (9, DELETED)}]
    assert origin.data == {"a": 1, "b": 2}


def test_journal_appends_with_increasing_seqs(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="never")
    first, _ = journal.append([(OP_SET, "a", b"1"), (OP_DELETE, "b", b"")])
    second, _ = journal.append([(OP_SET, "a", b"2")])
    assert second >= first + 2, "a hybrid clock: strictly increasing, close to time_ns()"
    assert abs(second - time.time_ns()) < 10**9
    [path] = journal.segment_paths()
    assert read_segment(path).records == [
        Record(first, OP_SET, "a", b"1"),
        Record(first + 1, OP_DELETE, "b", b""),
        Record(second, OP_SET, "a", b"2"),
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    journal.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "undone writes are kept"


def test_journal_directory_is_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "queue"
    Journal(directory).close()
    assert directory.stat().st_mode & 0o777 == 0o700


def test_values_round_trip_through_replay(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "tuple": (1, "two", 3.0),
        "set": {1, 2, 3},
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        "bytes": b"\x00\xff",
        "nested": {"a": [1, {"b": None}], "c": True},
        "big": 2**80,
    }
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    queue.submit(values)
    queue.submit_deletes(["gone"])
    queue.close(timeout=0)

    origin = DictOrigin()
    origin.data["gone"] = "still here"
    replay = WriteBehind(origin, tmp_path)
    assert replay.stats.replayed == len(values) + 1
    assert replay.flush(5)
    assert origin.data == values
    for key, value in values.items():
        assert type(origin.data[key]) is type(value)
    replay.close()
    assert segments(tmp_path) == []


# ---------------------------------------------------------------------------- damage


def test_torn_tail_is_truncated_and_the_rest_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leave_behind(tmp_path, {f"k{i}": i for i in range(5)})
    [path] = segments(tmp_path)
    size = path.stat().st_size
    torn = encode_record(2**62, OP_SET, "torn", b"x" * 100)
    with open(path, "ab") as file:
        file.write(torn[:60])  # a crash in the middle of a write

    origin = DictOrigin()
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        queue = WriteBehind(origin, tmp_path)
    assert queue.stats.replayed == 5
    [warning] = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert f"at byte {size}; dropping the 60 bytes" in warning
    assert "records before it are kept" in warning
    assert queue.flush(5)
    assert origin.data == {f"k{i}": i for i in range(5)}
    queue.close()


def test_truncation_keeps_the_valid_prefix_on_disk(tmp_path: Path) -> None:
    leave_behind(tmp_path, {"a": 1, "b": 2})
    [path] = segments(tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as file:
        file.write(b"\x10\x00")  # a torn record header
    # Replay with an origin that is down: the copy goes to the new segment and the old
    # file is gone; the new segment holds exactly the two valid records.
    origin = DictOrigin()
    origin.down = True
    queue = WriteBehind(origin, tmp_path, start=False)
    assert not path.exists()
    [new] = segments(tmp_path)
    contents = read_segment(new)
    assert contents.problem == ""
    assert [(r.key, r.op) for r in contents.records] == [("a", OP_SET), ("b", OP_SET)]
    assert size > FILE_HEADER_SIZE
    queue.close(timeout=0)


def test_corrupt_crc_stops_replay_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    leave_behind(tmp_path, {f"k{i}": f"value-{i}" for i in range(5)})
    [path] = segments(tmp_path)
    offsets = set_offsets(path)
    assert len(offsets) == 5
    data = bytearray(path.read_bytes())
    data[offsets[2] + 12] ^= 0xFF  # a flipped bit in the third record's payload
    path.write_bytes(bytes(data))
    assert read_segment(path).problem == "a record whose CRC does not match"

    origin = DictOrigin()
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        queue = WriteBehind(origin, tmp_path)
    assert queue.stats.replayed == 2
    assert any("CRC does not match" in r.getMessage() for r in caplog.records)
    assert queue.flush(5)
    assert origin.data == {"k0": "value-0", "k1": "value-1"}
    queue.close()


def test_a_foreign_file_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    foreign = tmp_path / "cache.1-0123abcd.00000001.journal"
    foreign.write_bytes(b"not a journal at all")
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        queue = WriteBehind(DictOrigin(), tmp_path)
    assert queue.stats.replayed == 0
    assert foreign.read_bytes() == b"not a journal at all"
    assert any("not a stratacache journal" in r.getMessage() for r in caplog.records)
    queue.close()


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".cache.1-0123abcd.00000001.journal.tmp"
    fresh = tmp_path / ".cache.2-0123abcd.00000001.journal.tmp"
    stale.write_bytes(b"SCJ")
    fresh.write_bytes(b"SCJ")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    queue = WriteBehind(DictOrigin(), tmp_path)
    assert not stale.exists()
    assert fresh.exists(), "it may be a segment being created right now"
    queue.close()


# ---------------------------------------------------------------------------- segments


def test_rotation_and_deletion_of_stored_segments(tmp_path: Path) -> None:
    journal = Journal(tmp_path, fsync="never", segment_bytes=4096)
    for i in range(100):
        journal.append([(OP_SET, f"k{i}", b"v" * 200)])
    paths = journal.segment_paths()
    assert len(paths) >= 5
    for path in paths:
        assert path.stat().st_size <= 4096
    records = [r for path in paths for r in read_segment(path).records if r.op == OP_SET]
    assert [r.key for r in records] == [f"k{i}" for i in range(100)]
    assert [r.seq for r in records] == sorted(r.seq for r in records)

    # Marking the first half done deletes the segments holding nothing else.
    journal.mark(records[50].seq)
    left = journal.segment_paths()
    assert paths[0] not in left and paths[-1] in left
    for path in paths:
        assert path.exists() == (path in left)
    kept = {r.key for path in left for r in read_segment(path).records if r.op == OP_SET}
    assert {f"k{i}" for i in range(50, 100)} <= kept
    # Every new segment starts with the current mark.
    journal.append([(OP_SET, "after", b"v" * 4000)])
    newest = journal.segment_paths()[-1]
    assert read_segment(newest).records[0] == Record(records[50].seq, OP_MARK, "", b"")

    journal.mark(journal.next_seq)
    assert len(journal.segment_paths()) == 1
    journal.close()
    assert segments(tmp_path) == []


def test_queue_rotates_and_cleans_up(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, segment_bytes=4096, **FAST)
    for i in range(300):
        queue.submit({f"k{i}": "v" * 100})
    assert queue.flush(10)
    assert len(origin.data) == 300
    assert len(segments(tmp_path)) == 1, "stored segments are deleted"
    queue.close()
    assert list(tmp_path.iterdir()) == []


def test_compaction_bounds_the_journal_while_the_origin_is_down(tmp_path: Path) -> None:
    origin = DictOrigin()
    origin.down = True
    queue = WriteBehind(origin, tmp_path, segment_bytes=4096, **FAST)
    queue.submit({"cold": "written once"})  # pins the oldest segment without compaction
    for round_ in range(400):
        queue.submit({f"hot{i}": f"{round_:04d}" + "x" * 100 for i in range(5)})
        if round_ % 50 == 0:
            time.sleep(0.02)
    time.sleep(0.2)
    written = 400 * 5 * 130
    assert queue.stats.journal_bytes < 8 * 4096 < written // 5
    assert queue.stats.depth == 6
    origin.down = False
    assert queue.flush(10)
    assert origin.data == {
        "cold": "written once",
        **{f"hot{i}": "0399" + "x" * 100 for i in range(5)},
    }
    queue.close()
    assert segments(tmp_path) == []


# ---------------------------------------------------------------------------- the queue


def test_coalescing_keeps_only_the_latest_write(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, start=False)
    for value in (1, 2, 3):
        queue.submit({"k": value})
    queue.submit({"j": 1})
    queue.submit_deletes(["j"])
    assert queue.stats.depth == 2
    assert queue.stats.coalesced == 3
    assert queue.stats.submitted == 5
    queue.start()
    assert queue.flush(5)
    assert origin.calls == [("set", {"k": 3}), ("delete", ["j"])]
    queue.close()


def test_order_per_key_a_write_during_its_store_waits(tmp_path: Path) -> None:
    origin = DictOrigin()
    origin.hold = threading.Event()
    queue = WriteBehind(origin, tmp_path, flush_interval=0)
    queue.submit({"k": "v1", "other": 1})
    assert origin.entered.wait(5)
    queue.submit({"k": "v2"})  # k's v1 is being stored right now
    assert queue.pending(["k"]) == {"k": "v2"}
    assert queue.stats.coalesced == 0
    origin.hold.set()
    assert queue.flush(5)
    assert origin.calls == [("set", {"k": "v1", "other": 1}), ("set", {"k": "v2"})]
    assert origin.data["k"] == "v2"
    queue.close()


def test_a_write_during_a_failed_store_replaces_it(tmp_path: Path) -> None:
    origin = DictOrigin(fail_next=1)
    origin.hold = threading.Event()
    queue = WriteBehind(origin, tmp_path, **FAST)
    queue.submit({"k": "v1"})
    assert origin.entered.wait(5)
    queue.submit({"k": "v2"})
    flushed: list[bool] = []
    waiter = threading.Thread(target=lambda: flushed.append(queue.flush(5)))
    waiter.start()
    origin.hold.set()
    waiter.join()
    assert flushed == [True]
    assert origin.calls == [("set", {"k": "v2"})]
    queue.close()


class OrderCheckingOrigin(DictOrigin):
    """Fails a fifth of its calls at random, and notes any key whose value (a version
    number) goes backwards, or that is in two calls at once."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []
        self.busy: set[str] = set()
        self.rng = random.Random(7)

    def store_many(self, items: Mapping[str, Any]) -> None:
        with self.lock:
            overlap = self.busy & items.keys()
            if overlap:
                self.violations.append(f"{sorted(overlap)} in two calls at once")
            self.busy |= items.keys()
        try:
            time.sleep(0.0005)
            if self.rng.random() < 0.2:
                raise ConnectionError("flaky")
            with self.lock:
                for key, version in items.items():
                    if version <= self.data.get(key, -1):
                        self.violations.append(f"{key}: {version} after {self.data[key]}")
                    self.data[key] = version
        finally:
            with self.lock:
                self.busy -= items.keys()


def test_order_per_key_under_concurrent_writers_and_failures(tmp_path: Path) -> None:
    origin = OrderCheckingOrigin()
    queue = WriteBehind(origin, tmp_path, batch_size=7, fsync="never", **FAST)
    last: dict[str, int] = {}

    def write(t: int) -> None:
        rng = random.Random(t)
        for version in range(600):
            key = f"t{t}-{rng.randrange(15)}"
            queue.submit({key: version})
            last[key] = version
            if version % 100 == 0:
                time.sleep(0.005)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queue.flush(20)
    assert origin.violations == []
    assert origin.data == last
    assert queue.stats.retries > 0 and queue.stats.coalesced > 0
    assert queue.stats.failures == 0
    queue.close()


def test_full_queue_refuses_before_writing_anything(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, max_pending=3, start=False)
    queue.submit({"a": 1, "b": 2, "c": 3})
    [path] = segments(tmp_path)
    size, journal_bytes = path.stat().st_size, queue.stats.journal_bytes

    with pytest.raises(WriteBehindFullError) as caught:
        queue.submit({"a": 10, "d": 4})
    message = str(caught.value)
    assert "3 keys are waiting" in message and "max_pending=3" in message
    assert "Raise max_pending" in message and "slow the writes" in message
    assert "check the origin" in message
    assert isinstance(caught.value, CacheError)
    assert (caught.value.pending, caught.value.limit, caught.value.adding) == (3, 3, 1)
    assert path.stat().st_size == size and queue.stats.journal_bytes == journal_bytes
    assert queue.pending(["a", "d"]) == {"a": 1}, "nothing of the refused call applied"
    with pytest.raises(WriteBehindFullError):
        queue.submit_deletes(["e"])

    queue.submit({"a": 10, "b": 20})  # already waiting: not counted twice
    queue.submit_deletes(["c"])
    assert queue.pending(["a", "b", "c"]) == {"a": 10, "b": 20, "c": DELETED}
    assert queue.stats.depth == 3
    queue.close(timeout=0)


def test_one_call_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, max_pending=3, start=False)
    with pytest.raises(WriteBehindFullError, match="would add 4 more"):
        queue.submit({f"k{i}": i for i in range(4)})
    assert read_segment(segments(tmp_path)[0]).records == []
    queue.close()


def test_replayed_writes_count_but_are_never_refused(tmp_path: Path) -> None:
    leave_behind(tmp_path, {f"k{i}": i for i in range(5)})
    queue = WriteBehind(DictOrigin(), tmp_path, max_pending=3, start=False)
    assert queue.stats.depth == 5
    with pytest.raises(WriteBehindFullError):
        queue.submit({"new": 1})
    queue.submit({"k0": 100})
    queue.start()
    assert queue.flush(5)
    queue.submit({"new": 1})
    queue.close()


def test_pending_overlay(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, start=False)
    queue.submit({"a": {"x": 1}, "b": (1, 2)})
    queue.submit_deletes(["c"])
    overlay = queue.pending(["a", "b", "c", "missing"])
    assert overlay == {"a": {"x": 1}, "b": (1, 2), "c": DELETED}
    assert repr(DELETED) == "DELETED"
    overlay["a"]["x"] = 99  # a decoded copy: the queue is not changed through it
    assert queue.pending(["a"]) == {"a": {"x": 1}}
    queue.start()
    assert queue.flush(5)
    assert queue.pending(["a", "b", "c"]) == {}
    queue.close()


def test_values_are_taken_at_submit(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, start=False)
    value = {"n": 1}
    queue.submit({"k": value})
    value["n"] = 2
    queue.start()
    assert queue.flush(5)
    assert origin.data["k"] == {"n": 1}
    queue.close()


def test_retries_until_the_origin_recovers(tmp_path: Path) -> None:
    origin = DictOrigin(fail_next=3)
    queue = WriteBehind(origin, tmp_path, retry_base=0.01, retry_max=0.05)
    queue.submit({"a": 1, "b": 2})
    assert queue.flush(5)
    assert origin.data == {"a": 1, "b": 2}
    assert queue.stats.retries == 3
    assert queue.stats.batches == 1
    assert queue.stats.failures == 0
    assert origin.attempts == 4
    queue.close()


def test_backoff_spaces_the_retries(tmp_path: Path) -> None:
    origin = DictOrigin(fail_next=4)
    queue = WriteBehind(origin, tmp_path, retry_base=0.05, retry_max=0.1)
    started = time.monotonic()
    queue.submit({"a": 1})
    assert queue.flush(5)
    # 0.05, 0.1, 0.1, 0.1 with jitter down to half: at least 0.175 s.
    assert time.monotonic() - started >= 0.17
    queue.close()


def test_poison_key_is_dead_lettered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    origin = DictOrigin(refuse=["bad"])
    queue = WriteBehind(origin, tmp_path, batch_size=64, **FAST)
    good = {f"k{i}": i for i in range(40)}
    with caplog.at_level(logging.ERROR, logger="stratacache"):
        queue.submit({**good, "bad": ("poison", 1)})
        assert queue.flush(30)
    assert origin.data == good
    assert queue.stats.failures == 1
    assert queue.stats.depth == 0
    assert queue.stats.retries >= 10
    [letter] = read_dead_letters(tmp_path)
    assert read_dead_letters(tmp_path, name="cache") == [letter]
    assert read_dead_letters(tmp_path, name="other") == []
    assert letter.key == "bad" and letter.op == "set"
    assert letter.load() == ("poison", 1)
    assert letter.failures == 10
    assert "refuses ['bad']" in letter.error
    assert letter.path == queue.dead_letter_path
    assert letter.path.stat().st_mode & 0o777 == 0o600
    assert any(
        "'bad'" in r.getMessage() and "dead-letter" in r.getMessage() for r in caplog.records
    )
    queue.close()
    assert segments(tmp_path) == [], "a dead-lettered write is done for the journal"


def test_an_outage_dead_letters_nothing(tmp_path: Path) -> None:
    origin = DictOrigin()
    origin.down = True
    queue = WriteBehind(origin, tmp_path, **FAST)
    queue.submit({f"k{i}": i for i in range(8)})
    deadline = time.monotonic() + 10
    while origin.attempts < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert origin.attempts >= 60, "well past the threshold for every fragment"
    assert queue.stats.failures == 0 and queue.stats.depth == 8
    origin.down = False
    assert queue.flush(10)
    assert origin.data == {f"k{i}": i for i in range(8)}
    assert queue.stats.failures == 0
    assert read_dead_letters(tmp_path) == []
    queue.close()


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, fsync="always", start=False)

    def write(t: int) -> None:
        for i in range(100):
            queue.submit({f"t{t}-{i}": i})

    threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queue.stats.submitted == 800
    assert 0 < queue.stats.fsyncs < 800
    queue.close(timeout=0)


def test_fsync_policies(tmp_path: Path) -> None:
    never = WriteBehind(DictOrigin(), tmp_path / "never", fsync="never", start=False)
    never.submit({"a": 1})
    assert never.stats.fsyncs == 0
    never.close(timeout=0)

    interval = WriteBehind(DictOrigin(), tmp_path / "interval", fsync="interval", start=False)
    before = interval.stats.fsyncs
    interval.submit({"a": 1})
    assert interval.stats.fsyncs == before, "submit does not wait for an fsync"
    deadline = time.monotonic() + 2
    while interval.stats.fsyncs == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert interval.stats.fsyncs == before + 1
    interval.close(timeout=0)

    always = WriteBehind(DictOrigin(), tmp_path / "always", fsync="always", start=False)
    before = always.stats.fsyncs
    always.submit({"a": 1})
    assert always.stats.fsyncs == before + 1
    always.close(timeout=0)


def test_stored_writes_are_not_replayed(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, **FAST)
    queue.submit({"a": 1, "b": 2})
    assert queue.flush(5)
    origin.down = True
    queue.submit({"c": 3})
    queue.close(timeout=0.1)
    replay = WriteBehind(DictOrigin(), tmp_path, start=False)
    assert replay.stats.replayed == 1
    assert replay.pending(["a", "b", "c"]) == {"c": 3}
    replay.close(timeout=0)


def test_queues_sharing_a_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = WriteBehind(DictOrigin(), tmp_path, start=False)
    first.submit({f"k{i}": i for i in range(10)})
    # A live queue's segments are locked: another queue does not take them.
    second = WriteBehind(DictOrigin(), tmp_path, start=False)
    assert second.stats.replayed == 0
    other_name = WriteBehind(DictOrigin(), tmp_path, name="other", start=False)
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        first.close(timeout=0)
    assert any("10 writes the origin has not stored" in r.getMessage() for r in caplog.records)
    second.close()
    other_name.close()
    assert WriteBehind(DictOrigin(), tmp_path, name="other", start=False).stats.replayed == 0
    origin = DictOrigin()
    third = WriteBehind(origin, tmp_path)
    assert third.stats.replayed == 10
    assert third.flush(5)
    assert origin.data == {f"k{i}": i for i in range(10)}
    third.close()


def test_a_later_replay_keeps_the_newest_write(tmp_path: Path) -> None:
    leave_behind(tmp_path, {"k": "old", "j": "only"})
    leave_behind(tmp_path, {"k": "newer"})  # replays the first, then adds its own
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path)
    assert queue.stats.replayed == 2
    assert queue.flush(5)
    assert origin.data == {"k": "newer", "j": "only"}
    queue.close()


def test_flush_waits_for_what_was_submitted_before(tmp_path: Path) -> None:
    origin = DictOrigin()
    queue = WriteBehind(origin, tmp_path, flush_interval=10)  # only flush() hurries it
    queue.submit({"a": 1})
    assert queue.flush(5)
    assert origin.data == {"a": 1}
    origin.down = True
    queue.submit({"b": 2})
    assert queue.flush(0.05) is False
    origin.down = False
    assert queue.flush(5)
    queue.close()


def test_flush_without_a_flusher_returns_false(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    assert queue.flush() is True, "nothing waiting"
    queue.submit({"a": 1})
    assert queue.flush() is False
    queue.close(timeout=0)


def test_stats(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    queue.submit({"a": 1})
    time.sleep(0.05)
    assert queue.stats.lag_seconds >= 0.05
    snapshot = queue.stats.snapshot()
    assert set(snapshot) == {
        "depth",
        "lag_seconds",
        "submitted",
        "stored",
        "coalesced",
        "retries",
        "failures",
        "batches",
        "replayed",
        "superseded",
        "journal_bytes",
        "fsyncs",
    }
    assert snapshot["depth"] == 1 and snapshot["submitted"] == 1
    assert snapshot["journal_bytes"] == segments(tmp_path)[0].stat().st_size
    queue.start()
    assert queue.flush(5)
    assert queue.stats.lag_seconds == 0.0
    assert queue.stats.stored == 1 and queue.stats.batches == 1
    queue.close()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path)
    queue.submit({"a": 1})
    queue.close()
    queue.close()
    with pytest.raises(CacheClosedError):
        queue.submit({"b": 2})
    with WriteBehind(DictOrigin(), tmp_path) as again:
        again.submit({"c": 3})
    with pytest.raises(CacheClosedError):
        again.submit_deletes(["c"])


def test_async_faces(tmp_path: Path) -> None:
    origin = DictOrigin()

    async def main() -> None:
        queue = WriteBehind(origin, tmp_path)
        await queue.asubmit({"a": 1})
        await queue.asubmit_deletes(["b"])
        assert await queue.aflush(5)
        await queue.aclose()

    asyncio.run(main())
    assert origin.data == {"a": 1}
    assert origin.calls[-1] == ("delete", ["b"])


def test_rejects_bad_input_before_writing(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    with pytest.raises(InvalidKeyError):
        queue.submit({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidKeyError):
        queue.submit({"": "x"})
    with pytest.raises(InvalidKeyError, match="submit_deletes\\(\\['abc'\\]\\)"):
        queue.submit_deletes("abc")
    with pytest.raises(SerializationError):
        queue.submit({"ok": 1, "bad": object()})
    assert read_segment(segments(tmp_path)[0]).records == []
    assert queue.stats.depth == 0
    queue.close()


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="fsync"):
        WriteBehind(DictOrigin(), tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not writable"):
        WriteBehind(CallableOrigin(lambda keys: {}), tmp_path)
    with pytest.raises(ConfigurationError, match="max_pending"):
        WriteBehind(DictOrigin(), tmp_path, max_pending=0)
    with pytest.raises(ConfigurationError, match="retry_max"):
        WriteBehind(DictOrigin(), tmp_path, retry_base=1.0, retry_max=0.5)
    with pytest.raises(ConfigurationError, match="name"):
        WriteBehind(DictOrigin(), tmp_path, name="../escape")
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigurationError):
        WriteBehind(DictOrigin(), file)
    assert segments(tmp_path) == []


def test_default_journal_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_journal_dir("orders") == tmp_path / "stratacache" / "orders"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/path")  # invalid per the spec: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "stratacache" / "orders"
    assert default_journal_dir("orders") == expected
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_journal_dir("orders") == expected
    with pytest.raises(ConfigurationError):
        default_journal_dir("a/b")


def test_a_forked_child_cannot_use_the_parents_queue(tmp_path: Path) -> None:
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 1
        try:
            queue.submit({"a": 1})
        except ConfigurationError:
            code = 3
        except BaseException:
            code = 2
        queue.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    assert segments(tmp_path), "the child did not delete the parent's segment"
    queue.submit({"a": 1})
    assert queue.pending(["a"]) == {"a": 1}
    queue.close(timeout=0)


def test_order_leaves_out_superseded_writes_and_never_drops_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def leave_out_a(batch: dict[str, Any], send: Any) -> list[str]:
        send([key for key in batch if key != "a"])
        return ["a"]

    def forgets_to_send(batch: dict[str, Any], send: Any) -> list[str]:
        return ["a"]

    def broken(batch: dict[str, Any], send: Any) -> list[str]:
        raise RuntimeError("the shared level's answer made no sense")

    for order, superseded in ((leave_out_a, 1), (forgets_to_send, 1), (broken, 0)):
        origin = DictOrigin()
        with WriteBehind(origin, tmp_path / order.__name__, order=order) as queue:
            queue.submit({"a": 1, "b": 2}, versions={"a": 1, "b": 2})
            assert queue.flush(5)
            assert queue.stats.superseded == superseded
            assert queue.stats.depth == 0
        assert origin.data == ({"b": 2} if superseded else {"a": 1, "b": 2}), order.__name__
    assert "storing it unordered" in caplog.text


def test_a_write_journaled_after_a_newer_version_of_its_key_is_superseded(
    tmp_path: Path,
) -> None:
    """Two threads: one takes version 8 and journals first, the other took version 7
    and journals second. The levels keep version 8; so must the queue, and a replay."""
    queue = WriteBehind(DictOrigin(), tmp_path, start=False)
    queue.submit({"k": "newer"}, versions={"k": 8})
    queue.submit({"k": "older"}, versions={"k": 7})
    queue.submit({"j": "unversioned"})
    queue.submit({"j": "unversioned, later"})
    assert queue.pending(["k", "j"]) == {"k": "newer", "j": "unversioned, later"}
    assert queue.stats.superseded == 1
    queue.close(timeout=0)
    origin = DictOrigin()
    with WriteBehind(origin, tmp_path) as replay:
        assert replay.flush(5)
    assert origin.data == {"k": "newer", "j": "unversioned, later"}


def test_replay_keeps_the_higher_version_whatever_the_record_order() -> None:
    from stratacache.journal import supersedes

    older_later = Record(20, OP_SET, "k", b"a", 7)
    newer_earlier = Record(10, OP_SET, "k", b"b", 8)
    assert supersedes(newer_earlier, older_later) and not supersedes(older_later, newer_earlier)
    unversioned = Record(30, OP_SET, "k", b"c")
    assert supersedes(unversioned, newer_earlier)  # no version to compare: the later record
    assert not supersedes(Record(5, OP_SET, "k", b"d"), newer_earlier)

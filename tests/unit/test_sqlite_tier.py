"""What only the SQLite tier does, on real files: namespaces bound into signatures, rows it
cannot decode left alone, a broken file or directory skipped as a level, lone-surrogate
keys, and the trim's eviction count. (The tier conformance suite and the hostile payload
tests cover the rest.)"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stratacache.entry import Entry
from stratacache.errors import SerializationError, TierUnavailableError
from stratacache.tiers.sqlite import SQLiteTier

from ..conftest import FakeClock

KEY_1 = b"0123456789abcdef0123456789abcdef"
KEY_2 = b"fedcba9876543210fedcba9876543210"


@pytest.fixture
def make_tier(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., SQLiteTier]]:
    made: list[SQLiteTier] = []

    def make(path: Path | None = None, **options: Any) -> SQLiteTier:
        made.append(SQLiteTier(path or tmp_path / "l2.db", wall_clock=clock.time, **options))
        return made[-1]

    yield make
    for tier in made:
        tier.close()


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT namespace, key FROM stratacache_entries ORDER BY namespace, key"
        ).fetchall()


def test_a_signed_row_copied_to_another_namespace_is_a_miss(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    """Two caches share the file and the secret: a row moved from one namespace to the
    other must not verify, or whoever can write the file could swap their values."""
    prices = make_tier(namespace="prices", signing_key=KEY_1)
    admins = make_tier(namespace="admins", signing_key=KEY_1)
    prices.set_many({"alice": Entry("cheap", clock.time() + 60)})
    with sqlite3.connect(tmp_path / "l2.db") as conn:
        conn.execute(
            "INSERT INTO stratacache_entries SELECT 'admins', key, value, expires_at, "
            "written_at, version FROM stratacache_entries WHERE namespace = 'prices'"
        )
    assert admins.get_many(["alice"]) == {}
    assert admins.stats.corrupt == 1
    assert prices.get_many(["alice"])["alice"].value == "cheap"


def test_rows_that_do_not_decode_are_left_in_place(
    make_tier: Callable[..., SQLiteTier],
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rolling deploy: the new process signs with a key the old one does not have yet.
    The old one misses (counted, logged) and must not delete what the new one reads."""
    new = make_tier(signing_key={1: KEY_1, 2: KEY_2})
    old = make_tier(signing_key={1: KEY_1})
    new.set_many({"k": Entry("v2", clock.time() + 60)})
    with caplog.at_level(logging.WARNING, logger="stratacache"):
        assert old.get_many(["k"]) == {}
        assert old.get_many(["k"]) == {}
    assert old.stats.corrupt == 2
    # logged once: the second is held back by the throttle (one line per interval)
    assert sum("bad signature (key id 2)" in r.getMessage() for r in caplog.records) == 1
    assert rows(tmp_path / "l2.db") == [("default", "k")]
    assert new.get_many(["k"])["k"].value == "v2"


def test_a_file_that_is_not_a_database_is_an_unavailable_level(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "not-a.db"
    path.write_bytes(b"this is a text file, not a SQLite database\n" * 100)
    expect_unavailable(make_tier(path), clock, "not a database")


def test_a_corrupt_database_is_an_unavailable_level(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    """The header is fine (the file opens), the pages behind it are not: every statement
    fails with sqlite3.DatabaseError, which is no OperationalError."""
    path = tmp_path / "corrupt.db"
    writer = make_tier(path)
    writer.set_many({f"k{i}": Entry(i) for i in range(50)})
    writer.close()  # checkpoints the WAL into the file: the pages below are the data
    with path.open("r+b") as file:
        file.seek(4096)  # page 2 onwards
        file.write(b"\xa5" * 8192)
    expect_unavailable(make_tier(path), clock, "malformed")


def test_a_directory_that_cannot_be_made_is_an_unavailable_level(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    (tmp_path / "a-file").write_text("in the way")
    expect_unavailable(make_tier(tmp_path / "a-file" / "sub" / "l2.db"), clock, "Not a directory")


def expect_unavailable(tier: SQLiteTier, clock: FakeClock, reason: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: tier.get_many(["k"]),
        lambda: tier.set_many({"k": Entry(1, clock.time() + 60)}),
        lambda: tier.delete_many(["k"]),
        tier.clear,
        tier.trim,
        lambda: len(tier),
        lambda: asyncio.run(tier.aget_many(["k"])),
    ]
    for call in calls:
        with pytest.raises(TierUnavailableError, match=reason):
            call()


def test_keys_that_are_not_valid_utf8_get_rows_of_their_own(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    """A lone surrogate is stored as the BLOB of its surrogatepass bytes; the TEXT with
    the same bytes read as Latin-1 (or any other text key) can never share its row."""
    tier = make_tier()
    lone, lookalike = "\ud800", "\xed\xa0\x80"
    tier.set_many({lone: Entry("lone", clock.time() + 60), lookalike: Entry("text")})
    got = tier.get_many([lone, lookalike])
    assert {k: e.value for k, e in got.items()} == {lone: "lone", lookalike: "text"}
    assert set(rows(tmp_path / "l2.db")) == {("default", b"\xed\xa0\x80"), ("default", lookalike)}
    tier.delete_many([lone])
    assert set(tier.get_many([lone, lookalike])) == {lookalike}
    assert tier.stats.corrupt == 0


def test_a_key_longer_than_an_envelope_takes_is_a_serialization_error(
    make_tier: Callable[..., SQLiteTier],
) -> None:
    with pytest.raises(SerializationError, match="at most 65535 bytes"):
        make_tier().set_many({"k" * 70_000: Entry(1)})


def test_trim_counts_the_rows_it_removed(
    make_tier: Callable[..., SQLiteTier], tmp_path: Path, clock: FakeClock
) -> None:
    """The file is shared: rows can go, or stay, under the trim's feet. Here a trigger
    keeps two of the rows the trim picks; the eviction count is what really went."""
    tier = make_tier(max_entries=10)
    for i in range(15):  # written one by one: ordered by written_at
        tier.set_many({f"k{i:02}": Entry(i)})
        clock.advance(1)
    with sqlite3.connect(tmp_path / "l2.db") as conn:
        conn.execute(
            "CREATE TRIGGER keep BEFORE DELETE ON stratacache_entries "
            "WHEN old.key IN ('k00', 'k01') BEGIN SELECT RAISE(IGNORE); END"
        )
    assert tier.trim() == 3  # the five oldest were asked for, k00 and k01 stayed
    assert tier.stats.evictions == 3
    assert len(tier) == 12

"""``stratacache warm``: sources, the levels they fill, the report and the exit status."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stratacache import Entry, MemoryTier, SQLiteTier
from stratacache.cli import main


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["warm", *args])


def report(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)  # --json: one object on stdout
    return document


@pytest.fixture
def origin_url(tmp_path: Path) -> str:
    path = tmp_path / "origin.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, hits INTEGER)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"u{i}", i) for i in range(50)])
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


def origin_options(url: str) -> list[str]:
    return [
        "--origin-sql",
        url,
        "--origin-table",
        "users",
        "--origin-key-column",
        "id",
        "--origin-key-prefix",
        "user:",
    ]


def held(path: Path, keys: list[str]) -> dict[str, Any]:
    level = SQLiteTier(path)
    try:
        return {key: entry.value for key, entry in level.get_many(keys).items()}
    finally:
        level.close()


def test_keys_file_and_query_are_read_through_into_the_level(
    tmp_path: Path, origin_url: str
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# hot users\nuser:1\n\nuser:2\nuser:999\n", encoding="utf-8")
    l2 = tmp_path / "l2.db"
    result = invoke(
        "--level",
        f"sqlite:///{l2}",
        *origin_options(origin_url),
        "--keys-file",
        str(keys),
        "--query",
        "SELECT id FROM users ORDER BY hits DESC LIMIT 3",
        "--json",
    )
    assert result.exit_code == 0, result.output
    got = {r["name"]: r for r in report(result)["results"]}
    assert report(result)["ok"] is True
    assert got[f"file:{keys}"]["items"] == 2  # user:999 is not in the origin
    assert got["sql"]["items"] == 3 and got["sql"]["success"] is True
    wanted = ["user:1", "user:2", "user:47", "user:48", "user:49"]
    assert held(l2, wanted) == {
        key: {"id": int(key[5:]), "name": f"u{key[5:]}", "hits": int(key[5:])} for key in wanted
    }


def test_a_failed_strategy_is_reported_and_sets_the_exit_status(
    tmp_path: Path, origin_url: str
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("user:3\n", encoding="utf-8")
    result = invoke(
        "--level",
        f"sqlite:///{tmp_path / 'l2.db'}",
        *origin_options(origin_url),
        "--keys-file",
        str(tmp_path / "missing.txt"),
        "--keys-file",
        str(keys),
        "--json",
    )
    assert result.exit_code == 1, result.output
    document = report(result)
    assert document["ok"] is False
    failed, fine = document["results"]
    assert failed["success"] is False and "does not exist" in failed["error"]
    assert fine["success"] is True and fine["items"] == 1


def test_the_table_names_each_strategy_and_its_outcome(tmp_path: Path, origin_url: str) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("user:3\nuser:4\n", encoding="utf-8")
    result = invoke(
        "--level",
        f"sqlite:///{tmp_path / 'l2.db'}",
        *origin_options(origin_url),
        "--keys-file",
        str(keys),
        "--query",
        "SELECT nope FROM users",
    )
    assert result.exit_code == 1
    assert "stratacache warm" in result.stdout
    lines = result.stdout.splitlines()
    file_row = next(line for line in lines if "file:" in line)
    assert "│     2 │" in file_row and "ok" in file_row
    sql_row = next(line for line in lines if "│ sql " in line)
    assert "error: OperationalError" in sql_row
    assert "no such column: nope" in result.stdout.replace("│", "").replace("\n", "")


def test_query_values_fill_an_l1_snapshot_without_an_origin(
    tmp_path: Path, origin_url: str
) -> None:
    snap = tmp_path / "l1.snap"
    result = invoke(
        "--level",
        f"memory://?snapshot={snap}",
        "--sql",
        origin_url,
        "--query",
        "SELECT id, name FROM users WHERE id < 4",
        "--key-format",
        "name:{}",
        "--value-column",
        "name",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert report(result)["results"][0]["items"] == 4
    l1 = MemoryTier(100, snapshot=snap)
    assert {key: e.value for key, e in l1.get_many(l1.keys()).items()} == {
        f"name:{i}": f"u{i}" for i in range(4)
    }


def test_from_url_copies_the_top_of_a_snapshot_into_a_shared_level(
    tmp_path: Path,
) -> None:
    snap = tmp_path / "warm.snap"
    warm = MemoryTier(100, snapshot=snap)
    warm.set_many({f"k{i}": Entry(i) for i in range(5)})
    warm.close()
    l2 = tmp_path / "l2.db"
    result = invoke(
        "--level",
        f"sqlite:///{l2}",
        "--from-url",
        f"memory://?snapshot={snap}",
        "--top",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert report(result)["results"][0]["items"] == 2
    assert held(l2, [f"k{i}" for i in range(5)]) == {"k0": 0, "k1": 1}


def test_from_url_of_a_shared_level_copies_listed_keys(tmp_path: Path) -> None:

    warm_path = tmp_path / "warm.db"
    warm = SQLiteTier(warm_path)
    warm.set_many({"a": Entry([1]), "b": Entry((2,)), "c": Entry(3)})
    warm.close()
    keys = tmp_path / "keys.txt"
    keys.write_text("a\nb\nzzz\n", encoding="utf-8")
    cold = tmp_path / "cold.db"
    result = invoke(
        "--level",
        f"sqlite:///{cold}",
        "--from-url",
        f"sqlite:///{warm_path}",
        "--from-keys",
        str(keys),
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert report(result)["results"][0]["items"] == 2
    assert held(cold, ["a", "b", "c"]) == {"a": [1], "b": (2,)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--level", "sqlite:///x.db"], "nothing to warm from"),
        (["--level", "sqlite:///x.db", "--keys-file", "k.txt"], "give --origin-sql"),
        (
            ["--level", "sqlite:///x.db", "--origin-sql", "sqlite:///o.db", "--keys-file", "k"],
            "go together",
        ),
        (["--level", "sqlite:///x.db", "--query", "SELECT 1", "--rows"], "needs a database"),
        (
            ["--level", "sqlite:///x.db", "--top", "5", "--keys-file", "k"],
            "only works with --from-url",
        ),
        (
            ["--level", "memory://", "--from-url", "sqlite:///w.db", "--from-keys", "k"],
            "in this process's memory",
        ),
        (["--level", "sqlite:///x.db", "--from-url", "sqlite:///w.db"], "give --from-keys"),
        (["--level", "sqlite:///x.db", "--from-url", "memory://"], "snapshot"),
        (["--level", "nope://", "--from-url", "memory://"], "unknown tier scheme"),
    ],
)
def test_usage_errors(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output

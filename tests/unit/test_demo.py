"""``stratacache demo``: the main job, on the embedded default (no server)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stratacache.cli import main


def run(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, ["demo", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # --json: exactly one JSON object on stdout


def test_json_report_is_consistent(tmp_path: Path) -> None:
    report = run(
        "--requests",
        "3000",
        "--keys",
        "2000",
        "--l1-size",
        "200",
        "--l2-size",
        "800",
        "--origin-latency",
        "0",
        "--write-ratio",
        "0.1",
        "--seed",
        "7",
        "--data-dir",
        str(tmp_path),
        "--json",
    )
    assert set(report) >= {"requests", "errors", "amat_us", "no_cache_us", "levels", "origin"}
    assert report["errors"] == 0
    l1, l2 = report["levels"]
    assert (l1["name"], l1["kind"], l2["name"], l2["kind"]) == ("L1", "memory", "L2", "sqlite")
    for level in (l1, l2):
        assert set(level) >= {
            "name",
            "kind",
            "lookups",
            "hits",
            "misses",
            "hit_rate",
            "mean_us",
            "p99_us",
        }
        assert level["hits"] + level["misses"] == level["lookups"]
        assert abs(level["hit_rate"] - level["hits"] / level["lookups"]) < 1e-6
    # every read, and the read before each write, looks in L1 once
    assert l1["lookups"] == report["requests"] + report["writes"]
    assert report["requests"] + report["writes"] == 3000
    assert l2["lookups"] == l1["misses"]
    assert report["origin"]["loads"] == l2["misses"]
    assert 0 < l1["hit_rate"] < 1 and l2["hits"] > 0
    assert l1["mean_us"] is not None and l2["mean_us"] is not None
    assert report["origin"]["mean_us"] > 0
    assert report["no_cache_us"] == report["origin"]["mean_us"]
    assert 0 < report["amat_us"] < report["no_cache_us"]


def test_same_seed_same_counts(tmp_path: Path) -> None:
    args = [
        "--requests",
        "1500",
        "--keys",
        "1000",
        "--l1-size",
        "100",
        "--origin-latency",
        "0",
        "--seed",
        "3",
        "--json",
    ]
    first = run(*args, "--data-dir", str(tmp_path / "a"))
    second = run(*args, "--data-dir", str(tmp_path / "b"))
    counts = [[(lv["hits"], lv["misses"]) for lv in r["levels"]] for r in (first, second)]
    assert counts[0] == counts[1]


def test_table_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--requests",
            "500",
            "--keys",
            "300",
            "--origin-latency",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    for text in (
        "L1",
        "L2",
        "memory",
        "sqlite",
        "origin",
        "hit rate",
        "AMAT",
        "origin queries avoided",
    ):
        assert text in result.output


def test_bad_level_url_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--requests", "10", "--l2", "nosuch://x", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown tier scheme 'nosuch'" in result.output

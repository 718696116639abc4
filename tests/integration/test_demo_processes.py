"""``stratacache demo --processes N``: real worker processes over one L2; with the bus on
no read is stale, with it off the same run finds stale reads (the check can fail)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stratacache.cli import main


def run(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--processes",
            "2",
            "--seconds",
            "2",
            "--keys",
            "300",
            "--data-dir",
            str(tmp_path),
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("policy", ["through", "behind", "around"])
def test_no_stale_reads_with_the_bus(tmp_path: Path, policy: str) -> None:
    report = run(tmp_path, "--write-policy", policy)
    assert report["write_policy"] == policy and len(report["workers"]) == 2
    # Enough reads for the stale check to mean something; the count itself depends on the
    # machine's load (a loaded CI box ran write-around workers at ~100 reads in 2 s).
    workers = report["workers"]
    assert all(w["reads_checked"] > 30 and w["errors"] == 0 for w in workers), workers
    assert report["stale_reads"] == 0
    assert all(w["invalidations_received"] > 0 for w in report["workers"])
    assert report["invalidation_p99_ms"] is not None


def test_without_the_bus_reads_go_stale(tmp_path: Path) -> None:
    report = run(tmp_path, "--no-bus")
    assert report["bus"] is False
    assert report["stale_reads"] > 0


def test_processes_only_options_are_refused_alone() -> None:
    result = CliRunner().invoke(main, ["demo", "--write-policy", "behind"])
    assert result.exit_code != 0 and "only works with --processes" in result.output

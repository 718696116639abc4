"""``stratacache demo``: the main job, on the embedded default (no server)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stratacache.cli import main
from stratacache.cli.chaos import ChaosPlan, FailingOrigin, Pauser, plan_phases
from stratacache.cli.demo import run_demo
from stratacache.origin import Origin


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


# -- --chaos (no server here: argument errors, the failing origin, the phase accounting) --


def chaos_invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["demo", "--chaos", "--requests", "10", *args])


@pytest.mark.parametrize(
    "url", ["memcached://127.0.0.1:11211", "redis+cluster://127.0.0.1:7000", "nosuch://x"]
)
def test_chaos_refuses_an_l2_it_cannot_pause(url: str, tmp_path: Path) -> None:
    result = chaos_invoke("--l2", url, "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2, result.output
    assert "only a single Redis server" in result.output
    assert "leave --l2 out" in result.output
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_chaos_without_redis_server_names_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    result = chaos_invoke("--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 1, result.output
    assert "redis-server was not found on PATH" in result.output
    assert "apt-get install redis-server" in result.output
    assert "--l2 redis://" in result.output
    assert not (tmp_path / "data").exists()


def test_chaos_with_an_unreachable_redis_fails_before_the_run(tmp_path: Path) -> None:
    # Port 1 on localhost refuses connections: the CLIENT UNPAUSE check fails at once.
    result = chaos_invoke("--l2", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "cannot pause the L2 server redis://127.0.0.1:1/0" in result.output
    assert not (tmp_path / "origin-users.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chaos-duration", "5", "--chaos-pause", "3", "--chaos-origin-failure", "2"], "longer"),
        (["--chaos-duration", "8", "--chaos-pause", "3", "--chaos-origin-failure", "2"], "leave"),
        (["--chaos-pause", "0"], "x>0"),
    ],
)
def test_chaos_schedule_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = chaos_invoke(*args, "--data-dir", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_chaos_options_need_chaos(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--requests", "10", "--chaos-pause", "1", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    assert "--chaos-pause only work(s) with --chaos" in result.output


def test_plan_phases_cover_the_run() -> None:
    phases = plan_phases(12.0, 3.0, 2.0)
    assert [p.name for p in phases] == [
        "healthy",
        "L2 paused",
        "L2 resumed",
        "origin failing",
        "recovered",
    ]
    assert phases[0].start == 0 and phases[-1].end == pytest.approx(12.0)
    assert all(a.end == b.start for a, b in itertools.pairwise(phases))
    assert phases[1].seconds == pytest.approx(3.0) and phases[3].seconds == pytest.approx(2.0)
    assert phases[2].seconds == pytest.approx(0.4 * 7)  # time for L2's breaker to rejoin


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder(Origin):
    writable = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        self.calls.append(("load", list(keys)))
        return {key: key.upper() for key in keys}

    def store_many(self, items: Mapping[str, Any]) -> None:
        self.calls.append(("store", dict(items)))

    def delete_many(self, keys: Sequence[str]) -> None:
        self.calls.append(("delete", list(keys)))


def test_failing_origin_fails_only_inside_its_window() -> None:
    clock = Clock()
    inner = Recorder()
    origin = FailingOrigin(inner, clock=clock)
    assert origin.writable and not origin.failing
    assert origin.load_many(["a"]) == {"a": "A"}
    origin.fail_for(2.0)
    for operation in (
        lambda: origin.load_many(["b"]),
        lambda: origin.store_many({"b": 1}),
        lambda: origin.delete_many(["b"]),
    ):
        with pytest.raises(ConnectionError, match="origin unavailable"):
            operation()
    clock.now += 1.9
    assert origin.failing
    clock.now += 0.1  # the window is [start, start + 2)
    assert not origin.failing
    assert origin.load_many(["c"]) == {"c": "C"}
    origin.fail_for(5.0)
    origin.recover()  # closes the window early
    origin.store_many({"d": 1})
    assert origin.refused == 3
    # nothing reached the inner origin while failing
    assert inner.calls == [("load", ["a"]), ("load", ["c"]), ("store", {"d": 1})]


class FakePauser(Pauser):
    method = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, float]] = []

    def pause(self, seconds: float) -> None:
        self.log.append(("pause", seconds))
        self.paused = True

    def resume(self) -> None:
        self.log.append(("resume", 0.0))
        self.paused = False


def test_chaos_run_reports_every_phase(tmp_path: Path) -> None:
    """The chaos loop over a SQLite L2 (nothing to pause: a fake pauser records the calls),
    with entries living 0.2 s so that the origin's failure meets expired keys."""
    pauser = FakePauser()
    plan = ChaosPlan(plan_phases(1.5, 0.3, 0.5), pauser, {"url": "sqlite", "pause": "fake"})
    plan.ttl = 0.2
    report = run_demo(
        requests=1,
        keys=300,
        skew=0.99,
        write_ratio=0.0,
        l1_size=100,
        l2_size=1000,
        origin_latency=0.0,
        seed=5,
        data_dir=tmp_path,
        progress=False,
        chaos=plan,
    )
    chaos = report["chaos"]
    assert [p["name"] for p in chaos["phases"]] == [p.name for p in plan.phases]
    assert pauser.log == [("pause", pytest.approx(0.3)), ("resume", 0.0)]
    assert chaos["caller_errors"] == 0 and report["errors"] == 0
    assert chaos["first_error"] is None
    assert chaos["warmed_keys"] == 300
    failing = chaos["phases"][3]
    assert failing["origin_errors"] > 0 and failing["stale_served"] > 0
    assert chaos["stale_served"] >= failing["stale_served"]
    for name in ("healthy", "L2 resumed", "recovered"):
        row = next(p for p in chaos["phases"] if p["name"] == name)
        assert row["origin_errors"] == 0 and row["requests"] > 0
    assert chaos["requests"] == report["requests"] + report["writes"]
    assert chaos["origin_errors"] == chaos["origin_refused"]
    json.dumps(report)  # --json prints it


def test_chaos_counts_writes_refused_while_the_origin_is_down(tmp_path: Path) -> None:
    plan = ChaosPlan(plan_phases(1.2, 0.2, 0.4), FakePauser(), {})
    plan.ttl = 0.2
    report = run_demo(
        requests=1,
        keys=100,
        skew=0.5,
        write_ratio=0.5,
        l1_size=100,
        l2_size=1000,
        origin_latency=0.0,
        seed=1,
        data_dir=tmp_path,
        progress=False,
        chaos=plan,
    )
    chaos = report["chaos"]
    failing = chaos["phases"][3]
    # a write-through cache cannot take writes without its origin: reported, not hidden
    assert failing["write_errors"] > 0
    assert failing["caller_errors"] == failing["write_errors"]
    assert chaos["first_error"].startswith("OriginError")
    assert report["errors"] == chaos["caller_errors"]

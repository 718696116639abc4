"""``stratacache demo`` observed: ``/metrics`` while it runs, ``--plot``, the hot keys in
the report, and ``--hot-key`` (a flash sale, protection off and on). Real runs, small."""

from __future__ import annotations

import json
import random
import socket
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from stratacache.cli import main
from stratacache.cli.demo import MetricsEndpoint, run_demo, run_hot_key, zipf_keys
from stratacache.cli.timeline import Timeline
from stratacache.hierarchy.sync import Cache
from stratacache.tiers.memory import MemoryTier

SMALL = ("--keys", "1000", "--l1-size", "100", "--l2-size", "500", "--origin-latency", "0")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["demo", *args])


def run_json(*args: str) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)  # one JSON object, nothing else
    return report


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint, by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gets(samples: dict[Any, float], level: str, cache: str = "demo") -> float:
    """Lookups at ``level`` so far: hits plus misses."""
    return sum(
        samples.get(
            ("stratacache_level_gets_total", (("cache", cache), ("level", level), ("result", r))),
            0.0,
        )
        for r in ("hit", "miss")
    )


# -- --metrics-port ----------------------------------------------------------------------


def test_metrics_are_served_while_the_demo_runs(tmp_path: Path) -> None:
    seen: list[tuple[int, dict[Any, float]]] = []
    with MetricsEndpoint(0) as endpoint:
        assert endpoint.server.port > 0  # port 0: the OS picked one, and the URL has it
        assert endpoint.url == f"http://127.0.0.1:{endpoint.server.port}/metrics"
        # The timeline's hook runs at known points of the run: scrape there.
        timeline = Timeline(
            2000, points=4, on_sample=lambda done: seen.append((done, scrape(endpoint.url)))
        )
        report = run_demo(
            requests=2000,
            keys=1000,
            skew=0.99,
            write_ratio=0.1,
            l1_size=100,
            l2_size=500,
            origin_latency=0.0,
            seed=3,
            data_dir=tmp_path,
            progress=False,
            metrics=endpoint,
            timeline=timeline,
        )
        after = scrape(endpoint.url)
    assert [done for done, _ in seen] == [0, 500, 1000, 1500, 2000]
    for done, samples in seen:
        # every request (a read, or the read before a write) looks in L1 once
        assert gets(samples, "L1") == done
    assert gets(seen[2][1], "L1") > 0  # scraped mid-run, with counts
    last = seen[-1][1]
    l1, l2 = report["levels"]
    assert gets(last, "L1") == l1["lookups"] == report["requests"] + report["writes"]
    assert gets(last, "L2") == l2["lookups"] == l1["misses"]
    assert (
        last[("stratacache_origin_loads_total", (("cache", "demo"),))]
        == (report["origin"]["loads"])
    )
    # the cache is no longer exported once its run is over
    assert not any(("cache", "demo") in labels for _, labels in after)


def test_metrics_port_url_goes_to_stderr(tmp_path: Path) -> None:
    result = invoke(
        "--requests", "300", *SMALL, "--metrics-port", "0", "--data-dir", str(tmp_path), "--json"
    )
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # stdout stays one JSON object
    assert "metrics: http://127.0.0.1:" in result.stderr
    assert ":0/metrics" not in result.stderr  # the port the OS chose, not 0


def test_a_busy_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke(
            "--requests", "10", "--metrics-port", str(port), "--data-dir", str(tmp_path)
        )
    assert result.exit_code == 1, result.output
    assert f"cannot serve /metrics on port {port}" in result.output


# -- --plot ------------------------------------------------------------------------------


def test_plot_writes_a_png_of_the_timeline(tmp_path: Path) -> None:
    png = tmp_path / "run.png"
    report = run_json(
        "--requests", "2000", *SMALL, "--plot", str(png), "--data-dir", str(tmp_path / "d")
    )
    assert report["plot"] == str(png)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    timeline = report["timeline"]
    assert len(timeline) == 100  # a snapshot every 2000 / 100 requests, after the first
    assert [point["requests"] for point in timeline] == list(range(20, 2001, 20))
    for point in timeline:
        assert [level["name"] for level in point["levels"]] == ["L1", "L2"]
        l1 = point["levels"][0]
        assert 0 <= l1["hit_rate"] <= 1 and l1["mean_us"] > 0
    assert timeline[-1]["levels"][0]["hit_rate"] > timeline[0]["levels"][0]["hit_rate"]


def test_timeline_intervals_are_the_differences_between_snapshots(tmp_path: Path) -> None:
    """Per-interval figures, not cumulative ones: 7 requests in 3 points is a snapshot
    every 3 requests, and one at the end."""
    cache = Cache([MemoryTier(10)], lambda keys: {key: 1 for key in keys})
    timeline = Timeline(7, points=3)
    try:
        timeline.start(cache)
        for done in range(1, 8):
            cache.get(f"k{done % 2}")  # k1 k0 k1 | k0 k1 k0 | k1: two misses, then hits
            timeline.after(cache, done)
    finally:
        cache.close()
    assert [s.requests for s in timeline.snapshots] == [0, 3, 6, 7]
    assert [s.calls[-1] for s in timeline.snapshots] == [0, 2, 2, 2]  # origin calls
    intervals = timeline.intervals()
    assert [i.requests for i in intervals] == [3, 6, 7]
    assert [i.hit_rates for i in intervals] == [(1 / 3,), (1.0,), (1.0,)]
    first, second, _ = (i.mean_us for i in intervals)
    assert first[1] is not None and first[1] > 0  # the origin answered in the first...
    assert second[1] is None  # ...and was not asked in the second
    timeline.plot(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = invoke(
        "--requests", "10", "--plot", str(tmp_path / "x.png"), "--data-dir", str(tmp_path / "d")
    )
    assert result.exit_code == 1, result.output
    assert "pip install 'stratacache[sim]'" in result.output
    assert not (tmp_path / "d").exists()  # refused before the run


# -- hot keys in the report --------------------------------------------------------------


def test_report_lists_the_hot_keys_zipf_head_first(tmp_path: Path) -> None:
    args = ("--requests", "5000", "--skew", "1.2", "--seed", "11", *SMALL)
    report = run_json(*args, "--data-dir", str(tmp_path))
    # the run's key ids are zipf_keys' with the seed's generator, drawn first thing
    drawn = Counter(zipf_keys(1000, 5000, 1.2, random.Random(11)))
    head = drawn.most_common(1)[0][0]
    hot = report["hot_keys"]
    assert 1 <= len(hot) <= 10
    assert hot[0]["key"] == f"user:{head}"
    rates = [h["rate"] for h in hot]
    assert rates == sorted(rates, reverse=True) and rates[0] > 0
    assert report["hot_pins"] == 0  # the normal run has no protection


def test_table_lists_the_hottest_keys(tmp_path: Path) -> None:
    result = invoke("--requests", "2000", "--skew", "1.2", *SMALL, "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "hottest keys at the end: user:" in result.output


# -- --hot-key ---------------------------------------------------------------------------


HOT = ("--hot-key", "--requests", "20000", "--keys", "500", "--origin-latency", "0")


def test_hot_key_protection_keeps_the_sale_key_above_l2(tmp_path: Path) -> None:
    report = run_json(*HOT, "--data-dir", str(tmp_path))
    assert report["sale_key"] == "user:500"  # a real user, outside the background's 0..499
    assert report["l1"] == {"size": 100, "policy": "lru"}  # the run's own L1 by default
    off, on = report["runs"]
    assert (off["protection"], on["protection"]) == (False, True)
    assert off["sale_requests"] == on["sale_requests"] > 0  # the same sequence twice
    assert on["sale_reads_past_l1"] < off["sale_reads_past_l1"]
    assert off["hot_pins"] == 0 < on["hot_pins"]
    for run in (off, on):
        assert run["hot_keys"][0]["key"] == "user:500"
        assert run["sale_origin_loads"] == 1  # L2 keeps it: the origin sees it once


def test_hot_key_table(tmp_path: Path) -> None:
    result = invoke(*HOT, "--requests", "5000", "--data-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    for text in ("--hot-key: user:500 on sale", "protection", "past L1", "LRU"):
        assert text in result.stdout


class RecordingEndpoint(MetricsEndpoint):
    """Scrapes itself at the end of each cache's run, before the cache is let go."""

    def __init__(self) -> None:
        super().__init__(0)
        self.scraped: dict[str, dict[Any, float]] = {}

    @contextmanager
    def watching(self, cache: Cache, name: str = "demo") -> Iterator[None]:
        with super().watching(cache, name):
            yield
            self.scraped[name] = scrape(self.url)


def test_hot_key_runs_are_served_as_metrics(tmp_path: Path) -> None:
    with RecordingEndpoint() as endpoint:
        report = run_hot_key(
            requests=3000,
            keys=300,
            l1_size=100,
            l2_size=1000,
            origin_latency=0.0,
            seed=5,
            data_dir=tmp_path,
            metrics=endpoint,
        )
    assert list(endpoint.scraped) == ["demo-protection-off", "demo-protection-on"]
    for name, samples in endpoint.scraped.items():
        assert gets(samples, "L1", cache=name) == report["requests"]
    assert endpoint.collector.names == []


# -- what goes with what -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hot-key", "--chaos"], "separate runs"),
        (["--hot-key", "--processes", "2"], "separate runs"),
        (["--processes", "2", "--metrics-port", "0"], "each worker process"),
        (["--processes", "2", "--plot", "x.png"], "each worker process"),
        (["--hot-key", "--plot", "x.png"], "--plot draws the normal run"),
        (["--chaos", "--plot", "x.png"], "--plot draws the normal run"),
        (["--hot-share", "0.1"], "--hot-share only work(s) with --hot-key"),
        (["--hot-key-ttl", "2"], "--hot-key-ttl only work(s) with --hot-key"),
        (["--hot-key", "--skew", "1.1"], "--skew do(es) not apply to --hot-key"),
    ],
)
def test_options_that_do_not_go_together(args: list[str], message: str, tmp_path: Path) -> None:
    result = invoke("--requests", "10", *args, "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "d").exists()

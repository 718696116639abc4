"""The demo over real remote levels: L1 -> Redis -> Redis Cluster -> origin, and
L1 -> memcached pool -> origin."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stratacache.cli import main


def demo(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--requests",
            "1500",
            "--keys",
            "1000",
            "--l1-size",
            "100",
            "--origin-latency",
            "0",
            "--data-dir",
            str(tmp_path),
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_redis_then_cluster(tmp_path: Path, redis_server, redis_cluster) -> None:  # type: ignore[no-untyped-def]
    report = demo(tmp_path, "--l2", redis_server.url, "--l3", redis_cluster.cluster_url)
    assert [(lv["name"], lv["kind"]) for lv in report["levels"]] == [
        ("L1", "memory"),
        ("L2", "redis"),
        ("L3", "redis-cluster"),
    ]
    l1, l2, l3 = report["levels"]
    assert report["errors"] == 0
    assert l2["lookups"] == l1["misses"] and l3["lookups"] == l2["misses"]
    assert report["origin"]["loads"] == l3["misses"]
    assert l2["hits"] > 0


def test_memcached_pool(tmp_path: Path, memcached_servers) -> None:  # type: ignore[no-untyped-def]
    url = "memcached://" + ",".join(f"{s.host}:{s.port}" for s in memcached_servers)
    report = demo(tmp_path, "--l2", url)
    assert [(lv["name"], lv["kind"]) for lv in report["levels"]] == [
        ("L1", "memory"),
        ("L2", "memcached"),
    ]
    assert report["levels"][1]["hits"] > 0
    assert report["errors"] == 0

"""The demo over real remote levels: L1 -> Redis -> Redis Cluster -> origin, and
L1 -> memcached pool -> origin; and ``demo --chaos``, which pauses its Redis L2 and fails
the origin mid-run, on a redis-server it starts itself and on one given with ``--l2``."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stratacache.cli import demo as demo_module
from stratacache.cli import main
from stratacache.cli.chaos import ClientPauser, FailingOrigin, Pauser, Phase, SignalPauser

from ..server_fixtures import in_ci
from ..servers import ServerUnavailable, find_binary


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


# -- demo --chaos ------------------------------------------------------------------------

# Short phases: healthy 1.2 s, L2 paused 1 s, L2 resumed 1.6 s, origin failing 1 s,
# recovered 1.2 s.
CHAOS_ARGS = ("--chaos-duration", "6", "--chaos-pause", "1", "--chaos-origin-failure", "1")


def chaos_demo(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--chaos",
            *CHAOS_ARGS,
            "--keys",
            "2000",
            "--l1-size",
            "200",
            "--data-dir",
            str(tmp_path),
            "--json",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def assert_survived(report: dict[str, Any]) -> dict[str, Any]:
    chaos = report["chaos"]
    phases = {phase["name"]: phase for phase in chaos["phases"]}
    assert list(phases) == ["healthy", "L2 paused", "L2 resumed", "origin failing", "recovered"]
    # the point of the demo: nothing reached a caller, through both outages
    assert chaos["caller_errors"] == 0 and report["errors"] == 0, chaos["first_error"]
    assert all(phase["requests"] > 0 for phase in phases.values())
    # the pause was felt (a timeout opened L2's breaker), then skipped
    assert chaos["breaker_opens"] >= 1
    assert phases["L2 paused"]["breaker_opens"] >= 1
    assert phases["L2 paused"]["l2_skipped"] > 0
    assert phases["healthy"]["l2_errors"] == 0
    # the origin failed and the fail-safe served the last values instead
    assert phases["origin failing"]["origin_errors"] > 0
    assert phases["origin failing"]["stale_served"] > 0
    assert chaos["stale_served"] > 0
    assert phases["recovered"]["origin_errors"] == 0
    assert phases["recovered"]["l2_breaker"] == "closed"
    return chaos


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Another process may have got the pid since; it must not be a redis-server.
    try:
        return b"redis-server" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def port_closed(url: str) -> bool:
    host, port = url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return False
    except OSError:
        return True


def require_redis_server() -> None:
    """What the server fixtures do for a test that starts no server itself: skip when
    redis-server is missing, fail under CI=true."""
    try:
        find_binary("redis-server")
    except ServerUnavailable as exc:
        if in_ci():
            pytest.fail(f"{exc} [CI=true: a missing server fails the run]", pytrace=False)
        pytest.skip(str(exc))


@pytest.mark.servers
def test_chaos_with_its_own_redis_server(tmp_path: Path) -> None:
    require_redis_server()
    report = chaos_demo(tmp_path)
    chaos = assert_survived(report)
    l2 = chaos["l2"]
    assert l2["started_by_demo"] is True and l2["pause"] == "SIGSTOP/SIGCONT"
    assert report["levels"][1]["kind"] == "redis"
    # the server the demo started is gone, and so is its port
    deadline = time.monotonic() + 5
    while not process_gone(l2["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(l2["pid"])
    assert port_closed(l2["url"])


def test_chaos_pauses_a_server_it_did_not_start(tmp_path: Path, fresh_redis_server) -> None:  # type: ignore[no-untyped-def]
    report = chaos_demo(tmp_path, "--l2", fresh_redis_server.url)
    chaos = assert_survived(report)
    assert chaos["l2"] == {
        "url": fresh_redis_server.url,
        "started_by_demo": False,
        "pid": None,
        "pause": "CLIENT PAUSE",
    }
    assert fresh_redis_server.command("PING", timeout=0.5) == "PONG"


def test_client_pause_ends_on_its_own(fresh_redis_server) -> None:  # type: ignore[no-untyped-def]
    """CLIENT PAUSE ... ALL cannot be cut short (CLIENT UNPAUSE waits like any command),
    so the pause is asked for exactly its length: the server answers again after it, and
    closing the pauser mid-pause neither blocks nor raises."""
    pauser = ClientPauser(fresh_redis_server.url)
    pauser.check()
    pauser.pause(0.6)
    paused_at = time.monotonic()
    with pytest.raises(TimeoutError):
        fresh_redis_server.command("PING", timeout=0.2)
    pauser.close()
    assert time.monotonic() - paused_at < 0.5
    assert fresh_redis_server.command("PING", timeout=2.0) == "PONG"
    assert time.monotonic() - paused_at < 1.5


@pytest.mark.servers
def test_chaos_interrupted_mid_pause_kills_its_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the demo's own redis-server is stopped (SIGSTOP): the server goes."""
    require_redis_server()
    pids: list[int] = []
    enter = demo_module._enter

    def enter_then_interrupt(phase: Phase, pauser: Pauser, origin: FailingOrigin) -> None:
        enter(phase, pauser, origin)
        if phase.name == "L2 paused":
            assert isinstance(pauser, SignalPauser)
            pids.append(pauser.pid)
            raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "_enter", enter_then_interrupt)
    result = CliRunner().invoke(
        main,
        ["demo", "--chaos", *CHAOS_ARGS, "--keys", "500", "--data-dir", str(tmp_path), "--json"],
    )
    assert result.exit_code == 1 and "Aborted" in result.output, result.output
    assert len(pids) == 1
    assert process_gone(pids[0])

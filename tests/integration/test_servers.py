"""The test suite's own servers: they start, answer, die, freeze and come back.

These use independent clients (redis-py, pymemcache, psycopg and SQLAlchemy) rather than
stratacache, so a failure here points at the infrastructure, not at the library.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymemcache
import pytest
import redis
import sqlalchemy as sa
from redis.cluster import RedisCluster as RedisClusterClient

from .. import servers
from ..servers import (
    MemcachedServer,
    PostgresServer,
    RedisCluster,
    RedisServer,
    ServerUnavailable,
    find_binary,
)

pytestmark = pytest.mark.servers

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent


def memcached_client(server: MemcachedServer, timeout: float = 2.0) -> pymemcache.Client:
    # default_noreply=False: a set is done when it returns, not still in flight when the
    # test kills or pauses the server.
    return pymemcache.Client(
        server.address, connect_timeout=timeout, timeout=timeout, default_noreply=False
    )


# -- Redis -----------------------------------------------------------------------------


def test_redis_server_answers(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    assert redis_server.port not in (6379, 0)


def test_shared_redis_server_is_empty_at_the_start_of_a_test(redis_server: RedisServer) -> None:
    # test_redis_server_answers wrote a key into the same server.
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0


def test_killed_redis_stops_answering_and_comes_back_on_its_port(
    fresh_redis_server: RedisServer,
) -> None:
    server = fresh_redis_server
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    client.set("k", "v")
    port = server.port

    server.kill()
    assert not server.is_running
    with pytest.raises(redis.ConnectionError):
        client.ping()

    server.start()
    assert server.port == port
    assert client.ping()  # the same client reconnects
    assert client.get("k") is None  # nothing is persisted


def test_paused_redis_times_out_and_answers_after_resume(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    client = redis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    assert client.ping()

    server.pause()
    assert server.is_paused
    with pytest.raises(redis.TimeoutError):
        client.ping()

    server.resume()
    assert client.ping()


def test_redis_restart_is_clean_and_keeps_the_port(fresh_redis_server: RedisServer) -> None:
    port, pid = fresh_redis_server.port, fresh_redis_server.pid
    fresh_redis_server.restart()
    assert (fresh_redis_server.port, fresh_redis_server.is_running) == (port, True)
    assert fresh_redis_server.pid != pid
    assert redis.Redis.from_url(fresh_redis_server.url).ping()


def test_ensure_running_undoes_a_pause_and_a_kill(fresh_redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis_server.url, socket_timeout=2)
    fresh_redis_server.pause()
    fresh_redis_server.ensure_running()
    assert client.ping()
    fresh_redis_server.kill()
    fresh_redis_server.ensure_running()
    assert client.ping()


def test_redis_with_a_password(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server(password="s3cret:/@")
    assert redis.Redis.from_url(server.url).ping()  # the URL quotes the password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=server.host, port=server.port, retry=None).ping()


def test_redis_with_an_acl_user(make_redis_server: Callable[..., RedisServer]) -> None:
    server = make_redis_server(username="app", password="pw")
    assert redis.Redis.from_url(server.url).acl_whoami() == "app"
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        redis.Redis(host=server.host, port=server.port, retry=None).ping()


# -- Redis Cluster ---------------------------------------------------------------------


def test_redis_cluster_has_three_masters_with_a_replica_each(redis_cluster: RedisCluster) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    for master in masters:
        assert master.info("replication")["role"] == "master"
        [replica] = redis_cluster.replicas_of(master)
        assert replica.info("replication")["master_port"] == str(master.port)

    client = RedisClusterClient.from_url(redis_cluster.url)
    try:
        keys = [f"key:{i}" for i in range(60)]
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [int(client.get(key)) for key in keys] == list(range(60))
        assert len({redis_cluster.master_for_key(key).port for key in keys}) == 3
    finally:
        client.close()


def test_redis_cluster_survives_the_loss_of_a_master(fresh_redis_cluster: RedisCluster) -> None:
    cluster = fresh_redis_cluster
    key = "survivor"
    old_master = cluster.master_for_key(key)
    [replica] = cluster.replicas_of(old_master)

    assert cluster.kill_master_for_key(key) is old_master
    new_master = cluster.wait_for_failover(old_master)

    assert new_master is replica
    assert new_master.info("replication")["role"] == "master"
    client = RedisClusterClient.from_url(new_master.url)
    try:
        client.set(key, "after the failover")
        assert client.get(key) == b"after the failover"
    finally:
        client.close()

    # The old master comes back as the replica of the one that replaced it.
    cluster.ensure_running()
    assert cluster.replicas_of(new_master) == [old_master]
    assert old_master.info("replication")["role"] == "slave"


# -- memcached -------------------------------------------------------------------------


def test_two_memcached_servers_answer(memcached_servers: list[MemcachedServer]) -> None:
    first, second = memcached_servers
    assert first.port != second.port
    for server in memcached_servers:
        client = memcached_client(server)
        client.set("k", str(server.port))
        assert client.get("k") == str(server.port).encode()
        assert server.url == f"memcached://127.0.0.1:{server.port}"


def test_killed_memcached_stops_answering_and_comes_back(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    victim, survivor = fresh_memcached_servers
    assert memcached_client(victim).set("k", "v")

    victim.kill()
    # New clients: pymemcache does not reconnect by itself, and how an old connection
    # fails (reset, or end of file) depends on timing.
    with pytest.raises(ConnectionRefusedError):
        memcached_client(victim).get("k")
    assert memcached_client(survivor).set("k", "v")  # the other one is unaffected

    victim.start()
    client = memcached_client(victim)
    assert client.get("k") is None  # back, and empty
    assert client.set("k", "v2")


def test_paused_memcached_times_out_and_answers_after_resume(
    fresh_memcached_servers: list[MemcachedServer],
) -> None:
    server = fresh_memcached_servers[0]
    client = memcached_client(server, timeout=0.3)
    client.set("k", "v")

    server.pause()
    with pytest.raises(TimeoutError):
        client.get("k")

    server.resume()
    assert client.get("k") == b"v"


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> Iterator[Callable[[PostgresServer], sa.Engine]]:
    engines: list[sa.Engine] = []

    def make(server: PostgresServer) -> sa.Engine:
        engines.append(sa.create_engine(server.url, pool_pre_ping=True))
        return engines[-1]

    yield make
    for made in engines:
        made.dispose()


def test_postgres_answers_with_its_own_database(
    postgres_server: PostgresServer, engine: Callable[[PostgresServer], sa.Engine]
) -> None:
    assert postgres_server.url.startswith("postgresql+psycopg://")
    assert postgres_server.port != 5432
    with engine(postgres_server).connect() as conn:
        row = conn.execute(sa.text("SELECT current_database(), current_user")).one()
    assert tuple(row) == ("stratacache", "postgres")


def test_postgres_keeps_data_across_a_restart_and_survives_a_kill(
    fresh_postgres_server: PostgresServer, engine: Callable[[PostgresServer], sa.Engine]
) -> None:
    server = fresh_postgres_server
    db = engine(server)
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kept (id int)"))
        conn.execute(sa.text("INSERT INTO kept VALUES (1)"))

    server.restart()  # a clean shutdown writes everything out
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM kept")).scalar_one() == 1

    server.kill()
    with pytest.raises(sa.exc.OperationalError), db.connect() as conn:
        conn.execute(sa.text("SELECT 1"))

    server.start()  # crash recovery
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_paused_postgres_times_out_and_answers_after_resume(
    fresh_postgres_server: PostgresServer,
) -> None:
    server = fresh_postgres_server
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        server.pause()
        # libpq's smallest connect timeout is 2 s; nothing shorter is honoured.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.conninfo, connect_timeout=2)
        server.resume()
        # The connection opened before the pause lives on.
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- the machinery itself --------------------------------------------------------------


@pytest.mark.parametrize("server_class", [RedisServer, MemcachedServer, PostgresServer])
def test_a_taken_port_is_detected_and_another_one_used(
    server_class: type[RedisServer | MemcachedServer | PostgresServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind((servers.LOCALHOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real_free_port())
        try:
            server = server_class().start()
        except ServerUnavailable as exc:
            pytest.skip(str(exc))  # the fixtures' CI rule covers missing binaries
        with server:
            assert server.port != taken
            assert server.is_running


def test_a_missing_binary_names_its_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerUnavailable, match=r"redis-cli .*'redis-tools'"):
        find_binary("redis-cli")
    server = MemcachedServer()
    with pytest.raises(ServerUnavailable, match=r"apt-get install memcached"):
        server.start()
    server.close()
    assert not server.dir.exists()


def _inner_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a test that needs redis_server in a child pytest with these fixtures."""
    (tmp_path / "tests" / "integration").mkdir(parents=True)
    (tmp_path / "tests" / "__init__.py").touch()
    (tmp_path / "tests" / "integration" / "__init__.py").touch()
    (tmp_path / "tests" / "servers.py").write_text((TESTS_DIR / "servers.py").read_text())
    fixtures = (TESTS_DIR / "server_fixtures.py").read_text()
    (tmp_path / "tests" / "server_fixtures.py").write_text(fixtures)
    (tmp_path / "tests" / "conftest.py").write_text('pytest_plugins = ["tests.server_fixtures"]\n')
    (tmp_path / "tests" / "integration" / "test_needs_redis.py").write_text(
        "def test_it(redis_server):\n    pass\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsE", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_server_is_a_skip_locally_and_a_failure_in_ci(tmp_path: Path) -> None:
    empty_path = tmp_path / "empty-bin"
    empty_path.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": str(empty_path)}

    local = _inner_pytest(tmp_path / "local", env)
    assert local.returncode == 0, local.stdout
    assert "1 skipped" in local.stdout
    assert "apt-get install redis-server" in local.stdout

    ci = _inner_pytest(tmp_path / "ci", env | {"CI": "true"})
    assert ci.returncode == 1, ci.stdout
    assert "1 error" in ci.stdout and "skipped" not in ci.stdout
    assert "apt-get install redis-server" in ci.stdout


def _is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has already exited


def _wait_until_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


SERVER_IN_A_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from tests.servers import RedisServer
    server = RedisServer().start()
    print(server.pid, server.dir, flush=True)
    sys.stdin.read()  # until the parent closes stdin (or kills us)
    """
)


@pytest.fixture
def server_in_a_child() -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    find_binary("redis-server")
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER_IN_A_CHILD, str(REPO_ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pid, directory = child.stdout.readline().split()
    yield child, int(pid), Path(directory)
    child.kill()
    child.wait()
    if _is_alive(int(pid)):
        os.kill(int(pid), signal.SIGKILL)


def test_servers_are_closed_when_the_test_process_exits(
    server_in_a_child: tuple[subprocess.Popen[str], int, Path],
) -> None:
    child, pid, directory = server_in_a_child
    assert _is_alive(pid)
    assert child.stdin is not None
    child.stdin.close()  # the child exits normally: atexit closes its servers
    assert child.wait(timeout=30) == 0
    assert not _is_alive(pid)
    assert not directory.exists()


def test_servers_die_with_a_killed_test_process(
    server_in_a_child: tuple[subprocess.Popen[str], int, Path],
) -> None:
    if not servers._pdeathsig_prefix():
        pytest.skip("no util-linux setpriv here: a SIGKILLed test run can orphan servers")
    child, pid, directory = server_in_a_child
    child.kill()  # no atexit now; only the parent-death signal can help
    child.wait()
    assert _wait_until_dead(pid), f"redis-server {pid} outlived its SIGKILLed parent"
    subprocess.run(["rm", "-rf", str(directory)], check=True)

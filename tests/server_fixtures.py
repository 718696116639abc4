"""Fixtures that start real servers (see ``tests/servers.py``), loaded for the whole test
tree by ``tests/conftest.py`` (``pytest_plugins``), so the tier conformance suite and the
integration tests share them.

Shared, session-scoped: one instance for the whole run, cheap to use.

    redis_server        a RedisServer
    redis_cluster       a RedisCluster: 3 masters, 1 replica each, 1 s node timeout
    memcached_servers   two MemcachedServer (a pool)
    postgres_server     a PostgresServer with an empty database ``stratacache``

Before every test that uses one of them (directly or through another fixture) it is
*healed*: resumed if a test left it paused, restarted if a test killed it (the cluster
also waits until it is healthy again), and, for Redis and memcached, emptied. So a test
may rely on an empty, answering server, and a test that breaks a shared server only
costs the next one a restart. PostgreSQL is not emptied: create tables with unique names
or drop what you create.

Own instance, function-scoped, closed after the test: for tests that kill, pause or
restart servers, so that their damage and their timing stay their own.

    fresh_redis_server, fresh_redis_cluster, fresh_memcached_servers (two),
    fresh_postgres_server
    make_redis_server(**options)    e.g. password= / username= for auth tests

A test that uses any of these is marked ``servers`` (``-m "not servers"`` deselects them).
When a server binary is missing the test is skipped with a message naming the package to
install, except under ``CI=true``, where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

import pytest

from .servers import (
    MemcachedServer,
    PostgresServer,
    RedisCluster,
    RedisServer,
    ServerUnavailable,
)

SHARED_FIXTURES = ("redis_server", "redis_cluster", "memcached_servers", "postgres_server")
FRESH_FIXTURES = (
    "fresh_redis_server",
    "fresh_redis_cluster",
    "fresh_memcached_servers",
    "fresh_postgres_server",
    "make_redis_server",
)
SERVER_FIXTURES = frozenset(SHARED_FIXTURES + FRESH_FIXTURES)


class _Startable(Protocol):
    def start(self) -> object: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=_Startable)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(exc: ServerUnavailable) -> NoReturn:
    if in_ci():
        pytest.fail(f"{exc} [CI=true: a missing server fails the run]", pytrace=False)
    pytest.skip(str(exc))


def _started(factory: Callable[[], S]) -> S:
    """Build and start a server; a missing binary becomes a skip (or, in CI, a failure)."""
    try:
        server = factory()
    except ServerUnavailable as exc:
        _unavailable(exc)
    try:
        server.start()
    except ServerUnavailable as exc:
        server.close()
        _unavailable(exc)
    except BaseException:
        server.close()
        raise
    return server


# -- markers ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Declared in pyproject.toml too; repeated so this file works on its own.
    config.addinivalue_line("markers", "servers: needs real servers started by the test suite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Marking by fixture use means no test can forget the marker.
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


# -- shared servers --------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _started(RedisServer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = _started(RedisCluster)
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def memcached_servers() -> Iterator[list[MemcachedServer]]:
    servers = _start_memcached_pair()
    yield servers
    for server in servers:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _started(PostgresServer)
    yield server
    server.close()


def _start_memcached_pair() -> list[MemcachedServer]:
    first = _started(MemcachedServer)
    try:
        second = _started(MemcachedServer)
    except BaseException:
        first.close()
        raise
    return [first, second]


def heal(value: Any) -> None:
    """Make a shared server (or each of a list of them) answer, and empty it.

    The autouse fixture below does this for the fixtures a test names; a test that picks
    its server at run time (``request.getfixturevalue``) calls it itself."""
    for server in value if isinstance(value, list) else [value]:
        server.ensure_running()
        if isinstance(server, RedisServer | RedisCluster):
            server.flushall()
        elif isinstance(server, MemcachedServer):
            server.flush_all()


@pytest.fixture(autouse=True)
def _heal_shared_servers(request: pytest.FixtureRequest) -> None:
    """Give each test that uses a shared server an answering, empty one."""
    for name in SHARED_FIXTURES:
        if name in request.fixturenames:
            heal(request.getfixturevalue(name))


# -- servers of one's own --------------------------------------------------------------


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    server = _started(RedisServer)
    yield server
    server.close()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """A factory: ``make_redis_server(password="pw", username="app")`` -> a started server."""
    made: list[RedisServer] = []

    def make(**options: object) -> RedisServer:
        server = _started(lambda: RedisServer(**options))  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisCluster]:
    cluster = _started(RedisCluster)
    yield cluster
    cluster.close()


@pytest.fixture
def fresh_memcached_servers() -> Iterator[list[MemcachedServer]]:
    servers = _start_memcached_pair()
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def fresh_postgres_server() -> Iterator[PostgresServer]:
    server = _started(PostgresServer)
    yield server
    server.close()

"""Real servers for the test suite: Redis, Redis Cluster, memcached and PostgreSQL.

Tests of the remote tiers and of the SQL origin talk to real servers, never to mocks, and
the suite starts those servers itself, so that a test can stop, kill (SIGKILL), pause
(SIGSTOP) and restart them and watch the library cope. Servers that happen to run on the
machine's standard ports are never used: a user's machine has none, and a test that kills
a server must own it.

Every server here:

* runs as a child process in its own temporary directory, on a port picked for it, with
  no persistence unless the server's data directory is the point (PostgreSQL);
* is in its own process group, so that ``pause()`` stops every process of it (PostgreSQL
  has one per connection) and ``kill()`` leaves nothing behind;
* keeps its port across ``kill()``/``start()``, so clients built from ``url`` reconnect;
* is waited for until it really answers the protocol, with a deadline, and a failure to
  come up raises :class:`ServerStartError` carrying the tail of the server's log;
* is cleaned up at interpreter exit (``atexit``) even when nobody closed it, and where
  util-linux's ``setpriv`` exists it is started with a parent-death signal, so that even a
  test runner killed with SIGKILL leaves no orphan server behind. That signal fires when
  the *thread* that started the server ends: start servers from the main thread.

A missing binary raises :class:`ServerUnavailable`, whose message names the binary and the
Debian package that provides it. Whether that is a skip or a failure is the fixtures'
decision (``tests/integration/conftest.py``), not this module's: it does not import pytest
and speaks the servers' wire protocols itself, so it works with no client library at all.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, ClassVar, Self
from urllib.parse import quote

__all__ = [
    "LOCALHOST",
    "MemcachedServer",
    "PostgresServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "ServerStartError",
    "ServerUnavailable",
    "find_binary",
    "free_port",
    "redis_command",
]

LOCALHOST = "127.0.0.1"

# Generous: a 2-core CI machine that is also running the rest of the suite can be slow to
# fork and initialise, and a deadline only costs time when something is really wrong.
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02  # between readiness probes of a server that is coming up
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ServerUnavailable(RuntimeError):
    """A server cannot be run on this machine at all (a binary or a system user is missing).

    The message says exactly what to install. ``scripts/install-servers`` installs it on
    Debian and Ubuntu.
    """

    def __init__(self, message: str, *, binary: str, package: str) -> None:
        super().__init__(message)
        self.binary = binary
        self.package = package

    @classmethod
    def missing(cls, binary: str, package: str, looked_in: str = "PATH") -> ServerUnavailable:
        return cls(
            f"{binary} not found (looked in {looked_in}): install the Debian package "
            f"'{package}' (apt-get install {package}) or run scripts/install-servers",
            binary=binary,
            package=package,
        )


class ServerStartError(RuntimeError):
    """A server was found but did not come up (or go down) in time; the log tail says why."""


class _PortInUse(Exception):
    """The server exited at start because another process holds its port: pick another."""


# --------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------

# binary -> the Debian package that provides it
DEBIAN_PACKAGES: dict[str, str] = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "memcached": "memcached",
    "initdb": "postgresql",
    "postgres": "postgresql",
}


def find_binary(name: str) -> str:
    """The path of ``name`` on PATH, or :class:`ServerUnavailable` naming its package."""
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable.missing(name, DEBIAN_PACKAGES.get(name, name))
    return found


def _postgres_version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); newest first when sorted in reverse.
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_postgres_bindir() -> Path:
    """The directory holding both ``initdb`` and ``postgres`` of one installation.

    Debian keeps them out of PATH, in ``/usr/lib/postgresql/<version>/bin``; other systems
    put them on PATH. The two must come from the same installation, hence one directory.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_postgres_version_key)
    candidates.extend(reversed(debian))
    candidates.append(Path("/usr/local/pgsql/bin"))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise ServerUnavailable.missing(
        "initdb and postgres", "postgresql", looked_in="PATH and /usr/lib/postgresql/*/bin"
    )


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """A command prefix that kills the server when the process that started it dies.

    atexit handlers do not run when the test runner is killed with SIGKILL (or by
    pytest-timeout's thread method, which calls ``os._exit``); the kernel's parent-death
    signal still fires. ``setpriv`` sets it and then execs the server, so the server keeps
    the pid we know. Absent ``setpriv`` (not Linux), atexit is the only safety net.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    probe = subprocess.run(
        [setpriv, "--pdeathsig", "KILL", "--", "true"], capture_output=True, check=False
    )
    return (setpriv, "--pdeathsig", "KILL", "--") if probe.returncode == 0 else ()


@functools.cache
def redis_version(redis_server: str) -> tuple[int, ...]:
    out = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------

_handed_out: set[int] = set()
_rng = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _can_bind(port: int) -> bool:
    # No SO_REUSEADDR on purpose: a port with a lingering TIME_WAIT connection fails here
    # too, and is better avoided.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on and this process has not handed out.

    Ports are drawn below the kernel's ephemeral range rather than by binding port 0:
    binding 0 returns an *ephemeral* port, which the kernel may give to any outgoing
    connection as its local port while a test has the server killed, and then the restart
    on the same port fails. A collision with another process between this check and the
    server's own bind is still possible; the servers detect it and retry on a new port.
    """
    ephemeral_low, _ = _ephemeral_range()
    low = 15000
    if ephemeral_low - low >= 1000:
        for _ in range(500):
            port = _rng.randrange(low, ephemeral_low)
            if port not in _handed_out and _can_bind(port):
                _handed_out.add(port)
                return port
    # An unusual port range: fall back to asking the kernel.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOCALHOST, 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


# --------------------------------------------------------------------------------------
# Wire protocols, just enough to tell a server is up and to manage a cluster
# --------------------------------------------------------------------------------------


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (``-ERR ...``)."""


RedisReply = str | int | None | list["RedisReply"]


def _read_redis_reply(stream: BinaryIO) -> RedisReply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a Redis reply")
    kind, body = line[:1], line[1:-2].decode()
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisReplyError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        return None if length < 0 else stream.read(length + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_redis_reply(stream) for _ in range(count)]
    raise ConnectionError(f"not a Redis reply: {line!r}")


def _encode_redis_command(args: Sequence[str | int]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_command(
    host: str,
    port: int,
    *args: str | int,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 2.0,
) -> RedisReply:
    """Send one command on a new connection and return the decoded reply (RESP2)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            sock.sendall(_encode_redis_command(auth))
            _read_redis_reply(stream)
        sock.sendall(_encode_redis_command(args))
        return _read_redis_reply(stream)


def _memcached_version(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"version\r\n")
        reply = sock.makefile("rb").readline().decode()
    if not reply.startswith("VERSION "):
        raise ConnectionError(f"unexpected memcached reply {reply!r}")
    return reply.split()[1]


def _postgres_accepts(host: str, port: int, user: str, database: str, timeout: float) -> bool:
    """Whether PostgreSQL completes a (trust-authenticated) startup for ``database``.

    A server that is still starting, recovering or shutting down answers the startup
    packet with an error ('E'); only a server ready for queries says AuthenticationOk.
    """
    params = f"user\0{user}\0database\0{database}\0\0".encode()
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(startup)
        header = sock.recv(9)
        ok = len(header) == 9 and header[:1] == b"R" and struct.unpack("!i", header[5:9])[0] == 0
        with contextlib.suppress(OSError):
            sock.sendall(b"X\0\0\0\4")  # Terminate, so the server logs no EOF complaint
    return ok


# --------------------------------------------------------------------------------------
# The process lifecycle shared by every server
# --------------------------------------------------------------------------------------


def _group_stopped(pgid: int) -> bool:
    """Whether every thread of every process in group ``pgid`` is stopped (Linux /proc).

    Where there is no /proc, say yes: the signal is delivered soon after anyway.
    """
    proc = Path("/proc")
    if not (proc / "self" / "task").is_dir():
        return True
    for stat in proc.glob("[0-9]*/task/[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread has just exited
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("T", "t", "Z", "X"):
            return False
    return True


@dataclass(frozen=True)
class _Identity:
    """subprocess's user/group/extra_groups; all None means "as we are"."""

    user: int | None = None
    group: int | None = None
    extra_groups: tuple[int, ...] | None = None


_live_servers: set[ManagedServer] = set()


@atexit.register
def _close_all_servers() -> None:
    # Whatever a crashed fixture or an interrupted run left behind.
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


class ManagedServer(ABC):
    """One server process: start, stop, kill, pause, resume, restart, close.

    ``start()`` after ``stop()`` or ``kill()`` brings the server back on the same port and
    directory. ``close()`` stops it for good and removes its directory.
    """

    kind: ClassVar[str]  # for directory names and messages
    # The signal asking for a quick, clean shutdown.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    # Whether close() shuts down cleanly (stop) or just kills: only worth the time when the
    # server leaves something behind otherwise (PostgreSQL's shared memory).
    graceful_close: ClassVar[bool] = True

    def __init__(self, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        self.host = LOCALHOST
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix=f"stratacache-{self.kind}-"))
        self.log_path = self.dir / "server.log"
        self._port = 0  # chosen at the first start, then kept
        self._port_kept = False
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        _live_servers.add(self)

    # -- what each server defines ------------------------------------------------------

    @abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    @abstractmethod
    def _answers(self) -> bool:
        """Whether the server answers its protocol right now (raise OSError if not)."""

    @abstractmethod
    def _prepare(self) -> None:
        """Called before every launch: find binaries, create data directories."""

    def _choose_ports(self) -> None:
        self._port = free_port()

    def _run_as(self) -> _Identity:
        """Who the server runs as: by default, whoever runs the tests."""
        return _Identity()

    # -- properties --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"{self.kind} server has not been started yet")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    @abstractmethod
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        """The process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port or '?'} {state}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server (if it is not running) and wait until it answers."""
        if self._closed:
            raise RuntimeError(f"{self!r} was closed")
        if self.is_running:
            return self
        attempts = 1 if self._port_kept else 5
        for attempt in range(1, attempts + 1):
            if not self._port_kept:
                self._choose_ports()
            self._prepare()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._launch_and_wait(log_offset)
            except _PortInUse:
                if attempt == attempts:
                    raise ServerStartError(
                        f"{self.kind}: port {self._port} stayed in use after {attempts} "
                        f"attempts; log tail:\n{self.log_tail()}"
                    ) from None
                continue
            break
        self._port_kept = True
        return self

    def _launch_and_wait(self, log_offset: int) -> None:
        identity = self._run_as()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*_pdeathsig_prefix(), *self._command()],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: pause/kill reach every process of the server, and
                # a Ctrl-C meant for the test runner does not kill servers behind its back.
                start_new_session=True,
                user=identity.user,
                group=identity.group,
                extra_groups=identity.extra_groups,
            )
        self._paused = False
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                new_log = self._log_since(log_offset)
                self._process = None
                if "already in use" in new_log.lower():
                    raise _PortInUse
                raise ServerStartError(
                    f"{self.kind} exited at start (command: {' '.join(self._command())}); "
                    f"log tail:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self._answers():
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.kind} did not answer on {self.host}:{self._port} within "
                    f"{self.start_timeout:.0f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Shut the server down cleanly; kill it if it does not go within ``timeout``."""
        if self._process is None:
            return
        if self.is_running:
            if self._paused:
                self._signal_group(signal.SIGCONT)  # a stopped process cannot shut down
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(self.stop_signal)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        # Stragglers of a clean shutdown (none expected), then reap.
        self._signal_group(signal.SIGKILL)
        self._process.wait()
        self._process = None
        self._paused = False

    def kill(self) -> None:
        """SIGKILL every process of the server, as a crash or an OOM kill would."""
        if self._process is None:
            return
        self._signal_group(signal.SIGKILL)
        self._process.wait()
        self._process = None
        self._paused = False

    def pause(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGSTOP the server: connections stay open, but nothing answers until resume()."""
        if not self.is_running:
            raise RuntimeError(f"cannot pause {self!r}")
        assert self._process is not None
        self._signal_group(signal.SIGSTOP)
        self._paused = True
        # kill() returns before the signal has stopped every thread: until then a thread
        # can still answer a request, and a test that expects a timeout would not get it.
        deadline = time.monotonic() + timeout
        while not _group_stopped(self._process.pid):
            if time.monotonic() > deadline:
                raise ServerStartError(f"{self!r} did not stop within {timeout:.0f}s")
            time.sleep(_POLL_INTERVAL / 4)

    def resume(self) -> None:
        if self.is_running:
            self._signal_group(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """A clean stop, then a start on the same port."""
        self.stop()
        return self.start()

    def ensure_running(self) -> Self:
        """Undo whatever a test did: resume a paused server, restart a dead one."""
        if self.is_paused:
            self.resume()
        return self.start()

    def close(self) -> None:
        """Stop the server for good and delete its directory."""
        if self._closed:
            return
        try:
            if self.graceful_close:
                self.stop()
            else:
                self.kill()
        finally:
            self._closed = True
            _live_servers.discard(self)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------


def _parse_info(reply: RedisReply) -> dict[str, str]:
    if not isinstance(reply, str):
        raise RedisReplyError(f"expected an INFO text, got {reply!r}")
    pairs = (line.split(":", 1) for line in reply.splitlines() if ":" in line)
    return {key: value.strip() for key, value in pairs}


class RedisServer(ManagedServer):
    """``redis-server`` with no persistence.

    ``password`` alone sets the default user's password (``requirepass``). With
    ``username`` too, an ACL user with every permission is created and the default user is
    disabled, so that only that user gets in. ``cluster_node_timeout_ms`` makes it a
    cluster node (see :class:`RedisCluster`). ``extra_args`` are appended as given.
    """

    kind = "redis"
    graceful_close = False  # it persists nothing

    def __init__(
        self,
        *,
        password: str | None = None,
        username: str | None = None,
        cluster_node_timeout_ms: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        if username is not None and password is None:
            raise ValueError("an ACL username needs a password")
        self.password = password
        self.username = username
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.cluster_bus_port: int | None = None
        self._binary = ""
        super().__init__(start_timeout=start_timeout)

    def _prepare(self) -> None:
        self._binary = find_binary("redis-server")

    def _choose_ports(self) -> None:
        super()._choose_ports()
        if self.cluster_node_timeout_ms is not None:
            # Redis 7 lets the bus port be chosen; older ones use port + 10000.
            self.cluster_bus_port = free_port() if self._supports_cluster_port() else None

    def _supports_cluster_port(self) -> bool:
        return redis_version(find_binary("redis-server")) >= (7, 0, 0)

    def _command(self) -> list[str]:
        args = [
            self._binary,
            "--port", str(self._port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.username is not None:
            args += ["--user", "default", "off"]
            args += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
        elif self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster_node_timeout_ms is not None:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                # A replica may always take over, however long its master was gone: tests
                # kill masters at arbitrary moments and need a failover every time.
                "--cluster-replica-validity-factor", "0",
                # Replicas sync at once instead of waiting 5 s for more replicas to share
                # one transfer: cluster creation and rejoins are several seconds faster.
                "--repl-diskless-sync-delay", "0",
                # CLUSTER SLOTS hides a replica until its replication offset is non-zero,
                # which the master's first ping makes it: ping every second, not every 10.
                "--repl-ping-replica-period", "1",
            ]  # fmt: skip
            if self.cluster_bus_port is not None:
                args += ["--cluster-port", str(self.cluster_bus_port)]
        return [*args, *self.extra_args]

    def _answers(self) -> bool:
        return self.command("PING", timeout=0.5) == "PONG"

    @property
    def url(self) -> str:
        credentials = ""
        if self.password is not None:
            user = quote(self.username, safe="") if self.username else ""
            credentials = f"{user}:{quote(self.password, safe='')}@"
        return f"redis://{credentials}{self.host}:{self.port}/0"

    def command(self, *args: str | int, timeout: float = 2.0) -> RedisReply:
        """One command on a new connection, authenticated as this server requires."""
        return redis_command(
            self.host,
            self.port,
            *args,
            username=self.username,
            password=self.password,
            timeout=timeout,
        )

    def info(self, section: str) -> dict[str, str]:
        return _parse_info(self.command("INFO", section))

    def info_cluster(self) -> dict[str, str]:
        return _parse_info(self.command("CLUSTER", "INFO"))

    def flushall(self) -> None:
        self.command("FLUSHALL")


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas_per_master`` replicas each.

    Built by ``redis-cli --cluster create`` from :class:`RedisServer` nodes with a short
    node timeout (1 s by default), so that a killed master's replica is promoted within a
    few seconds. Roles change as tests kill and restart nodes, so every question about the
    topology (which node is master of a slot, which replicas it has) is asked of the live
    cluster, never remembered.

    ``url`` is one node, which is what redis-py's ``RedisCluster.from_url`` takes;
    ``addresses`` are all of them.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
        start_timeout: float = 60.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.nodes = [
            RedisServer(cluster_node_timeout_ms=node_timeout_ms)
            for _ in range(masters * (1 + replicas_per_master))
        ]
        self._created = False
        self._closed = False

    # -- addresses ---------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def cluster_url(self) -> str:
        """Every node, in stratacache's ``redis+cluster://h1:p1,h2:p2,...`` form."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def __repr__(self) -> str:
        return f"<RedisCluster {self.nodes!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node; the first time, create the cluster. Waits until healthy."""
        if self._closed:
            raise RuntimeError("this RedisCluster was closed")
        for node in self.nodes:
            node.ensure_running()
        if not self._created:
            self._create()
            self._created = True
        self.wait_healthy(timeout=self.start_timeout)
        return self

    def _create(self) -> None:
        redis_cli = find_binary("redis-cli")
        command = [
            redis_cli,
            "--cluster", "create",
            *(f"{host}:{port}" for host, port in self.addresses),
            "--cluster-replicas", str(self.replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self.start_timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerStartError(f"redis-cli --cluster create timed out: {exc}") from exc
        if result.returncode != 0:
            raise ServerStartError(
                f"redis-cli --cluster create failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
            )

    def ensure_running(self) -> Self:
        """Resume paused nodes, restart dead ones, and wait until the cluster is healthy."""
        return self.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()  # a cluster has nothing worth a clean shutdown
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topology, asked of the live cluster --------------------------------------------

    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.is_running and not node.is_paused]

    def _node_at(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise LookupError(f"no node of this cluster listens on port {port}")

    def _ask(self, *args: str | int) -> RedisReply:
        """Ask the first live node that answers."""
        errors: list[str] = []
        for node in self.live_nodes():
            try:
                return node.command(*args)
            except (OSError, RedisReplyError) as exc:
                errors.append(f"{node!r}: {exc}")
        raise ConnectionError(f"no live node answered {args!r}: {errors}")

    def _slot_table(self, node: RedisServer | None = None) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, master port, replica ports), as ``node`` sees it."""
        reply = node.command("CLUSTER", "SLOTS") if node else self._ask("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        table: list[tuple[int, int, int, list[int]]] = []
        for entry in reply:
            assert isinstance(entry, list)
            first, last, master, *replicas = entry
            assert isinstance(first, int) and isinstance(last, int)
            assert isinstance(master, list) and isinstance(master[1], int)
            replica_ports = [
                r[1] for r in replicas if isinstance(r, list) and isinstance(r[1], int)
            ]
            table.append((first, last, master[1], sorted(replica_ports)))
        return sorted(table)

    def keyslot(self, key: str) -> int:
        slot = self._ask("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        return slot

    def masters(self) -> list[RedisServer]:
        """The nodes that currently serve slots."""
        ports = sorted({master for _, _, master, _ in self._slot_table()})
        return [self._node_at(port) for port in ports]

    def master_for_slot(self, slot: int) -> RedisServer:
        for first, last, master, _ in self._slot_table():
            if first <= slot <= last:
                return self._node_at(master)
        raise LookupError(f"slot {slot} is not served by any node")

    def master_for_key(self, key: str) -> RedisServer:
        return self.master_for_slot(self.keyslot(key))

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The replicas the cluster lists for ``master`` (the live ones, as it sees them)."""
        ports = {
            p for _, _, m, replicas in self._slot_table() if m == master.port for p in replicas
        }
        return [self._node_at(port) for port in sorted(ports)]

    def kill_master_for_key(self, key: str) -> RedisServer:
        """SIGKILL the master serving ``key``; returns the killed node."""
        master = self.master_for_key(key)
        master.kill()
        return master

    def flushall(self) -> None:
        for master in self.masters():
            master.flushall()

    # -- waiting for health ------------------------------------------------------------

    def problems(self, *, require_replicas: bool = True) -> list[str]:
        """What keeps the cluster from being healthy, as live nodes see it (empty if none).

        Healthy means every live node says ``cluster_state:ok`` with all slots served,
        knows every node, and agrees with the others on who serves which slots; every slot
        is served by a live node; and (``require_replicas``) every master has as many live,
        synced replicas as the cluster was built with.
        """
        live = self.live_nodes()
        if not live:
            return ["no node is running"]
        problems: list[str] = []
        tables: dict[int, list[tuple[int, int, int, list[int]]]] = {}
        for node in live:
            try:
                state = node.info_cluster()
                if state.get("cluster_state") != "ok":
                    problems.append(f"{node.port}: cluster_state {state.get('cluster_state')}")
                if state.get("cluster_slots_ok") != "16384":
                    problems.append(f"{node.port}: slots ok {state.get('cluster_slots_ok')}")
                if state.get("cluster_known_nodes") != str(len(self.nodes)):
                    problems.append(f"{node.port}: knows {state.get('cluster_known_nodes')}")
                tables[node.port] = self._slot_table(node)
            except (OSError, RedisReplyError, AssertionError) as exc:
                problems.append(f"{node.port}: {exc!r}")
        if problems:
            return problems
        views = {repr([entry[:3] for entry in table]) for table in tables.values()}
        if len(views) > 1:
            return [f"nodes disagree on the slot owners: {sorted(views)}"]
        live_ports = {node.port for node in live}
        table = next(iter(tables.values()))
        for first, last, master, replicas in table:
            if master not in live_ports:
                problems.append(f"slots {first}-{last} are served by dead node {master}")
            if require_replicas:
                synced = [port for port in replicas if port in live_ports and self._synced(port)]
                if len(synced) < self.replicas_per_master:
                    problems.append(f"master {master} has {len(synced)} synced replicas")
        return problems

    def _synced(self, port: int) -> bool:
        replication = self._node_at(port).info("replication")
        return (
            replication.get("role") == "slave"
            and replication.get("master_link_status") == "up"
            and replication.get("master_sync_in_progress") == "0"
        )

    def wait_healthy(self, timeout: float = 30.0, *, require_replicas: bool = True) -> None:
        """Poll until :meth:`problems` is empty; ServerStartError naming them otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            problems = self.problems(require_replicas=require_replicas)
            if not problems:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n!r}\n{n.log_tail(10)}" for n in self.nodes)
                raise ServerStartError(
                    f"redis cluster not healthy after {timeout:.0f}s: {problems}\n{logs}"
                )
            time.sleep(_POLL_INTERVAL * 5)

    def wait_for_failover(self, dead_master: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until the slots ``dead_master`` served have a new, live master; return it.

        The new master has no replica yet (its old master is dead), so replicas are not
        required here; restart the dead node (``ensure_running``) to get one back.
        """
        if dead_master.is_running and not dead_master.is_paused:
            raise RuntimeError(f"{dead_master!r} is still answering: kill or pause it first")
        # Right after the kill the survivors still name the dead master as the owner of
        # its slots, which is how we know which slots to watch.
        slots = [first for first, _, master, _ in self._slot_table() if master == dead_master.port]
        self.wait_healthy(timeout, require_replicas=False)
        if not slots:
            raise LookupError(f"{dead_master!r} served no slots")
        return self.master_for_slot(slots[0])


# --------------------------------------------------------------------------------------
# memcached
# --------------------------------------------------------------------------------------


class MemcachedServer(ManagedServer):
    """``memcached`` on 127.0.0.1, TCP only, 64 MiB."""

    kind = "memcached"
    # It notices a shutdown signal only on its once-a-second clock tick, and keeps nothing.
    graceful_close = False

    def __init__(
        self,
        *,
        memory_mb: int = 64,
        extra_args: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.memory_mb = memory_mb
        self.extra_args = tuple(extra_args)
        self._binary = ""
        super().__init__(start_timeout=start_timeout)

    def _prepare(self) -> None:
        self._binary = find_binary("memcached")

    def _command(self) -> list[str]:
        args = [
            self._binary,
            "-l", self.host,
            "-p", str(self._port),
            "-U", "0",  # no UDP listener: nothing uses it, and it would need a port too
            "-m", str(self.memory_mb),
            "-t", "2",
            "-c", "1024",
        ]  # fmt: skip
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root without it
        return [*args, *self.extra_args]

    def _answers(self) -> bool:
        return bool(_memcached_version(self.host, self._port, timeout=0.5))

    @property
    def url(self) -> str:
        return f"memcached://{self.host}:{self.port}"

    def flush_all(self) -> None:
        with socket.create_connection(self.address, timeout=2.0) as sock:
            sock.sendall(b"flush_all\r\n")
            reply = sock.makefile("rb").readline()
        if reply != b"OK\r\n":
            raise ConnectionError(f"memcached flush_all answered {reply!r}")


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


class PostgresServer(ManagedServer):
    """A private PostgreSQL cluster: ``initdb`` into a temp dir, then ``postgres`` on it.

    Trust authentication, superuser ``postgres``, a database ``database`` created at the
    first start. TCP on 127.0.0.1 plus a Unix socket in the temp dir (never /var/run, which
    belongs to the machine's own server). Durability is traded for speed (``fsync=off``):
    data survives ``stop()``/``start()``, but commits just before a ``kill()`` may be lost.

    The server is run in the foreground as our own child rather than through ``pg_ctl
    start``, which would detach it: as a child it is in a process group we own (pause and
    kill reach every backend), its exit is observed directly, and it dies with the test
    runner. PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user,
    which owns the temp dir.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for every client

    def __init__(
        self,
        *,
        database: str = "stratacache",
        user: str = "postgres",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.database = database
        self.user = user
        self._bindir: Path | None = None
        self._owner: pwd.struct_passwd | None = None  # as root: the postgres user
        super().__init__(start_timeout=start_timeout)
        self.data_dir = self.dir / "data"

    def _prepare(self) -> None:
        self._bindir = find_postgres_bindir()
        if os.geteuid() == 0 and self._owner is None:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable(
                    "PostgreSQL refuses to run as root and there is no 'postgres' user to "
                    "run it as: install the Debian package 'postgresql', which creates it",
                    binary="postgres",
                    package="postgresql",
                ) from None
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _run_as(self) -> _Identity:
        if self._owner is None:
            return _Identity()
        # extra_groups=(): drop root's supplementary groups too.
        return _Identity(self._owner.pw_uid, self._owner.pw_gid, extra_groups=())

    def _run_as_owner(self, args: list[str], stdin: str | None = None) -> None:
        identity = self._run_as()
        result = subprocess.run(
            args,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.dir,
            timeout=self.start_timeout,
            user=identity.user,
            group=identity.group,
            extra_groups=identity.extra_groups,
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def _initdb(self) -> None:
        assert self._bindir is not None
        self._run_as_owner(
            [
                str(self._bindir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--auth", "trust",
                "--username", self.user,
                "--encoding", "UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway cluster: don't wait for the disk
            ]
        )  # fmt: skip
        # The database, created in single-user mode before the server ever runs: no
        # client binary or library needed.
        self._run_as_owner(
            [str(self._bindir / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
            stdin=f'CREATE DATABASE "{self.database}";\n',
        )

    def _command(self) -> list[str]:
        assert self._bindir is not None
        return [
            str(self._bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self._port),
            "-k", str(self.dir),
            "-c", f"listen_addresses={self.host}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=100",
            "-c", "shared_buffers=32MB",
        ]  # fmt: skip

    def _answers(self) -> bool:
        return _postgres_accepts(self.host, self._port, self.user, self.database, timeout=0.5)

    @property
    def socket_dir(self) -> Path:
        return self.dir

    @property
    def url(self) -> str:
        """A SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def conninfo(self) -> str:
        """A libpq URL, for psycopg.connect() and psql."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

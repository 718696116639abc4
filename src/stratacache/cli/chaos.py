"""``stratacache demo --chaos``: break the hierarchy on a schedule while the demo runs.

The run lasts a fixed time and goes through five phases, each reported on its own:

1. **healthy**;
2. **L2 paused**: the Redis server of L2 stops answering (SIGSTOP for a server the demo
   started, ``CLIENT PAUSE`` for one given with ``--l2``). The first call waits out the
   tier's short socket timeout, its circuit breaker opens, and L2 is skipped from then on;
3. **L2 resumed**: the breaker's background probe finds the server again (within about
   ``breaker_reset``, 1 s) and L2 rejoins;
4. **origin failing**: every origin call raises, as a database refusing connections
   would. Entries live only ``CHAOS_TTL`` seconds here, so many of the keys read are
   expired by then, and the fail-safe serves their last values instead of an error;
5. **recovered**.

Before the run every key is loaded once, as in a service that has been up for a while:
the fail-safe can only serve a value that was loaded at some point, and a key read for
the first time while the origin is down fails its caller.

The point is the "caller errors" row: it counts every exception that reached the demo's
caller, and should stay 0 throughout (writes excepted: a write-through write cannot
succeed while the origin is down, which is why ``--chaos`` runs read-only unless
``--write-ratio`` says otherwise). Everything here is demo plumbing: a
self-contained ``redis-server`` starter, the two ways of pausing a server, a wrapper that
makes an origin fail for a while, and the per-phase accounting.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from ..config import redact, tier_from_url
from ..metrics import CacheStats
from ..origin import Origin

__all__ = [
    "CHAOS_TTL",
    "ChaosL2",
    "ChaosPlan",
    "ClientPauser",
    "FailingOrigin",
    "Pauser",
    "Phase",
    "RedisProcess",
    "SignalPauser",
    "chaos_l2",
    "check_l2_url",
    "find_redis_server",
    "phase_row",
    "plan_phases",
    "print_chaos",
    "schedule_text",
    "summarize",
]

#: how long entries live at every level in a chaos run: short, so that keys expire (and
#: reload) during the run, and the origin's failure meets expired keys to serve stale
CHAOS_TTL = 2.0
#: the cache's fail-safe settings in a chaos run
FAIL_SAFE_MAX_AGE = 600.0
SOFT_TIMEOUT = 0.05
HARD_TIMEOUT = 1.0
#: the L2 tier's socket timeouts: a paused server costs one short wait, then the breaker
#: skips it
L2_TIMEOUT = 0.25
#: seconds of the run left for the healthy, resumed and recovered phases together (at
#: least); the resumed phase gets 40% of it, enough for the breaker to rejoin (~1 s)
MIN_SPARE = 4.0

HEALTHY = "healthy"
L2_PAUSED = "L2 paused"
L2_RESUMED = "L2 resumed"
ORIGIN_FAILING = "origin failing"
RECOVERED = "recovered"

_HOST = "127.0.0.1"


# ------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # seconds from the start of the run
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def plan_phases(duration: float, l2_pause: float, origin_failure: float) -> list[Phase]:
    """The five phases of a run of ``duration`` seconds: the pause and the failure take
    the time asked; the rest is split 30/40/30 into healthy, resumed and recovered."""
    spare = duration - l2_pause - origin_failure
    if l2_pause <= 0 or origin_failure <= 0 or spare <= 0:
        raise click.UsageError(
            f"--chaos-duration ({duration:g}s) must be longer than --chaos-pause "
            f"({l2_pause:g}s) plus --chaos-origin-failure ({origin_failure:g}s), both > 0"
        )
    lengths = [
        (HEALTHY, 0.3 * spare),
        (L2_PAUSED, l2_pause),
        (L2_RESUMED, 0.4 * spare),
        (ORIGIN_FAILING, origin_failure),
        (RECOVERED, 0.3 * spare),
    ]
    phases: list[Phase] = []
    start = 0.0
    for name, length in lengths:
        phases.append(Phase(name, start, start + length))
        start += length
    return phases


# ---------------------------------------------------------------------- the origin


class FailingOrigin(Origin):
    """``inner``, except while a failure window is open: then every call raises
    :class:`ConnectionError` at once, as a database that refuses connections would."""

    def __init__(self, inner: Origin, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.clock = clock
        self.writable = inner.writable
        self._window = (math.inf, math.inf)
        #: calls refused so far
        self.refused = 0

    def fail_for(self, seconds: float) -> None:
        """Open a failure window of ``seconds`` from now."""
        now = self.clock()
        self._window = (now, now + seconds)

    def recover(self) -> None:
        """Close the failure window now."""
        self._window = (math.inf, math.inf)

    @property
    def failing(self) -> bool:
        start, end = self._window
        return start <= self.clock() < end

    def _check(self, what: str) -> None:
        if self.failing:
            self.refused += 1
            raise ConnectionError(f"origin unavailable: {what} refused (demo --chaos failure)")

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        self._check("load")
        return self.inner.load_many(keys)

    def store_many(self, items: Mapping[str, Any]) -> Mapping[str, Any] | None:
        self._check("store")
        return self.inner.store_many(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._check("delete")
        self.inner.delete_many(keys)

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------- pausing L2


class Pauser:
    """Makes the L2 server stop answering, and answer again."""

    method: ClassVar[str] = "?"

    def __init__(self) -> None:
        self.paused = False

    def pause(self, seconds: float) -> None:
        """Stop answering, for ``seconds`` at most (``resume`` may come earlier)."""
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Resume if paused (errors ignored): an interrupted run must not leave a server
        stuck."""
        if self.paused:
            with contextlib.suppress(Exception):
                self.resume()

    def close(self) -> None:
        self.release()


def _threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (Linux /proc; elsewhere, assume so)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True
    for stat in tasks.glob("*/stat"):
        try:
            # "tid (comm) state ...": comm may hold spaces and parentheses.
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the thread has just exited
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


class SignalPauser(Pauser):
    """SIGSTOP / SIGCONT to the process group of a server the demo started: connections
    stay open and nothing answers, like a server stalled by the kernel or a VM pause."""

    method = "SIGSTOP/SIGCONT"

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid

    def pause(self, seconds: float) -> None:
        os.killpg(self.pid, signal.SIGSTOP)
        self.paused = True
        # killpg returns before every thread has stopped; until then one could answer.
        deadline = time.monotonic() + 2.0
        while not _threads_stopped(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGCONT)
        self.paused = False


class ClientPauser(Pauser):
    """``CLIENT PAUSE <ms> ALL`` on a Redis server the demo did not start.

    Signals only reach a process of our own on this machine; ``CLIENT PAUSE`` is a command,
    so it works on any Redis 6.2+ the URL reaches (another host, a container, a managed
    service), as long as the user may run it (``@admin``). The server holds every
    client's commands unanswered, like a stalled server, and resumes on its own when the
    time is up. It cannot be ended sooner: under ``ALL``, ``CLIENT UNPAUSE`` waits like any
    other command (Redis 7.0), so ``resume`` only notes that the time is up, and a demo
    interrupted mid-pause leaves the server paused for the rest of that time at most.
    It pauses every client of that server, not only the demo's.
    """

    method = "CLIENT PAUSE"

    def __init__(self, url: str) -> None:
        super().__init__()
        # A second tier for the same URL is the control connection: it has a redis-py
        # client and pool of its own (so the pause command never waits behind L2's
        # timed-out calls) and takes the URL's credentials, database and TLS options as
        # L2 does. Only its raw transport (perform) is used.
        self._control: Any = tier_from_url(
            url, name="chaos-control", socket_timeout=2.0, connect_timeout=2.0
        )
        self.url = url

    def _command(self, *args: str | int) -> Any:
        return self._control.perform(lambda client: client.execute_command(*args))

    def check(self) -> None:
        """Fail early, before the run, if the server cannot be paused from here.
        ``CLIENT UNPAUSE`` changes nothing on a server that is not paused, and needs what
        the pause needs: Redis 6.2+ (which has ``ALL``) and the permission."""
        try:
            self._command("CLIENT", "UNPAUSE")
        except Exception as exc:
            raise click.ClickException(
                f"--chaos cannot pause the L2 server {redact(self.url)} with CLIENT PAUSE "
                f"({type(exc).__name__}: {exc}); it needs Redis 6.2+ and a user allowed to "
                "run CLIENT PAUSE/UNPAUSE, or leave --l2 out to let the demo start its "
                "own redis-server"
            ) from None

    def pause(self, seconds: float) -> None:
        try:
            self._command("CLIENT", "PAUSE", max(1, round(seconds * 1000)), "ALL")
        except Exception as exc:
            raise click.ClickException(
                f"could not pause the L2 server {redact(self.url)}: {type(exc).__name__}: {exc}"
            ) from None
        self.paused = True

    def resume(self) -> None:
        # Called when the pause's time is up: the server has resumed by itself.
        self.paused = False

    def close(self) -> None:
        self.paused = False  # nothing to send: the pause runs out on its own
        self._control.close()


# ------------------------------------------------------------- a redis-server of our own


def find_redis_server() -> str:
    """The redis-server to start for L2, or a click error saying what to do instead."""
    if not hasattr(signal, "SIGSTOP"):  # Windows: nothing to pause a process with
        raise click.ClickException(
            "--chaos without --l2 pauses its own redis-server with SIGSTOP, which this "
            "system does not have; pass --l2 redis://HOST:PORT of a server to pause with "
            "CLIENT PAUSE."
        )
    found = shutil.which("redis-server")
    if found is None:
        raise click.ClickException(
            "--chaos needs a Redis server for L2 that it can pause: redis-server was not "
            "found on PATH. Install it (Debian/Ubuntu: apt-get install redis-server; "
            "macOS: brew install redis), or pass --l2 redis://HOST:PORT of a server to "
            "pause with CLIENT PAUSE."
        )
    return found


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` where it works (util-linux): the kernel kills the
    server if the demo dies without cleaning up (SIGKILL, or SIGTERM, which Python does
    not turn into an exception). setpriv execs the server, which keeps the pid."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if probe.returncode == 0 else ()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A throwaway ``redis-server`` on a free port of 127.0.0.1: no persistence, its own
    temporary directory and process group (so a Ctrl-C meant for the demo does not reach
    it before the demo has resumed and stopped it), killed by ``close()``."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="stratacache-demo-redis-"))
        self.log_path = self.dir / "redis.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("redis-server is not running")
        return self.process.pid

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self, timeout: float = 15.0) -> None:
        atexit.register(self.close)
        for attempt in range(1, 4):
            self.port = _free_port()
            command = [
                self.binary,
                "--port", str(self.port),
                "--bind", _HOST,
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", "",
            ]  # fmt: skip
            with self.log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    [*_pdeathsig_prefix(), *command],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    tail = self._log_tail()
                    if "already in use" in tail.lower() and attempt < 3:
                        break  # another process took the port meanwhile: pick another
                    raise click.ClickException(f"redis-server exited at start; its log:\n{tail}")
                if _answers_ping(self.port):
                    return
                if time.monotonic() > deadline:
                    tail = self._log_tail()
                    self.close()
                    raise click.ClickException(
                        f"redis-server did not answer PING within {timeout:g}s; its log:\n{tail}"
                    )
                time.sleep(0.02)

    def close(self) -> None:
        """Kill the server (SIGKILL also ends a stopped process) and remove its directory."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.close)


# ------------------------------------------------------------------ the L2 to break


@dataclass
class ChaosL2:
    """The L2 a chaos run uses and how it is paused."""

    url: str
    pauser: Pauser
    #: the pid of the redis-server the demo started (None: a server given with --l2)
    pid: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "url": redact(self.url),
            "started_by_demo": self.pid is not None,
            "pid": self.pid,
            "pause": self.pauser.method,
        }


def check_l2_url(url: str | None) -> None:
    """Refuse an L2 that --chaos cannot pause."""
    if url is None:
        return
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss"):
        raise click.UsageError(
            f"--chaos pauses L2, and only a single Redis server (redis:// or rediss://) can "
            f"be paused from here (CLIENT PAUSE); got {redact(url)}. Pass a redis:// URL, or "
            "leave --l2 out to let the demo start its own redis-server."
        )


@contextlib.contextmanager
def chaos_l2(url: str | None) -> Iterator[ChaosL2]:
    """The L2 for a chaos run: the server at ``url`` (paused with CLIENT PAUSE), or a
    redis-server started here (paused with signals, killed on the way out)."""
    check_l2_url(url)
    if url is not None:
        client_pauser = ClientPauser(url)
        try:
            client_pauser.check()
            yield ChaosL2(url, client_pauser)
        finally:
            client_pauser.close()
        return
    server = RedisProcess(find_redis_server())
    try:
        server.start()
        signal_pauser = SignalPauser(server.pid)
        try:
            yield ChaosL2(server.url, signal_pauser, server.pid)
        finally:
            signal_pauser.close()
    finally:
        server.close()


@dataclass
class ChaosPlan:
    """What run_demo needs for a chaos run."""

    phases: list[Phase]
    pauser: Pauser
    l2: dict[str, Any] = field(default_factory=dict)  # ChaosL2.describe()
    ttl: float = CHAOS_TTL
    #: the tier options of a remote L2 (short timeouts: the pause is felt once)
    l2_options: dict[str, Any] = field(
        default_factory=lambda: {"socket_timeout": L2_TIMEOUT, "connect_timeout": L2_TIMEOUT}
    )

    @property
    def duration(self) -> float:
        return self.phases[-1].end


# ---------------------------------------------------------------------- accounting


def phase_row(
    phase: Phase,
    before: CacheStats,
    after: CacheStats,
    *,
    requests: int,
    caller_errors: int,
    write_errors: int,
    l2_index: int = 1,
) -> dict[str, Any]:
    """One phase's numbers: the loop's counts and the difference of two stats snapshots."""
    l2_before, l2_after = before.levels[l2_index], after.levels[l2_index]
    return {
        "name": phase.name,
        "start_s": round(phase.start, 3),
        "end_s": round(phase.end, 3),
        "requests": requests,
        "caller_errors": caller_errors,
        "write_errors": write_errors,
        "stale_served": after.stale_served - before.stale_served,
        "l2_errors": l2_after.errors - l2_before.errors,
        "l2_skipped": l2_after.skipped - l2_before.skipped,
        "breaker_opens": l2_after.breaker_opens - l2_before.breaker_opens,
        "l2_breaker": l2_after.breaker,
        "origin_loads": after.origin_loads - before.origin_loads,
        "origin_errors": after.origin_errors - before.origin_errors,
        "load_timeouts": after.load_timeouts - before.load_timeouts,
    }


_SUMMED = (
    "requests",
    "caller_errors",
    "write_errors",
    "stale_served",
    "l2_errors",
    "l2_skipped",
    "breaker_opens",
    "origin_loads",
    "origin_errors",
    "load_timeouts",
)


def summarize(plan: ChaosPlan, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The report's ``chaos`` object: the setup, the phases, and their totals."""
    return {
        "duration_s": round(plan.duration, 3),
        "ttl_s": plan.ttl,
        "fail_safe_max_age_s": FAIL_SAFE_MAX_AGE,
        "soft_timeout_s": SOFT_TIMEOUT,
        "hard_timeout_s": HARD_TIMEOUT,
        "l2": plan.l2,
        **extra,
        **{name: sum(row[name] for row in rows) for name in _SUMMED},
        "phases": rows,
    }


def schedule_text(plan: ChaosPlan) -> str:
    """One line: where L2 is, how it is paused, and the phases (seconds from the start
    of the run, after the warm-up)."""
    l2 = plan.l2
    where = f"redis-server pid {l2['pid']}" if l2.get("pid") else l2.get("url", "L2")
    steps = " | ".join(f"{p.start:.1f}-{p.end:.1f}s {p.name}" for p in plan.phases)
    return f"chaos schedule ({where}, paused with {l2.get('pause', '?')}): {steps}"


def print_chaos(chaos: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    l2 = chaos["l2"]
    where = (
        f"redis-server started by the demo (pid {l2['pid']}, {l2['url']})"
        if l2.get("started_by_demo")
        else l2.get("url", "?")
    )
    # Phases as columns, measures as rows: five phases fit a narrow terminal.
    table = Table(title="stratacache demo --chaos: per phase")
    table.add_column("", no_wrap=True)
    for row in chaos["phases"]:
        table.add_column(row["name"], justify="right")
    measures: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("seconds", lambda r: f"{r['start_s']:.1f}-{r['end_s']:.1f}"),
        ("requests", lambda r: f"{r['requests']:,}"),
        (
            "caller errors",
            lambda r: f"[bold red]{r['caller_errors']:,}[/]" if r["caller_errors"] else "0",
        ),
        ("stale served", lambda r: f"{r['stale_served']:,}"),
        ("origin errors", lambda r: f"{r['origin_errors']:,}"),
        ("L2 errors", lambda r: f"{r['l2_errors']:,}"),
        ("L2 skipped", lambda r: f"{r['l2_skipped']:,}"),
        ("breaker opens", lambda r: f"{r['breaker_opens']:,}"),
        ("L2 breaker", lambda r: str(r["l2_breaker"])),
    ]
    for label, cell in measures:
        table.add_row(label, *(cell(row) for row in chaos["phases"]))
    console.print(table)
    console.print(
        f"L2: {where}, paused with {l2.get('pause', '?')}. Entries live {chaos['ttl_s']:g} s "
        f"(so they expire during the run); fail-safe: fail_safe_max_age="
        f"{chaos['fail_safe_max_age_s']:g}s, soft_timeout={chaos['soft_timeout_s']:g}s, "
        f"hard_timeout={chaos['hard_timeout_s']:g}s; {chaos.get('warmed_keys', 0):,} keys "
        f"warmed before the run."
    )
    console.print(
        "caller errors: exceptions that reached the caller. stale served: values the "
        "fail-safe served because their load failed or was slow. L2 skipped: calls L2's "
        "open circuit breaker refused at once (also counted in L2 errors). L2 breaker: "
        "its state at the end of the phase."
    )
    errors = chaos["caller_errors"]
    if errors:
        writes = chaos["write_errors"]
        console.print(
            f"[bold red]caller errors: {errors:,}[/] ({writes:,} of them writes, which a "
            f"write-through cache cannot accept while the origin is down); first: "
            f"{chaos.get('first_error')}"
        )
    else:
        console.print(
            f"caller errors: 0. Every request was answered: {chaos['stale_served']:,} "
            f"with a stale value while the origin failed or was slow, the rest from the "
            f"cache or the origin; L2's breaker opened {chaos['breaker_opens']:,} time(s) "
            f"and skipped {chaos['l2_skipped']:,} call(s) instead of waiting on it."
        )

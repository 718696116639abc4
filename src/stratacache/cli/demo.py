"""``stratacache demo``: the whole hierarchy on one machine, with no server.

It creates a SQLite "users" database (the origin), puts an in-process L1 and a SQLite-file
L2 in front of it, drives a Zipf-distributed read workload with a share of writes, and
reports per level what the cache did: hit rates, latencies, origin queries avoided, and the
average response time against going to the database every time. ``--l2``/``--l3`` swap in
remote levels by URL (``redis://...``, ``redis+cluster://...``, ``memcached://...``).

``--origin-latency`` adds a delay to every origin query, standing in for the network
round trip to a real database server; without it a local SQLite query is so cheap that
caching it would prove little.

``--chaos`` breaks things on a schedule while the workload runs (L2's Redis paused, then
the origin failing) with the fail-safe on, and reports per phase what callers saw; see
:mod:`stratacache.cli.chaos`.

``--metrics-port`` serves the cache's Prometheus metrics while it runs, ``--plot`` draws
hit rates and latencies over the run (:mod:`stratacache.cli.timeline`), and ``--hot-key``
replays a flash sale with hot-key protection off and on (:mod:`stratacache.cli.flash_sale`).
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Self

import click

from ..config import redact, tier_from_url
from ..errors import CacheError, ConfigurationError
from ..hierarchy.sync import Cache
from ..metrics import CacheStats
from ..origin import Origin, SQLOrigin
from ..tiers.base import Tier
from ..tiers.memory import MemoryTier
from ..tiers.sqlite import SQLiteTier
from . import chaos as _chaos
from .flash_sale import SaleSettings, run_flash_sale
from .timeline import Timeline, require_matplotlib

__all__ = ["MetricsEndpoint", "demo_command", "run_demo", "run_hot_key"]

_COUNTRIES = ("DE", "FR", "US", "JP", "BR", "IN", "NG", "SE", "CA", "AU")


class DelayedOrigin(Origin):
    """An origin that waits ``latency`` seconds per query before answering: a stand-in
    for the round trip to a database on another machine."""

    def __init__(self, inner: Origin, latency: float) -> None:
        self.inner = inner
        self.latency = latency
        self.writable = inner.writable

    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        self._wait()
        return self.inner.load_many(keys)

    def store_many(self, items: Mapping[str, Any]) -> None:
        self._wait()
        self.inner.store_many(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.inner.delete_many(keys)

    def close(self) -> None:
        self.inner.close()


def create_users_db(path: Path, count: int, seed: int) -> None:
    """A users table with ``count`` profiles (recreated if it has another size)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "email TEXT NOT NULL, country TEXT NOT NULL, score INTEGER NOT NULL, "
            "bio TEXT NOT NULL)"
        )
        (existing,) = conn.execute("SELECT COUNT(*) FROM users").fetchone()
        if existing == count:
            return
        conn.execute("DELETE FROM users")
        rng = random.Random(seed)
        rows = (
            (
                i,
                f"user {i}",
                f"user{i}@example.com",
                rng.choice(_COUNTRIES),
                rng.randrange(1000),
                "x" * rng.randrange(50, 400),
            )
            for i in range(count)
        )
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    finally:
        conn.close()


def zipf_sampler(keys: int, skew: float, rng: random.Random) -> Callable[[int], list[int]]:
    """A function drawing ``n`` key ids from a Zipf(skew) distribution over ``keys`` ids;
    the popularity ranks are shuffled so hot ids are scattered."""
    weights = [1.0 / (rank**skew) for rank in range(1, keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    ids = list(range(keys))
    rng.shuffle(ids)

    def draw(n: int) -> list[int]:
        return rng.choices(ids, cum_weights=cumulative, k=n)

    return draw


def zipf_keys(keys: int, requests: int, skew: float, rng: random.Random) -> list[int]:
    """``requests`` key ids drawn from a Zipf(skew) distribution over ``keys`` ids."""
    return zipf_sampler(keys, skew, rng)(requests)


def build_levels(
    data_dir: Path,
    l1_size: int,
    l2_size: int,
    l2_url: str | None,
    l3_url: str | None,
    *,
    ttl: float | None = None,
    l2_options: Mapping[str, Any] | None = None,
    l1_policy: str | None = None,
) -> list[Tier]:
    """L1 (memory), L2 (``l2_url``, else a SQLite file) and an optional L3. ``ttl``
    replaces every level's (300 s in L1, 3600 s below); ``l2_options`` go to a remote L2;
    ``l1_policy`` replaces L1's eviction policy (the default W-TinyLFU)."""
    options: dict[str, Any] = {} if l1_policy is None else {"policy": l1_policy}
    levels: list[Tier] = [MemoryTier(l1_size, ttl=ttl or 300.0, **options)]
    shared_ttl = ttl or 3600.0
    if l2_url:
        levels.append(
            tier_from_url(
                l2_url, name="L2", namespace="demo", ttl=shared_ttl, **dict(l2_options or {})
            )
        )
    else:
        levels.append(
            SQLiteTier(
                data_dir / "l2-cache.db", namespace="demo", max_entries=l2_size, ttl=shared_ttl
            )
        )
    if l3_url:
        levels.append(tier_from_url(l3_url, name="L3", namespace="demo", ttl=shared_ttl))
    return levels


def users_origin(db_path: Path, latency: float) -> DelayedOrigin:
    """The users table of ``db_path`` as the origin (key ``user:{id}``), ``latency``
    seconds away."""
    sql = SQLOrigin(f"sqlite:///{db_path}", "users", key_column="id", key_prefix="user:")
    return DelayedOrigin(sql, latency)


class MetricsEndpoint:
    """``/metrics`` (Prometheus text) for the demo's caches while they run.

    The collector lives in a registry of its own: the global one would refuse a second
    demo's collector in the same process (the tests run many) and would export whatever
    else the process registered. Caches come and go with :meth:`watching`; the server
    runs from construction to :meth:`close`."""

    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        # Imported here: prometheus-client is the [metrics] extra, needed only with
        # --metrics-port (the import error names what to install).
        from prometheus_client import CollectorRegistry

        from ..prometheus import CacheCollector, start_metrics_server

        self.registry = CollectorRegistry()
        self.collector = CacheCollector()
        self.registry.register(self.collector)
        try:
            self.server = start_metrics_server(port, addr=addr, registry=self.registry)
        except BaseException:
            self.registry.unregister(self.collector)
            raise

    @property
    def url(self) -> str:
        """Where to scrape, with the port the OS picked when asked for port 0."""
        return self.server.url

    @contextmanager
    def watching(self, cache: Cache, name: str = "demo") -> Iterator[None]:
        """Export ``cache`` (label ``cache=name``) for the duration of the block."""
        self.collector.add(cache, name)
        try:
            yield
        finally:
            self.collector.remove(name)

    def close(self) -> None:
        self.server.shutdown()
        self.registry.unregister(self.collector)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_demo(
    *,
    requests: int,
    keys: int,
    skew: float,
    write_ratio: float,
    l1_size: int,
    l2_size: int,
    origin_latency: float,
    seed: int,
    data_dir: Path,
    l2_url: str | None = None,
    l3_url: str | None = None,
    progress: bool = True,
    chaos: _chaos.ChaosPlan | None = None,
    metrics: MetricsEndpoint | None = None,
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    """Run the workload and return the report. With ``chaos``, the run lasts the plan's
    duration instead of ``requests`` requests, and the report gains a ``chaos`` object.
    ``metrics`` exports the cache while it runs; ``timeline`` (not with ``chaos``) takes
    its snapshots along the requests, and the report gains its intervals."""
    rng = random.Random(seed)
    db_path = data_dir / "origin-users.db"
    create_users_db(db_path, keys, seed)
    delayed = users_origin(db_path, origin_latency)
    if chaos is None:
        origin: Origin = delayed
        levels = build_levels(data_dir, l1_size, l2_size, l2_url, l3_url)
        cache = Cache(levels, origin, measure_l1_latency=True, rng=random.Random(seed))
    else:
        origin = _chaos.FailingOrigin(delayed)
        levels = build_levels(
            data_dir,
            l1_size,
            l2_size,
            l2_url,
            l3_url,
            ttl=chaos.ttl,
            l2_options=chaos.l2_options if l2_url else None,
        )
        cache = Cache(
            levels,
            origin,
            measure_l1_latency=True,
            rng=random.Random(seed),
            fail_safe_max_age=_chaos.FAIL_SAFE_MAX_AGE,
            soft_timeout=_chaos.SOFT_TIMEOUT,
            hard_timeout=_chaos.HARD_TIMEOUT,
        )
    watched = metrics.watching(cache) if metrics is not None else nullcontext()
    try:
        with watched:
            cache.clear()  # a previous run's L2 would make this one look better than it is
            cache.reset_stats()
            if chaos is not None:
                assert isinstance(origin, _chaos.FailingOrigin)
                return _run_chaos(
                    cache, origin, chaos, keys, skew, write_ratio, rng, origin_latency, progress
                )
            workload = zipf_keys(keys, requests, skew, rng)
            reads, writes, errors, elapsed = _run_requests(
                cache, workload, write_ratio, rng, progress, timeline
            )
            report = _report(cache.stats(), reads, writes, errors, elapsed, origin_latency)
        if timeline is not None:
            report["timeline"] = timeline.as_json()
        return report
    finally:
        if chaos is not None:
            chaos.pauser.release()  # resume a paused L2 first: closing must not wait on it
        cache.close()


def _run_requests(
    cache: Cache,
    workload: Sequence[int],
    write_ratio: float,
    rng: random.Random,
    progress: bool,
    timeline: Timeline | None,
) -> tuple[int, int, int, float]:
    """The normal run: a read of each key id, or a read then an update for
    ``write_ratio`` of them. Returns reads, writes, errors and the seconds it took."""
    reads = writes = errors = 0
    if timeline is not None:
        timeline.start(cache)
    started = time.perf_counter()
    with _progress(progress, len(workload)) as advance:
        for step, key_id in enumerate(workload):
            key = f"user:{key_id}"
            try:
                if rng.random() < write_ratio:
                    writes += 1
                    profile = cache.get(key)
                    if isinstance(profile, dict):
                        cache.set(key, {**profile, "score": rng.randrange(1000)})
                else:
                    reads += 1
                    cache.get(key)
            except CacheError:
                errors += 1
            if timeline is not None:
                timeline.after(cache, step + 1)
            if step % 512 == 0:
                advance(512)
        advance(0, final=True)
    return reads, writes, errors, time.perf_counter() - started


_WARM_BATCH = 1000
_DRAW_BATCH = 8192


def _run_chaos(
    cache: Cache,
    origin: _chaos.FailingOrigin,
    plan: _chaos.ChaosPlan,
    keys: int,
    skew: float,
    write_ratio: float,
    rng: random.Random,
    origin_latency: float,
    progress: bool,
) -> dict[str, Any]:
    """The chaos run: warm every key, then run the workload through the plan's phases,
    pausing and resuming L2 and failing the origin at their boundaries."""
    # A service that has been up for a while has its working set cached: load every key
    # once, so that the origin's failure meets keys with a last value to serve. The
    # statistics start after this.
    if progress:
        click.echo(f"chaos: warming {keys:,} keys (each loaded once)...", err=True)
    warm_started = time.perf_counter()
    for first in range(0, keys, _WARM_BATCH):
        warm = [f"user:{i}" for i in range(first, min(keys, first + _WARM_BATCH))]
        cache.get_many(warm, soft_timeout=None, hard_timeout=None)
    warm_s = time.perf_counter() - warm_started
    cache.reset_stats()
    if progress:
        click.echo(f"chaos: warmed in {warm_s:.1f} s; {_chaos.schedule_text(plan)}", err=True)

    draw = zipf_sampler(keys, skew, rng)
    phases = plan.phases
    rows: list[dict[str, Any]] = []
    reads = writes = errors = 0
    first_error: str | None = None
    with _chaos_progress(progress, plan.duration) as show:
        started = time.monotonic()
        index = 0
        phase = phases[0]
        phase_end = started + phase.end
        before = cache.stats()
        requests_in = errors_in = write_errors_in = 0
        show(phase.name, 0.0)
        batch: list[int] = []
        position = 0
        while True:
            if position == len(batch):
                batch, position = draw(_DRAW_BATCH), 0
                now = time.monotonic()
                show(phase.name, now - started)
            else:
                now = time.monotonic()
            if now >= phase_end:
                after = cache.stats()
                rows.append(
                    _chaos.phase_row(
                        phase,
                        before,
                        after,
                        requests=requests_in,
                        caller_errors=errors_in,
                        write_errors=write_errors_in,
                    )
                )
                before = after
                requests_in = errors_in = write_errors_in = 0
                index += 1
                if index == len(phases):
                    break
                phase = phases[index]
                phase_end = started + phase.end
                _enter(phase, plan.pauser, origin)
                show(phase.name, now - started)
            key = f"user:{batch[position]}"
            position += 1
            requests_in += 1
            writing = rng.random() < write_ratio
            try:
                if writing:
                    writes += 1
                    profile = cache.get(key)
                    if isinstance(profile, dict):
                        try:
                            cache.set(key, {**profile, "score": rng.randrange(1000)})
                        except Exception:
                            write_errors_in += 1
                            raise
                else:
                    reads += 1
                    cache.get(key)
            except Exception as exc:  # any exception that reaches a caller counts
                errors += 1
                errors_in += 1
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
    report = _report(cache.stats(), reads, writes, errors, elapsed, origin_latency)
    report["chaos"] = _chaos.summarize(
        plan,
        rows,
        warmed_keys=keys,
        warm_s=round(warm_s, 3),
        origin_refused=origin.refused,
        first_error=first_error,
    )
    return report


def _enter(phase: _chaos.Phase, pauser: _chaos.Pauser, origin: _chaos.FailingOrigin) -> None:
    """What starts with ``phase``."""
    if phase.name == _chaos.L2_PAUSED:
        pauser.pause(phase.seconds)
    elif phase.name == _chaos.L2_RESUMED:
        pauser.resume()
    elif phase.name == _chaos.ORIGIN_FAILING:
        origin.fail_for(phase.seconds)
    elif phase.name == _chaos.RECOVERED:
        origin.recover()


#: --hot-key's L1 unless --l1-size is given: small enough that the browsing background
#: churns the sale key out of an LRU between two of its requests (a 2% key comes back
#: every ~50 requests; an LRU of 100 loses it whenever 100 others come first).
HOT_KEY_L1 = 100
#: --hot-key's catalogue unless --keys is given: one L2 holds it after a few seconds, so
#: the run serves thousands of requests a second and the sale key passes the threshold.
#: 100,000 cold keys at 1 ms per origin query would keep it (2% of ~700/s) below 50/s.
HOT_KEY_CATALOGUE = 2_000


def run_hot_key(
    *,
    requests: int,
    keys: int,
    l1_size: int,
    l2_size: int,
    origin_latency: float,
    seed: int,
    data_dir: Path,
    l2_url: str | None = None,
    l3_url: str | None = None,
    share: float = 0.02,
    threshold: float = 50.0,
    hot_key_ttl: float = 1.0,
    metrics: MetricsEndpoint | None = None,
) -> dict[str, Any]:
    """A flash sale (see :mod:`stratacache.cli.flash_sale`) through an LRU L1 of
    ``l1_size`` over the demo's L2 and users origin, protection off then on: ``share`` of
    the requests for one user, the rest for ``keys`` others evenly."""
    db_path = data_dir / "origin-users.db"
    # One user more than the background reads: the sale key, so it is only asked for as
    # the sale (create_users_db rebuilds a table of another size).
    create_users_db(db_path, keys + 1, seed)
    origin = users_origin(db_path, origin_latency)
    settings = SaleSettings(
        requests=requests,
        share=share,
        keys=keys,
        threshold=threshold,
        hot_key_ttl=hot_key_ttl,
        seed=seed,
        sale_key=f"user:{keys}",
        key_format="user:{}",
    )

    def levels() -> list[Tier]:
        return build_levels(data_dir, l1_size, l2_size, l2_url, l3_url, l1_policy="lru")

    def watch(cache: Cache, protected: bool) -> AbstractContextManager[object]:
        if metrics is None:
            return nullcontext()
        return metrics.watching(cache, f"demo-protection-{'on' if protected else 'off'}")

    try:
        # The load function, not the origin: each run's cache closes its origin, and
        # both runs (and this function) share this one.
        report = run_flash_sale(levels, origin.load_many, settings, watch=watch)
    finally:
        origin.close()
    report.update(
        requests=requests,
        background_keys=keys,
        l1={"size": l1_size, "policy": "lru"},
        origin_latency_ms=origin_latency * 1000,
    )
    return report


def _rounded(us: float | None) -> float | None:
    return None if us is None else round(us, 3)


def _report(
    stats: CacheStats, reads: int, writes: int, errors: int, elapsed: float, latency: float
) -> dict[str, Any]:
    levels = [
        {
            "name": s.name,
            "kind": s.kind,
            "lookups": s.lookups,
            "hits": s.hits,
            "misses": s.misses,
            "hit_rate": round(s.hit_rate, 6),
            "mean_us": _rounded(s.mean_us),
            "p50_us": _rounded(s.p50_us),
            "p99_us": _rounded(s.p99_us),
            "errors": s.errors,
        }
        for s in stats.levels
    ]
    lookups = stats.levels[0].lookups if stats.levels else 0
    return {
        "requests": reads,
        "errors": errors,
        "amat_us": round(stats.amat_us, 3),
        "no_cache_us": round(stats.no_cache_us, 3),
        "levels": levels,
        "origin": {
            "loads": stats.origin_loads,
            "mean_us": _rounded(stats.origin_mean_us),
            "queries_avoided": max(0, lookups - stats.origin_loads),
        },
        "writes": writes,
        "elapsed_s": round(elapsed, 3),
        "origin_latency_ms": latency * 1000,
        # the counter's estimate at the end of the run (requests/s, recent ones weigh more)
        "hot_keys": [{"key": h.key, "rate": round(h.rate, 1)} for h in stats.hot_keys[:10]],
        "hot_pins": stats.hot_pins,
    }


class _progress:
    """A rich progress bar on stderr (or nothing), as a context manager yielding
    ``advance(n, final=False)``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n, final=False: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.start()
        task = self._progress.add_task("requests", total=self.total)

        def advance(n: int, final: bool = False) -> None:
            if final:
                self._progress.update(task, completed=self.total)
            else:
                self._progress.advance(task, n)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()


@contextmanager
def _chaos_progress(enabled: bool, seconds: float) -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar over the run's seconds, naming the current phase (or nothing):
    yields ``show(phase, elapsed)``."""
    if not enabled:
        yield lambda phase, elapsed: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("chaos: {task.description:<15}"),
        BarColumn(),
        TextColumn("{task.completed:4.1f} / {task.total:.1f} s"),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("", total=seconds)

    def show(phase: str, elapsed: float) -> None:
        progress.update(task, description=phase, completed=min(elapsed, seconds))

    progress.start()
    try:
        yield show
        progress.update(task, completed=seconds)
    finally:
        progress.stop()


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    console = Console()
    table = Table(title="stratacache demo: per level")
    for column in ("level", "kind", "lookups", "hits", "hit rate", "mean µs", "p50 µs", "p99 µs"):
        table.add_column(column, justify="left" if column in ("level", "kind") else "right")
    for level in report["levels"]:
        table.add_row(
            level["name"],
            level["kind"],
            f"{level['lookups']:,}",
            f"{level['hits']:,}",
            f"{level['hit_rate']:.1%}",
            us(level["mean_us"]),
            us(level["p50_us"]),
            us(level["p99_us"]),
        )
    origin = report["origin"]
    table.add_row(
        "origin",
        "sql",
        f"{origin['loads']:,}",
        "",
        "",
        us(origin["mean_us"]),
        "",
        "",
    )
    console.print(table)
    reads = report["requests"]
    avoided = origin["queries_avoided"]
    speedup = report["no_cache_us"] / report["amat_us"] if report["amat_us"] else float("inf")
    console.print(
        f"{reads:,} reads, {report['writes']:,} writes, {report['errors']} errors, "
        f"in {report['elapsed_s']:.1f} s"
    )
    console.print(
        f"origin queries avoided: {avoided:,} of {reads + report['writes']:,} lookups "
        f"({avoided / max(1, reads + report['writes']):.1%})"
    )
    console.print(
        f"average response time (AMAT = T1 + m1 (T2 + m2 T_origin)): "
        f"{report['amat_us']:,.1f} µs, against {report['no_cache_us']:,.1f} µs with no cache "
        f"({speedup:,.1f}x faster)"
    )
    hottest = ", ".join(f"{h['key']} {h['rate']:,.0f}/s" for h in report["hot_keys"][:5])
    if hottest:
        console.print(f"hottest keys at the end: {hottest}")
    if "plot" in report:
        console.print(f"plot: {report['plot']}")


def _print_hot_key(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"stratacache demo --hot-key: {report['sale_key']} on sale")
    # Short headers on several lines: the table has to fit a terminal of 80 columns.
    columns = (
        "protection",
        "sale\nrequests",
        "sale\npast L1",
        "sale\norigin\nloads",
        "pins",
        "hottest\nkey",
        "rate/s",
        "s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "protection" else "right")
    for run in report["runs"]:
        top: dict[str, Any] = run["hot_keys"][0] if run["hot_keys"] else {"key": "-", "rate": 0.0}
        table.add_row(
            "on" if run["protection"] else "off",
            f"{run['sale_requests']:,}",
            f"{run['sale_reads_past_l1']:,}",
            f"{run['sale_origin_loads']:,}",
            f"{run['hot_pins']:,}",
            top["key"],
            f"{top['rate']:,.0f}",
            f"{run['elapsed_s']:.1f}",
        )
    console.print(table)
    l1 = report["l1"]
    console.print(
        f"{report['requests']:,} requests per run, {report['share']:.0%} for "
        f"{report['sale_key']}, the rest over {report['background_keys']:,} other users; "
        f"L1: {l1['policy'].upper()} of {l1['size']:,} entries; protection holds keys above "
        f"{report['threshold_per_s']:g} requests/s in L1 for {report['hot_key_ttl_s']:g} s"
    )
    off, on = report["runs"]
    console.print(
        f"the sale key went past L1 (each time an L2 read) {off['sale_reads_past_l1']:,} "
        f"times without protection, {on['sale_reads_past_l1']:,} with it (pins: times that "
        f"protection held a key in L1; rate/s: the hot-key counter's estimate at the end)"
    )


@contextmanager
def _directory(path: Path | None) -> Iterator[Path]:
    """``path``, created if missing; without one, a temporary directory removed afterwards."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="stratacache-demo-") as tmp:
            yield Path(tmp)
    else:
        path.mkdir(parents=True, exist_ok=True)
        yield path


_POSITIVE = click.IntRange(min=1)
_NON_NEGATIVE = click.FloatRange(min=0.0)
_SECONDS = click.FloatRange(min=0.0, min_open=True)
_CHAOS_OPTIONS = ("chaos_duration", "chaos_pause", "chaos_origin_failure")


# Every option shows its default: --help is where a user learns what a bare run does.
@click.command("demo", context_settings={"show_default": True})
@click.option("--requests", default=50_000, type=_POSITIVE, help="ignored with --chaos")
@click.option(
    "--keys",
    default=100_000,
    type=_POSITIVE,
    show_default=f"100000; {HOT_KEY_CATALOGUE} with --hot-key",
    help="user profiles in the origin database",
)
@click.option(
    "--skew", default=0.99, type=_NON_NEGATIVE, help="Zipf exponent of the key popularity"
)
@click.option(
    "--write-ratio",
    type=click.FloatRange(0.0, 1.0),
    show_default="0.05; 0 with --chaos",
    help="share of requests that update a profile (writes go through to the origin, so "
    "they fail while --chaos has it down)",
)
@click.option(
    "--l1-size",
    default=5_000,
    type=_POSITIVE,
    show_default=f"5000; {HOT_KEY_L1} with --hot-key",
    help="L1 (in-process) entries",
)
@click.option(
    "--l2-size", default=50_000, type=_POSITIVE, help="L2 (SQLite file) entries; ignored with --l2"
)
@click.option(
    "--origin-latency",
    default=1.0,
    type=_NON_NEGATIVE,
    help="milliseconds added to every origin query",
)
@click.option("--seed", default=42, type=int)
@click.option(
    "--l2",
    "l2_url",
    metavar="URL",
    help="a remote L2 instead of the SQLite file: redis://, memcached://, ...",
)
@click.option(
    "--l3", "l3_url", metavar="URL", help="an L3 below L2: redis+cluster://, memcached://, ..."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where the origin database and the L2 file live (default: a temp dir)",
)
@click.option(
    "--chaos",
    is_flag=True,
    help="with the fail-safe on, pause L2 and then fail the origin during the run, and "
    "report per phase what callers saw. L2 is a redis-server the demo starts (needs "
    "redis-server on PATH), or the Redis 6.2+ of --l2, paused with CLIENT PAUSE ... ALL: "
    "every client of that server waits, for --chaos-pause seconds even if the demo is "
    "interrupted",
)
@click.option(
    "--chaos-duration",
    default=12.0,
    type=_SECONDS,
    metavar="SECONDS",
    help="how long a --chaos run lasts",
)
@click.option(
    "--chaos-pause", default=3.0, type=_SECONDS, metavar="SECONDS", help="how long L2 is paused"
)
@click.option(
    "--chaos-origin-failure",
    default=2.0,
    type=_SECONDS,
    metavar="SECONDS",
    help="how long the origin fails",
)
@click.option(
    "--processes",
    type=click.IntRange(min=2),
    metavar="N",
    help="run N worker processes (each with its own L1) over one L2 and one origin, reading "
    "and writing the same keys; report per process the stale reads and the invalidation "
    "latency",
)
@click.option(
    "--seconds",
    default=5.0,
    type=_SECONDS,
    help="how long a --processes run lasts",
)
@click.option(
    "--write-policy",
    type=click.Choice(["through", "behind", "around"]),
    default="through",
    help="what set does: write the origin then every level (through), every level and a "
    "durable journal the origin is fed from (behind), or the origin then invalidate every "
    "level (around)",
)
@click.option(
    "--bus/--no-bus",
    default=True,
    help="with --processes: keep the invalidation bus on (the default) or turn it off, to "
    "see the stale reads it prevents",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="serve the cache's Prometheus metrics at http://127.0.0.1:PORT/metrics during the "
    "run (0: a free port; the URL goes to stderr). Not with --processes",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PNG",
    help="draw each level's hit rate and latency over the run to this PNG (needs matplotlib: "
    "pip install 'stratacache[sim]'). Not with --chaos, --processes or --hot-key",
)
@click.option(
    "--hot-key",
    is_flag=True,
    help="replay a flash sale twice, hot-key protection off then on: one user takes "
    "--hot-share of the requests, the rest go evenly to --keys others, through an LRU L1 "
    f"(of {HOT_KEY_L1} unless --l1-size: an L1 that churns the sale key out, which is what "
    "protection is for; the default W-TinyLFU keeps a key this hot by itself) over the usual "
    "L2 and origin. Reports the sale key's reads past L1 and origin loads per run",
)
@click.option(
    "--hot-share",
    default=0.02,
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="with --hot-key: the sale key's share of the requests",
)
@click.option(
    "--hot-threshold",
    default=50.0,
    type=_SECONDS,
    metavar="PER_SECOND",
    help="with --hot-key: requests/s above which protection holds a key in L1",
)
@click.option(
    "--hot-key-ttl",
    default=1.0,
    type=_SECONDS,
    metavar="SECONDS",
    help="with --hot-key: how long protection holds a hot key in L1 after reading it below",
)
@click.option("--json", "as_json", is_flag=True, help="print only one JSON object on stdout")
@click.pass_context
def demo_command(
    ctx: click.Context,
    /,
    origin_latency: float,
    write_ratio: float | None,
    l2_url: str | None,
    l3_url: str | None,
    data_dir: Path | None,
    chaos: bool,
    chaos_duration: float,
    chaos_pause: float,
    chaos_origin_failure: float,
    processes: int | None,
    seconds: float,
    write_policy: str,
    bus: bool,
    metrics_port: int | None,
    plot_path: Path | None,
    hot_key: bool,
    hot_share: float,
    hot_threshold: float,
    hot_key_ttl: float,
    as_json: bool,
    **workload: Any,
) -> None:
    """Run a Zipf workload through L1 -> L2 -> SQLite origin and report per level."""
    _check_run_options(ctx, processes, chaos, hot_key, metrics_port, plot_path)
    if processes is not None:
        if chaos:
            raise click.UsageError("--processes and --chaos are separate runs; pick one")
        _run_processes_command(
            processes, seconds, write_policy, bus, write_ratio, l2_url, data_dir, as_json, workload
        )
        return
    for name in ("seconds", "write_policy", "bus"):
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"--{name.replace('_', '-')} only works with --processes")
    # The other options (sizes, skew, seed...) are run_demo's own arguments, passed as they are.
    phases: list[_chaos.Phase] = []
    if chaos:
        # Checked before anything is created or started.
        phases = _chaos.plan_phases(chaos_duration, chaos_pause, chaos_origin_failure)
        spare = chaos_duration - chaos_pause - chaos_origin_failure
        if spare < _chaos.MIN_SPARE:
            raise click.UsageError(
                f"--chaos-duration must leave at least {_chaos.MIN_SPARE:g}s besides "
                f"--chaos-pause and --chaos-origin-failure (for the healthy, resumed and "
                f"recovered phases); it leaves {spare:g}s"
            )
        _chaos.check_l2_url(l2_url)
        if l2_url is None:
            _chaos.find_redis_server()
    else:
        given = _given(ctx, *_CHAOS_OPTIONS)
        if given:
            raise click.UsageError(f"{', '.join(given)} only work(s) with --chaos")
    if hot_key:
        hot = (hot_share, hot_threshold, hot_key_ttl)
        _run_hot_key_command(
            ctx, hot, origin_latency, l2_url, l3_url, data_dir, metrics_port, as_json, workload
        )
        return
    if write_ratio is None:
        write_ratio = 0.0 if chaos else 0.05
    progress = sys.stderr.isatty() or not as_json
    try:
        with ExitStack() as stack:
            directory = stack.enter_context(_directory(data_dir))
            plan: _chaos.ChaosPlan | None = None
            if chaos:
                target = stack.enter_context(_chaos.chaos_l2(l2_url))
                plan = _chaos.ChaosPlan(phases, target.pauser, target.describe())
                l2_url = target.url
            metrics = stack.enter_context(_serving(metrics_port))
            timeline = Timeline(workload["requests"]) if plot_path is not None else None
            report = run_demo(
                **workload,
                write_ratio=write_ratio,
                origin_latency=origin_latency / 1000.0,
                l2_url=l2_url,
                l3_url=l3_url,
                data_dir=directory,
                progress=progress,
                chaos=plan,
                metrics=metrics,
                timeline=timeline,
            )
        if timeline is not None and plot_path is not None:
            _draw(timeline, plot_path)
            report["plot"] = str(plot_path)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except CacheError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        _print_table(report)
        for url in (l2_url, l3_url):
            if url:
                click.echo(f"remote level: {redact(url)}")
        if "chaos" in report:
            _chaos.print_chaos(report["chaos"])


def _given(ctx: click.Context, *names: str) -> list[str]:
    """The options among ``names`` given on the command line, as ``--option-name``."""
    return [
        "--" + name.replace("_", "-")
        for name in names
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]


def _check_run_options(
    ctx: click.Context,
    processes: int | None,
    chaos: bool,
    hot_key: bool,
    metrics_port: int | None,
    plot_path: Path | None,
) -> None:
    """Refuse the combinations a run cannot honour, before anything is created."""
    if hot_key and (chaos or processes is not None):
        raise click.UsageError("--hot-key, --chaos and --processes are separate runs; pick one")
    if processes is not None and (metrics_port is not None or plot_path is not None):
        raise click.UsageError(
            "--metrics-port and --plot do not work with --processes: each worker process has "
            "a cache of its own"
        )
    if plot_path is not None and (chaos or hot_key):
        raise click.UsageError("--plot draws the normal run: not with --chaos or --hot-key")
    if hot_key:
        # The flash sale's background is even and read-only: a Zipf skew or writes would
        # be silently ignored.
        unused = _given(ctx, "skew", "write_ratio")
        if unused:
            raise click.UsageError(f"{', '.join(unused)} do(es) not apply to --hot-key")
    else:
        given = _given(ctx, "hot_share", "hot_threshold", "hot_key_ttl")
        if given:
            raise click.UsageError(f"{', '.join(given)} only work(s) with --hot-key")
    if plot_path is not None:
        try:
            require_matplotlib()
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None


@contextmanager
def _serving(port: int | None) -> Iterator[MetricsEndpoint | None]:
    """A metrics endpoint on ``port`` for the block, its URL on stderr (stdout may be
    --json's); None without a port."""
    if port is None:
        yield None
        return
    try:
        endpoint = MetricsEndpoint(port)
    except ImportError as exc:  # prometheus-client missing: the message says what to install
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve /metrics on port {port}: {exc}") from None
    with endpoint:
        click.echo(f"metrics: {endpoint.url} (while the demo runs)", err=True)
        yield endpoint


def _draw(timeline: Timeline, path: Path) -> None:
    try:
        timeline.plot(path)
    except OSError as exc:
        raise click.ClickException(f"cannot write the plot to {path}: {exc}") from None


def _run_hot_key_command(
    ctx: click.Context,
    hot: tuple[float, float, float],
    origin_latency: float,
    l2_url: str | None,
    l3_url: str | None,
    data_dir: Path | None,
    metrics_port: int | None,
    as_json: bool,
    workload: dict[str, Any],
) -> None:
    """--hot-key: the flash sale with the demo's levels and origin. ``hot``: the sale
    key's share, the protection threshold and the pins' ttl (--hot-*)."""
    share, threshold, hot_key_ttl = hot
    # Without --l1-size and --keys, sizes made for this run (see HOT_KEY_L1 and
    # HOT_KEY_CATALOGUE): the normal run's would show nothing, or take minutes.
    l1_size = workload["l1_size"] if _given(ctx, "l1_size") else HOT_KEY_L1
    keys = workload["keys"] if _given(ctx, "keys") else HOT_KEY_CATALOGUE
    if sys.stderr.isatty() or not as_json:
        click.echo(
            f"hot key: {workload['requests']:,} requests, protection off then on...", err=True
        )
    try:
        with _directory(data_dir) as directory, _serving(metrics_port) as metrics:
            report = run_hot_key(
                requests=workload["requests"],
                keys=keys,
                l1_size=l1_size,
                l2_size=workload["l2_size"],
                origin_latency=origin_latency / 1000.0,
                seed=workload["seed"],
                data_dir=directory,
                l2_url=l2_url,
                l3_url=l3_url,
                share=share,
                threshold=threshold,
                hot_key_ttl=hot_key_ttl,
                metrics=metrics,
            )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except CacheError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        _print_hot_key(report)


def _run_processes_command(
    processes: int,
    seconds: float,
    write_policy: str,
    bus: bool,
    write_ratio: float | None,
    l2_url: str | None,
    data_dir: Path | None,
    as_json: bool,
    workload: dict[str, Any],
) -> None:
    from .processes import print_processes, run_processes

    try:
        with _directory(data_dir) as directory:
            # one more user than the workload reads: the invalidation probe
            create_users_db(directory / "origin-users.db", workload["keys"] + 1, workload["seed"])
            report = run_processes(
                processes=processes,
                seconds=seconds,
                write_policy=write_policy,
                keys=workload["keys"],
                skew=workload["skew"],
                write_ratio=0.2 if write_ratio is None else write_ratio,
                l1_size=workload["l1_size"],
                seed=workload["seed"],
                data_dir=directory,
                l2_url=l2_url,
                bus=bus,
            )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        print_processes(report, click.echo)

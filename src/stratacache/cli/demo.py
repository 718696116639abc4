"""``stratacache demo``: the whole hierarchy on one machine, with no server.

It creates a SQLite "users" database (the origin), puts an in-process L1 and a SQLite-file
L2 in front of it, drives a Zipf-distributed read workload with a share of writes, and
reports per level what the cache did: hit rates, latencies, origin queries avoided, and the
average response time against going to the database every time. ``--l2``/``--l3`` swap in
remote levels by URL (``redis://...``, ``redis+cluster://...``, ``memcached://...``).

``--origin-latency`` adds a delay to every origin query, standing in for the network
round trip to a real database server; without it a local SQLite query is so cheap that
caching it would prove little.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..config import redact, tier_from_url
from ..errors import CacheError, ConfigurationError
from ..hierarchy.sync import Cache
from ..metrics import CacheStats
from ..origin import Origin, SQLOrigin
from ..tiers.base import Tier
from ..tiers.memory import MemoryTier
from ..tiers.sqlite import SQLiteTier

__all__ = ["demo_command", "run_demo"]

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


def zipf_keys(keys: int, requests: int, skew: float, rng: random.Random) -> list[int]:
    """``requests`` key ids drawn from a Zipf(skew) distribution over ``keys`` ids; the
    popularity ranks are shuffled so hot ids are scattered."""
    weights = [1.0 / (rank**skew) for rank in range(1, keys + 1)]
    cumulative = list(itertools.accumulate(weights))
    ids = list(range(keys))
    rng.shuffle(ids)
    return rng.choices(ids, cum_weights=cumulative, k=requests)


def build_levels(
    data_dir: Path, l1_size: int, l2_size: int, l2_url: str | None, l3_url: str | None
) -> list[Tier]:
    levels: list[Tier] = [MemoryTier(l1_size, ttl=300.0)]
    if l2_url:
        levels.append(tier_from_url(l2_url, name="L2", namespace="demo", ttl=3600.0))
    else:
        levels.append(
            SQLiteTier(data_dir / "l2-cache.db", namespace="demo", max_entries=l2_size, ttl=3600.0)
        )
    if l3_url:
        levels.append(tier_from_url(l3_url, name="L3", namespace="demo", ttl=3600.0))
    return levels


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
) -> dict[str, Any]:
    rng = random.Random(seed)
    db_path = data_dir / "origin-users.db"
    create_users_db(db_path, keys, seed)
    origin = DelayedOrigin(
        SQLOrigin(f"sqlite:///{db_path}", "users", key_column="id", key_prefix="user:"),
        origin_latency,
    )
    levels = build_levels(data_dir, l1_size, l2_size, l2_url, l3_url)
    cache = Cache(levels, origin, measure_l1_latency=True, rng=random.Random(seed))
    try:
        cache.clear()  # a previous run's L2 would make this one look better than it is
        cache.reset_stats()
        workload = zipf_keys(keys, requests, skew, rng)
        reads = writes = errors = 0
        started = time.perf_counter()
        with _progress(progress, requests) as advance:
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
                if step % 512 == 0:
                    advance(512)
            advance(0, final=True)
        elapsed = time.perf_counter() - started
        return _report(cache.stats(), reads, writes, errors, elapsed, origin_latency)
    finally:
        cache.close()


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


# Every option shows its default: --help is where a user learns what a bare run does.
@click.command("demo", context_settings={"show_default": True})
@click.option("--requests", default=50_000, type=_POSITIVE)
@click.option(
    "--keys", default=100_000, type=_POSITIVE, help="user profiles in the origin database"
)
@click.option(
    "--skew", default=0.99, type=_NON_NEGATIVE, help="Zipf exponent of the key popularity"
)
@click.option(
    "--write-ratio",
    default=0.05,
    type=click.FloatRange(0.0, 1.0),
    help="share of requests that update a profile",
)
@click.option("--l1-size", default=5_000, type=_POSITIVE, help="L1 (in-process) entries")
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
@click.option("--json", "as_json", is_flag=True, help="print only one JSON object on stdout")
def demo_command(
    origin_latency: float,
    l2_url: str | None,
    l3_url: str | None,
    data_dir: Path | None,
    as_json: bool,
    **workload: Any,
) -> None:
    """Run a Zipf workload through L1 -> L2 -> SQLite origin and report per level."""
    # The other options (sizes, skew, seed...) are run_demo's own arguments, passed as they are.
    try:
        with _directory(data_dir) as directory:
            report = run_demo(
                **workload,
                origin_latency=origin_latency / 1000.0,
                l2_url=l2_url,
                l3_url=l3_url,
                data_dir=directory,
                progress=sys.stderr.isatty() or not as_json,
            )
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

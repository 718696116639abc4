"""``stratacache warm``: fill a cache's shared levels (or an L1 snapshot) before traffic.

The cache is given as level URLs, top first (``--level sqlite:///cache.db``, ``--level
redis://host/0``); a ``memory://?snapshot=PATH`` level is worth warming too: what it holds
is saved to its snapshot when the command ends, and a service whose L1 has the same
snapshot path starts with it. Sources, each run as one strategy of a
:class:`~stratacache.warming.Warmer`, concurrently:

* ``--keys-file PATH`` (repeatable): keys, one per line, read through the cache;
* ``--query SQL`` (repeatable) on ``--sql URL`` (default: the origin's database): the
  first column of each row is an id, made a key with ``--key-format``; read through, or
  with ``--value-column``/``--rows`` filled with the row's values;
* ``--from-url URL``: copy entries, with their remaining lifetimes, from a warm level:
  the ``--top N`` hottest of a ``memory://?snapshot=...`` level, or the keys listed by
  ``--from-keys PATH`` (a shared level cannot list its keys).

Reading keys through needs an origin to load the misses from: ``--origin-sql URL
--origin-table TABLE`` (a :class:`~stratacache.SQLOrigin`, with ``--origin-key-column``,
``--origin-key-prefix`` and ``--origin-value-column`` as its arguments). Sources that
bring their values (``--from-url``, ``--query`` with values) need none. Values are filled
as loads are: nothing is ever written to the origin.

A progress bar per strategy goes to stderr, a table of results (or ``--json``) to stdout;
the exit status is 1 when any strategy failed.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from ..config import redact, tier_from_url
from ..errors import CacheError, ConfigurationError
from ..hierarchy.sync import Cache
from ..origin import Origin, SQLOrigin
from ..tiers.base import Tier
from ..tiers.memory import MemoryTier
from ..warming import (
    Progress,
    Strategy,
    Warmer,
    WarmResult,
    from_level,
    from_sql,
    keys_from_file,
)

__all__ = ["warm_command"]

_POSITIVE = click.IntRange(min=1)
_SECONDS = click.FloatRange(min=0.0, min_open=True)


@click.command("warm", context_settings={"show_default": True})
@click.option(
    "--level",
    "levels",
    multiple=True,
    required=True,
    metavar="URL",
    help="a level of the cache to warm, top first (repeat): sqlite:///cache.db, "
    "redis://host:6379/0, memory://?snapshot=l1.snap (an L1 kept in its snapshot file)",
)
@click.option("--origin-sql", metavar="URL", help="the origin database (a SQLAlchemy URL)")
@click.option("--origin-table", metavar="TABLE", help="the origin's table")
@click.option("--origin-key-column", default="key", metavar="COLUMN")
@click.option(
    "--origin-key-prefix", default="", metavar="PREFIX", help="e.g. user: (key user:42 is row 42)"
)
@click.option(
    "--origin-value-column", metavar="COLUMN", help="cache this column (default: the whole row)"
)
@click.option(
    "--keys-file",
    "keys_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="keys to read through, one per line (# comments); repeatable",
)
@click.option(
    "--sql", "sql_url", metavar="URL", help="database for --query (default: --origin-sql)"
)
@click.option(
    "--query",
    "queries",
    multiple=True,
    metavar="SQL",
    help="a query whose first column is an id, e.g. 'SELECT id FROM users ORDER BY hits DESC "
    "LIMIT 1000'; repeatable",
)
@click.option(
    "--key-format",
    metavar="FORMAT",
    help="how --query ids become keys  [default: --origin-key-prefix + '{}']",
)
@click.option(
    "--value-column", metavar="COLUMN", help="--query: fill this column as each key's value"
)
@click.option("--rows", is_flag=True, help="--query: fill the whole row as each key's value")
@click.option("--from-url", metavar="URL", help="a warm level to copy entries from")
@click.option(
    "--top", default=1000, type=_POSITIVE, help="--from-url: how many of its hottest keys"
)
@click.option(
    "--from-keys",
    type=click.Path(dir_okay=False, path_type=Path),
    help="--from-url: copy these keys (one per line) instead of its hottest",
)
@click.option("--concurrency", default=4, type=_POSITIVE, help="strategies at once")
@click.option("--batch-size", default=500, type=_POSITIVE, help="keys per call to the cache")
@click.option("--timeout", type=_SECONDS, metavar="SECONDS", help="the most one strategy may take")
@click.option("--json", "as_json", is_flag=True, help="print only one JSON object on stdout")
@click.pass_context
def warm_command(
    ctx: click.Context,
    /,
    levels: tuple[str, ...],
    keys_files: tuple[Path, ...],
    queries: tuple[str, ...],
    from_url: str | None,
    top: int,
    from_keys: Path | None,
    concurrency: int,
    batch_size: int,
    timeout: float | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Warm a cache from key files, SQL queries or a warm level."""
    _check_sources(ctx, keys_files, queries, from_url, options)
    try:
        with ExitStack() as stack:
            # Closed last: an L1 level saves its snapshot as the cache closes.
            cache = Cache(_levels(levels), _origin(options, stack), bus=None)
            stack.callback(cache.close)
            warmer = Warmer(
                cache, max_concurrency=concurrency, batch_size=batch_size, timeout=timeout
            )
            for name, strategy in _strategies(keys_files, queries, options):
                warmer.add(name, strategy)
            if from_url is not None:
                warm_level = tier_from_url(from_url, name="warm")
                stack.callback(warm_level.close)
                keys = _level_keys(warm_level, top, from_keys)
                warmer.add(f"level:{redact(from_url)}", from_level(warm_level, keys))
            with _bars(sys.stderr.isatty() or not as_json) as progress:
                warmer.progress = progress
                results = warmer.run()
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except CacheError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
    if as_json:
        ok = all(result.success for result in results)
        click.echo(json.dumps({"ok": ok, "results": [asdict(result) for result in results]}))
    else:
        _print_results(results)
    if not all(result.success for result in results):
        ctx.exit(1)


def _check_sources(
    ctx: click.Context,
    keys_files: tuple[Path, ...],
    queries: tuple[str, ...],
    from_url: str | None,
    options: dict[str, Any],
) -> None:
    """Refuse, before anything is opened, what cannot work."""
    if not (keys_files or queries or from_url):
        raise click.UsageError("nothing to warm from: give --keys-file, --query or --from-url")
    if bool(options["origin_sql"]) != bool(options["origin_table"]):
        raise click.UsageError("--origin-sql and --origin-table go together")
    for name in ("top", "from_keys"):
        given = ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        if given and from_url is None:
            raise click.UsageError(f"--{name.replace('_', '-')} only works with --from-url")
    if options["value_column"] and options["rows"]:
        raise click.UsageError("--value-column and --rows: give one")
    if queries and not (options["sql_url"] or options["origin_sql"]):
        raise click.UsageError("--query needs a database: --sql URL, or --origin-sql")
    reads_through = bool(keys_files) or (
        bool(queries) and not (options["value_column"] or options["rows"])
    )
    if reads_through and not options["origin_sql"]:
        raise click.UsageError(
            "--keys-file and --query (without --value-column/--rows) read keys through the "
            "cache, which loads them from its origin: give --origin-sql and --origin-table"
        )


def _levels(urls: Sequence[str]) -> list[Tier]:
    levels: list[Tier] = [tier_from_url(url) for url in urls]
    kept = [
        level for level in levels if not isinstance(level, MemoryTier) or level.options.snapshot
    ]
    if not kept:
        for level in levels:
            level.close()
        raise click.UsageError(
            "every level is in this process's memory, which ends with the command: warm a "
            "shared level, or give memory:// a snapshot file (memory://?snapshot=l1.snap)"
        )
    return levels


def _origin(options: dict[str, Any], stack: ExitStack) -> Origin | None:
    if not options["origin_sql"]:
        return None
    origin = SQLOrigin(
        options["origin_sql"],
        options["origin_table"],
        key_column=options["origin_key_column"],
        value_column=options["origin_value_column"],
        key_prefix=options["origin_key_prefix"],
    )
    stack.callback(origin.close)  # also closed by the cache; closing twice is harmless
    return origin


def _strategies(
    keys_files: tuple[Path, ...], queries: tuple[str, ...], options: dict[str, Any]
) -> Iterator[tuple[str, Strategy]]:
    for path in keys_files:
        yield f"file:{path}", keys_from_file(path)
    key_format = options["key_format"]
    if key_format is None:
        prefix: str = options["origin_key_prefix"]
        key_format = prefix.replace("{", "{{").replace("}", "}}") + "{}"
    database = options["sql_url"] or options["origin_sql"]
    for number, query in enumerate(queries, 1):
        strategy = from_sql(
            database,
            query,
            key_format=key_format,
            value_column=options["value_column"],
            rows=options["rows"],
        )
        yield (f"sql:{number}" if len(queries) > 1 else "sql"), strategy


def _level_keys(tier: Tier, top: int, from_keys: Path | None) -> Callable[[], list[str]]:
    """Which keys to copy from the warm level: those of ``--from-keys``, else its ``top``
    hottest (its hot-key tracker, else its own order: a snapshot loads hottest first)."""
    if from_keys is not None:
        return keys_from_file(from_keys)
    if not isinstance(tier, MemoryTier):
        raise click.UsageError(
            f"a {tier.kind} level cannot list its keys: give --from-keys FILE with the keys "
            "to copy (or copy from memory://?snapshot=PATH)"
        )
    if not tier.options.snapshot:
        raise click.UsageError(
            "a memory:// level is empty in a new process: give it the snapshot to copy from "
            "(memory://?snapshot=PATH)"
        )

    def hottest() -> list[str]:
        hot = getattr(tier, "hot", None)
        if hot is not None:
            return [item.key for item in hot.top(top)]
        return tier.keys()[:top]

    return hottest


@contextmanager
def _bars(enabled: bool) -> Iterator[Progress | None]:
    """One rich progress bar per strategy on stderr (or none), as a warmer's ``progress``;
    the warmer calls it from its event loop's thread."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bars = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    tasks: dict[str, Any] = {}
    lock = threading.Lock()

    def show(name: str, done: int, total: int | None) -> None:
        with lock:
            task = tasks.get(name)
            if task is None:
                task = tasks[name] = bars.add_task(name, total=total)
        bars.update(task, completed=done, total=total)

    with bars:
        yield show


def _print_results(results: list[WarmResult]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="stratacache warm")
    table.add_column("strategy", overflow="fold")
    table.add_column("items", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("result", overflow="fold")
    for result in results:
        outcome = "ok" if result.success else f"[red]error: {escape(result.error or '')}[/red]"
        table.add_row(escape(result.name), f"{result.items:,}", f"{result.duration:.2f}", outcome)
    Console().print(table)

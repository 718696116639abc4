"""``stratacache simulate``: replay traces through policies, or through a whole hierarchy.

Two modes share the trace options:

* ``--size``: a miss-ratio matrix, traces × sizes × policies (the default policy alone
  unless ``--policy`` lists others), as a table, optionally a CSV and a plot;
* ``--levels``: one hierarchy of levels in front of an origin, reporting per-level hit
  ratios, the average response time, the origin's load and its cost.

Tables go to stdout; progress and notes go to stderr so that stdout stays clean to pipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import ConfigurationError
from ..policies import DEFAULT_POLICY
from ..sim.engine import (
    OPT,
    ReplayResult,
    SizeSpec,
    available_policies,
    check_policies,
    parse_sizes,
)
from ..sim.engine import Progress as ProgressHook
from ..sim.multilevel import LevelSpec, parse_duration, parse_levels
from ..sim.traces import FORMATS, Trace, TraceError, read_trace

__all__ = ["simulate_command"]

# Below this many requests in total a run takes well under a second: no bar.
_PROGRESS_THRESHOLD = 200_000

T = TypeVar("T")


def _converter(
    parse: Callable[[str], T],
) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback that turns our ConfigurationError messages into usage errors."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def _joined(values: tuple[str, ...]) -> str | None:
    return ",".join(values) if values else None


def _sizes_callback(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[SizeSpec] | None:
    return _converter(parse_sizes)(ctx, param, _joined(value))


def _policies_callback(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[str] | None:
    return _converter(lambda text: check_policies(text.split(",")))(ctx, param, _joined(value))


@contextmanager
def _progress(total: int, console: Console) -> Iterator[ProgressHook | None]:
    """A progress bar on stderr for long runs; nothing when stderr is not a terminal."""
    if total < _PROGRESS_THRESHOLD or not console.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("requests"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task("replaying", total=total)

        def advance(count: int, label: str) -> None:
            bar.update(task, advance=count, description=label)

        yield advance


def _load(
    paths: Sequence[Path],
    fmt: str | None,
    key_column: str | None,
    size_column: str | None,
    by_bytes: bool,
    console: Console,
) -> list[Trace]:
    traces: list[Trace] = []
    for path in paths:
        try:
            with console.status(f"reading {path.name}"):
                traces.append(
                    read_trace(
                        path,
                        fmt,
                        key_column=key_column,
                        size_column=size_column,
                        by_bytes=by_bytes,
                    )
                )
        except TraceError as exc:
            raise click.BadParameter(str(exc), param_hint="TRACE") from None
    return traces


def _stdout() -> Console:
    console = Console()
    # Piped output: render tables at their natural width rather than squeezed to 80.
    return console if console.is_terminal else Console(width=200)


@click.command("simulate")
@click.argument(
    "traces",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--size",
    "sizes",
    multiple=True,
    metavar="SIZES",
    callback=_sizes_callback,
    help="Cache sizes, comma-separated: counts (1000, 64k), bytes with --by-bytes "
    "(512KiB, 1GiB) or a percentage of the trace's unique keys/bytes (0.1%, 10%).",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="NAMES",
    callback=_policies_callback,
    help=f"Policies, comma-separated (default: {DEFAULT_POLICY}); 'opt' is Belady's "
    f"offline optimum.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS), case_sensitive=False),
    help="Trace format, when the file name does not tell (.keys .csv .lis .trace "
    ".oracleGeneral.bin, each optionally .gz/.zst).",
)
@click.option("--key-column", metavar="NAME|INDEX", help="CSV key column: name or 0-based index.")
@click.option("--size-column", metavar="NAME|INDEX", help="CSV object-size column for --by-bytes.")
@click.option(
    "--by-bytes",
    is_flag=True,
    help="Weigh each request by its object size: sizes are bytes, and a byte miss ratio "
    "is reported (oracleGeneral, or CSV with a size column).",
)
@click.option(
    "--levels",
    metavar="SPEC",
    callback=_converter(parse_levels),
    help="Simulate a hierarchy instead: NAME:SIZE:POLICY:LATENCY per level, top first, "
    "comma-separated, e.g. 'L1:1000:wtinylfu:0.0005ms,L2:100000:lru:0.3ms'.",
)
@click.option(
    "--origin-latency",
    metavar="DURATION",
    callback=_converter(parse_duration),
    help="With --levels: the origin's latency, e.g. 5ms.",
)
@click.option(
    "--origin-cost",
    type=click.FloatRange(min=0),
    metavar="PRICE",
    help="With --levels: the price of one origin query, e.g. 0.0001.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the results as CSV.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also draw a PNG: miss ratio against size per trace (with OPT), or with "
    "--levels where requests are answered.",
)
def simulate_command(
    traces: tuple[Path, ...],
    sizes: list[SizeSpec] | None,
    policies: list[str] | None,
    fmt: str | None,
    key_column: str | None,
    size_column: str | None,
    by_bytes: bool,
    levels: list[LevelSpec] | None,
    origin_latency: float | None,
    origin_cost: float | None,
    csv_path: Path | None,
    plot_path: Path | None,
) -> None:
    """Replay TRACE files through cache policies and report miss ratios.

    \b
    Examples:
      stratacache simulate OLTP.lis.zst --size 0.1%,1%,10% --policy lru,opt --plot oltp.png
      stratacache simulate web.keys.gz --levels L1:1000:lru:1us,L2:20%:lru:0.3ms \\
          --origin-latency 5ms --origin-cost 0.0001
    """
    if levels is None and sizes is None:
        raise click.UsageError(
            "give --size (a miss-ratio matrix, e.g. --size 1%,10%) or --levels (a hierarchy)"
        )
    if levels is not None:
        if sizes is not None or policies is not None:
            raise click.UsageError(
                "--levels carries each level's size and policy; drop --size and --policy"
            )
        if origin_latency is None:
            raise click.UsageError("--levels needs --origin-latency (e.g. --origin-latency 5ms)")
    elif origin_latency is not None or origin_cost is not None:
        raise click.UsageError("--origin-latency and --origin-cost only apply with --levels")

    fmt = next((name for name in FORMATS if fmt and name.lower() == fmt.lower()), None)
    err = Console(stderr=True)
    loaded = _load(traces, fmt, key_column, size_column, by_bytes, err)
    unit = "bytes" if by_bytes else "entries"
    try:
        if levels is not None:
            assert origin_latency is not None
            price = origin_cost or 0.0
            _run_hierarchy(loaded, levels, origin_latency, price, unit, err, csv_path, plot_path)
        else:
            assert sizes is not None
            names = policies or [DEFAULT_POLICY]
            _run_matrix(loaded, sizes, names, unit, err, csv_path, plot_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def _run_matrix(
    traces: list[Trace],
    sizes: list[SizeSpec],
    policies: list[str],
    unit: str,
    err: Console,
    csv_path: Path | None,
    plot_path: Path | None,
) -> None:
    from ..sim import report
    from ..sim.engine import run_matrix

    # The plot always shows OPT as the floor; run it for the plot only if not asked for.
    extra_opt = plot_path is not None and OPT not in policies and OPT in available_policies()
    runs = len(policies) + (1 if extra_opt else 0)
    total = sum(len(trace) for trace in traces) * len(sizes) * runs
    results: list[ReplayResult] = []
    reference: list[ReplayResult] = []
    with _progress(total, err) as progress:
        for trace in traces:
            results.extend(run_matrix([trace], sizes, policies, progress=progress))
            if extra_opt:
                reference.extend(run_matrix([trace], sizes, [OPT], progress=progress))

    _stdout().print(report.results_table(results))
    if csv_path is not None:
        report.write_results_csv(results, csv_path)
        err.print(f"wrote {csv_path}")
    if plot_path is not None:
        if OPT not in available_policies():
            err.print("note: the opt policy is not available; plotting without it")
        report.plot_miss_ratios(results + reference, plot_path, unit=unit)
        err.print(f"wrote {plot_path}")


def _run_hierarchy(
    traces: list[Trace],
    levels: list[LevelSpec],
    origin_latency: float,
    origin_price: float,
    unit: str,
    err: Console,
    csv_path: Path | None,
    plot_path: Path | None,
) -> None:
    from ..sim import report
    from ..sim.multilevel import simulate_hierarchy

    total = sum(len(trace) for trace in traces)
    with _progress(total, err) as progress:
        results = [
            simulate_hierarchy(
                trace,
                levels,
                origin_latency=origin_latency,
                origin_price=origin_price,
                progress=progress,
            )
            for trace in traces
        ]
    out = _stdout()
    for result in results:
        out.print(report.hierarchy_table(result, unit=unit))
    if csv_path is not None:
        report.write_hierarchy_csv(results, csv_path)
        err.print(f"wrote {csv_path}")
    if plot_path is not None:
        report.plot_hierarchy(results, plot_path)
        err.print(f"wrote {plot_path}")

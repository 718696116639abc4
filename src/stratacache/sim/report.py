"""Presenting simulator results: rich tables, CSV files and matplotlib plots.

Everything here takes finished results from ``engine`` and ``multilevel`` and only
formats or writes them; no counting happens in this module.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from .engine import OPT, ReplayResult
from .multilevel import HierarchyResult, format_duration

__all__ = [
    "CSV_COLUMNS",
    "HIERARCHY_CSV_COLUMNS",
    "hierarchy_table",
    "plot_hierarchy",
    "plot_miss_ratios",
    "results_table",
    "write_hierarchy_csv",
    "write_results_csv",
]

CSV_COLUMNS = ("trace", "policy", "size", "requests", "misses", "miss_ratio")
HIERARCHY_CSV_COLUMNS = (
    "trace",
    "level",
    "policy",
    "size",
    "latency_ms",
    "lookups",
    "hits",
    "hit_ratio",
    "served_share",
    "cost",
)


def _ratio(value: float) -> str:
    return f"{value:.4f}"


def _count(value: int) -> str:
    return f"{value:,}"


def _size_label(result: ReplayResult) -> str:
    if result.size_text.endswith("%"):
        return f"{result.size:,} ({result.size_text})"
    return f"{result.size:,}"


# -- single-level results -------------------------------------------------------------


def results_table(results: Sequence[ReplayResult], *, title: str | None = None) -> Table:
    """One row per (trace, size, policy), in the order the runs were made."""
    with_bytes = any(result.byte_miss_ratio is not None for result in results)
    table = Table(title=title)
    table.add_column("trace")
    table.add_column("policy")
    table.add_column("size", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("misses", justify="right")
    table.add_column("miss ratio", justify="right")
    if with_bytes:
        table.add_column("byte miss ratio", justify="right")
    for result in results:
        row = [
            result.trace,
            result.policy,
            _size_label(result),
            _count(result.requests),
            _count(result.misses),
            _ratio(result.miss_ratio),
        ]
        if with_bytes:
            byte_ratio = result.byte_miss_ratio
            row.append(_ratio(byte_ratio) if byte_ratio is not None else "-")
        table.add_row(*row)
    return table


def write_results_csv(results: Sequence[ReplayResult], path: Path) -> None:
    """Exactly the columns of ``CSV_COLUMNS``; sizes in weight units (entries or bytes)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow(
                [r.trace, r.policy, r.size, r.requests, r.misses, f"{r.miss_ratio:.6f}"]
            )


def _figure(count: int) -> tuple[Any, list[Any]]:
    import matplotlib

    # Agg renders to files without a display, so this works on servers and in CI.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(count, 3)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_miss_ratios(results: Sequence[ReplayResult], path: Path, *, unit: str = "entries") -> None:
    """Miss ratio against cache size: one subplot per trace, one line per policy, OPT
    dashed in black as the floor no online policy can beat."""
    by_trace: dict[str, dict[str, list[ReplayResult]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        by_trace[result.trace][result.policy].append(result)
    if not by_trace:
        raise ValueError("nothing to plot")
    fig, axes = _figure(len(by_trace))
    for ax, (trace, by_policy) in zip(axes, by_trace.items(), strict=True):
        sizes: set[int] = set()
        for policy, runs in by_policy.items():
            runs = sorted(runs, key=lambda r: r.size)
            xs = [r.size for r in runs]
            ys = [r.miss_ratio for r in runs]
            sizes.update(xs)
            if policy == OPT:
                ax.plot(xs, ys, "k--", marker=".", label="OPT (offline optimum)", zorder=3)
            else:
                ax.plot(xs, ys, marker="o", markersize=4, label=policy)
        # Sizes usually span decades (0.1% .. 30% of the keys): a log axis keeps them apart.
        if len(sizes) > 1 and max(sizes) >= 10 * min(sizes):
            ax.set_xscale("log")
            # Label the sizes simulated, not matplotlib's minor ticks (which overlap).
            from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

            ax.xaxis.set_major_locator(FixedLocator(sorted(sizes)))
            ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:,.0f}")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(trace)
        ax.set_xlabel(f"cache size ({unit})")
        ax.set_ylabel("miss ratio")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- hierarchies ----------------------------------------------------------------------


def hierarchy_table(result: HierarchyResult, *, unit: str = "entries") -> Table:
    """Per-level lookups and hit ratios, the origin's load, AMAT and the origin's cost."""
    table = Table(title=f"{result.trace}: {result.requests:,} requests")
    table.add_column("level")
    table.add_column("policy")
    table.add_column(f"size ({unit})", justify="right")
    table.add_column("latency", justify="right")
    table.add_column("lookups", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("hit ratio", justify="right")
    table.add_column("share served", justify="right")
    for level in result.levels:
        table.add_row(
            level.name,
            level.policy,
            _count(level.size),
            format_duration(level.latency),
            _count(level.lookups),
            _count(level.hits),
            _ratio(level.hit_ratio),
            _ratio(result.served_share(level)),
        )
    table.add_row(
        "origin",
        "",
        "",
        format_duration(result.origin_latency),
        _count(result.origin_requests),
        _count(result.origin_requests),
        "",
        _ratio(result.origin_share),
        end_section=True,
    )
    lines = [
        f"average response time (AMAT): {format_duration(result.amat)}",
        f"origin load: {result.origin_requests:,} requests "
        f"({result.origin_share:.2%} of all requests)",
    ]
    if result.origin_bytes is not None and result.bytes_requested:
        lines.append(
            f"origin bytes: {result.origin_bytes:,} "
            f"({result.origin_bytes / result.bytes_requested:.2%} of bytes requested)"
        )
    if result.origin_price:
        per_million = result.origin_share * 1e6 * result.origin_price
        lines.append(
            f"origin cost: {result.origin_cost:.6g} at {result.origin_price:g} per query "
            f"({per_million:.6g} per million requests)"
        )
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table


def write_hierarchy_csv(results: Sequence[HierarchyResult], path: Path) -> None:
    """One row per level, then an ``origin`` row and a ``total`` row per trace.

    ``served_share`` is each row's share of all requests. The origin row's cost is the
    origin's; the total row carries the overall hit ratio and, as its latency, the AMAT.
    """
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HIERARCHY_CSV_COLUMNS)
        for result in results:
            for level in result.levels:
                writer.writerow(
                    [
                        result.trace,
                        level.name,
                        level.policy,
                        level.size,
                        f"{level.latency * 1e3:.6g}",
                        level.lookups,
                        level.hits,
                        f"{level.hit_ratio:.6f}",
                        f"{result.served_share(level):.6f}",
                        "",
                    ]
                )
            origin = result.origin_requests
            writer.writerow(
                [
                    result.trace,
                    "origin",
                    "",
                    "",
                    f"{result.origin_latency * 1e3:.6g}",
                    origin,
                    origin,
                    f"{1.0 if origin else 0.0:.6f}",
                    f"{result.origin_share:.6f}",
                    f"{result.origin_cost:.6g}",
                ]
            )
            writer.writerow(
                [
                    result.trace,
                    "total",
                    "",
                    "",
                    f"{result.amat * 1e3:.6g}",
                    result.requests,
                    result.requests - origin,
                    f"{result.hit_ratio:.6f}",
                    f"{1.0 - result.origin_share if result.requests else 0.0:.6f}",
                    f"{result.origin_cost:.6g}",
                ]
            )


def plot_hierarchy(results: Sequence[HierarchyResult], path: Path) -> None:
    """Where requests are answered: one stacked bar per trace (each level's share, then
    the origin's), labelled with the AMAT."""
    if not results:
        raise ValueError("nothing to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(results)))
    names = [level.name for level in results[0].levels]
    colors = plt.get_cmap("viridis")([i / max(1, len(names)) for i in range(len(names))])
    for row, result in enumerate(results):
        left = 0.0
        for index, level in enumerate(result.levels):
            share = result.served_share(level)
            color = colors[index % len(colors)]
            ax.barh(row, share, left=left, color=color, label=level.name if row == 0 else None)
            left += share
        origin_label = "origin" if row == 0 else None
        ax.barh(row, result.origin_share, left=left, color="tab:red", label=origin_label)
        ax.text(1.01, row, f"AMAT {format_duration(result.amat)}", va="center", fontsize="small")
    ax.set_yticks(range(len(results)), [result.trace for result in results])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of requests answered")
    ax.invert_yaxis()
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names) + 1, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

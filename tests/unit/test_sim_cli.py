"""``stratacache simulate`` through click's CliRunner, reached via the lazy main group."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stratacache.cli import main
from stratacache.policies import DEFAULT_POLICY

# LRU with room for 3 misses 6 of these 9 requests (worked out in test_sim_engine.py).
HAND = b"1\n2\n3\n1\n4\n2\n1\n5\n1\n"


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    path = tmp_path / "hand.keys"
    path.write_bytes(HAND)
    return path


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    path = tmp_path / "loop.trace"
    path.write_bytes(b"".join(b"%d\n" % (i % 10) for i in range(200)))
    return path


def simulate(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["simulate", *map(str, args)])


def test_table_for_the_default_policy(hand: Path, loop: Path) -> None:
    result = simulate(hand, loop, "--size", "3,50%")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if DEFAULT_POLICY in line]
    assert len(lines) == 4  # one row per trace and size
    assert "hand" in lines[0] and "3 " in lines[0]
    assert "3 (50%)" in lines[1]  # 50% of 5 unique keys, rounded half up
    assert "loop" in lines[3] and "5 (50%)" in lines[3]  # 50% of 10 unique keys


def test_lru_miss_ratio_in_the_table(hand: Path) -> None:
    result = simulate(hand, "--size", "3", "--policy", "lru")
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if "hand" in line]
    assert "lru" in row and "0.6667" in row


def test_csv_columns(hand: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = simulate(hand, "--size", "2", "--size", "3", "--policy", "lru", "--csv", out)
    assert result.exit_code == 0, result.output
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["trace", "policy", "size", "requests", "misses", "miss_ratio"]
    assert rows[1:] == [
        ["hand", "lru", "2", "9", "8", "0.888889"],
        ["hand", "lru", "3", "9", "6", "0.666667"],
    ]


def test_plot_is_written(hand: Path, loop: Path, tmp_path: Path) -> None:
    png = tmp_path / "miss.png"
    result = simulate(hand, loop, "--size", "1,2,4", "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes().startswith(b"\x89PNG")


def test_by_bytes_reports_byte_miss_ratio(tmp_path: Path) -> None:
    path = tmp_path / "sized.csv"
    path.write_text("key,size\na,6\nb,5\na,6\nc,4\na,6\n")
    result = simulate(path, "--by-bytes", "--size", "10", "--policy", "lru")
    assert result.exit_code == 0, result.output
    assert "byte miss ratio" in result.stdout
    assert "0.7778" in result.stdout  # 21 of 27 bytes missed


def test_csv_key_column_and_format_override(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    path.write_text("t,user\n1,x\n2,y\n3,x\n")
    result = simulate(
        path, "--format", "CSV", "--key-column", "user", "--size", "5", "--policy", "lru"
    )
    assert result.exit_code == 0, result.output
    assert "0.6667" in result.stdout


def test_levels_mode(hand: Path, tmp_path: Path) -> None:
    out = tmp_path / "levels.csv"
    png = tmp_path / "levels.png"
    result = simulate(
        hand,
        "--levels",
        "L1:1:lru:1us,L2:3:lru:0.3ms",
        "--origin-latency",
        "5ms",
        "--origin-cost",
        "0.5",
        "--csv",
        out,
        "--plot",
        png,
    )
    assert result.exit_code == 0, result.output
    assert "AMAT" in result.stdout and "origin load" in result.stdout
    assert "origin cost" in result.stdout
    rows = list(csv.DictReader(out.open(newline="")))
    assert [row["level"] for row in rows] == ["L1", "L2", "origin", "total"]
    # L1 (room for 1) never hits on this trace; L2 then behaves as a plain LRU of 3.
    assert (rows[0]["lookups"], rows[0]["hits"]) == ("9", "0")
    assert (rows[1]["lookups"], rows[1]["hits"]) == ("9", "3")
    assert rows[2]["lookups"] == "6" and rows[2]["cost"] == "3"
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.keys", "--size", "10"], "does not exist"),
        (["{hand}", "--size", "ten"], "bad cache size 'ten'; accepted:"),
        (["{hand}", "--size", "10", "--policy", "nope"], "unknown policy 'nope'; accepted: "),
        (["{hand}"], "give --size"),
        (["{hand}", "--size", "1", "--levels", "L1:1:lru:1ms"], "drop --size"),
        (["{hand}", "--levels", "L1:1:lru:1ms"], "needs --origin-latency"),
        (["{hand}", "--levels", "L1:1:lru"], "NAME:SIZE:POLICY:LATENCY"),
        (["{hand}", "--size", "1", "--origin-latency", "5ms"], "only apply with --levels"),
        (["{hand}", "--size", "1", "--format", "parquet"], "'parquet' is not one of"),
        (["{odd}", "--size", "1"], "cannot tell the format of 'trace.dat'"),
        (["{hand}", "--size", "1", "--by-bytes"], "carries no object sizes"),
    ],
)
def test_clean_errors(hand: Path, tmp_path: Path, args: list[str], message: str) -> None:
    odd = tmp_path / "trace.dat"
    odd.write_text("1\n")
    result = simulate(*(arg.format(hand=hand, odd=odd) for arg in args))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_plot_draws_opt_without_tabling_it(
    hand: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stratacache.sim.engine as engine
    from stratacache.policies.lru import LRUPolicy

    built: list[int] = []

    def fake_opt(capacity: int, keys: list[object]) -> LRUPolicy:
        # Stands in for Belady until policies/opt.py lands: only the wiring is tested.
        built.append(capacity)
        return LRUPolicy(capacity)

    monkeypatch.setattr(engine, "_opt_class", lambda: fake_opt)
    png = tmp_path / "with-opt.png"
    result = simulate(hand, "--size", "2,3", "--plot", png)
    assert result.exit_code == 0, result.output
    assert built == [2, 3]  # OPT ran once per size for the plot
    assert " opt " not in result.stdout  # ...but the table keeps to the asked policies
    assert "not available" not in result.output
    assert png.read_bytes().startswith(b"\x89PNG")

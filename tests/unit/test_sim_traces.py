"""Trace readers: every format, plain and compressed, built as tiny files in tmp_path."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard

from stratacache.sim.traces import (
    Trace,
    TraceError,
    detect_format,
    iter_chunks,
    iter_trace,
    read_trace,
    trace_name,
)

Compressor = Callable[[bytes], bytes]

COMPRESSIONS: dict[str, tuple[str, Compressor]] = {
    "plain": ("", lambda data: data),
    "gzip": (".gz", gzip.compress),
    "zstd": (".zst", lambda data: zstandard.ZstdCompressor().compress(data)),
}


@pytest.fixture(params=sorted(COMPRESSIONS))
def write(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Write ``data`` as ``name`` plus the compression suffix under test."""
    suffix, compress = COMPRESSIONS[request.param]

    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / (name + suffix)
        path.write_bytes(compress(data))
        return path

    return _write


def oracle_bytes(keys: list[int], sizes: list[int]) -> bytes:
    records = np.zeros(
        len(keys), dtype=[("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")]
    )
    records["time"] = np.arange(len(keys))
    records["key"] = keys
    records["size"] = sizes
    records["next"] = -1
    return records.tobytes()


def test_keys_format(write: Callable[[str, bytes], Path]) -> None:
    trace = read_trace(write("web.keys", b"1\n2\n1\n\n3\r\n"))
    assert trace == Trace("web", [1, 2, 1, 3], None, "keys")


def test_keys_format_with_text_keys(write: Callable[[str, bytes], Path]) -> None:
    trace = read_trace(write("web.txt", b"user:1\n42\nuser 2\n  \nuser:1\n"))
    # Integer-looking keys become ints, every other key stays a str (one rule per key).
    assert trace.keys == ["user:1", 42, "user 2", "user:1"]


def test_lirs_format_skips_markers(write: Callable[[str, bytes], Path]) -> None:
    trace = read_trace(write("lirs-x.trace", b"5\r\n6\r\n*\r\n5\r\n7\r\n"))
    assert trace.name == "lirs-x"
    assert trace.keys == [5, 6, 5, 7]


def test_arc_format_expands_ranges(write: Callable[[str, bytes], Path]) -> None:
    trace = read_trace(write("OLTP.lis", b"10 3 0 0\n4 1 0 0\n11 2 0 0\n"))
    assert trace.keys == [10, 11, 12, 4, 11, 12]
    assert trace.fmt == "arc"


def test_arc_format_with_short_lines(write: Callable[[str, bytes], Path]) -> None:
    # Lines with only a start (count 1) or extra fields are read line by line.
    trace = read_trace(write("odd.lis", b"7\n10 2 0 0 9\n"))
    assert trace.keys == [7, 10, 11]


def test_arc_format_rejects_garbage(write: Callable[[str, bytes], Path]) -> None:
    with pytest.raises(TraceError, match="ARC trace line"):
        read_trace(write("bad.lis", b"1 1 0 0\nhello world\n"))


def test_oracle_general_format(write: Callable[[str, bytes], Path]) -> None:
    keys = [2**64 - 1, 5, 2**64 - 1, 7]
    sizes = [100, 20, 100, 3]
    path = write("recs.oracleGeneral.bin", oracle_bytes(keys, sizes))
    plain = read_trace(path)
    assert plain == Trace("recs", keys, None, "oracleGeneral")
    weighted = read_trace(path, by_bytes=True)
    assert weighted.sizes == sizes
    assert weighted.unique_bytes() == 123


def test_oracle_general_truncated(write: Callable[[str, bytes], Path]) -> None:
    with pytest.raises(TraceError, match="partial record"):
        read_trace(write("cut.oracleGeneral.bin", oracle_bytes([1, 2], [1, 1])[:-5]))


def test_csv_header_by_name(write: Callable[[str, bytes], Path]) -> None:
    data = b"time,obj_id,size\n1,a,10\n2,b,20\n3,a,10\n"
    path = write("reqs.csv", data)
    assert read_trace(path, key_column="obj_id").keys == ["a", "b", "a"]
    # A column named like a key is found without being named.
    assert read_trace(path).keys == ["a", "b", "a"]
    by_bytes = read_trace(path, by_bytes=True)
    assert by_bytes.sizes == [10, 20, 10]


def test_csv_without_header_by_index(write: Callable[[str, bytes], Path]) -> None:
    path = write("reqs.csv", b"1,100,5\n2,200,6\n3,100,7\n")
    assert read_trace(path).keys == [1, 2, 3]
    assert read_trace(path, key_column=1).keys == [100, 200, 100]
    assert read_trace(path, key_column="1").keys == [100, 200, 100]
    assert read_trace(path, key_column=1, size_column=2, by_bytes=True).sizes == [5, 6, 7]


def test_csv_header_detected_from_types(write: Callable[[str, bytes], Path]) -> None:
    path = write("reqs.tsv", b"ts\tpage\n1\t9\n2\t8\n")
    assert read_trace(path, key_column=1).keys == [9, 8]


def test_csv_errors(write: Callable[[str, bytes], Path]) -> None:
    path = write("reqs.csv", b"time,obj_id\n1,a\n2\n")
    with pytest.raises(TraceError, match=r"no key column named 'nope'.*time, obj_id"):
        read_trace(path, key_column="nope")
    with pytest.raises(TraceError, match="line 3 has 1 fields"):
        read_trace(path, key_column="obj_id")
    with pytest.raises(TraceError, match="needs a size column"):
        read_trace(path, by_bytes=True)
    headerless = write("plain.csv", b"1,2\n3,4\n")
    with pytest.raises(TraceError, match="no header row"):
        read_trace(headerless, key_column="obj_id")


def test_fmt_overrides_the_name(write: Callable[[str, bytes], Path]) -> None:
    path = write("mystery.dat", b"3\n*\n4\n")
    assert read_trace(path, fmt="lirs").keys == [3, 4]
    assert read_trace(path, fmt="LIRS").fmt == "lirs"
    with pytest.raises(TraceError, match=r"cannot tell the format.*oracleGeneral"):
        read_trace(path)
    with pytest.raises(TraceError, match="unknown trace format 'parquet'; accepted: keys"):
        read_trace(path, fmt="parquet")


def test_by_bytes_needs_sizes(write: Callable[[str, bytes], Path]) -> None:
    with pytest.raises(TraceError, match="carries no object sizes"):
        read_trace(write("a.keys", b"1\n"), by_bytes=True)


def test_streaming_matches_whole_read(
    write: Callable[[str, bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import stratacache.sim.traces as traces

    # Tiny blocks force lines and records to straddle block boundaries.
    monkeypatch.setattr(traces, "_BLOCK_BYTES", 7)
    text = b"".join(b"%d\n" % (i % 13) for i in range(200))
    path = write("s.keys", text)
    expected = [i % 13 for i in range(200)]
    assert read_trace(path).keys == expected
    assert list(iter_trace(path)) == expected
    assert len(list(iter_chunks(path))) > 1

    arc = write("s.lis", b"".join(b"%d 2 0 0\n" % i for i in range(50)))
    assert read_trace(arc).keys == [k for i in range(50) for k in (i, i + 1)]

    keys = list(range(100))
    oracle = write("s.oracleGeneral.bin", oracle_bytes(keys, [4] * 100))
    assert read_trace(oracle).keys == keys
    assert list(iter_trace(oracle, by_bytes=True))[:2] == [(0, 4), (1, 4)]


def test_names_and_detection() -> None:
    assert trace_name("/x/OLTP.lis.zst") == "OLTP"
    assert trace_name("scarab-recs.oracleGeneral.bin.zst") == "scarab-recs"
    assert trace_name("raw.dat") == "raw.dat"
    assert detect_format("a.oracleGeneral.bin.gz") == "oracleGeneral"
    assert detect_format("a.trace") == "lirs"
    assert detect_format("A.CSV.ZST") == "csv"


def test_misnamed_compression_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "looks-plain.keys"
    path.write_bytes(gzip.compress(b"1\n2\n"))
    assert read_trace(path).keys == [1, 2]


def test_empty_file(write: Callable[[str, bytes], Path]) -> None:
    assert read_trace(write("e.keys", b"")).keys == []
    assert read_trace(write("e.csv", b"")).keys == []

"""Trace readers: turn a file of requests into a list of keys (and optionally sizes).

Five formats, each plain, gzip- or zstd-compressed:

==============  =========================  ===================================================
format          file name                  content
==============  =========================  ===================================================
keys            ``*.keys``, ``*.txt``      one key per line
csv             ``*.csv``, ``*.tsv``       one request per row; the key column is chosen by
                                           name or 0-based index; a header row is detected
arc             ``*.lis``                  ARC traces: ``start count _ _`` per line, which
                                           expands to the keys ``start .. start+count-1``
lirs            ``*.trace``                LIRS traces: one integer key per line; a ``*``
                                           line is a marker and is skipped
oracleGeneral   ``*.oracleGeneral.bin``    libCacheSim's binary records: little-endian u32
                                           time, u64 key, u32 size, i64 next access
==============  =========================  ===================================================

The format comes from the file name (after any ``.gz`` / ``.zst`` suffix) unless ``fmt=``
names it. Compression is recognised from the file's magic bytes, so a misnamed file still
opens.

Keys that are decimal integers become Python ints and every other key stays a str. The
rule is per key, so the same text always maps to the same key whether the file is read
whole or streamed; ints also hash faster and deterministically. The cost is that
zero-padded ids collapse (``007`` and ``7`` are the same key).

Reading is done in large blocks: text is split in bulk and converted with ``map(int, …)``,
ARC ranges are expanded with numpy, and binary records are decoded with one
``numpy.frombuffer`` per block. ``read_trace`` loads a whole trace; ``iter_chunks`` and
``iter_trace`` stream one block at a time for traces that do not fit in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast, overload

import numpy as np

from ..errors import ConfigurationError

__all__ = [
    "FORMATS",
    "Trace",
    "TraceError",
    "TraceKey",
    "detect_format",
    "iter_chunks",
    "iter_trace",
    "read_trace",
    "trace_name",
]

TraceKey = int | str
PathLike = str | os.PathLike[str]

# Canonical format name -> the file-name suffixes that select it (lower case, after the
# compression suffix is removed). Longest suffixes are tried first.
FORMATS: dict[str, tuple[str, ...]] = {
    "keys": (".keys", ".txt"),
    "csv": (".csv", ".tsv"),
    "arc": (".lis",),
    "lirs": (".trace",),
    "oracleGeneral": (".oraclegeneral.bin", ".oraclegeneral"),
}
_ALIASES = {name.lower(): name for name in FORMATS} | {"oracle": "oracleGeneral"}
_COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# 4 MiB of decompressed text per block: large enough that per-block overhead vanishes,
# small enough that streaming a huge trace stays cheap in memory.
_BLOCK_BYTES = 1 << 22
_ORACLE_RECORD = np.dtype([("time", "<u4"), ("key", "<u8"), ("size", "<u4"), ("next", "<i8")])
_CSV_CHUNK_ROWS = 1 << 16

_KEY_COLUMN_NAMES = ("key", "obj_id", "object_id", "objid", "id", "obj", "object", "url")
_SIZE_COLUMN_NAMES = ("size", "obj_size", "object_size", "bytes", "length")


class TraceError(ConfigurationError):
    """A trace that cannot be read: unknown format, bad column, corrupt content."""


def _accepted_formats() -> str:
    return "; ".join(f"{name} ({', '.join(suffixes)})" for name, suffixes in FORMATS.items())


@dataclass(slots=True)
class Trace:
    """A whole trace in memory (or one piece of it, from ``iter_chunks``).

    ``sizes`` is None unless the trace was read ``by_bytes``; then it holds one object size
    per request, aligned with ``keys``.
    """

    name: str
    keys: list[TraceKey]
    sizes: list[int] | None = None
    fmt: str = ""

    def __len__(self) -> int:
        return len(self.keys)

    def unique_keys(self) -> int:
        """How many distinct keys the trace requests."""
        return len(set(self.keys))

    def unique_bytes(self) -> int:
        """The total size of the distinct keys (each at its last-seen size)."""
        if self.sizes is None:
            raise TraceError(f"trace {self.name!r} was read without object sizes")
        return sum(dict(zip(self.keys, self.sizes, strict=True)).values())


# -- naming ---------------------------------------------------------------------------


def _strip_compression(name: str) -> str:
    lower = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _match_suffix(name: str) -> tuple[str, str] | None:
    """The (format, matched suffix) a bare file name selects, longest suffix first."""
    lower = name.lower()
    candidates = [(s, fmt) for fmt, suffixes in FORMATS.items() for s in suffixes]
    for suffix, fmt in sorted(candidates, key=lambda c: -len(c[0])):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return fmt, suffix
    return None


def detect_format(path: PathLike) -> str:
    """The format a file's name selects; a TraceError naming the accepted ones otherwise."""
    name = _strip_compression(Path(path).name)
    match = _match_suffix(name)
    if match is None:
        raise TraceError(
            f"cannot tell the format of {Path(path).name!r} from its name; name the format "
            f"explicitly. Accepted formats (and the suffixes that select them): "
            f"{_accepted_formats()}; each plain, .gz or .zst"
        )
    return match[0]


def trace_name(path: PathLike) -> str:
    """A short display name: the file name without compression and format suffixes."""
    name = _strip_compression(Path(path).name)
    match = _match_suffix(name)
    return name[: -len(match[1])] if match else name


def _canonical_format(fmt: str) -> str:
    canonical = _ALIASES.get(fmt.lower())
    if canonical is None:
        raise TraceError(f"unknown trace format {fmt!r}; accepted: {', '.join(FORMATS)}")
    return canonical


# -- opening --------------------------------------------------------------------------


def _open(path: Path) -> IO[bytes]:
    """Open a trace for binary reading, decompressing by magic bytes."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, closed by it
    try:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_GZIP_MAGIC):
            # Reopened by name: a GzipFile does not close a file object handed to it.
            raw.close()
            return cast("IO[bytes]", gzip.open(path, "rb"))
        if magic == _ZSTD_MAGIC:
            import zstandard

            reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
                raw, read_across_frames=True, closefd=True
            )
            return reader
    except BaseException:
        raw.close()
        raise
    return raw


def _blocks(stream: IO[bytes], size: int, end: Callable[[bytes], int]) -> Iterator[bytes]:
    """Blocks of about ``size`` bytes, each cut where ``end(block)`` says the last whole
    item ends; the part after it opens the next block, and what is left at the end of the
    stream comes last."""
    rest = b""
    while block := stream.read(size):
        block = rest + block
        cut = end(block)
        rest = block[cut:]
        if cut:
            yield block[:cut]
    if rest:
        yield rest


def _line_blocks(stream: IO[bytes]) -> Iterator[bytes]:
    """Large blocks of the stream, each ending on a line boundary."""
    return _blocks(stream, _BLOCK_BYTES, lambda block: block.rfind(b"\n") + 1)


# -- key conversion -------------------------------------------------------------------


def _one_key(token: bytes | str) -> TraceKey:
    try:
        return int(token)
    except ValueError:
        return token.decode("utf-8", "surrogateescape") if isinstance(token, bytes) else token


def _all_ints(tokens: Sequence[bytes | str]) -> list[TraceKey] | None:
    """Every token as an int, or None when one is not an integer."""
    try:
        # The common case (all integers) runs entirely in C.
        keys: list[TraceKey] = list(map(int, tokens))
    except ValueError:
        return None
    return keys


def _tokens_to_keys(tokens: list[bytes]) -> list[TraceKey]:
    """Integer tokens become ints, others str; blank lines are skipped."""
    keys = _all_ints(tokens)
    if keys is None:
        keys = [_one_key(t) for t in (t.strip() for t in tokens) if t]
    return keys


def _str_to_keys(values: list[str]) -> list[TraceKey]:
    keys = _all_ints(values)
    return [_one_key(value) for value in values] if keys is None else keys


# -- per-format block parsers ---------------------------------------------------------

_Chunk = tuple[list[TraceKey], list[int] | None]


def _chunks_keys(stream: IO[bytes], name: str) -> Iterator[_Chunk]:
    for block in _line_blocks(stream):
        yield _tokens_to_keys(block.splitlines()), None


def _chunks_lirs(stream: IO[bytes], name: str) -> Iterator[_Chunk]:
    for block in _line_blocks(stream):
        lines = block.splitlines()
        if b"*" in block:
            lines = [line for line in lines if line.strip() != b"*"]
        yield _tokens_to_keys(lines), None


def _chunks_arc(stream: IO[bytes], name: str) -> Iterator[_Chunk]:
    for block in _line_blocks(stream):
        try:
            # numpy's C text parser: several times faster than splitting in Python.
            table = np.loadtxt(io.BytesIO(block), dtype=np.int64, usecols=(0, 1), ndmin=2)
        except ValueError:
            # Short lines or non-numeric fields: a line-by-line parse that says which line.
            table = _arc_table_slow(block.splitlines(), name)
        if len(table) == 0:
            continue
        starts, counts = table[:, 0], table[:, 1]
        if (counts < 0).any():
            raise TraceError(f"{name}: ARC trace has a negative request count")
        total = int(counts.sum())
        # keys = start + 0..count-1 for every line, built without a Python loop.
        first_index = np.repeat(np.cumsum(counts) - counts, counts)
        keys = np.repeat(starts, counts) + (np.arange(total, dtype=np.int64) - first_index)
        yield keys.tolist(), None


def _arc_table_slow(lines: list[bytes], name: str) -> np.ndarray:
    rows: list[tuple[int, int]] = []
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append((int(fields[0]), int(fields[1]) if len(fields) > 1 else 1))
        except ValueError:
            raise TraceError(
                f"{name}: not an ARC trace line (expected 'start count _ _'): {line[:80]!r}"
            ) from None
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _chunks_oracle(stream: IO[bytes], name: str, by_bytes: bool) -> Iterator[_Chunk]:
    record = _ORACLE_RECORD.itemsize
    block_bytes = max(1, _BLOCK_BYTES // record) * record
    for block in _blocks(stream, block_bytes, lambda block: len(block) - len(block) % record):
        # Only the stream's last block can hold part of a record.
        if len(block) % record:
            raise TraceError(
                f"{name}: oracleGeneral trace ends in a partial record ({len(block)} of "
                f"{record} bytes); the file is truncated or not in this format"
            )
        records = np.frombuffer(block, dtype=_ORACLE_RECORD)
        sizes = records["size"].tolist() if by_bytes else None
        yield records["key"].tolist(), sizes


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _looks_like_header(first: list[str], second: list[str] | None) -> bool:
    """A first row is a header when a field is text where the next row has a number,
    or when it names a column the way key and size columns are usually named."""
    names = {field.strip().lower() for field in first}
    if names & set(_KEY_COLUMN_NAMES + _SIZE_COLUMN_NAMES):
        return True
    if second is None:
        return False
    return any(
        not _is_int(a) and _is_int(b) for a, b in zip(first, second, strict=False) if a.strip()
    )


def _resolve_column(
    column: str | int | None,
    header: list[str] | None,
    defaults: tuple[str, ...],
    what: str,
    name: str,
) -> int | None:
    if column is None:
        if header is not None:
            lowered = [h.strip().lower() for h in header]
            for candidate in defaults:
                if candidate in lowered:
                    return lowered.index(candidate)
        return None
    if isinstance(column, int) or column.strip().lstrip("-").isdigit():
        index = int(column)
        if index < 0:
            raise TraceError(f"{name}: {what} column index must be >= 0, got {index}")
        return index
    if header is None:
        raise TraceError(
            f"{name}: {what} column {column!r} is a name but the CSV file has no header row; "
            f"give a 0-based column index instead"
        )
    stripped = [h.strip() for h in header]
    if column in stripped:
        return stripped.index(column)
    lowered = [h.lower() for h in stripped]
    if column.lower() in lowered:
        return lowered.index(column.lower())
    raise TraceError(
        f"{name}: no {what} column named {column!r}; the header has: {', '.join(stripped)}"
    )


def _chunks_csv(
    stream: IO[bytes],
    name: str,
    key_column: str | int | None,
    size_column: str | int | None,
    by_bytes: bool,
) -> Iterator[_Chunk]:
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    head = [line for line in itertools.islice(text, 2)]
    if not head:
        return
    # Pick the delimiter the first line uses most; commas when it has none of them.
    counts = {d: head[0].count(d) for d in (",", "\t", ";", "|")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    rows = csv.reader(itertools.chain(head, text), delimiter=delimiter)
    first = next(rows)
    second = next(csv.reader(head[1:2], delimiter=delimiter), None)
    named = {field.strip().lower() for field in first}
    has_header = _looks_like_header(first, second) or (
        isinstance(key_column, str)
        and not _is_int(key_column)
        and key_column.strip().lower() in named
    )
    header = first if has_header else None

    key_index = _resolve_column(key_column, header, _KEY_COLUMN_NAMES, "key", name)
    if key_index is None:
        key_index = 0
    size_index: int | None = None
    if by_bytes:
        size_index = _resolve_column(size_column, header, _SIZE_COLUMN_NAMES, "size", name)
        if size_index is None:
            raise TraceError(
                f"{name}: reading a CSV trace by bytes needs a size column; name it "
                f"(size_column=) or give the file a header with one of: "
                f"{', '.join(_SIZE_COLUMN_NAMES)}"
            )

    pending = rows if has_header else itertools.chain([first], rows)
    line = 2 if has_header else 1
    needed = max(key_index, size_index if size_index is not None else 0)
    while True:
        batch = list(itertools.islice(pending, _CSV_CHUNK_ROWS))
        if not batch:
            break
        batch = [row for row in batch if row]  # blank lines
        try:
            raw_keys = [row[key_index].strip() for row in batch]
            sizes = [int(row[size_index]) for row in batch] if size_index is not None else None
        except (IndexError, ValueError):
            for offset, row in enumerate(batch):
                if len(row) <= needed:
                    raise TraceError(
                        f"{name}: row near line {line + offset} has {len(row)} fields; "
                        f"column {needed} does not exist"
                    ) from None
                if size_index is not None and not _is_int(row[size_index]):
                    raise TraceError(
                        f"{name}: row near line {line + offset} has a non-integer size "
                        f"{row[size_index]!r}"
                    ) from None
            raise
        line += len(batch)
        yield _str_to_keys(raw_keys), sizes


# -- public API -----------------------------------------------------------------------


def _chunk_source(
    path: Path,
    fmt: str,
    key_column: str | int | None,
    size_column: str | int | None,
    by_bytes: bool,
) -> Callable[[IO[bytes]], Iterator[_Chunk]]:
    name = path.name
    if by_bytes and fmt not in ("oracleGeneral", "csv"):
        raise TraceError(
            f"{name}: the {fmt} format carries no object sizes, so it cannot be read by "
            f"bytes; formats with sizes: oracleGeneral, csv (with a size column)"
        )
    if fmt == "keys":
        return lambda s: _chunks_keys(s, name)
    if fmt == "lirs":
        return lambda s: _chunks_lirs(s, name)
    if fmt == "arc":
        return lambda s: _chunks_arc(s, name)
    if fmt == "oracleGeneral":
        return lambda s: _chunks_oracle(s, name, by_bytes)
    return lambda s: _chunks_csv(s, name, key_column, size_column, by_bytes)


def iter_chunks(
    path: PathLike,
    fmt: str | None = None,
    *,
    key_column: str | int | None = None,
    size_column: str | int | None = None,
    by_bytes: bool = False,
) -> Iterator[Trace]:
    """Stream a trace as consecutive pieces (each a ``Trace`` of a few hundred thousand
    requests), without holding the whole file in memory."""
    path = Path(path)
    canonical = _canonical_format(fmt) if fmt is not None else detect_format(path)
    source = _chunk_source(path, canonical, key_column, size_column, by_bytes)
    name = trace_name(path)
    with _open(path) as stream:
        try:
            for keys, sizes in source(stream):
                if keys:
                    yield Trace(name, keys, sizes, canonical)
        except (OSError, EOFError) as exc:
            # gzip/zstd raise these for corrupt or truncated data.
            raise TraceError(f"{path.name}: cannot decompress: {exc}") from exc
        except UnicodeDecodeError as exc:  # pragma: no cover - surrogateescape prevents it
            raise TraceError(f"{path.name}: not readable as text: {exc}") from exc


@overload
def iter_trace(
    path: PathLike,
    fmt: str | None = ...,
    *,
    key_column: str | int | None = ...,
    size_column: str | int | None = ...,
    by_bytes: Literal[False] = ...,
) -> Iterator[TraceKey]: ...
@overload
def iter_trace(
    path: PathLike,
    fmt: str | None = ...,
    *,
    key_column: str | int | None = ...,
    size_column: str | int | None = ...,
    by_bytes: Literal[True],
) -> Iterator[tuple[TraceKey, int]]: ...
def iter_trace(
    path: PathLike,
    fmt: str | None = None,
    *,
    key_column: str | int | None = None,
    size_column: str | int | None = None,
    by_bytes: bool = False,
) -> Iterator[TraceKey] | Iterator[tuple[TraceKey, int]]:
    """Stream a trace one request at a time: keys, or ``(key, size)`` pairs by bytes.

    For speed-sensitive consumers ``iter_chunks`` avoids the per-request generator step.
    """
    chunks = iter_chunks(
        path, fmt, key_column=key_column, size_column=size_column, by_bytes=by_bytes
    )
    if by_bytes:
        return itertools.chain.from_iterable(
            zip(chunk.keys, chunk.sizes or (), strict=True) for chunk in chunks
        )
    return itertools.chain.from_iterable(chunk.keys for chunk in chunks)


def read_trace(
    path: PathLike,
    fmt: str | None = None,
    *,
    key_column: str | int | None = None,
    size_column: str | int | None = None,
    by_bytes: bool = False,
) -> Trace:
    """Read a whole trace into memory.

    ``fmt`` overrides the format the file name selects (see the module docstring for the
    accepted names). ``key_column`` (CSV only) is a header name or a 0-based index; without
    it a column named like a key (``key``, ``obj_id``, ``id`` …) is used, else the first.
    Object sizes are read only when ``by_bytes`` (oracleGeneral, or CSV with a size column
    chosen by ``size_column`` or a header named ``size``); otherwise ``sizes`` is None.
    """
    path = Path(path)
    canonical = _canonical_format(fmt) if fmt is not None else detect_format(path)
    keys: list[TraceKey] = []
    sizes: list[int] | None = [] if by_bytes else None
    for chunk in iter_chunks(
        path, canonical, key_column=key_column, size_column=size_column, by_bytes=by_bytes
    ):
        keys.extend(chunk.keys)
        if sizes is not None and chunk.sizes is not None:
            sizes.extend(chunk.sizes)
    return Trace(trace_name(path), keys, sizes, canonical)

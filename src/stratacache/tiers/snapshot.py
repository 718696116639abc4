"""L1 snapshots: a ``MemoryTier`` that starts warm after a restart.

``MemoryTier(..., snapshot=PATH)`` saves its hottest entries to ``PATH`` when it closes
and loads them when it is built; ``snapshot_entries`` bounds how many are kept (default:
all, which is at most the tier's bound). Each entry keeps its remaining lifetime: the file
holds wall-clock expiries, an entry that expired meanwhile is dropped on load, and one that
never expires stays so.

Hottest first: when the tier has a hot-key tracker (``tier.hot``) keys are ranked by its
rate, the rest follow in the store's order; a load inserts them in that order, only as
many as fit the tier's bound, so loading evicts nothing and the next save ranks them
alike.

File layout::

    offset  size  field
    0       4     magic b"SCL1"
    4       1     format version (1)
    5       32    SHA-256 of the body
    37      ...   body: msgpack {"saved_at": wall seconds,
                                 "entries": [[key, expires_at or nil, payload], ...]}

Each payload is the value encoded on its own by the shared levels' msgpack serializer
(:class:`~stratacache.serde.MsgpackSerializer`), which keeps types (tuple, set,
datetime, Decimal, registered dataclasses...) and never imports or runs anything a
payload names: a snapshot cannot execute code, so it needs no signing key as pickle
would. A value it cannot encode is left out of the snapshot (counted and logged); one that
no longer decodes (its class is not registered in this process) is left out of the load.

A file that is not a snapshot, is truncated, or fails its checksum is moved aside to
``PATH.corrupt`` with a warning, and the tier starts empty; a snapshot of another format
version is ignored with a warning (and replaced at the next save). Saving writes a
temporary file beside ``PATH`` (mode 0600: it holds cached data) and renames it over
``PATH``, so a crash mid-save leaves the previous snapshot whole. Neither saving nor
loading ever raises for a file problem: a cache must start, and close, regardless.

Processes sharing a path overwrite each other's snapshot (the last to close wins): give
each worker its own path when their working sets differ.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec

from ..entry import NEVER, Entry
from ..errors import ConfigurationError, SerializationError
from ..serde import MsgpackSerializer, PayloadError
from .base import Prepared

__all__ = ["FORMAT_VERSION", "MAGIC", "SnapshotResult", "SnapshotStore", "load", "save"]

logger = logging.getLogger("stratacache")

MAGIC = b"SCL1"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sB")  # magic, version: readable in every format version
_DIGEST_SIZE = 32
_HEADER_SIZE = _PREFIX.size + _DIGEST_SIZE


class SnapshotResult(NamedTuple):
    """What a save or a load did: ``entries`` written (or loaded), ``skipped`` values that
    could not be encoded (decoded, or did not fit the tier), ``expired`` entries dropped
    because their lifetime was over."""

    entries: int = 0
    skipped: int = 0
    expired: int = 0


class SnapshotStore(Protocol):
    """What a snapshot needs of the tier (a :class:`~stratacache.MemoryTier`)."""

    @property
    def name(self) -> str: ...

    @property
    def ttl(self) -> float | None: ...

    @property
    def closed(self) -> bool: ...

    @property
    def capacity(self) -> int: ...

    @property
    def weight(self) -> int: ...

    @property
    def data(self) -> dict[str, tuple[Any, float]]: ...

    @property
    def lock(self) -> Any: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def wall_clock(self) -> Callable[[], float]: ...

    def prepare(self, entries: Mapping[str, Entry]) -> Prepared: ...

    def write(self, prepared: Prepared) -> object: ...


class _Corrupt(Exception):
    """The file is not a whole snapshot."""


class _OtherVersion(Exception):
    """A snapshot, of a format version this code does not read."""


# ----------------------------------------------------------------------------- save


def save(
    store: SnapshotStore, path: str | os.PathLike[str], limit: int | None = None
) -> SnapshotResult:
    """Write the ``limit`` hottest live entries of ``store`` to ``path`` (all when None).
    A closed store was emptied: it writes nothing, so the last snapshot survives a
    second close."""
    if store.closed:
        return SnapshotResult()
    _check_limit(limit)
    encode = MsgpackSerializer().dumps
    rows: list[list[Any]] = []
    skipped = 0
    first_refused = ""
    for key, value, expires in _ranked(store):
        if limit is not None and len(rows) >= limit:
            break
        try:
            payload = encode(value)
        except SerializationError:
            skipped += 1
            first_refused = first_refused or type(value).__qualname__
            continue
        rows.append([key, None if expires == NEVER else expires, payload])
    if skipped:
        logger.warning(
            "tier %s: %d value(s) left out of the snapshot: msgpack cannot keep their type "
            "(the first: %s; register_type() it to keep such values)",
            store.name,
            skipped,
            first_refused,
        )
    body = msgspec.msgpack.encode({"saved_at": store.wall_clock(), "entries": rows})
    blob = _PREFIX.pack(MAGIC, FORMAT_VERSION) + hashlib.sha256(body).digest() + body
    try:
        _write_atomically(Path(path), blob)
    except OSError as exc:
        logger.warning("tier %s: could not save the snapshot to %s: %s", store.name, path, exc)
        return SnapshotResult(0, skipped)
    return SnapshotResult(len(rows), skipped)


def _ranked(store: SnapshotStore) -> list[tuple[str, Any, float]]:
    """The live entries, hottest first, as ``(key, value, wall-clock expiry)``."""
    with store.lock:  # writers change the dict under the lock; a copy is all it takes
        items = list(store.data.items())
    now, wall_now = store.clock(), store.wall_clock()
    live = [
        (key, value, NEVER if expires == NEVER else wall_now + (expires - now))
        for key, (value, expires) in items
        if expires > now
    ]
    hot = getattr(store, "hot", None)
    if hot is not None:
        rates = {key: hot.rate(key) for key, _, _ in live}
        live.sort(key=lambda item: -rates[item[0]])  # stable: untracked keys keep store order
    return live


def _write_atomically(path: Path, blob: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- load


def load(
    store: SnapshotStore, path: str | os.PathLike[str], limit: int | None = None
) -> SnapshotResult:
    """Put the entries saved at ``path`` into ``store``, hottest first, at most ``limit``
    and no more than fit its bound, each with its remaining lifetime. A missing file is an
    empty start; a corrupt one is moved aside, a foreign version ignored (both logged)."""
    _check_limit(limit)
    where = Path(path)
    try:
        blob = where.read_bytes()
    except FileNotFoundError:
        return SnapshotResult()
    except OSError as exc:
        logger.warning("tier %s: could not read the snapshot %s: %s", store.name, where, exc)
        return SnapshotResult()
    try:
        rows = _parse(blob)
    except _OtherVersion as exc:
        logger.warning("tier %s: snapshot %s ignored: %s", store.name, where, exc)
        return SnapshotResult()
    except _Corrupt as exc:
        _set_aside(store, where, str(exc))
        return SnapshotResult()
    entries, skipped, expired = _entries(store, rows, limit)
    loaded, unfit = _put(store, entries)
    if skipped:
        logger.warning(
            "tier %s: %d value(s) of the snapshot %s could not be decoded (a class not "
            "registered in this process?) and were left out",
            store.name,
            skipped,
            where,
        )
    return SnapshotResult(loaded, skipped + unfit, expired)


def _parse(blob: bytes) -> list[Any]:
    """The entry rows of a snapshot file, checked."""
    if len(blob) < _PREFIX.size:
        raise _Corrupt(f"{len(blob)} bytes, shorter than a snapshot header")
    magic, version = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise _Corrupt(f"not a stratacache snapshot (starts with {blob[:4]!r})")
    if version != FORMAT_VERSION:
        raise _OtherVersion(f"format version {version}; this version reads {FORMAT_VERSION}")
    if len(blob) < _HEADER_SIZE:
        raise _Corrupt("truncated header")
    digest, body = blob[_PREFIX.size : _HEADER_SIZE], blob[_HEADER_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise _Corrupt("checksum mismatch (truncated or altered)")
    try:
        document = msgspec.msgpack.decode(body)
    except msgspec.DecodeError as exc:
        raise _Corrupt(f"body does not decode: {exc}") from None
    rows = document.get("entries") if type(document) is dict else None
    if type(rows) is not list or not all(map(_is_row, rows)):
        raise _Corrupt("unexpected structure")
    return rows


def _is_row(row: Any) -> bool:
    if type(row) is not list or len(row) != 3:
        return False
    key, expires, payload = row
    return (
        type(key) is str
        and bool(key)
        and (expires is None or type(expires) in (int, float))
        and type(payload) is bytes
    )


def _entries(
    store: SnapshotStore, rows: list[Any], limit: int | None
) -> tuple[dict[str, Entry], int, int]:
    """The rows still alive, decoded, each bounded by the tier's own ttl (it may have
    shrunk since the save): ``(entries, undecodable, expired)``."""
    decode = MsgpackSerializer().loads
    wall_now = store.wall_clock()
    bound = NEVER if store.ttl is None else wall_now + store.ttl
    entries: dict[str, Entry] = {}
    skipped = expired = 0
    for key, expires, payload in rows:
        if limit is not None and len(entries) >= limit:
            break
        expires_at = NEVER if expires is None else float(expires)
        if expires_at <= wall_now:
            expired += 1
            continue
        try:
            value = decode(payload)
        except (PayloadError, msgspec.DecodeError, ValueError):
            skipped += 1
            continue
        entries[key] = Entry(value, min(expires_at, bound))
    return entries, skipped, expired


def _put(store: SnapshotStore, entries: dict[str, Entry]) -> tuple[int, int]:
    """Write ``entries`` (hottest first) as far as the tier's bound has room, so that
    loading evicts nothing: ``(loaded, left out)``."""
    prepared = store.prepare(entries)
    room = store.capacity - store.weight
    kept = Prepared()
    for key, (entry, weight) in prepared.items.items():
        if weight <= room:
            kept.items[key] = (entry, weight)
            room -= weight
    store.write(kept)
    return len(kept.items), len(entries) - len(kept.items)


def _set_aside(store: SnapshotStore, where: Path, why: str) -> None:
    aside = where.with_name(where.name + ".corrupt")
    try:
        os.replace(where, aside)
    except OSError as exc:
        logger.warning(
            "tier %s: snapshot %s is corrupt (%s) and could not be moved aside (%s); "
            "starting empty",
            store.name,
            where,
            why,
            exc,
        )
        return
    logger.warning(
        "tier %s: snapshot %s is corrupt (%s); moved to %s, starting empty",
        store.name,
        where,
        why,
        aside,
    )


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(
            f"MemoryTier: snapshot_entries must be an int >= 1 or None, got {limit!r}"
        )

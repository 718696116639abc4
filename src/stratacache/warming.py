"""Cache warming: fill a cache before traffic asks for what it will ask for.

A :class:`Warmer` runs named *strategies* against one :class:`~stratacache.Cache` or
:class:`~stratacache.AsyncCache`. A strategy is a callable without arguments, sync or
async, that answers what to warm:

* an iterable of keys: each is read through the cache (``get_many``), so a key missing
  everywhere is loaded from the origin (or a registered loader) and fills every level;
* a mapping ``{key: value}``, or an iterable of ``(key, value)`` pairs or ``(key, value,
  ttl)`` triples: each value is *filled* into the cache the way a load is
  (``get_or_load`` with a loader that answers the value), never written to the origin.
  A key the cache already holds keeps its value: a fill never replaces what a write
  stored, which is at least as fresh as what a warming source knows.

Strategies run concurrently (at most ``max_concurrency`` at once), their output in
batches of ``batch_size``; one that fails, or outruns its timeout, is reported as failed
and the others go on. :meth:`Warmer.run` (sync) and :meth:`Warmer.arun` return one
:class:`WarmResult` per strategy, in the order they were added.

Sources ready-made: :func:`keys_from_file`, :func:`origin_query` and :func:`from_sql`
(keys, or keys with values, from the origin's database), :func:`from_cache` (the hottest
keys of a warm cache, with their values and remaining lifetimes: the memcache paper's
cold-cluster warm-up) and :func:`from_level` (given keys, from one level).

The core is written once, async: a sync cache's calls run in a worker thread per batch
(:mod:`stratacache.steps` drives the same batch generator either way), and ``run()``
drives ``arun()`` on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .entry import MISSING, NEVER
from .errors import CacheError, ConfigurationError, TransientError
from .hierarchy.aio import AsyncCache
from .hierarchy.base import BaseCache
from .origin import SQLOrigin, _engine
from .steps import adrive, drive
from .tiers.base import Tier

__all__ = [
    "Progress",
    "Strategy",
    "WarmResult",
    "Warmer",
    "WarmingError",
    "from_cache",
    "from_level",
    "from_sql",
    "keys_from_file",
    "origin_query",
]

logger = logging.getLogger("stratacache")

#: A warming strategy: no arguments, sync or async; see the module docstring for what it
#: may return.
Strategy = Callable[[], Any]
#: ``progress(name, done, total)``: ``done`` items of strategy ``name`` handled so far,
#: out of ``total`` (None when the strategy's output has no length).
Progress = Callable[[str, int, int | None], None]

S = TypeVar("S", bound=Strategy)

#: how many keys one read of a level asks for when copying from it
_LEVEL_CHUNK = 500


class WarmingError(CacheError):
    """A warming source could not produce what it was asked for (its file is missing, its
    output is not keys or pairs, the warm cache cannot tell its hot keys)."""


@dataclass(frozen=True, slots=True)
class WarmResult:
    """What one strategy did: ``items`` keys warmed (read or filled, and holding a value
    afterwards), in ``duration`` seconds; ``error`` says why it failed, when it did."""

    name: str
    items: int
    duration: float
    success: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Registered:
    name: str
    fn: Strategy
    timeout: float | None
    ttl: float | None


class _Item(NamedTuple):
    """A value to fill: ``ttl`` bounds its lifetime (None: the levels' own)."""

    key: str
    value: Any
    ttl: float | None


class _Call(NamedTuple):
    """One call of a cache method, as the batch steps ask for it."""

    method: str
    args: tuple[Any, ...]


class _Tally:
    """A strategy's counts so far: a strategy that fails or times out still reports what
    it warmed before."""

    def __init__(self) -> None:
        self.items = 0
        self.done = 0


class Warmer:
    """Runs warming strategies against ``cache`` (a :class:`~stratacache.Cache` or an
    :class:`~stratacache.AsyncCache`).

    ``max_concurrency``: strategies running at once. ``batch_size``: keys per call to the
    cache. ``timeout``: seconds each strategy may take (None: no limit; a strategy's own
    ``timeout`` wins). ``progress(name, done, total)`` is called as each strategy starts
    and after each of its batches, from the thread running the event loop.
    """

    def __init__(
        self,
        cache: BaseCache,
        *,
        max_concurrency: int = 4,
        batch_size: int = 500,
        timeout: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        if not isinstance(cache, BaseCache):
            raise ConfigurationError(
                f"Warmer needs a Cache or an AsyncCache, got {type(cache).__qualname__}"
            )
        _positive_int("max_concurrency", max_concurrency)
        _positive_int("batch_size", batch_size)
        _check_seconds("timeout", timeout)
        self.cache = cache
        self.max_concurrency = max_concurrency
        self.batch_size = batch_size
        self.timeout = timeout
        self.progress = progress
        self._strategies: dict[str, _Registered] = {}

    # ------------------------------------------------------------------ registering

    def add(
        self,
        name: str,
        fn: Strategy,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> None:
        """Register ``fn`` as strategy ``name``. ``timeout`` replaces the warmer's for this
        strategy; ``ttl`` bounds the lifetime of the values it fills (a triple's own ttl
        wins), as ``set(..., ttl=)`` would."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a strategy's name is a non-empty str, got {name!r}")
        if name in self._strategies:
            raise ConfigurationError(f"a strategy named {name!r} is already registered")
        if not callable(fn):
            raise ConfigurationError(f"strategy {name!r} must be callable, got {fn!r}")
        _check_seconds("timeout", timeout)
        _check_seconds("ttl", ttl)
        self._strategies[name] = _Registered(name, fn, timeout, ttl)

    def strategy(
        self, name: str, *, timeout: float | None = None, ttl: float | None = None
    ) -> Callable[[S], S]:
        """Decorator form of :meth:`add`: ``@warmer.strategy("top-users")``."""

        def register(fn: S) -> S:
            self.add(name, fn, timeout=timeout, ttl=ttl)
            return fn

        return register

    @property
    def names(self) -> list[str]:
        return list(self._strategies)

    # ------------------------------------------------------------------ running

    def run(self) -> list[WarmResult]:
        """Run every strategy and wait for all of them; one result per strategy, in the
        order they were added. Called from inside a running event loop, it runs on a
        loop of its own in a worker thread (and blocks the caller's loop meanwhile: from
        async code, ``await arun()`` instead)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun())
        with concurrent.futures.ThreadPoolExecutor(1, "stratacache-warm") as pool:
            return pool.submit(asyncio.run, self.arun()).result()

    async def arun(self) -> list[WarmResult]:
        """:meth:`run` for async code."""
        turns = asyncio.Semaphore(self.max_concurrency)
        runs = [self._run_one(strategy, turns) for strategy in self._strategies.values()]
        return list(await asyncio.gather(*runs))

    async def _run_one(self, strategy: _Registered, turns: asyncio.Semaphore) -> WarmResult:
        async with turns:
            timeout = strategy.timeout if strategy.timeout is not None else self.timeout
            tally = _Tally()
            error: str | None = None
            started = time.perf_counter()
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    await self._warm(strategy, tally)
            except Exception as exc:  # one strategy's failure never stops the others
                expired = scope.expired()
                described = f"timed out after {timeout:g} s" if expired else _describe(exc)
                logger.warning("warming strategy %r failed: %s", strategy.name, described)
                # The result keeps the first line: a database error goes on with its SQL.
                error = described.splitlines()[0] if described else described
            duration = time.perf_counter() - started
            return WarmResult(strategy.name, tally.items, duration, error is None, error)

    async def _warm(self, strategy: _Registered, tally: _Tally) -> None:
        produced = await _produce(strategy.fn)
        if produced is None or isinstance(produced, str | bytes):
            raise WarmingError(
                f"strategy {strategy.name!r} returned {produced!r:.60}: a strategy returns "
                "an iterable of keys, or a mapping / iterable of (key, value) pairs"
            )
        total = len(produced) if isinstance(produced, Collection) else None
        self._report(strategy.name, 0, total)
        async for batch in _batches(produced, self.batch_size):
            keys, items = _split(batch, strategy.name, strategy.ttl)
            tally.items += await self._perform(_batch_steps(keys, items))
            tally.done += len(batch)
            self._report(strategy.name, tally.done, total)

    async def _perform(self, steps: Generator[_Call, Any, int]) -> int:
        """Drive one batch's calls: awaited for an AsyncCache, in a worker thread (one
        hop per batch) for a sync Cache, whose calls block."""
        cache = self.cache
        if isinstance(cache, AsyncCache):

            async def call(command: _Call) -> Any:
                return await getattr(cache, command.method)(*command.args)

            return await adrive(steps, call)

        def call_sync(command: _Call) -> Any:
            return getattr(cache, command.method)(*command.args)

        return await asyncio.to_thread(drive, steps, call_sync)

    def _report(self, name: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(name, done, total)


def _batch_steps(keys: list[str], items: list[_Item]) -> Generator[_Call, Any, int]:
    """Warm one batch; returns how many of its keys hold a value afterwards. Keys are
    read through (one ``get_many``); values are filled one key at a time, since each may
    carry its own lifetime and ``get_or_load`` is the public way to fill without writing
    the origin."""
    warmed = 0
    if keys:
        found = yield _Call("get_many", (keys,))
        warmed += len(found)
    for key, value, ttl in items:
        got = yield _Call("get_or_load", (key, _answer(key, value), ttl))
        warmed += got is not MISSING
    return warmed


def _answer(key: str, value: Any) -> Callable[[list[str]], dict[str, Any]]:
    """A loader that knows one value."""
    return lambda keys: {key: value}


async def _produce(fn: Callable[[], Any]) -> Any:
    """``fn()``: awaited when async, in a worker thread when not (a source may block on a
    file or a database); an awaitable it returns is awaited too."""
    if inspect.iscoroutinefunction(fn):
        result = await fn()
    else:
        result = await asyncio.to_thread(fn)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _batches(produced: Any, size: int) -> AsyncIterator[list[Any]]:
    """``produced`` in lists of at most ``size`` items. A lazy iterator (a generator
    reading a file or a cursor) is advanced in a worker thread: it may block."""
    if isinstance(produced, Mapping):
        produced = list(produced.items())
    if isinstance(produced, AsyncIterable):
        batch: list[Any] = []
        async for item in produced:
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    if not isinstance(produced, Iterable):
        raise WarmingError(f"a strategy returns an iterable, got {type(produced).__qualname__}")
    if isinstance(produced, Sequence):
        for start in range(0, len(produced), size):
            yield list(produced[start : start + size])
        return
    iterator = iter(produced)
    while batch := await asyncio.to_thread(_take, iterator, size):
        yield batch


def _take(iterator: Iterator[Any], size: int) -> list[Any]:
    return list(islice(iterator, size))


def _split(batch: list[Any], name: str, ttl: float | None) -> tuple[list[str], list[_Item]]:
    """The keys to read through and the values to fill, from one batch of a strategy's
    output (items that are neither are refused, naming the first)."""
    keys: list[str] = []
    items: list[_Item] = []
    for item in batch:
        if type(item) is str:
            keys.append(item)
        elif isinstance(item, tuple | list) and len(item) in (2, 3) and type(item[0]) is str:
            own = item[2] if len(item) == 3 else None
            life = own if own is not None else ttl
            if life is None or life > 0:  # a non-positive lifetime: already expired
                items.append(_Item(item[0], item[1], life))
        else:
            raise WarmingError(
                f"strategy {name!r} produced {item!r:.80}: expected a key (str), a "
                "(key, value) pair or a (key, value, ttl) triple"
            )
    return keys, items


# ----------------------------------------------------------------------------- sources


def keys_from_file(path: str | Path) -> Strategy:
    """One key per line of the text file at ``path``; blank lines and lines starting with
    ``#`` are skipped, surrounding whitespace stripped. A missing file fails the strategy
    (with a :class:`WarmingError` naming it), not the run."""
    where = Path(path)

    def read() -> list[str]:
        try:
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise WarmingError(f"keys file {str(where)!r} does not exist") from None
        stripped = (line.strip() for line in text.splitlines())
        return [line for line in stripped if line and not line.startswith("#")]

    return read


def origin_query(
    query: Callable[[], Any], *, key_format: str = "{}", with_values: bool = False
) -> Strategy:
    """Keys from a query of the origin's data: ``query()`` (sync or async) returns ids,
    each made a key with ``key_format.format(id)`` (``"user:{}"``). With ``with_values``
    it returns ``(id, value)`` pairs instead, and the values are filled as they are (no
    origin load)."""
    _check_key_format(key_format)

    async def keyed() -> Any:
        rows = await _produce(query)

        def key_of(row: Any) -> Any:
            if not with_values:
                return key_format.format(row)
            ident, value = row
            return (key_format.format(ident), value)

        # A collection is formatted now (its length feeds progress); a lazy iterator is
        # mapped lazily, and the warmer advances it in a worker thread.
        return [key_of(row) for row in rows] if isinstance(rows, Collection) else map(key_of, rows)

    return keyed


def from_sql(
    source: str | SQLOrigin | Any,
    query: str,
    *,
    key_format: str | None = None,
    params: Mapping[str, Any] | None = None,
    value_column: str | None = None,
    rows: bool = False,
) -> Strategy:
    """Keys from a SQL query: ``from_sql(url, "SELECT id FROM users ORDER BY hits DESC
    LIMIT 1000", key_format="user:{}")``. The first column of each row is the id.

    ``source`` is a SQLAlchemy URL (an engine is made for the query and disposed after),
    an ``Engine``, or a :class:`~stratacache.SQLOrigin` (its engine, and by default its
    ``key_prefix`` in ``key_format``). ``params`` binds ``:name`` placeholders.

    By default only the keys are produced, read through the cache (and loaded by its
    origin). With ``value_column`` each key's value is that column of the row, and with
    ``rows=True`` the whole row as a dict (as ``SQLOrigin`` without ``value_column``
    caches it); those values are filled without asking the origin again. Needs
    SQLAlchemy (``pip install 'stratacache[sql]'``)."""
    sa = _sqlalchemy()
    if value_column is not None and rows:
        raise ConfigurationError("from_sql: give value_column= or rows=True, not both")
    if key_format is None:
        prefix = source.key_prefix if isinstance(source, SQLOrigin) else ""
        key_format = prefix.replace("{", "{{").replace("}", "}}") + "{}"
    statement = sa.text(query)
    bound = dict(params or {})

    def select() -> list[Any]:
        engine, owned = _engine_of(sa, source)
        try:
            with engine.connect() as conn:
                return [_row(row, value_column, rows) for row in conn.execute(statement, bound)]
        finally:
            if owned:
                engine.dispose()

    return origin_query(select, key_format=key_format, with_values=rows or value_column is not None)


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError as exc:
        raise ConfigurationError(
            "from_sql needs SQLAlchemy: pip install 'stratacache[sql]'"
        ) from exc
    return sqlalchemy


def _engine_of(sa: Any, source: Any) -> tuple[Any, bool]:
    """The engine to query, and whether it was made here (and is disposed here)."""
    if isinstance(source, SQLOrigin):
        return source.engine, False
    if isinstance(source, str):
        # origin's engine maker: the same URL error messages as SQLOrigin
        return _engine(sa, source, None), True
    if isinstance(source, sa.engine.Engine):
        return source, False
    raise ConfigurationError(
        f"from_sql takes a database URL, an SQLAlchemy Engine or a SQLOrigin, got "
        f"{type(source).__qualname__}"
    )


def _row(row: Any, value_column: str | None, whole: bool) -> Any:
    if whole:
        # Plain str names, as SQLOrigin caches rows: SQLAlchemy's are a str subclass that
        # shared levels refuse to encode as dict keys.
        return (row[0], {str(name): value for name, value in row._mapping.items()})
    if value_column is not None:
        mapping = row._mapping
        if value_column not in mapping:
            raise WarmingError(
                f"the query has no column {value_column!r}; columns: "
                f"{', '.join(map(str, mapping.keys()))}"
            )
        return (row[0], mapping[value_column])
    return row[0]


def from_cache(warm_cache: BaseCache, n: int = 1000) -> Strategy:
    """The ``n`` hottest keys of ``warm_cache`` (its ``hot_keys(n)``), with their values
    and remaining lifetimes read from its levels directly, top first: the warm cache's
    origin is never asked, and a key no level holds is left out. The cold cache keeps
    each entry no longer than the warm one would have. Entries carrying tags are left out
    too: a fill cannot carry them, and a copy without its tags would outlive an
    ``invalidate_tag`` meant for it (so once the warm cache has seen a tag, its
    in-process level, which does not keep tags, is not read)."""
    _positive_int("n", n)

    def copy() -> list[_Item]:
        return _copied(_levels_with_tags(warm_cache), _hottest(warm_cache, n))

    return copy


def from_level(tier: Tier, keys: Iterable[str] | Callable[[], Iterable[str]]) -> Strategy:
    """The entries of ``keys`` (an iterable, or a callable answering one) that ``tier``
    holds, with their remaining lifetimes: a copy from one explicit level."""

    def copy() -> list[_Item]:
        chosen = keys() if callable(keys) else keys
        return _copied([tier], list(chosen))

    return copy


def _hottest(cache: BaseCache, n: int) -> list[str]:
    """The ``n`` keys ``cache`` reports hottest: its ``hot_keys``, else the hot-key
    tracker of one of its levels."""
    report = getattr(cache, "hot_keys", None)
    if callable(report):
        return [getattr(hot, "key", hot) for hot in report(n)]
    for level in cache.levels:
        tracker = getattr(level, "hot", None)
        if tracker is not None:
            return [hot.key for hot in tracker.top(n)]
    raise WarmingError(
        f"{cache!r} does not track hot keys; copy chosen keys with from_level(tier, keys)"
    )


def _levels_with_tags(cache: BaseCache) -> list[Tier]:
    """The levels of ``cache`` whose entries show their tags. An in-process level keeps
    none (the cache indexes its tagged keys apart), so once the cache has seen a tag only
    its shared levels are read: an untagged copy would outlive ``invalidate_tag``."""
    index = getattr(getattr(cache, "_hierarchy", None), "tags", None)
    if getattr(index, "used", True):
        return [level for level in cache.levels if not level.local]
    return cache.levels


def _copied(levels: Sequence[Tier], keys: list[str]) -> list[_Item]:
    """The live values of ``keys`` in ``levels`` (the first level holding a key answers
    it), with each one's remaining lifetime, in the order of ``keys``."""
    keys = list(dict.fromkeys(keys))
    copied: list[_Item] = []
    for start in range(0, len(keys), _LEVEL_CHUNK):
        chunk = keys[start : start + _LEVEL_CHUNK]
        found = _read_levels(levels, chunk)
        copied.extend(found[key] for key in chunk if key in found)
    return copied


def _read_levels(levels: Sequence[Tier], keys: list[str]) -> dict[str, _Item]:
    found: dict[str, _Item] = {}
    missing = keys
    for level in levels:
        if not missing:
            break
        try:
            entries = level.get_many(missing)
        except TransientError:
            continue  # this level is down: the ones below may have the keys
        now = _wall_clock(level)()
        for key, entry in entries.items():
            if entry.negative or entry.tags:
                continue  # a remembered miss is not worth copying; tags: see from_cache
            if entry.expires_at == NEVER:
                found[key] = _Item(key, entry.value, None)
            elif (remaining := entry.expires_at - now) > 0:
                found[key] = _Item(key, entry.value, remaining)
        # A key this level answers (even with a remembered miss) is settled here, as a
        # read through the hierarchy would settle it.
        missing = [key for key in missing if key not in entries]
    return found


def _wall_clock(level: Tier) -> Callable[[], float]:
    """The clock ``level`` judges its expiries by (entries leave with wall-clock expiries:
    their remaining lifetime is counted on the same clock)."""
    for name in ("wall_clock", "_wall_clock"):  # in-process tiers, shared tiers
        clock = getattr(level, name, None)
        if callable(clock):
            return clock  # type: ignore[no-any-return]
    return time.time


# ----------------------------------------------------------------------------- checks


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")


def _check_seconds(name: str, value: Any) -> None:
    if value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or not 0 < value < math.inf:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or None, got {value!r}"
        )


def _check_key_format(key_format: str) -> None:
    try:
        key_format.format("id")
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"key_format {key_format!r} must have one '{{}}' for the id, e.g. 'user:{{}}' ({exc})"
        ) from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

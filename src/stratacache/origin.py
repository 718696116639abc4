"""The origin: the source of truth behind every cache level.

An origin answers ``load_many(keys) -> {key: value}`` (a key left out means "not found"),
and may accept ``store_many`` and ``delete_many`` for write-through and delete. Two come
ready-made: :class:`CallableOrigin` over plain functions (sync or async), and
:class:`SQLOrigin` over a SQLAlchemy table (SQLite by default, PostgreSQL or any
SQLAlchemy URL).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .config import redact
from .errors import ConfigurationError

__all__ = ["CallableOrigin", "Origin", "SQLOrigin", "Versioned", "call_async", "call_sync"]


class Versioned(dict[str, Any]):
    """What an origin with row versions answers (``load_many``, ``store_many``): the
    values, and in ``versions`` each key's version as the origin numbers it (a version
    column that every write of the row increases). The cache then stamps its entries
    with those versions instead of numbers from its shared level's counter, so an entry
    loaded before a write can never replace that write's, whichever process does it."""

    def __init__(self, values: Mapping[str, Any], versions: Mapping[str, int]) -> None:
        super().__init__(values)
        self.versions: dict[str, int] = dict(versions)


class Origin:
    """Base class: override ``load_many`` (required) and, if the origin can be written,
    ``store_many``/``delete_many``. The async faces default to running the sync method in a
    worker thread so the event loop never blocks on a database call."""

    #: the origin accepts store_many / delete_many
    writable: bool = False

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        raise NotImplementedError

    def store_many(self, items: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Store ``items``. May return the values as the origin now holds them (its
        defaults, types and triggers applied), which the cache then keeps instead of the
        caller's; None means the origin holds exactly what it was given."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot store values; give it a store function, or use "
            "write='cache' (cache-aside: the application writes its database itself)"
        )

    def delete_many(self, keys: Sequence[str]) -> None:
        raise ConfigurationError(
            f"{type(self).__name__} cannot delete values; give it a delete function, or call "
            "invalidate() to drop cached copies only"
        )

    async def aload_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        return await asyncio.to_thread(self.load_many, keys)

    @property
    def blocking_aload(self) -> bool:
        """Whether ``aload_many`` runs blocking code on the event loop (a plain function
        called inline): an AsyncCache then runs ``load_many`` on a thread when a load
        has a timeout, or the wait could not be bounded."""
        return False

    async def astore_many(self, items: Mapping[str, Any]) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(self.store_many, items)

    async def adelete_many(self, keys: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_many, keys)

    def close(self) -> None:
        """Release connections. Called by the cache's close()."""

    async def aclose(self) -> None:
        """Called by an AsyncCache's close(); by default ``close`` in a worker thread."""
        await asyncio.to_thread(self.close)


class CallableOrigin(Origin):
    """An origin made of functions: ``load(keys) -> mapping`` and, optionally,
    ``store(mapping)`` and ``delete(keys)``. Each may be a plain or an async function;
    an async function can only be used from :class:`~stratacache.AsyncCache`."""

    def __init__(
        self,
        load: Callable[[list[str]], Any],
        store: Callable[[dict[str, Any]], Any] | None = None,
        delete: Callable[[list[str]], Any] | None = None,
    ) -> None:
        if not callable(load):
            raise ConfigurationError(f"load must be callable, got {load!r}")
        self._load = load
        self._store = store
        self._delete = delete
        self.writable = store is not None

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        return call_sync(self._load, list(keys))  # type: ignore[no-any-return]

    def store_many(self, items: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if self._store is None:
            return super().store_many(items)  # refuses: this origin cannot do it
        return _stored(call_sync(self._store, dict(items)))

    def delete_many(self, keys: Sequence[str]) -> None:
        if self._delete is None:
            return super().delete_many(keys)  # refuses: this origin cannot do it
        call_sync(self._delete, list(keys))

    async def aload_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        return await call_async(self._load, list(keys))  # type: ignore[no-any-return]

    @property
    def blocking_aload(self) -> bool:
        return not inspect.iscoroutinefunction(self._load)

    async def astore_many(self, items: Mapping[str, Any]) -> Mapping[str, Any] | None:
        if self._store is None:
            return super().store_many(items)  # refuses: this origin cannot do it
        return _stored(await call_async(self._store, dict(items)))

    async def adelete_many(self, keys: Sequence[str]) -> None:
        if self._delete is None:
            return super().delete_many(keys)  # refuses: this origin cannot do it
        await call_async(self._delete, list(keys))


def _stored(result: Any) -> Mapping[str, Any] | None:
    """A store function may return the stored values (a mapping); anything else means
    "stored as given"."""
    return result if isinstance(result, Mapping) else None


# A user's function (a loader, an origin's load/store/delete) may be plain or async; these
# two are the one place that tells them apart.


def call_sync(fn: Callable[[Any], Any], argument: Any) -> Any:
    """``fn(argument)`` for sync code: an async function is refused with a clear error."""
    result = fn(argument)
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # do not leave a never-awaited coroutine behind
        raise ConfigurationError(
            f"{getattr(fn, '__qualname__', None) or fn!r} is a coroutine function; a sync "
            "Cache cannot await it: use AsyncCache, or pass a plain function"
        )
    return result


async def call_async(fn: Callable[[Any], Any], argument: Any) -> Any:
    """``fn(argument)``, awaited only if it is a coroutine: a plain function runs inline,
    as the user wrote it (it may rely on thread-local state)."""
    result = fn(argument)
    if inspect.isawaitable(result):
        return await result
    return result


def _engine(sa: Any, url: str, options: Mapping[str, Any] | None) -> Any:
    """``sa.create_engine``, with the mistakes people make in a database URL explained."""
    scheme = url.split("://", 1)[0] if isinstance(url, str) else ""
    try:
        return sa.create_engine(url, **dict(options or {}))
    except sa.exc.NoSuchModuleError:
        hint = (
            "write postgresql+psycopg://user:password@host/db (and pip install "
            "'stratacache[postgres]')"
            if scheme.split("+")[0] in ("postgres", "postgresql", "pg")
            else "e.g. sqlite:///app.db or postgresql+psycopg://user:password@host/db"
        )
        raise ConfigurationError(
            f"SQLAlchemy has no database dialect or driver for {scheme}:// in {redact(url)}; {hint}"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the database driver for {scheme}:// is not installed ({exc}); for PostgreSQL: "
            "pip install 'stratacache[postgres]'"
        ) from None
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(
            f"{redact(str(url))!r} is not a database URL: {exc}; e.g. sqlite:///app.db or "
            "postgresql+psycopg://user:password@host/db"
        ) from None


class SQLOrigin(Origin):
    """A table in a SQL database, through SQLAlchemy.

    ``url`` is any SQLAlchemy URL (``sqlite:///app.db``, ``postgresql+psycopg://...``).
    Cache keys map to ``key_column`` after removing ``key_prefix`` (``"user:42"`` with
    prefix ``"user:"`` reads the row whose key is 42; the key is converted to the column's
    Python type, and a key that cannot be converted is simply not found). With
    ``value_column`` the cached value is that column; without it, the whole row as a dict.

    ``version_column`` names an integer column that numbers each row's writes: every
    ``store_many`` sets it to the stored value plus one (1 for a new row), whatever the
    value given, and loads and stores answer :class:`Versioned` mappings, so the cache
    orders writes and loads of a row by the origin's own numbers. Rows written by other
    programs must increase it too (a trigger, or ``SET version = version + 1``).
    """

    writable = True

    def __init__(
        self,
        url: str,
        table: str,
        *,
        key_column: str = "key",
        value_column: str | None = None,
        key_prefix: str = "",
        engine_options: Mapping[str, Any] | None = None,
        version_column: str | None = None,
    ) -> None:
        try:
            import sqlalchemy as sa
        except ImportError as exc:
            raise ConfigurationError(
                "SQLOrigin needs SQLAlchemy: pip install 'stratacache[sql]'"
            ) from exc
        self._sa = sa
        self.engine = _engine(sa, url, engine_options)
        # A SQLite file that does not exist yet is created by the first connection; when
        # the table turns out to be missing, that empty file must not stay behind.
        path = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        new_file = bool(path) and path != ":memory:" and not os.path.exists(str(path))
        metadata = sa.MetaData()
        try:
            self.table = sa.Table(table, metadata, autoload_with=self.engine)
        except sa.exc.NoSuchTableError:
            self.engine.dispose()
            if new_file and os.path.exists(str(path)) and os.path.getsize(str(path)) == 0:
                os.remove(str(path))
            raise ConfigurationError(
                f"table {table!r} does not exist in {self.engine.url.render_as_string()}"
                + (" (the file did not exist either)" if new_file else "")
            ) from None
        columns = self.table.c
        if key_column not in columns:
            raise ConfigurationError(
                f"table {table!r} has no column {key_column!r}; "
                f"columns: {', '.join(columns.keys())}"
            )
        if value_column is not None and value_column not in columns:
            raise ConfigurationError(
                f"table {table!r} has no column {value_column!r}; "
                f"columns: {', '.join(columns.keys())}"
            )
        if version_column is not None and version_column not in columns:
            raise ConfigurationError(
                f"table {table!r} has no column {version_column!r} for version_column; "
                f"columns: {', '.join(columns.keys())}"
            )
        self.key_column = columns[key_column]
        self.value_column = columns[value_column] if value_column is not None else None
        self.version_column = columns[version_column] if version_column is not None else None
        self.key_prefix = key_prefix
        try:
            self._key_type: type = self.key_column.type.python_type
        except NotImplementedError:
            self._key_type = str

    def __repr__(self) -> str:
        return f"<SQLOrigin {self.engine.url!r} table={self.table.name!r}>"

    # -- key mapping

    def _to_db(self, key: str) -> Any:
        """The key column's value for a cache key, or None if the key names no row. Only
        the canonical spelling maps: ``"user:42"`` reads row 42, ``"user:042"`` and
        ``"user:4_2"`` do not (otherwise two cache keys would alias one row)."""
        if not key.startswith(self.key_prefix):
            return None
        raw = key[len(self.key_prefix) :]
        try:
            db_key = self._key_type(raw)
        except (TypeError, ValueError):
            return None
        return db_key if str(db_key) == raw else None

    def _to_cache(self, db_key: Any) -> str:
        return f"{self.key_prefix}{db_key}"

    # -- operations

    def load_many(self, keys: Sequence[str]) -> Mapping[str, Any]:
        ids = {db: key for key in keys if (db := self._to_db(key)) is not None}
        if not ids:
            return {}
        with self.engine.connect() as conn:
            return self._select(conn, ids)

    def _select(self, conn: Any, ids: Mapping[Any, str]) -> dict[str, Any]:
        """The cached form of the rows whose keys are ``ids`` (db key -> cache key)."""
        sa = self._sa
        version = self.version_column
        if self.value_column is not None:
            selected = [self.key_column, self.value_column]
            if version is not None:
                selected.append(version)
            query = sa.select(*selected)
        else:
            query = sa.select(self.table)
        query = query.where(self.key_column.in_(list(ids)))
        found: dict[str, Any] = {}
        versions: dict[str, int] = {}
        key_name = self.key_column.name
        for row in conn.execute(query):
            mapping = row._mapping
            db_key = mapping[key_name]
            cache_key = ids.get(db_key, self._to_cache(db_key))
            if self.value_column is not None:
                found[cache_key] = mapping[self.value_column.name]
            else:
                # Plain str column names: SQLAlchemy's are quoted_name, a str subclass,
                # which the shared levels would refuse to encode as a dict key.
                found[cache_key] = {str(name): value for name, value in mapping.items()}
            if version is not None:
                versions[cache_key] = int(mapping[version.name] or 0)
        return Versioned(found, versions) if version is not None else found

    def store_many(self, items: Mapping[str, Any]) -> Mapping[str, Any]:
        """Upsert the rows; returns them as the table now holds them."""
        rows = []
        for key, value in items.items():
            db_key = self._to_db(key)
            if db_key is None:
                raise ConfigurationError(
                    f"cannot store key {key!r}: it does not map to column "
                    f"{self.key_column.name!r} (prefix {self.key_prefix!r}, "
                    f"type {self._key_type.__name__})"
                )
            if self.value_column is not None:
                rows.append({self.key_column.name: db_key, self.value_column.name: value})
            elif isinstance(value, Mapping):
                given = value.get(self.key_column.name, db_key)
                if given != db_key:
                    raise ConfigurationError(
                        f"the row for key {key!r} says {self.key_column.name}={given!r}, but "
                        f"the key names {self.key_column.name}={db_key!r}; store it under "
                        f"{self._to_cache(given)!r}, or leave {self.key_column.name!r} out of "
                        "the value"
                    )
                rows.append({**value, self.key_column.name: db_key})
            else:
                raise ConfigurationError(
                    f"SQLOrigin without value_column stores whole rows: the value for {key!r} "
                    f"must be a mapping of column names, got {type(value).__qualname__}"
                )
        if not rows:
            return {}
        if self.version_column is not None:
            for row in rows:  # the origin numbers its writes, not the caller
                row.pop(self.version_column.name, None)
        with self.engine.begin() as conn:
            self._upsert(conn, rows)
            # What the table holds now (defaults, triggers and column types applied) is
            # what the levels must hold: read it back in the same transaction.
            return self._select(
                conn, {row[self.key_column.name]: key for row, key in zip(rows, items, strict=True)}
            )

    def _upsert(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        sa = self._sa
        dialect = self.engine.dialect.name
        key_name = self.key_column.name
        # Group rows by their set of columns: one executemany per shape.
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            shapes.setdefault(tuple(sorted(row)), []).append(row)
        for columns, group in shapes.items():
            if dialect in ("sqlite", "postgresql"):
                module = "postgresql" if dialect == "postgresql" else "sqlite"
                insert: Any = __import__(
                    f"sqlalchemy.dialects.{module}", fromlist=["insert"]
                ).insert
                version = self.version_column
                statement = insert(self.table)
                if version is not None:  # a new row is at version 1
                    statement = statement.values({version.name: 1})
                updates: dict[Any, Any] = {
                    c: statement.excluded[c] for c in columns if c != key_name
                }
                if version is not None:  # an existing one goes one up
                    updates[version.name] = sa.func.coalesce(version, 0) + 1
                if updates:
                    statement = statement.on_conflict_do_update(
                        index_elements=[self.key_column], set_=updates
                    )
                else:
                    statement = statement.on_conflict_do_nothing()
                conn.execute(statement, group)
            else:
                # Portable fallback: delete then insert, inside the caller's transaction.
                keys = [row[key_name] for row in group]
                if self.version_column is not None:
                    name = self.version_column.name
                    old = dict(
                        conn.execute(
                            sa.select(self.key_column, self.version_column).where(
                                self.key_column.in_(keys)
                            )
                        ).all()
                    )
                    group = [{**row, name: (old.get(row[key_name]) or 0) + 1} for row in group]
                conn.execute(sa.delete(self.table).where(self.key_column.in_(keys)))
                conn.execute(sa.insert(self.table), group)

    def delete_many(self, keys: Sequence[str]) -> None:
        ids = [db for key in keys if (db := self._to_db(key)) is not None]
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(self._sa.delete(self.table).where(self.key_column.in_(ids)))

    def close(self) -> None:
        self.engine.dispose()

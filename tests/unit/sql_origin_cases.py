"""SQLOrigin behaviour, shared by the SQLite (unit) and PostgreSQL (integration) tests:
each calls these with an engine URL and a fresh table name."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from stratacache import AsyncCache, Cache, ConfigurationError, MemoryTier, SQLiteTier, SQLOrigin


def create_tables(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    sa.Table(
        table,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("score", sa.Integer, nullable=True),
    )
    sa.Table(
        table + "_versioned",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    )
    sa.Table(
        table + "_kv",
        metadata,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", sa.JSON, nullable=True),
    )
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {table} (id, name, score) VALUES (1, 'ada', 10), (2, 'bob', NULL)"
            )
        )
    engine.dispose()


def check_rows_by_prefixed_integer_key(url: str, table: str) -> None:
    origin = SQLOrigin(url, table, key_column="id", key_prefix="user:")
    got = origin.load_many(["user:1", "user:2", "user:3", "user:x", "other:1"])
    assert got == {
        "user:1": {"id": 1, "name": "ada", "score": 10},
        "user:2": {"id": 2, "name": "bob", "score": None},
    }
    origin.store_many(
        {"user:3": {"name": "cy", "score": 3}, "user:1": {"name": "ada", "score": 11}}
    )
    assert origin.load_many(["user:1", "user:3"]) == {
        "user:1": {"id": 1, "name": "ada", "score": 11},
        "user:3": {"id": 3, "name": "cy", "score": 3},
    }
    origin.delete_many(["user:3", "user:nope"])
    assert origin.load_many(["user:3"]) == {}
    with pytest.raises(ConfigurationError, match="mapping of column names"):
        origin.store_many({"user:4": "not a row"})
    with pytest.raises(ConfigurationError, match="does not map"):
        origin.store_many({"user:abc": {"name": "z"}})
    origin.close()


def check_value_column(url: str, table: str) -> None:
    origin = SQLOrigin(url, table + "_kv", key_column="key", value_column="value")
    origin.store_many({"a": {"x": [1, 2]}, "b": None, "c": "text"})
    assert origin.load_many(["a", "b", "c", "d"]) == {"a": {"x": [1, 2]}, "b": None, "c": "text"}
    origin.store_many({"a": 5})
    assert origin.load_many(["a"]) == {"a": 5}
    origin.close()


def check_cache_over_sql_origin(url: str, table: str) -> None:
    origin = SQLOrigin(url, table, key_column="id", key_prefix="user:")
    cache = Cache([MemoryTier(100)], origin, negative_ttl=30)
    assert cache.get("user:1")["name"] == "ada"
    cache.set("user:9", {"name": "new", "score": 1})  # write-through inserts the row
    fresh = SQLOrigin(url, table, key_column="id", key_prefix="user:")
    assert fresh.load_many(["user:9"])["user:9"]["name"] == "new"
    cache.delete("user:9")
    assert fresh.load_many(["user:9"]) == {}
    assert cache.get("user:9") is not None and not cache.get("user:9")  # MISSING
    fresh.close()
    cache.close()


def check_async_faces(url: str, table: str) -> None:
    origin = SQLOrigin(url, table, key_column="id", key_prefix="user:")

    async def scenario() -> None:
        assert (await origin.aload_many(["user:2"]))["user:2"]["name"] == "bob"
        await origin.astore_many({"user:5": {"name": "eve", "score": 5}})
        assert "user:5" in await origin.aload_many(["user:5"])
        await origin.adelete_many(["user:5"])
        assert await origin.aload_many(["user:5"]) == {}

    asyncio.run(scenario())
    origin.close()


def check_configuration_errors(url: str, table: str) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SQLOrigin(url, "no_such_table_here")
    with pytest.raises(ConfigurationError, match=r"no column 'nope'.*columns: id, name, score"):
        SQLOrigin(url, table, key_column="nope")
    with pytest.raises(ConfigurationError, match="no column 'val'"):
        SQLOrigin(url, table, key_column="id", value_column="val")


def check_non_canonical_keys_do_not_alias_rows(url: str, table: str) -> None:
    origin = SQLOrigin(url, table, key_column="id", key_prefix="user:")
    assert set(origin.load_many(["user:1", "user:01", "user:+1", "user:1_0", "user: 1"])) == {
        "user:1"
    }
    origin.close()


def check_write_through_caches_the_stored_row(url: str, table: str) -> None:
    """Every level holds the row as the table holds it (column defaults, types), never
    the caller's value; a value that names another row is refused before any write."""
    with tempfile.TemporaryDirectory() as folder:
        origin = SQLOrigin(url, table, key_column="id", key_prefix="user:")
        l2 = SQLiteTier(Path(folder) / "l2.db")
        cache = Cache([MemoryTier(100), l2], origin)
        cache.set("user:7", {"name": "gus"})  # score left out: the row has NULL
        row = {"id": 7, "name": "gus", "score": None}
        assert cache.get("user:7") == row
        assert [type(name) for name in cache.get("user:7")] == [str, str, str]
        assert l2.get_many(["user:7"])["user:7"].value == row
        with pytest.raises(ConfigurationError, match="says id=4444"):
            cache.set("user:44", {"id": 4444, "name": "x"})
        assert cache.get("user:44", None) is None
        assert l2.get_many(["user:44"]) == {}

        async def scenario() -> None:
            acache = AsyncCache(
                [MemoryTier(100), SQLiteTier(Path(folder) / "l2a.db")],
                SQLOrigin(url, table, key_column="id", key_prefix="user:"),
            )
            await acache.set("user:8", {"name": "hal", "score": 3})
            assert await acache.get("user:8") == {"id": 8, "name": "hal", "score": 3}
            await acache.close()

        asyncio.run(scenario())
        cache.close()


def check_version_column(url: str, table: str) -> None:
    """A version column: every store sets it one up (1 for a new row), whatever the
    value given, and loads and stores answer Versioned mappings; a cache over it stamps
    its entries with those versions."""
    from stratacache.origin import Versioned

    table += "_versioned"
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {table} (id, name) VALUES (1, 'ada'), (2, 'bob')"))
    origin = SQLOrigin(url, table, key_column="id", key_prefix="user:", version_column="version")
    loaded = origin.load_many(["user:1", "user:2", "user:9"])
    assert isinstance(loaded, Versioned) and loaded.versions == {"user:1": 0, "user:2": 0}
    stored = origin.store_many(
        {"user:1": {"name": "ada2", "version": 99}, "user:3": {"name": "cy"}}
    )
    assert isinstance(stored, Versioned)
    assert stored.versions == {"user:1": 1, "user:3": 1}
    assert stored["user:1"]["version"] == 1 and stored["user:1"]["name"] == "ada2"
    assert origin.store_many({"user:1": {"name": "ada3"}}).versions == {"user:1": 2}  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        shared = SQLiteTier(Path(tmp) / "l2.db")
        cache = Cache([MemoryTier(10), shared], origin)
        cache.set("user:2", {"name": "bo"})
        assert shared.get_many(["user:2"])["user:2"].version == 1
        cache.invalidate("user:1")
        assert cache.get("user:1")["name"] == "ada3"
        assert shared.get_many(["user:1"])["user:1"].version == 2
        cache.close()
    with pytest.raises(ConfigurationError, match="version_column"):
        SQLOrigin(url, table, key_column="id", version_column="nope")


CASES = [
    check_version_column,
    check_write_through_caches_the_stored_row,
    check_rows_by_prefixed_integer_key,
    check_value_column,
    check_cache_over_sql_origin,
    check_async_faces,
    check_configuration_errors,
    check_non_canonical_keys_do_not_alias_rows,
]
